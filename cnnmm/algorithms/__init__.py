"""Distributed conv2d algorithms, by name, and the named strategies that are grids.

==========  =================================================================================
name        what it is
==========  =================================================================================
``auto``    the planner's choice of algorithm and grid (:mod:`cnnmm.planner`)
``2d``      SUMMA on ``(pN*pH*pW) x pK`` with ``pC = 1``: C panels streamed by broadcast
``2.5d``    SUMMA inside ``c = pC`` channel layers; partial outputs reduce-scattered
``3d``      whole tiles allgathered over the K and pixel fibers, output reduce-scattered
``data``    the 3D algorithm on ``pN = P`` (weights gathered, nothing else moves)
``spatial`` the 3D algorithm on ``pH*pW = P`` (halo exchange and weight gathers)
``filter``  the 3D algorithm on ``pK = P`` (input gathered)
``channel`` the 3D algorithm on ``pC = P`` (output reduce-scattered)
==========  =================================================================================
"""

from ..errors import AlgorithmError, GridError
from ..grid import GridDims
from .gather3d import Gather3D
from .summa import Summa2D, Summa25D

__all__ = ["ALGORITHMS", "STRATEGIES", "NAMES", "get", "resolve"]

ALGORITHMS = {a.name: a for a in (Summa2D(), Summa25D(), Gather3D())}

#: Named strategies: the grid as a function of P (0 = filled by the planner), run by ``3d``.
STRATEGIES = {
    "data": lambda p: GridDims(p, 1, 1, 1, 1),
    "spatial": lambda p: GridDims(1, 0, 0, 1, 1),
    "filter": lambda p: GridDims(1, 1, 1, p, 1),
    "channel": lambda p: GridDims(1, 1, 1, 1, p),
}

NAMES = ("auto",) + tuple(ALGORITHMS) + tuple(STRATEGIES)


def get(name):
    """The algorithm called ``name`` (a strategy name gives the algorithm that runs it);
    :class:`AlgorithmError` naming the choices otherwise."""
    if name in STRATEGIES:
        return ALGORITHMS["3d"]
    try:
        return ALGORITHMS[name]
    except (KeyError, TypeError):
        raise AlgorithmError(f"unknown algorithm {name!r}: choose one of {', '.join(NAMES)}") from None


def resolve(name, grid, spec, nranks, replication=None, profile=None):
    """``(algorithm, GridDims)`` for an algorithm or strategy name and an optional grid.

    ``auto`` lets the planner choose algorithm and grid; a strategy fixes the grid, so giving
    both is an error; an algorithm without a grid gets the planner's grid for it (with
    ``pC = replication`` when given). Raises the same error on every rank for the same arguments.
    """
    from ..planner import plan_layer
    if replication is not None:
        if isinstance(replication, bool) or not isinstance(replication, int) or replication < 1:
            raise GridError(f"replication={replication!r}: must be a positive integer")
        if nranks % replication:
            raise GridError(f"replication c={replication} does not divide the number of ranks {nranks}")
    if name in STRATEGIES:
        if grid is not None or replication is not None:
            raise GridError(f"strategy {name!r} fixes the grid; drop the grid and replication or use "
                            f"algorithm '3d' with them")
        plan = plan_layer(spec, nranks, ["3d"], profile=profile, template=STRATEGIES[name](nranks))
        return ALGORITHMS["3d"], plan.dims
    if name != "auto":
        get(name)
    choices = list(ALGORITHMS) if name == "auto" else [name]
    if grid is None:
        if replication is not None:
            if name == "2d" and replication > 1:
                ALGORITHMS["2d"].check_grid(GridDims(1, 1, 1, 1, replication))
            template = GridDims(0, 0, 0, 0, replication)
            choices = [c for c in choices if not (c == "2.5d" and replication == 1)] or choices
        else:
            template = None
        plan = plan_layer(spec, nranks, choices, profile=profile, template=template)
        return ALGORITHMS[plan.algorithm], plan.dims
    dims = (grid if isinstance(grid, GridDims) else GridDims.parse(grid)).resolve(nranks)
    if replication is not None and dims.pC != replication:
        raise GridError(f"grid {dims} has pC={dims.pC} but replication c={replication} was asked for")
    if name == "auto":
        name = "2d" if dims.pC == 1 else "3d"
    algo = get(name)
    algo.check_grid(dims)
    return algo, dims
