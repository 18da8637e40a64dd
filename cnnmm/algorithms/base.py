"""Pieces every distributed algorithm shares: the per-layer context and the algorithm interface."""

from __future__ import annotations

from ..comm import Comm, Ledger
from ..errors import GridError
from ..layout import ConvLayout, InputHalo
from ..memory import MemoryMeter
from . import passes

__all__ = ["Context", "Algorithm", "require_pc_one"]


class Context:
    """Everything a rank needs to run one layer on one grid.

    Attributes
    ----------
    spec, grid, layout, coords
        The layer, the :class:`~cnnmm.grid.ProcessGrid`, its :class:`~cnnmm.layout.ConvLayout`
        and this rank's coordinates.
    world, pixel, kfiber, cfiber : Comm
        Counted communicators (all sharing :attr:`ledger`).
    halo : InputHalo
        The input halo exchange of this rank.
    meter : MemoryMeter
        Buffer accounting for ``peak_bytes``.
    """

    def __init__(self, spec, grid, ledger=None):
        self.spec, self.grid = spec, grid
        self.layout = ConvLayout(spec, grid.dims)
        self.coords = grid.coords
        self.ledger = ledger if ledger is not None else Ledger()
        self.meter = MemoryMeter()
        self.world = Comm(grid.cart, self.ledger)
        self.pixel = self.world.sub(grid.pixel)
        self.kfiber = self.world.sub(grid.kfiber)
        self.cfiber = self.world.sub(grid.cfiber)
        self.halo = InputHalo(self.layout, self.coords, self.world.sub(grid.axis["H"]),
                              self.world.sub(grid.axis["W"]))


class Algorithm:
    """A distributed conv algorithm: a name, the grids it accepts, and how tiles move.

    ``stream`` selects SUMMA-style panel streaming (True) or whole-tile gathers (False); the
    passes themselves live in :mod:`cnnmm.algorithms.passes`. ``options`` holds ``panel``
    (channels per panel) and ``saved`` (a dict of tiles retained between passes, or None).
    """

    name = ""
    summary = ""
    stream = True

    def check_grid(self, dims):
        """Raise :class:`GridError` if ``dims`` is not a grid this algorithm runs on."""

    def forward(self, ctx, x_shard, w_shard, options):
        return passes.forward(ctx, x_shard, w_shard, self.stream, options.get("panel"), options.get("saved"))

    def backward_data(self, ctx, dy_shard, w_shard, options):
        return passes.backward_data(ctx, dy_shard, w_shard, self.stream, options.get("panel"),
                                    options.get("saved"))

    def backward_weight(self, ctx, x_shard, dy_shard, options):
        return passes.backward_weight(ctx, x_shard, dy_shard, self.stream, options.get("panel"),
                                      options.get("saved"))

    def __repr__(self):
        return f"<algorithm {self.name}>"


def require_pc_one(name, dims):
    if dims.pC != 1:
        raise GridError(f"algorithm {name!r} needs pC=1 but the grid has pC={dims.pC}: use '2.5d' or '3d' "
                        f"to split C, or a grid with pC=1")
