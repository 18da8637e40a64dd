"""Moving channel panels of a tensor split along axis 1 over a fiber.

In the canonical layouts every operand a rank needs is split along its channel axis (axis 1)
over one fiber: the input's C block over the K fiber, the weights' C block over the pixel
fiber, the output's K block over the C fiber. Member ``j`` of the fiber holds channels
``parts[j]`` of the block the whole fiber shares; every other axis is identical across members.

*Sources* hand the passes a panel of channels ``lo:hi`` of the whole block:

* :class:`StreamSource` (SUMMA): the panel's owner broadcasts it; memory one panel buffer.
* :class:`GatherSource` (3D): one allgather of the whole block up front; memory the block.
* :class:`TileSource`: a block already at hand (retained from an earlier pass); no traffic.

*Sinks* take per-panel partial sums and leave each member the sum of its own channels:

* :class:`StreamSink` (SUMMA): each panel is reduced to its owner; memory one panel buffer.
* :class:`GatherSink` (3D): panels accumulate into the whole block, reduce-scattered at the end.
"""

from __future__ import annotations

import numpy as np

__all__ = ["allgather_channels", "reduce_scatter_channels", "StreamSource", "GatherSource", "TileSource",
           "StreamSink", "GatherSink"]


def _rest(shape):
    return int(np.prod(shape[2:], dtype=np.int64))


def allgather_channels(comm, local, parts, meter, phase):
    """The whole block ``(n, sum of parts, ...)`` from every member's ``local`` part.

    Words received: the block minus the own part. Memory: the block, plus a flat receive
    buffer of the same size while it is rearranged (skipped when axis 0 has length <= 1).
    """
    lead, rest = local.shape[0], _rest(local.shape)
    widths = [b - a for a, b in parts]
    shape = (lead, sum(widths)) + local.shape[2:]
    if comm.size == 1:
        return local
    counts = [lead * w * rest for w in widths]
    if lead <= 1:
        tile = meter.empty(shape, local.dtype)
        comm.allgatherv(local, tile, counts, phase)
        return tile
    flat = meter.empty(sum(counts), local.dtype)
    comm.allgatherv(local, flat, counts, phase)
    tile = meter.empty(shape, local.dtype)
    offset, c = 0, 0
    for w, count in zip(widths, counts):
        tile[:, c:c + w] = flat[offset:offset + count].reshape((lead, w) + local.shape[2:])
        offset, c = offset + count, c + w
    meter.free(flat)
    return tile


def reduce_scatter_channels(comm, block, parts, meter, phase):
    """Sum ``block (n, channels, ...)`` over members; member j keeps channels ``parts[j]``.

    ``parts`` are relative to the block's first channel. Words received: ``(p - 1)`` times the
    own part. Memory: one packed copy of the block and the own part.
    """
    if comm.size == 1:
        return block
    lead = block.shape[0]
    packed = meter.empty(block.size, block.dtype)
    offset = 0
    for a, b in parts:
        packed[offset:offset + block[:, a:b].size] = block[:, a:b].reshape(-1)
        offset += block[:, a:b].size
    a, b = parts[comm.rank]
    own = meter.empty((lead, b - a) + block.shape[2:], block.dtype)
    comm.reduce_scatter(packed, own, [lead * (hi - lo) * _rest(block.shape) for lo, hi in parts], phase)
    meter.free(packed)
    return own


class TileSource:
    """Panels of a whole block at hand; ``c0`` is the block's first channel."""

    def __init__(self, tile, c0):
        self.tile, self.c0 = tile, c0

    def panel(self, lo, hi, owner):
        return self.tile[:, lo - self.c0:hi - self.c0]

    def close(self, meter):
        pass


class GatherSource(TileSource):
    """Allgathers the whole block along the fiber once; then serves panels from it."""

    def __init__(self, comm, local, parts, meter, phase):
        super().__init__(allgather_channels(comm, local, parts, meter, phase), parts[0][0])
        self.owned = self.tile is local

    def close(self, meter):
        if not self.owned:
            meter.free(self.tile)


class StreamSource:
    """Broadcasts each panel from its owner (SUMMA). ``local`` is this member's part, which
    starts at channel ``c0``; ``width`` bounds the panel width (sizes the one buffer)."""

    def __init__(self, comm, local, c0, width, meter, phase, keep=None):
        self.comm, self.local, self.c0, self.phase = comm, local, c0, phase
        self.buf = None
        if comm.size > 1:
            self.buf = meter.empty(local.shape[0] * width * _rest(local.shape), local.dtype)
        self.keep = keep  # optional (TileSource-like) block to record every panel into

    def panel(self, lo, hi, owner):
        comm, local = self.comm, self.local
        if comm.size == 1:
            view = local[:, lo - self.c0:hi - self.c0]
        else:
            shape = (local.shape[0], hi - lo) + local.shape[2:]
            view = self.buf[:int(np.prod(shape))].reshape(shape)
            if comm.rank == owner:
                view[...] = local[:, lo - self.c0:hi - self.c0]
            comm.bcast(view, owner, self.phase)
        if self.keep is not None:
            self.keep.panel(lo, hi, owner)[...] = view
        return view

    def close(self, meter):
        meter.free(self.buf)


class GatherSink:
    """Accumulates panels into the whole block; :meth:`result` reduce-scatters it."""

    def __init__(self, comm, shape, c0, parts, meter, dtype, phase):
        self.comm, self.c0, self.phase = comm, c0, phase
        self.parts = [(a - c0, b - c0) for a, b in parts]
        self.block = meter.zeros(shape, dtype)

    def target(self, lo, hi):
        """Where to accumulate the partial sum of channels ``lo:hi`` (may be non-contiguous)."""
        return self.block[:, lo - self.c0:hi - self.c0]

    def put(self, lo, hi, owner):
        pass

    def result(self, meter):
        own = reduce_scatter_channels(self.comm, self.block, self.parts, meter, self.phase)
        if own is not self.block:
            meter.free(self.block)
        return own


class StreamSink:
    """Reduces each panel's partial sum to the panel's owner, who stores it in its own part
    ``(n, own channels, ...)`` starting at channel ``c0``."""

    def __init__(self, comm, own_shape, c0, width, meter, dtype, phase):
        self.comm, self.c0, self.phase = comm, c0, phase
        self.own = meter.zeros(own_shape, dtype)
        self.shape_rest = own_shape[2:]
        self.lead = own_shape[0]
        self.buf = meter.zeros(self.lead * width * int(np.prod(own_shape[2:], dtype=np.int64)), dtype)
        self.recv = meter.empty(self.buf.size, dtype) if comm.size > 1 else None
        self._view = None

    def target(self, lo, hi):
        shape = (self.lead, hi - lo) + self.shape_rest
        self._view = self.buf[:int(np.prod(shape))].reshape(shape)
        self._view[...] = 0
        return self._view

    def put(self, lo, hi, owner):
        view = self._view
        if self.comm.size == 1:
            self.own[:, lo - self.c0:hi - self.c0] = view
            return
        recv = self.recv[:view.size].reshape(view.shape)
        self.comm.reduce(view, recv, owner, self.phase)
        if self.comm.rank == owner:
            self.own[:, lo - self.c0:hi - self.c0] = recv

    def result(self, meter):
        meter.free(self.buf, self.recv)
        return self.own
