"""Cost model: words, messages, flops and peak memory of every rank, and predicted time.

The model repeats the implementation's block arithmetic (:class:`~cnnmm.layout.ConvLayout`,
:mod:`cnnmm.algorithms.passes`) for all ranks at once, as numpy arrays indexed by Cartesian
rank, so that for every rank

* ``words`` and ``msgs`` equal what :mod:`cnnmm.comm` counts (received words; messages as
  defined there),
* ``peak_bytes`` equals what :class:`~cnnmm.memory.MemoryMeter` records,
* ``flops`` is the kernel work ``2*nb*kb*cb*bp*bq*R*S``,

and ``time = sum over calls of (alpha_op(p) + beta_op(p) * words) + flops / rate + calls *
overhead`` with the constants of a :class:`~cnnmm.profiles.Profile`. Tests check the first
two against the counters on every rank, algorithm, pass and grid they run.

Per pass, with ``q = pN*pH*pW``, ``rows x cols`` the halo-extended input tile, ``in_own`` this
rank's share of its C block along the K fiber, ``w_own`` along the pixel fiber and ``k_own``
its share of the K block along the C fiber:

========== ================================================ ==================================
pass       words received                                   replicated (memory-hungry) tile
========== ================================================ ==================================
fwd        halo + nb*rows*cols*(cb - in_own)                output tile, pC-fold
           + kb*R*S*(cb - w_own) + (pC-1)*nb*k_own*bp*bq
bwd-data   nb*bp*bq*(kb - k_own) + kb*R*S*(cb - w_own)      extended input tile, pK-fold
           + (pK-1)*nb*in_own*rows*cols + adjoint halo
bwd-weight nb*bp*bq*(kb - k_own) + halo + nb*rows*cols*     weight tile, q-fold
           (cb - in_own) + (q-1)*kb*R*S*w_own
========== ================================================ ==================================

Tiles retained from earlier passes of a training step (``saved``) move nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from .errors import AlgorithmError
from .grid import GridDims
from .layout import ConvLayout

__all__ = ["PASSES", "RankCosts", "rank_costs", "predict_rank", "predict", "axis_geometry",
           "spatial_axis", "words_identity_check"]

PASSES = ("fwd", "bwd-data", "bwd-weight")
_PHASES = ("halo", "input", "weights", "output")


def _log2(p):
    return math.ceil(math.log2(p)) if p > 1 else 0


def _size(r):
    return r[1] - r[0]


@dataclasses.dataclass
class RankCosts:
    """Per-rank arrays (index = Cartesian rank) of one pass.

    ``words``/``msgs`` map phase -> int64 array; ``calls`` lists ``(op, p, words array,
    count array)`` for the time model; ``flops``, ``kernel_calls`` and ``peak_bytes`` are arrays.
    """

    words: dict
    msgs: dict
    flops: np.ndarray
    kernel_calls: np.ndarray
    peak_bytes: np.ndarray
    calls: list

    @property
    def total_words(self):
        return sum(self.words.values())

    @property
    def total_msgs(self):
        return sum(self.msgs.values())


def _block_sizes(n, p):
    """Sizes of the ``p`` blocks of ``n`` items (first ``n % p`` get one more), as an array."""
    return n // p + (np.arange(p) < n % p)


def axis_geometry(n_out, n_in, p, stride, pad, extent):
    """Per block of a spatial dimension: owned input range and the (clipped) window its output
    block reads, as arrays ``own_lo, own_hi, win_lo, win_hi`` (see :mod:`cnnmm.layout`)."""
    out = _block_sizes(n_out, p)
    out_hi = np.cumsum(out)
    out_lo = out_hi - out
    own = _block_sizes(n_in, p)
    own_hi = np.cumsum(own)
    own_lo = own_hi - own
    lo = out_lo * stride - pad
    hi = (out_hi - 1) * stride - pad + extent
    empty = out == 0
    win_lo = np.where(empty, 0, np.clip(lo, 0, n_in))
    win_hi = np.where(empty, 0, np.clip(hi, 0, n_in))
    return own_lo, own_hi, win_lo, win_hi


@functools.lru_cache(maxsize=4096)
def spatial_axis(n_out, n_in, p, stride, pad, extent):
    """The :class:`_Axis` of a spatial dimension split ``p`` ways (cached: a planner asks for
    few distinct extents)."""
    return _Axis(*axis_geometry(n_out, n_in, p, stride, pad, extent))


class _Axis:
    """Per-index quantities of a spatial grid dimension (H or W)."""

    def __init__(self, own_lo, own_hi, win_lo, win_hi):
        p = len(own_lo)
        self.own = own_hi - own_lo
        self.need = win_hi - win_lo
        recv, send = np.zeros(p, np.int64), np.zeros(p, np.int64)
        nrecv, nsend = np.zeros(p, np.int64), np.zeros(p, np.int64)
        # owners j whose block meets [lo, hi): a contiguous run found by binary search
        first = np.searchsorted(own_lo, win_lo, side="right") - 1
        last = np.searchsorted(own_lo, win_hi, side="left") - 1
        for i in np.nonzero((win_hi > win_lo) & ((first != np.arange(p)) | (last != np.arange(p))))[0]:
            for j in range(max(first[i], 0), min(last[i], p - 1) + 1):
                ov = min(win_hi[i], own_hi[j]) - max(win_lo[i], own_lo[j])
                if j != i and ov > 0:
                    recv[i] += ov
                    nrecv[i] += 1
                    send[j] += ov
                    nsend[j] += 1
        self.recv, self.nrecv, self.send, self.nsend = recv, nrecv, send, nsend
        self.trivial = (nrecv == 0) & (nsend == 0) & (self.own == self.need)
        self.nearest = bool(np.all((win_hi <= win_lo) | ((first >= np.arange(p) - 1) & (last <= np.arange(p) + 1))))


class _Mem:
    """A vectorised :class:`~cnnmm.memory.MemoryMeter`: live and peak elements per rank."""

    def __init__(self, live):
        self.live = live.astype(np.int64)
        self.peak = self.live.copy()

    def alloc(self, n):
        self.live = self.live + n
        self.peak = np.maximum(self.peak, self.live)

    def free(self, n):
        self.live = self.live - n

    def transient(self, n):
        """A buffer allocated and freed at once (it only raises the peak)."""
        self.alloc(n)
        self.free(n)


class _Grid:
    """Every per-rank quantity the passes use, as arrays over Cartesian ranks."""

    def __init__(self, spec, dims, stream, panel):
        from .algorithms.passes import DEFAULT_PANEL
        d = dims
        shape = tuple(d)
        self.spec, self.dims = spec, d

        def spread(values, axis):
            v = np.asarray(values, dtype=np.int64)
            idx = [1] * 5
            idx[axis] = len(v)
            return np.broadcast_to(v.reshape(idx), shape).reshape(-1)

        self.nb = spread(_block_sizes(spec.N, d.pN), 0)
        self.kb = spread(_block_sizes(spec.K, d.pK), 3)
        self.cb = spread(_block_sizes(spec.C, d.pC), 4)
        self.bp = spread(_block_sizes(spec.P, d.pH), 1)
        self.bq = spread(_block_sizes(spec.Q, d.pW), 2)
        self.h = spatial_axis(spec.P, spec.H, d.pH, spec.stride[0], spec.pad[0], spec.extent[0])
        self.w = spatial_axis(spec.Q, spec.W, d.pW, spec.stride[1], spec.pad[1], spec.extent[1])
        for name in ("own", "need", "recv", "nrecv", "send", "nsend", "trivial"):
            setattr(self, "row_" + name, spread(getattr(self.h, name), 1))
            setattr(self, "col_" + name, spread(getattr(self.w, name), 2))
        self.rows, self.cols = self.row_need, self.col_need
        n, h, w, k, c = np.indices(shape).reshape(5, -1)
        pixel = (n * d.pH + h) * d.pW + w
        # sub-block sizes: in_own (C block over the K fiber), k_own (K block over the C fiber),
        # w_own (C block over the pixel fiber), all by the block rule
        self.in_own = self.cb // d.pK + (k < self.cb % d.pK)
        self.k_own = self.kb // d.pC + (c < self.kb % d.pC)
        self.w_own = self.cb // d.pixel + (pixel < self.cb % d.pixel)
        if stream:
            lay = ConvLayout(spec, dims)
            panels = [lay.c_panels(ci, panel or DEFAULT_PANEL) for ci in range(d.pC)]
            self.npanels = np.array([len(pl) for pl in panels])[c]
            self.width = np.array([max((hi - lo for lo, hi, _, _ in pl), default=0) for pl in panels])[c]
        else:
            self.npanels = (self.cb > 0).astype(np.int64)
            self.width = self.cb
        self.stream = stream


def _allgather_mem(mem, p, lead, total):
    """Memory of :func:`~cnnmm.algorithms.panels.allgather_channels`; returns the tile size."""
    if p == 1:
        return np.zeros_like(total)
    flat = np.where(lead > 1, total, 0)   # flat receive buffer, rearranged into the tile
    mem.alloc(flat)
    mem.alloc(total)
    mem.free(flat)
    return total


def _halo_buffers(g, cb):
    """Sizes of :class:`~cnnmm.layout.InputHalo`'s buffers (0 where it is skipped): the
    row-extended strip, the extended tile, and the row- and column-phase message pieces."""
    live = (g.row_trivial & g.col_trivial) == 0   # the flags are 0/1 integers
    mid = np.where(live, g.nb * cb * g.rows * g.col_own, 0)
    ext = np.where(live, g.nb * cb * g.rows * g.cols, 0)
    row_pieces = np.where(live, g.nb * cb * (g.row_send + g.row_recv) * g.col_own, 0)
    col_pieces = np.where(live, g.nb * cb * g.rows * (g.col_send + g.col_recv), 0)
    return mid, ext, row_pieces, col_pieces


def _halo_forward(g, mem, cb):
    """Memory of :meth:`~cnnmm.layout.InputHalo.forward`; returns the extended tile size."""
    mid, ext, row_pieces, col_pieces = _halo_buffers(g, cb)
    mem.alloc(mid)
    mem.transient(row_pieces)
    mem.alloc(ext)
    mem.transient(col_pieces)
    mem.free(mid)
    return ext


def _halo_adjoint(g, mem, cb):
    """Memory of :meth:`~cnnmm.layout.InputHalo.adjoint` (columns first, then rows)."""
    mid, _, row_pieces, col_pieces = _halo_buffers(g, cb)
    mem.alloc(mid)
    mem.transient(col_pieces)
    mem.transient(row_pieces)
    mem.free(mid)


class _Tally:
    def __init__(self, size):
        self.words = {ph: np.zeros(size, np.int64) for ph in _PHASES}
        self.msgs = {ph: np.zeros(size, np.int64) for ph in _PHASES}
        self.calls = []

    def add(self, phase, op, p, words, msgs, count, volume):
        """``count`` calls of ``op`` on ``p`` ranks moving ``volume`` words in all (for the time
        model: a broadcast or reduce's whole panels, a collective's received words, a halo's
        pieces), counted as ``words``/``msgs`` received."""
        self.words[phase] += words
        self.msgs[phase] += msgs
        self.calls.append((op, p, volume, count))


def _source(t, g, mem, p, lead, rest, own, phase, keep):
    """A tensor's C panels gathered over a fiber of ``p`` ranks (broadcasts or one allgather).

    Returns the elements retained for later passes (``keep``) beyond the caller's own."""
    total = lead * g.cb * rest
    if p == 1:
        return np.zeros_like(total)
    live = total > 0
    if g.stream:
        t.add(phase, "bcast", p, np.where(live, lead * (g.cb - own) * rest, 0),
              np.where(live, g.npanels * _log2(p), 0), np.where(live, g.npanels, 0), np.where(live, total, 0))
        kept = total if keep else np.zeros_like(total)
        mem.alloc(kept)
        mem.alloc(lead * g.width * rest)  # the panel buffer
        return kept
    t.add(phase, "allgather", p, np.where(live, lead * (g.cb - own) * rest, 0), np.where(live, _log2(p), 0),
          live.astype(np.int64), np.where(live, lead * (g.cb - own) * rest, 0))
    return _allgather_mem(mem, p, lead, total)


def _sink(t, g, mem, p, lead, rest, own, phase):
    """Gradient panels summed over a fiber of ``p`` ranks (reduce per panel, or reduce-scatter);
    allocates the sink and returns a function that frees it and leaves the result."""
    total = lead * g.cb * rest
    live = total > 0
    if g.stream:
        if p > 1:
            t.add(phase, "reduce", p, np.where(live, (p - 1) * lead * own * rest, 0),
                  np.where(live, g.npanels * _log2(p), 0), np.where(live, g.npanels, 0), np.where(live, total, 0))
        buf = lead * g.width * rest
        mem.alloc(lead * own * rest)
        mem.alloc(buf)
        mem.alloc(buf if p > 1 else np.zeros_like(buf))

        def finish():
            mem.free(buf)
            mem.free(buf if p > 1 else np.zeros_like(buf))
        return finish
    mem.alloc(total)
    if p > 1:
        t.add(phase, "reduce_scatter", p, np.where(live, (p - 1) * lead * own * rest, 0),
              np.where(live, _log2(p), 0), live.astype(np.int64), np.where(live, (p - 1) * lead * own * rest, 0))

    def finish():
        if p > 1:
            mem.alloc(total)
            mem.alloc(lead * own * rest)
            mem.free(total)
            mem.free(total)
    return finish


def _halo_words(t, g, adjoint):
    cb = g.in_own
    rows_n, cols_n = (g.row_send, g.col_send) if adjoint else (g.row_recv, g.col_recv)
    nmsg = (g.row_nsend + g.col_nsend) if adjoint else (g.row_nrecv + g.col_nrecv)
    words = g.nb * cb * (rows_n * g.col_own + g.rows * cols_n)
    t.add("halo", "p2p", 2, words, nmsg, nmsg, words)


def rank_costs(spec, dims, algorithm="2d", pass_="fwd", panel=None, saved=None):
    """:class:`RankCosts` of one pass on every rank of the grid ``dims``.

    ``saved`` mirrors the passes' argument: ``None`` for a pass that retains nothing, or the
    set of tiles earlier passes of a training step already retained (``"input"``,
    ``"weight"``, ``"dout"``; empty for its forward pass). Retained tiles count as live memory
    and move nothing; with ``saved`` set, the pass also retains what it gathers.
    """
    from .algorithms import get
    if pass_ not in PASSES:
        raise AlgorithmError(f"unknown pass {pass_!r}: choose one of {', '.join(PASSES)}")
    dims = GridDims(*dims)
    g = _Grid(spec, dims, get(algorithm).stream, panel)
    d, size = dims, dims.size
    retain, have = saved is not None, set(saved or ())
    t = _Tally(size)
    rs = spec.R * spec.S
    hw = g.rows * g.cols
    x_tile, w_tile, dy_tile = g.nb * g.cb * hw, g.kb * g.cb * rs, g.nb * g.kb * g.bp * g.bq
    halo_free = g.row_trivial & g.col_trivial
    held = np.zeros(size, np.int64)   # retained tiles beyond the caller's own shards
    if "input" in have:
        held += x_tile if d.pK > 1 else np.where(halo_free, 0, x_tile)
    if "weight" in have and d.pixel > 1:
        held += w_tile
    if "dout" in have and d.pC > 1:
        held += dy_tile
    mem = _Mem(held)

    def gather_input():
        ext = _halo_forward(g, mem, g.in_own)
        _halo_words(t, g, adjoint=False)
        tile = _source(t, g, mem, d.pK, g.nb, hw, g.in_own, "input", keep=retain)

        def release():
            if g.stream:
                mem.free(g.nb * g.width * hw if d.pK > 1 else 0)   # the panel buffer
            elif not retain:
                mem.free(tile)
            if not (retain and d.pK == 1):                         # else ext is the retained tile
                mem.free(ext)
        return release

    def gather_weights():
        tile = _source(t, g, mem, d.pixel, g.kb, rs, g.w_own, "weights", keep=retain)

        def release():
            if g.stream:
                mem.free(g.kb * g.width * rs if d.pixel > 1 else 0)
            elif not retain:
                mem.free(tile)
        return release

    if pass_ == "fwd":
        release_x = gather_input()
        release_w = gather_weights()
        mem.alloc(dy_tile)                                         # the output tile
        release_x()
        release_w()
        if d.pC > 1:
            live = dy_tile > 0
            own = g.nb * g.k_own * g.bp * g.bq
            t.add("output", "reduce_scatter", d.pC, np.where(live, (d.pC - 1) * own, 0),
                  np.where(live, _log2(d.pC), 0), live.astype(np.int64), np.where(live, (d.pC - 1) * own, 0))
            mem.alloc(dy_tile)                                     # packed copy
            mem.alloc(own)
            mem.free(dy_tile)
            mem.free(dy_tile)
    else:
        dy_alloc = np.zeros(size, np.int64)
        if "dout" not in have:
            live = dy_tile > 0
            if d.pC > 1:
                words = np.where(live, g.nb * (g.kb - g.k_own) * g.bp * g.bq, 0)
                t.add("output", "allgather", d.pC, words, np.where(live, _log2(d.pC), 0), live.astype(np.int64),
                      words)
            dy_alloc = _allgather_mem(mem, d.pC, g.nb, dy_tile)
        if pass_ == "bwd-data":
            release_w = gather_weights() if "weight" not in have else (lambda: None)
            finish = _sink(t, g, mem, d.pK, g.nb, hw, g.in_own, "input")
            if not retain:
                mem.free(dy_alloc)
            release_w()
            finish()
            mem.alloc(g.nb * g.in_own * g.row_own * g.col_own)           # dx
            _halo_adjoint(g, mem, g.in_own)
            _halo_words(t, g, adjoint=True)
            mem.free(g.nb * g.in_own * hw)                          # the extended-tile gradient
        else:
            release_x = gather_input() if "input" not in have else (lambda: None)
            finish = _sink(t, g, mem, d.pixel, g.kb, rs, g.w_own, "weights")
            if not retain:
                mem.free(dy_alloc)
            release_x()
            finish()
    flops = 2 * g.nb * g.kb * g.cb * g.bp * g.bq * rs
    calls = np.where(flops > 0, g.npanels, 0)
    return RankCosts(t.words, t.msgs, flops, calls, mem.peak * spec.itemsize, t.calls)


def predict_rank(spec, dims, coords, algorithm="2d", pass_="fwd", panel=None, saved=None):
    """The :class:`RankCosts` entries of the rank at ``coords`` as plain numbers:
    a namespace with ``words``/``msgs`` dicts, ``total_words``, ``total_msgs``, ``flops``,
    ``peak_bytes``."""
    dims = GridDims(*dims)
    costs = rank_costs(spec, dims, algorithm, pass_, panel, saved)
    rank = int(np.ravel_multi_index(tuple(coords), tuple(dims)))
    words = {ph: int(v[rank]) for ph, v in costs.words.items()}
    msgs = {ph: int(v[rank]) for ph, v in costs.msgs.items()}
    return _RankView(words, msgs, int(costs.flops[rank]), int(costs.peak_bytes[rank]))


@dataclasses.dataclass
class _RankView:
    words: dict
    msgs: dict
    flops: int
    peak_bytes: int

    @property
    def total_words(self):
        return sum(self.words.values())

    @property
    def total_msgs(self):
        return sum(self.msgs.values())


def predict(spec, dims, algorithm="2d", pass_="fwd", panel=None, saved=None, profile=None):
    """Busiest-rank figures: dict of ``words``, ``msgs``, ``flops``, ``peak_bytes`` (each the
    max over ranks) and ``time`` (the max over ranks of the predicted time, seconds)."""
    from .profiles import default_profile
    costs = rank_costs(spec, dims, algorithm, pass_, panel, saved)
    time = (profile or default_profile()).time(costs, spec, pass_)
    return {"words": int(costs.total_words.max()), "msgs": int(costs.total_msgs.max()),
            "flops": int(costs.flops.max()), "peak_bytes": int(costs.peak_bytes.max()),
            "time": float(time.max())}


def words_identity_check(spec, dims):
    """Design note §4.3 identity, for evenly dividing sizes and no halo: forward words of the
    gather algorithm equal ``(In_tile + W_tile + Out_tile) - (|In| + |W| + |Out|)/P``."""
    costs = rank_costs(spec, dims, "3d", "fwd")
    d = GridDims(*dims)
    tiles = (spec.N // d.pN) * (spec.C // d.pC) * (spec.H // d.pH) * (spec.W // d.pW) \
        + (spec.K // d.pK) * (spec.C // d.pC) * spec.R * spec.S \
        + (spec.N // d.pN) * (spec.K // d.pK) * (spec.P // d.pH) * (spec.Q // d.pW)
    owned = sum(spec.sizes().values()) // d.size
    return int(costs.total_words.max()), tiles - owned
