"""Forward, backward-data and backward-weight on a rank's tile, for every algorithm.

Each rank computes the box ``(n, k, c, p, q)`` of :meth:`~cnnmm.layout.ConvLayout.tile`. The
passes differ in which operands are gathered and which partial result is reduced, and over
which fiber (design note §4.3, §5):

============  ====================================  ==========================================
pass          gathered (source)                     reduced (sink)
============  ====================================  ==========================================
forward       input C panels over K, weight C       output K block over C (reduce-scatter)
              panels over the pixel fiber
bwd-data      dOut over C (allgather), weight C     input-gradient C panels over K, then the
              panels over the pixel fiber           halo contributions back to their owners
bwd-weight    dOut over C (allgather), input C      weight-gradient C panels over the pixel
              panels over K                         fiber
============  ====================================  ==========================================

``stream=True`` (2D/2.5D, SUMMA) moves one panel of at most ``panel`` channels at a time by
broadcast or reduce-to-owner, so memory holds panels; ``stream=False`` (3D) gathers whole
tiles with one allgather and reduces with one reduce-scatter, so memory holds whole tiles.

``saved`` (a dict, optional) retains what a pass gathered for later passes of a training
step: forward keeps the input and weight tiles (``"input"``, ``"weight"``), backward-data the
dOut tile (``"dout"``); a later pass that finds a tile there moves nothing for it.
"""

from __future__ import annotations


from ..layout import _size, sub_range
from .panels import (GatherSink, GatherSource, StreamSink, StreamSource, TileSource, allgather_channels,
                     reduce_scatter_channels)

__all__ = ["DEFAULT_PANEL", "forward", "backward_data", "backward_weight", "release"]

#: Default SUMMA panel width in channels: wide enough that GEMMs stay efficient and the Python
#: cost per broadcast stays small next to the compute, narrow enough to bound panel memory.
DEFAULT_PANEL = 128


class _Tile:
    """This rank's tile geometry: ranges, fiber parts and panels."""

    def __init__(self, ctx, stream, panel):
        lay, coords, d = ctx.layout, ctx.coords, ctx.layout.dims
        self.n, self.k, self.c, self.p, self.q = lay.tile(coords)
        self.nb, self.kb, self.cb = _size(self.n), _size(self.k), _size(self.c)
        self.in_parts = [sub_range(self.c, d.pK, i) for i in range(d.pK)]
        self.w_parts = [sub_range(self.c, d.pixel, j) for j in range(d.pixel)]
        self.k_parts = [sub_range(self.k, d.pC, j) for j in range(d.pC)]
        self.in_own = self.in_parts[coords.pK]
        self.w_own = self.w_parts[ctx.grid.pixel_index]
        self.width = panel or DEFAULT_PANEL
        if stream:
            self.panels = lay.c_panels(coords.pC, self.width)
            self.width = max((hi - lo for lo, hi, _, _ in self.panels), default=0)
        else:
            self.panels = [(self.c[0], self.c[1], None, None)] if self.cb else []
            self.width = self.cb
        self.rows, self.cols = ctx.halo.tile_hw
        self.out_shape = (self.nb, self.kb, _size(self.p), _size(self.q))


def _input_source(ctx, t, ext, stream, saved):
    if saved is not None and "input" in saved:
        return saved["input"]
    keep = None
    if stream:
        if saved is not None:
            keep = TileSource(ext if ctx.kfiber.size == 1 else
                              ctx.meter.empty((t.nb, t.cb, t.rows, t.cols), ext.dtype), t.c[0])
        source = StreamSource(ctx.kfiber, ext, t.in_own[0], t.width, ctx.meter, "input", keep)
    else:
        source = GatherSource(ctx.kfiber, ext, t.in_parts, ctx.meter, "input")
    if saved is not None:
        saved["input"] = keep or source
    return source


def _weight_source(ctx, t, w_shard, stream, saved):
    if saved is not None and "weight" in saved:
        return saved["weight"]
    keep = None
    if stream:
        if saved is not None:
            spec = ctx.spec
            keep = TileSource(w_shard if ctx.pixel.size == 1 else
                              ctx.meter.empty((t.kb, t.cb, spec.R, spec.S), w_shard.dtype), t.c[0])
        source = StreamSource(ctx.pixel, w_shard, t.w_own[0], t.width, ctx.meter, "weights", keep)
    else:
        source = GatherSource(ctx.pixel, w_shard, t.w_parts, ctx.meter, "weights")
    if saved is not None:
        saved["weight"] = keep or source
    return source


def _close(meter, source, saved, key):
    """Free a source's buffers unless ``saved`` retains it for a later pass."""
    if saved is None or saved.get(key) is not source:
        source.close(meter)


def _free_ext(meter, ext, x_shard, saved):
    """Free the halo-extended input tile unless it is the shard itself or retained."""
    retained = saved is not None and "input" in saved and saved["input"].tile is ext
    if ext is not None and ext is not x_shard and not retained:
        meter.free(ext)


def _dout_tile(ctx, t, dy_shard, saved):
    """The dOut tile (n, k block, p, q), allgathered along the C fiber or retained."""
    if saved is not None and "dout" in saved:
        return saved["dout"]
    tile = allgather_channels(ctx.cfiber, dy_shard, t.k_parts, ctx.meter, "output")
    if saved is not None:
        saved["dout"] = tile
    return tile


def _free_dout(meter, dy, dy_shard, saved):
    if dy is not dy_shard and (saved is None or saved.get("dout") is not dy):
        meter.free(dy)


def _sink(comm, t, stream, lead, own, parts, rest, meter, dtype, phase):
    """Where gradient panels of a tensor split over ``comm`` along ``parts`` are summed."""
    if stream:
        return StreamSink(comm, (lead, _size(own)) + rest, own[0], t.width, meter, dtype, phase)
    return GatherSink(comm, (lead, t.cb) + rest, t.c[0], parts, meter, dtype, phase)


def forward(ctx, x_shard, w_shard, stream, panel=None, saved=None):
    """This rank's output shard ``(n, own k, p, q)``."""
    from .. import kernels  # imported on first use: planning needs no compiler
    spec, meter = ctx.spec, ctx.meter
    t = _Tile(ctx, stream, panel)
    ext = ctx.halo.forward(x_shard, meter)
    xs = _input_source(ctx, t, ext, stream, saved)
    ws = _weight_source(ctx, t, w_shard, stream, saved)
    out = meter.zeros(t.out_shape, x_shard.dtype)
    for lo, hi, owner_in, owner_w in t.panels:
        xp, wp = xs.panel(lo, hi, owner_in), ws.panel(lo, hi, owner_w)
        if out.size:
            kernels.conv2d_forward(xp, wp, spec.stride, ctx.halo.padding, spec.dilation, out=out, accumulate=True)
    _close(meter, xs, saved, "input")
    _close(meter, ws, saved, "weight")
    _free_ext(meter, ext, x_shard, saved)
    shard = reduce_scatter_channels(ctx.cfiber, out, [(a - t.k[0], b - t.k[0]) for a, b in t.k_parts],
                                    meter, "output")
    if shard is not out:
        meter.free(out)
    return shard


def backward_data(ctx, dy_shard, w_shard, stream, panel=None, saved=None):
    """This rank's input-gradient shard (input layout) from its dOut and weight shards."""
    from .. import kernels  # imported on first use: planning needs no compiler
    spec, meter = ctx.spec, ctx.meter
    t = _Tile(ctx, stream, panel)
    dy = _dout_tile(ctx, t, dy_shard, saved)
    ws = _weight_source(ctx, t, w_shard, stream, saved)
    sink = _sink(ctx.kfiber, t, stream, t.nb, t.in_own, t.in_parts, (t.rows, t.cols), meter, dy_shard.dtype,
                 "input")
    for lo, hi, owner_in, owner_w in t.panels:
        target = sink.target(lo, hi)
        wp = ws.panel(lo, hi, owner_w)
        if target.size and dy.size:
            kernels.conv2d_backward_data(dy, wp, (t.rows, t.cols), spec.stride, ctx.halo.padding, spec.dilation,
                                         out=target, accumulate=True)
        sink.put(lo, hi, owner_in)
    _free_dout(meter, dy, dy_shard, saved)
    _close(meter, ws, saved, "weight")
    ext_grad = sink.result(meter)
    dx = meter.zeros(ctx.layout.box_shape(ctx.layout.input_box(ctx.coords)), dy_shard.dtype)
    ctx.halo.adjoint(ext_grad, dx, meter)
    meter.free(ext_grad)
    return dx


def backward_weight(ctx, x_shard, dy_shard, stream, panel=None, saved=None):
    """This rank's weight-gradient shard (weight layout) from its input and dOut shards."""
    from .. import kernels  # imported on first use: planning needs no compiler
    spec, meter = ctx.spec, ctx.meter
    t = _Tile(ctx, stream, panel)
    dy = _dout_tile(ctx, t, dy_shard, saved)
    ext = None if saved is not None and "input" in saved else ctx.halo.forward(x_shard, meter)
    xs = _input_source(ctx, t, ext, stream, saved)
    sink = _sink(ctx.pixel, t, stream, t.kb, t.w_own, t.w_parts, (spec.R, spec.S), meter, dy_shard.dtype,
                 "weights")
    for lo, hi, owner_in, owner_w in t.panels:
        target = sink.target(lo, hi)
        xp = xs.panel(lo, hi, owner_in)
        if target.size and dy.size and xp.size:
            kernels.conv2d_backward_weight(xp, dy, (spec.R, spec.S), spec.stride, ctx.halo.padding, spec.dilation,
                                           out=target, accumulate=True)
        sink.put(lo, hi, owner_w)
    _free_dout(meter, dy, dy_shard, saved)
    _close(meter, xs, saved, "input")
    _free_ext(meter, ext, x_shard, saved)
    return sink.result(meter)


def release(ctx, saved):
    """Free the tiles a training step retained."""
    for key, item in list(saved.items()):
        array = item.tile if isinstance(item, TileSource) else item
        ctx.meter.free(array)
        del saved[key]
