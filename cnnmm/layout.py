"""Block distributions of the three conv tensors on a grid, the halo, and scatter/gather.

Block rule (as mpi4py-fft, Heat and DistDL): ``n`` items on ``p`` parts, the first ``n % p``
parts get one more; parts beyond ``n`` are empty. Every tensor starts in the *canonical*
layout (design note §4.2), where no element is stored twice:

* input ``x (N, C, H, W)``: block ``(n, c, h, w)`` of the grid's N, C, H, W extents, its C
  range further split ``pK`` ways along the K fiber (rank ``k`` holds sub-block ``k``);
  the H and W blocks split the *input* rows and columns, so a layer's output layout is the next
  stride-1 layer's input layout.
* weights ``w (K, C, R, S)``: block ``(k, c)``, its C range split ``pN*pH*pW`` ways along the
  pixel fiber.
* output ``y (N, K, P, Q)``: block ``(n, k, p, q)`` of the output rows and columns, its K
  range split ``pC`` ways along the C fiber.

Memory per rank is therefore ``(|x| + |w| + |y|) / P`` up to block rounding.

The *tile* a rank computes is the full ``(n, k, c)`` block for its output pixels; the input it
reads is its output block's receptive field, which crosses into the spatial neighbours' rows
and columns (the halo) when pH or pW exceed 1.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

from .grid import GridDims

__all__ = ["block_range", "sub_range", "overlap", "Window", "ConvLayout", "AxisExchange",
           "InputHalo", "BlockDistribution", "exchange_plan"]


def block_range(n, p, i):
    """``(start, stop)`` of part ``i`` of ``n`` items in ``p`` parts; the first ``n % p`` get one more."""
    q, r = divmod(n, p)
    start = i * q + min(i, r)
    return start, start + q + (i < r)


def sub_range(rng, p, i):
    """Part ``i`` of ``p`` of the range ``rng = (start, stop)``."""
    a, b = block_range(rng[1] - rng[0], p, i)
    return rng[0] + a, rng[0] + b


def overlap(a, b):
    """Intersection of two ranges, or ``None`` when empty."""
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else None


def _size(rng):
    return rng[1] - rng[0]


class Window(NamedTuple):
    """The input rows (or columns) an output block reads.

    ``lo:hi`` is the range in input coordinates clipped to the input, ``before`` and ``after``
    the implicit zero padding around it; ``before + (hi - lo) + after`` is the receptive field.
    """

    lo: int
    hi: int
    before: int
    after: int


def _window(out_rng, stride, pad, extent, size):
    if out_rng[1] <= out_rng[0]:
        return Window(0, 0, 0, 0)
    lo = out_rng[0] * stride - pad
    hi = (out_rng[1] - 1) * stride - pad + extent
    clo, chi = min(max(lo, 0), size), min(max(hi, 0), size)
    before = min(max(clo - lo, 0), hi - lo)
    return Window(clo, chi, before, hi - lo - before - (chi - clo))


class ConvLayout:
    """Block arithmetic of a layer on a grid: pure integer arithmetic, no MPI.

    Parameters
    ----------
    spec : ConvSpec
    dims : GridDims
        Resolved grid extents.
    """

    def __init__(self, spec, dims):
        self.spec = spec
        self.dims = GridDims(*dims)

    # --- one-dimensional blocks -------------------------------------------------------
    def n_range(self, i):
        return block_range(self.spec.N, self.dims.pN, i)

    def k_range(self, i):
        return block_range(self.spec.K, self.dims.pK, i)

    def c_range(self, i):
        return block_range(self.spec.C, self.dims.pC, i)

    def p_range(self, i):
        """Output rows of spatial block ``i``."""
        return block_range(self.spec.P, self.dims.pH, i)

    def q_range(self, i):
        """Output columns of spatial block ``i``."""
        return block_range(self.spec.Q, self.dims.pW, i)

    def h_range(self, i):
        """Input rows owned by spatial block ``i``."""
        return block_range(self.spec.H, self.dims.pH, i)

    def w_range(self, i):
        """Input columns owned by spatial block ``i``."""
        return block_range(self.spec.W, self.dims.pW, i)

    def row_window(self, i):
        """Input rows read by the output rows of block ``i`` (halo and padding included)."""
        s = self.spec
        return _window(self.p_range(i), s.stride[0], s.pad[0], s.extent[0], s.H)

    def col_window(self, j):
        s = self.spec
        return _window(self.q_range(j), s.stride[1], s.pad[1], s.extent[1], s.W)

    # --- owned blocks per rank --------------------------------------------------------
    def input_box(self, coords):
        """``(N, C, H, W)`` ranges of the input shard a rank owns."""
        n, h, w, k, c = coords
        return (self.n_range(n), sub_range(self.c_range(c), self.dims.pK, k),
                self.h_range(h), self.w_range(w))

    def weight_box(self, coords):
        """``(K, C, R, S)`` ranges of the weight shard a rank owns."""
        n, h, w, k, c = coords
        pixel = (n * self.dims.pH + h) * self.dims.pW + w
        return (self.k_range(k), sub_range(self.c_range(c), self.dims.pixel, pixel),
                (0, self.spec.R), (0, self.spec.S))

    def output_box(self, coords):
        """``(N, K, P, Q)`` ranges of the output shard a rank owns."""
        n, h, w, k, c = coords
        return (self.n_range(n), sub_range(self.k_range(k), self.dims.pC, c),
                self.p_range(h), self.q_range(w))

    def tile(self, coords):
        """``(N, K, C, P, Q)`` ranges of the iteration-space box a rank computes."""
        n, h, w, k, c = coords
        return (self.n_range(n), self.k_range(k), self.c_range(c), self.p_range(h), self.q_range(w))

    def all_coords(self):
        """Grid coordinates in Cartesian rank order (row-major over N, H, W, K, C)."""
        return [GridDims(*t) for t in itertools.product(*(range(p) for p in self.dims))]

    def c_panels(self, c, width):
        """C panels of layer ``c`` for the SUMMA loop.

        Returns a list of ``(c_lo, c_hi, input_owner, weight_owner)``: the panel's channel
        range, the K-fiber rank that owns its input and the pixel-fiber rank that owns its
        weights. Panels never straddle an owner boundary and are at most ``width`` wide.
        """
        crng = self.c_range(c)
        pk, q = self.dims.pK, self.dims.pixel
        in_parts = [sub_range(crng, pk, i) for i in range(pk)]
        w_parts = [sub_range(crng, q, j) for j in range(q)]
        cuts = sorted({crng[0], crng[1], *(a for a, _ in in_parts), *(a for a, _ in w_parts)})
        panels = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            for lo in range(a, b, max(1, width)):
                hi = min(b, lo + max(1, width))
                owner_in = next(i for i, r in enumerate(in_parts) if r[0] <= lo < r[1])
                owner_w = next(j for j, r in enumerate(w_parts) if r[0] <= lo < r[1])
                panels.append((lo, hi, owner_in, owner_w))
        return panels

    def box_shape(self, box):
        return tuple(_size(r) for r in box)


def exchange_plan(me, owned, needed):
    """``(local, sends, recvs)`` of rank ``me`` when rank i owns ``owned[i]`` and needs
    ``needed[i]``: the range it keeps, and ``(peer, range)`` pieces it sends and receives."""
    sends = [(peer, ov) for peer in range(len(owned)) if peer != me
             for ov in [overlap(owned[me], needed[peer])] if ov]
    recvs = [(peer, ov) for peer in range(len(owned)) if peer != me
             for ov in [overlap(owned[peer], needed[me])] if ov]
    return overlap(owned[me], needed[me]), sends, recvs


class AxisExchange:
    """Redistribution along one array axis inside a 1-D communicator.

    Rank ``i`` of ``comm`` owns indices ``owned[i]`` of that axis and needs ``needed[i]``; every
    rank sends each peer the part of what it owns that the peer needs (nearest neighbours in
    the usual case, farther ranks when blocks are narrower than the halo).
    :meth:`forward` fills the needed range; :meth:`adjoint` sends contributions computed on the
    needed range back to their owners, who add them (the transpose of :meth:`forward`).
    """

    def __init__(self, comm, axis, owned, needed, phase="halo"):
        self.comm, self.axis, self.phase = comm, axis, phase
        self.own, self.need = owned[comm.rank], needed[comm.rank]
        self.local, self.sends, self.recvs = exchange_plan(comm.rank, owned, needed)

    @property
    def trivial(self):
        """True when the rank needs exactly what it owns and nobody needs anything from it."""
        return not self.sends and not self.recvs and self.own == self.need

    def _take(self, array, rng, origin):
        index = [slice(None)] * array.ndim
        index[self.axis] = slice(rng[0] - origin, rng[1] - origin)
        return array[tuple(index)]

    def _pieces(self, array, plan, origin, meter):
        """Counted contiguous copies of ``array``'s pieces named by ``plan``."""
        return [(peer, meter.copy(self._take(array, ov, origin))) for peer, ov in plan]

    def _buffers(self, array, plan, origin, meter):
        return [(peer, meter.empty(self._take(array, ov, origin).shape, array.dtype)) for peer, ov in plan]

    def forward(self, src, dst, meter):
        """Fill ``dst`` (the needed range) from ``src`` (the owned range) of every rank."""
        if self.local:
            self._take(dst, self.local, self.need[0])[...] = self._take(src, self.local, self.own[0])
        sends = self._pieces(src, self.sends, self.own[0], meter)
        recvs = self._buffers(dst, self.recvs, self.need[0], meter)
        self.comm.exchange(sends, recvs, self.phase)
        for (peer, ov), (_, buf) in zip(self.recvs, recvs):
            self._take(dst, ov, self.need[0])[...] = buf
        meter.free(*(b for _, b in sends + recvs))

    def adjoint(self, dst, src, meter):
        """Add contributions on the needed range ``dst`` into the owners' ``src`` (in place)."""
        if self.local:
            self._take(src, self.local, self.own[0])[...] += self._take(dst, self.local, self.need[0])
        sends = self._pieces(dst, self.recvs, self.need[0], meter)
        recvs = self._buffers(src, self.sends, self.own[0], meter)
        self.comm.exchange(sends, recvs, self.phase)
        for (peer, ov), (_, buf) in zip(self.sends, recvs):
            self._take(src, ov, self.own[0])[...] += buf
        meter.free(*(b for _, b in sends + recvs))


class InputHalo:
    """Owns the halo exchange of input shards: rows along the H axis, then columns along W.

    The column phase moves row-extended strips, so corners arrive without diagonal messages.
    Cost per rank: the halo words, ``bN*bc*[(rows)*(cols) - owned]``, in at most
    two messages per split dimension for nearest-neighbour halos; memory: the extended tile.

    Parameters
    ----------
    layout : ConvLayout
    coords : GridDims
        This rank's grid coordinates.
    hcomm, wcomm : Comm
        Counted communicators along the H and W grid dimensions.
    """

    def __init__(self, layout, coords, hcomm, wcomm):
        d = layout.dims
        self.rows = AxisExchange(hcomm, 2, [layout.h_range(i) for i in range(d.pH)],
                                 [layout.row_window(i)[:2] for i in range(d.pH)])
        self.cols = AxisExchange(wcomm, 3, [layout.w_range(j) for j in range(d.pW)],
                                 [layout.col_window(j)[:2] for j in range(d.pW)])
        self.row_window = layout.row_window(coords.pH)
        self.col_window = layout.col_window(coords.pW)

    @property
    def tile_hw(self):
        """``(rows, cols)`` of the halo-extended input tile."""
        return (_size(self.rows.need), _size(self.cols.need))

    @property
    def padding(self):
        """``(top, bottom, left, right)`` zero padding around the extended tile."""
        return (self.row_window.before, self.row_window.after, self.col_window.before, self.col_window.after)

    def forward(self, shard, meter):
        """Return the extended tile (owned shard plus halo) of ``shard`` (N, c, h, w).

        Returns ``shard`` itself when no exchange is needed and nothing is cut away.
        """
        if self.rows.trivial and self.cols.trivial:
            return shard
        nb, cb = shard.shape[:2]
        mid = meter.empty((nb, cb, _size(self.rows.need), shard.shape[3]), shard.dtype)
        self.rows.forward(shard, mid, meter)
        ext = meter.empty((nb, cb, mid.shape[2], _size(self.cols.need)), shard.dtype)
        self.cols.forward(mid, ext, meter)
        meter.free(mid)
        return ext

    def adjoint(self, ext_grad, shard_grad, meter):
        """Add the gradient on the extended tile into ``shard_grad`` (owners add halo parts)."""
        if self.rows.trivial and self.cols.trivial:
            shard_grad += ext_grad
            return shard_grad
        nb, cb = shard_grad.shape[:2]
        mid = meter.zeros((nb, cb, _size(self.rows.need), shard_grad.shape[3]), shard_grad.dtype)
        self.cols.adjoint(ext_grad, mid, meter)
        self.rows.adjoint(mid, shard_grad, meter)
        meter.free(mid)
        return shard_grad


class BlockDistribution:
    """Scatter a global array from a root into per-rank boxes, and gather it back.

    Parameters
    ----------
    global_shape : tuple
    boxes : list
        Per rank of the communicator (in rank order), a tuple of ``(start, stop)`` per axis.
        Boxes must not overlap (the canonical layouts never store an element twice).

    Notes
    -----
    The root packs every rank's box contiguously, so it needs the global array plus one packed
    copy; other ranks receive exactly their box (one message).
    """

    def __init__(self, global_shape, boxes):
        self.global_shape = tuple(global_shape)
        self.boxes = [tuple(tuple(r) for r in box) for box in boxes]
        self.shapes = [tuple(_size(r) for r in box) for box in self.boxes]
        self.counts = [math.prod(s) for s in self.shapes]

    def _slices(self, rank):
        return tuple(slice(a, b) for a, b in self.boxes[rank])

    def scatter(self, comm, array, dtype, root=0, phase="scatter"):
        """Return this rank's box of ``array`` (significant on ``root`` only)."""
        local = np.empty(self.shapes[comm.rank], dtype=dtype)
        packed = None
        if comm.rank == root:
            packed = np.empty(sum(self.counts), dtype=dtype)
            offset = 0
            for rank, count in enumerate(self.counts):
                packed[offset:offset + count] = array[self._slices(rank)].reshape(-1)
                offset += count
        comm.scatterv(packed, self.counts, local, root, phase)
        return local

    def gather(self, comm, local, root=0, phase="gather"):
        """Assemble the global array on ``root`` (``None`` elsewhere)."""
        local = np.ascontiguousarray(local)
        packed = np.empty(sum(self.counts), dtype=local.dtype) if comm.rank == root else None
        comm.gatherv(local, packed, self.counts, root, phase)
        if comm.rank != root:
            return None
        out = np.empty(self.global_shape, dtype=local.dtype)
        offset = 0
        for rank, count in enumerate(self.counts):
            out[self._slices(rank)] = packed[offset:offset + count].reshape(self.shapes[rank])
            offset += count
        return out
