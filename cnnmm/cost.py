"""Cost model and planner: words, messages and flops per rank for a layer on a grid.

The model follows the implementation's own block arithmetic (:class:`~cnnmm.layout.ConvLayout`,
:func:`~cnnmm.layout.exchange_plan`), so for every rank the predicted words equal what
:mod:`cnnmm.comm` counts. Time is ``alpha*messages + beta*words + gamma*flops`` on the busiest
rank, with placeholder machine constants until a calibrated profile is given.

The planner (:func:`choose_grid`) enumerates every factorisation of P over
``(pN, pH, pW, pK, pC)`` that the algorithm accepts and returns the least predicted time.
"""

from __future__ import annotations

import dataclasses
import math

from .errors import CnnmmError
from .grid import GridDims, factorizations
from .layout import ConvLayout, _size, exchange_plan, sub_range

__all__ = ["Machine", "RankCost", "predict_rank", "predict", "choose_grid", "lower_bound_words"]


@dataclasses.dataclass(frozen=True)
class Machine:
    """Machine constants: seconds per message, per word (per byte of 4), per flop."""

    alpha: float = 5e-6
    beta: float = 1e-9
    gamma: float = 1.0 / 20e9


@dataclasses.dataclass
class RankCost:
    words: dict
    msgs: dict
    flops: int

    @property
    def total_words(self):
        return sum(self.words.values())

    @property
    def total_msgs(self):
        return sum(self.msgs.values())


def _log2(p):
    return math.ceil(math.log2(p)) if p > 1 else 0


PASSES = ("fwd", "bwd-data", "bwd-weight")


class _Geometry:
    """The block arithmetic of :class:`cnnmm.algorithms.passes._Tile` for one rank, without MPI."""

    def __init__(self, spec, dims, coords, stream, panel):
        from .algorithms.passes import DEFAULT_PANEL
        lay = self.lay = ConvLayout(spec, dims)
        self.n, self.k, self.c, self.p, self.q = lay.tile(coords)
        self.nb, self.kb, self.cb = _size(self.n), _size(self.k), _size(self.c)
        self.bp, self.bq = _size(self.p), _size(self.q)
        self.in_own = _size(sub_range(self.c, dims.pK, coords.pK))
        pixel = (coords.pN * dims.pH + coords.pH) * dims.pW + coords.pW
        self.w_own = _size(sub_range(self.c, dims.pixel, pixel))
        self.k_own = _size(sub_range(self.k, dims.pC, coords.pC))
        if stream:
            self.panels = [(hi - lo, oi == coords.pK, ow == pixel)
                           for lo, hi, oi, ow in lay.c_panels(coords.pC, panel or DEFAULT_PANEL)]
        else:
            self.panels = [(self.cb, None, None)] if self.cb else []
        d = dims
        need_h = [lay.row_window(i)[:2] for i in range(d.pH)]
        need_w = [lay.col_window(j)[:2] for j in range(d.pW)]
        self.halo_h = exchange_plan(coords.pH, [lay.h_range(i) for i in range(d.pH)], need_h)
        self.halo_w = exchange_plan(coords.pW, [lay.w_range(j) for j in range(d.pW)], need_w)
        self.rows, self.cols = _size(need_h[coords.pH]), _size(need_w[coords.pW])
        self.own_rows, self.own_cols = _size(lay.h_range(coords.pH)), _size(lay.w_range(coords.pW))


class _Tally:
    def __init__(self):
        self.words = dict.fromkeys(("halo", "input", "weights", "output"), 0)
        self.msgs = dict.fromkeys(("halo", "input", "weights", "output"), 0)

    def add(self, phase, words, msgs):
        self.words[phase] += words
        self.msgs[phase] += msgs


def _halo(t, g, adjoint=False):
    """Input halo exchange (or its adjoint) of a ``csub``-channel shard."""
    nb, cb = g.nb, g.in_own
    _, send_h, recv_h = g.halo_h
    _, send_w, recv_w = g.halo_w
    rows_in, cols_in = (send_h, send_w) if adjoint else (recv_h, recv_w)
    t.add("halo", sum(nb * cb * _size(ov) * g.own_cols for _, ov in rows_in), len(rows_in))
    t.add("halo", sum(nb * cb * g.rows * _size(ov) for _, ov in cols_in), len(cols_in))


def _fiber(t, g, p, stream, lead, rest, own, phase, reduce):
    """Panels of a tensor split over a fiber of ``p`` ranks, gathered (broadcast per panel, or
    one allgather) or, with ``reduce``, summed (reduce per panel to its owner, or one
    reduce-scatter)."""
    if p == 1:
        return
    if stream:
        for width, mine_in, mine_w in g.panels:
            size = lead * width * rest
            mine = mine_in if phase == "input" else mine_w
            if size:
                received = ((p - 1) * size if mine else 0) if reduce else (0 if mine else size)
                t.add(phase, received, _log2(p))
    elif lead * g.cb * rest:
        t.add(phase, lead * ((p - 1) * own if reduce else g.cb - own) * rest, _log2(p))


def _dout(t, g, pc):
    if pc > 1 and g.nb * g.kb * g.bp * g.bq:
        t.add("output", g.nb * (g.kb - g.k_own) * g.bp * g.bq, _log2(pc))


def predict_rank(spec, dims, coords, algorithm="2d", pass_="fwd", panel=None, saved=()):
    """Predicted :class:`RankCost` of one pass on the rank at ``coords``.

    ``saved`` names tiles retained from earlier passes of a training step (``"input"``,
    ``"weight"``, ``"dout"``), which the pass then does not move.
    """
    from .algorithms import get
    if pass_ not in PASSES:
        raise CnnmmError(f"unknown pass {pass_!r}: choose one of {', '.join(PASSES)}")
    stream = get(algorithm).stream
    dims, coords = GridDims(*dims), GridDims(*coords)
    g = _Geometry(spec, dims, coords, stream, panel)
    t = _Tally()
    rs = spec.R * spec.S
    hw = g.rows * g.cols
    need_input = pass_ == "fwd" or (pass_ == "bwd-weight" and "input" not in saved)
    if need_input:
        _halo(t, g)
        _fiber(t, g, dims.pK, stream, g.nb, hw, g.in_own, "input", reduce=False)
    if pass_ != "fwd" and "dout" not in saved:
        _dout(t, g, dims.pC)
    if pass_ == "fwd" or (pass_ == "bwd-data" and "weight" not in saved):
        _fiber(t, g, dims.pixel, stream, g.kb, rs, g.w_own, "weights", reduce=False)
    if pass_ == "fwd" and dims.pC > 1 and g.nb * g.kb * g.bp * g.bq:
        t.add("output", (dims.pC - 1) * g.nb * g.k_own * g.bp * g.bq, _log2(dims.pC))
    if pass_ == "bwd-data":
        _fiber(t, g, dims.pK, stream, g.nb, hw, g.in_own, "input", reduce=True)
        _halo(t, g, adjoint=True)
    if pass_ == "bwd-weight":
        _fiber(t, g, dims.pixel, stream, g.kb, rs, g.w_own, "weights", reduce=True)
    flops = 2 * g.nb * g.kb * g.cb * g.bp * g.bq * rs
    return RankCost(t.words, t.msgs, flops)


def predict(spec, dims, algorithm="2d", pass_="fwd", panel=None, saved=(), machine=Machine()):
    """Busiest-rank figures over the whole grid: dict of words, msgs, flops, time."""
    dims = GridDims(*dims)
    lay = ConvLayout(spec, dims)
    costs = [predict_rank(spec, dims, c, algorithm, pass_, panel, saved) for c in lay.all_coords()]
    words = max(c.total_words for c in costs)
    msgs = max(c.total_msgs for c in costs)
    flops = max(c.flops for c in costs)
    scale = spec.itemsize / 4
    time = max(machine.alpha * c.total_msgs + machine.beta * scale * c.total_words + machine.gamma * c.flops
               for c in costs)
    return {"words": words, "msgs": msgs, "flops": flops, "time": time}


def lower_bound_words(spec, nranks):
    """Memory-independent lower bound on words per rank (design note §2.2), at least 0."""
    sizes = spec.sizes()
    rho = max(1.0, spec.R / spec.stride[0]) * max(1.0, spec.S / spec.stride[1])
    bound = 3 * (spec.macs / nranks) ** (2 / 3) * rho ** (-1 / 3) - sum(sizes.values()) / nranks
    return max(0.0, bound)


def choose_grid(spec, nranks, algorithm="2d", machine=Machine(), template=None):
    """The grid with the least predicted forward time for ``algorithm`` on ``nranks`` ranks.

    ``template`` (a :class:`GridDims` with 0 for free extents) restricts the search. Ties break
    towards fewer words, then fewer split dimensions.
    """
    from .algorithms import get
    algo = get(algorithm)
    best = None
    for t in factorizations(nranks):
        dims = GridDims(*t)
        if template is not None and any(want and want != got for want, got in zip(template, dims)):
            continue
        try:
            algo.check_grid(dims)
        except CnnmmError:
            continue
        p = predict(spec, dims, algorithm, machine=machine)
        key = (p["time"], p["words"], sum(v > 1 for v in dims))
        if best is None or key < best[0]:
            best = (key, dims)
    if best is None:
        raise CnnmmError(f"no grid of {nranks} ranks fits {template} for algorithm {algorithm!r}")
    return best[1]
