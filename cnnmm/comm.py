"""The one place where data moves between ranks, and where it is counted.

Every array that crosses a rank boundary goes through a :class:`Comm`: a thin wrapper of an
``mpi4py`` communicator that records, per phase, the words (elements) and messages this rank
receives into a shared :class:`Ledger`. Sub-communicators made from the same grid share one
ledger, so a run reports one total per rank.

Counting convention (logical volume received by this rank, independent of the MPI library's
internal schedule, so the cost model can predict it exactly):

================  ==========================================  ==============================
operation         words received                              messages
================  ==========================================  ==============================
Bcast             m on non-roots, 0 on the root               ceil(log2 p)
Allgatherv        total - own count                           ceil(log2 p)
Reduce_scatter    (p - 1) * own count                         ceil(log2 p)
Reduce            (p - 1) * m on the root, 0 elsewhere        ceil(log2 p)
Allreduce         (p - 1) * own block + (m - own block)       2 * ceil(log2 p)
                  (block partition of m, as reduce-scatter
                  followed by allgather)
Scatterv          own count on non-roots                      1 on non-roots
Gatherv           total - own count on the root               p - 1 on the root
Isend/Irecv       size of each message received               1 per message received
================  ==========================================  ==============================

Operations on a communicator of one rank, and collectives whose buffers are empty on every
rank, move nothing and are skipped without a call. Small control messages (the collective
input check, timing reductions) go through mpi4py directly and are not part of ``words``.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from .errors import CnnmmError

__all__ = ["Ledger", "Comm", "collective_check", "DATA_PHASES"]

#: Phases an algorithm's data movement is counted under.
DATA_PHASES = ("halo", "input", "weights", "output", "scatter", "gather")


def _log2(p):
    return math.ceil(math.log2(p)) if p > 1 else 0


class Ledger:
    """Per-phase counters of words and messages received by this rank."""

    def __init__(self):
        self.words = collections.Counter()
        self.msgs = collections.Counter()

    def add(self, phase, words, msgs):
        self.words[phase] += int(words)
        self.msgs[phase] += int(msgs)

    def reset(self):
        self.words.clear()
        self.msgs.clear()

    def total(self, phases=None):
        """``(words, msgs)`` summed over ``phases`` (default: all but ``scatter`` and
        ``gather``, i.e. what the algorithm itself moves)."""
        if phases is None:
            phases = [p for p in set(self.words) | set(self.msgs) if p not in ("scatter", "gather")]
        return sum(self.words[p] for p in phases), sum(self.msgs[p] for p in phases)

    def as_dict(self):
        phases = sorted(set(self.words) | set(self.msgs))
        return {p: {"words": self.words[p], "msgs": self.msgs[p]} for p in phases}


def _mpi():
    from mpi4py import MPI
    return MPI


class Comm:
    """A counted communicator.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The communicator to wrap (not duplicated, not freed here).
    ledger : Ledger, optional
        Where to count; a new one if omitted. Share one ledger across all fibers of a grid.
    """

    def __init__(self, comm, ledger=None):
        self.comm = comm
        self.ledger = ledger if ledger is not None else Ledger()
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()

    def sub(self, comm):
        """Wrap another communicator with the same ledger."""
        return Comm(comm, self.ledger)

    # --- collectives on arrays --------------------------------------------------------
    def bcast(self, buf, root, phase):
        """Broadcast contiguous ``buf`` from ``root`` in place."""
        if self.size == 1 or buf.size == 0:
            return buf
        self.comm.Bcast(_contig(buf), root=root)
        self.ledger.add(phase, 0 if self.rank == root else buf.size, _log2(self.size))
        return buf

    def allgatherv(self, sendbuf, recvbuf, counts, phase):
        """Gather ``counts[i]`` elements from each rank into every rank's flat ``recvbuf``."""
        counts = [int(c) for c in counts]
        total = sum(counts)
        if self.size == 1:
            recvbuf.reshape(-1)[:total] = sendbuf.reshape(-1)
            return recvbuf
        if total == 0:
            return recvbuf
        displs = np.concatenate(([0], np.cumsum(counts[:-1]))).astype(int).tolist()
        self.comm.Allgatherv(_contig(sendbuf), [_contig(recvbuf), counts, displs, _mpitype(recvbuf)])
        self.ledger.add(phase, total - counts[self.rank], _log2(self.size))
        return recvbuf

    def reduce_scatter(self, sendbuf, recvbuf, counts, phase):
        """Sum ``sendbuf`` over ranks; rank i keeps the i-th segment of ``counts[i]`` elements."""
        counts = [int(c) for c in counts]
        if self.size == 1:
            recvbuf.reshape(-1)[:] = sendbuf.reshape(-1)[:counts[0]]
            return recvbuf
        if sum(counts) == 0:
            return recvbuf
        self.comm.Reduce_scatter(_contig(sendbuf), _contig(recvbuf), recvcounts=counts, op=_mpi().SUM)
        self.ledger.add(phase, (self.size - 1) * counts[self.rank], _log2(self.size))
        return recvbuf

    def reduce(self, sendbuf, recvbuf, root, phase):
        """Sum contiguous ``sendbuf`` over ranks into ``recvbuf`` on ``root``."""
        if self.size == 1:
            recvbuf[...] = sendbuf
            return recvbuf
        if sendbuf.size == 0:
            return recvbuf
        self.comm.Reduce(_contig(sendbuf), _contig(recvbuf) if self.rank == root else None,
                         op=_mpi().SUM, root=root)
        self.ledger.add(phase, (self.size - 1) * sendbuf.size if self.rank == root else 0, _log2(self.size))
        return recvbuf

    def allreduce(self, buf, phase):
        """Sum contiguous ``buf`` over ranks in place."""
        if self.size == 1 or buf.size == 0:
            return buf
        self.comm.Allreduce(_mpi().IN_PLACE, _contig(buf), op=_mpi().SUM)
        q, r = divmod(buf.size, self.size)
        own = q + (self.rank < r)
        self.ledger.add(phase, (self.size - 1) * own + (buf.size - own), 2 * _log2(self.size))
        return buf

    def scatterv(self, sendbuf, counts, recvbuf, root, phase):
        """Rank ``root`` sends ``counts[i]`` elements of flat ``sendbuf`` to rank i."""
        counts = [int(c) for c in counts]
        if self.size == 1:
            recvbuf.reshape(-1)[:] = sendbuf.reshape(-1)[:counts[0]]
            return recvbuf
        displs = np.concatenate(([0], np.cumsum(counts[:-1]))).astype(int).tolist()
        send = [sendbuf, counts, displs, _mpitype(sendbuf)] if self.rank == root else None
        self.comm.Scatterv(send, _contig(recvbuf), root=root)
        if self.rank != root:
            self.ledger.add(phase, counts[self.rank], 1)
        return recvbuf

    def gatherv(self, sendbuf, recvbuf, counts, root, phase):
        """Rank ``root`` receives ``counts[i]`` elements from rank i into flat ``recvbuf``."""
        counts = [int(c) for c in counts]
        if self.size == 1:
            recvbuf.reshape(-1)[:counts[0]] = sendbuf.reshape(-1)
            return recvbuf
        displs = np.concatenate(([0], np.cumsum(counts[:-1]))).astype(int).tolist()
        recv = [recvbuf, counts, displs, _mpitype(recvbuf)] if self.rank == root else None
        self.comm.Gatherv(_contig(sendbuf), recv, root=root)
        if self.rank == root:
            self.ledger.add(phase, sum(counts) - counts[root], sum(1 for c in counts if c) - (counts[root] > 0))
        return recvbuf

    # --- point to point ---------------------------------------------------------------
    def exchange(self, sends, recvs, phase, tag=0):
        """Post all ``sends`` and ``recvs`` (lists of ``(peer, contiguous array)``), wait for all.

        Every receive and every send is waited on before returning, so buffers may be reused.
        """
        if not sends and not recvs:
            return
        reqs = [self.comm.Irecv(_contig(buf), source=peer, tag=tag) for peer, buf in recvs]
        reqs += [self.comm.Isend(_contig(buf), dest=peer, tag=tag) for peer, buf in sends]
        _mpi().Request.Waitall(reqs)
        self.ledger.add(phase, sum(buf.size for _, buf in recvs), len(recvs))


def _contig(buf):
    if not buf.flags.c_contiguous:
        raise ValueError("cnnmm.comm: communication buffers must be C-contiguous")
    return buf


def _mpitype(buf):
    from mpi4py.util.dtlib import from_numpy_dtype
    return from_numpy_dtype(buf.dtype)


def collective_check(comm, check):
    """Run ``check()`` on every rank of ``comm``; if it raises a :class:`CnnmmError` on any
    rank, raise that error (the lowest failing rank's) on every rank.

    This is the one synchronisation point before an operation communicates: a bad input on
    one rank becomes the same clear error everywhere, never a hang. Returns ``check()``'s
    value on each rank.
    """
    try:
        value, error = check(), None
    except CnnmmError as exc:
        value, error = None, exc
    if comm.Get_size() > 1:
        errors = comm.allgather(None if error is None else (type(error).__name__, str(error)))
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            if error is None or str(error) != first[1]:
                from . import errors as _errors
                error = getattr(_errors, first[0], CnnmmError)(first[1])
            error.collective = True
            raise error
    elif error is not None:
        error.collective = True
        raise error
    return value
