"""The planner: every grid and algorithm for a layer and P, filtered, ranked by predicted time.

Candidates are all ordered factorisations of P over ``(pN, pH, pW, pK, pC)`` for each
algorithm (``2d`` needs pC = 1; when both are candidates, ``2.5d`` is listed for pC > 1 only,
since at pC = 1 it is ``2d``). A candidate is dropped when

* a grid extent exceeds its dimension (empty blocks: ranks that idle),
* a halo would need more than the nearest neighbour (blocks narrower than the halo),
* its predicted peak memory exceeds ``memory`` bytes per rank (the worst pass of a training step).

If nothing survives the first two filters (more ranks than the layer has work for) they are
relaxed. The survivors are ranked by predicted time (:mod:`cnnmm.cost` with a
:class:`~cnnmm.profiles.Profile`); plans within 1% of the fastest count as tied (the model's
times are estimates, its words exact) and are ordered by words, then time, then memory.

To stay fast at large P, every grid is first screened with a closed-form estimate (busiest
blocks, whole-tile gathers, vectorised over all grids), and only the best ``shortlist`` grids
are timed exactly, with every algorithm.

A :class:`Plan` is a small printable value; the executor (:class:`cnnmm.Conv2d`) takes its
algorithm, grid and panel.
"""

from __future__ import annotations

import dataclasses

import numpy as np


from . import cost
from .algorithms import ALGORITHMS
from .errors import CnnmmError
from .grid import AXES, GridDims, factorizations
from .profiles import default_profile

__all__ = ["Plan", "plan_layer", "rank_plans", "TRAIN"]

#: Relative difference of predicted times treated as a tie (broken by words, then time, then memory).
NEAR_TIE = 0.01

#: The passes of a training step with the tiles each finds retained.
TRAIN = (("fwd", set()), ("bwd-data", {"input", "weight"}), ("bwd-weight", {"input", "weight", "dout"}))


@dataclasses.dataclass(frozen=True)
class Plan:
    """A chosen decomposition and what the model predicts for it (busiest rank)."""

    spec: object
    nranks: int
    algorithm: str
    dims: GridDims
    panel: object
    pass_: str
    words: int
    msgs: int
    peak_bytes: int
    time: float
    per_pass: tuple = ()

    @property
    def steps(self):
        """COSMA-style steps: ``['split N/2', 'split K/4', 'replicate over C/2']``."""
        out = []
        for axis, p in zip(AXES, self.dims):
            if p > 1:
                out.append(f"{'reduce over' if axis == 'C' else 'split'} {axis}/{p}")
        return out or ["single rank"]

    def as_dict(self):
        return {"algo": self.algorithm, "grid": self.dims.as_dict(), "P": self.nranks, "pass": self.pass_,
                "panel": self.panel, "words": self.words, "msgs": self.msgs, "peak_bytes": self.peak_bytes,
                "time_s": self.time, "steps": self.steps,
                "per_pass": [dict(zip(("pass", "words", "msgs", "peak_bytes", "time_s"), p)) for p in self.per_pass]}

    def __str__(self):
        return (f"plan {self.algorithm} on {self.dims.describe()}: {', '.join(self.steps)}; {self.pass_} words "
                f"{self.words}, msgs {self.msgs}, peak {self.peak_bytes} B, predicted {self.time * 1e3:.3f} ms")


def _admissible(spec, dims):
    """Size limits and nearest-neighbour halos (see module docstring)."""
    if dims.pN > spec.N or dims.pK > spec.K or dims.pC > spec.C or dims.pH > spec.P or dims.pW > spec.Q:
        return False
    h = cost.spatial_axis(spec.P, spec.H, dims.pH, spec.stride[0], spec.pad[0], spec.extent[0])
    w = cost.spatial_axis(spec.Q, spec.W, dims.pW, spec.stride[1], spec.pad[1], spec.extent[1])
    return h.nearest and w.nearest


def _screen(spec, grids, pass_, profile):
    """Closed-form estimate of each grid's time with whole-tile gathers (busiest blocks,
    interior halos), vectorised over grids: the planner times only the best of these exactly."""
    g = np.array(grids, dtype=float).T
    pn, ph, pw, pk, pc = g
    q = pn * ph * pw
    nb, kb, cb = np.ceil(spec.N / pn), np.ceil(spec.K / pk), np.ceil(spec.C / pc)
    bp, bq = np.ceil(spec.P / ph), np.ceil(spec.Q / pw)
    (sh, sw), (xh, xw) = spec.stride, spec.extent
    rows = np.where(ph > 1, sh * (bp - 1) + xh, spec.H)
    cols = np.where(pw > 1, sw * (bq - 1) + xw, spec.W)
    x_tile, w_tile, y_tile = nb * cb * rows * cols, kb * cb * spec.R * spec.S, nb * kb * bp * bq
    halo = nb * np.ceil(cb / pk) * (rows * cols - np.ceil(spec.H / ph) * np.ceil(spec.W / pw))
    x_move, w_move, y_move = x_tile * (1 - 1 / pk), w_tile * (1 - 1 / q), y_tile * (1 - 1 / pc)
    words = {"fwd": halo + x_move + w_move + y_move, "bwd-data": y_move + w_move + x_move + halo,
             "bwd-weight": y_move + halo + x_move + w_move}
    passes = ("fwd", "bwd-data", "bwd-weight") if pass_ == "train" else (pass_,)
    alpha, beta = profile.op_constants("allgather", 2)
    log = np.ceil(np.log2(np.maximum(pk, 1))) + np.ceil(np.log2(q)) + np.ceil(np.log2(np.maximum(pc, 1)))
    total = np.zeros(len(grids))
    for name in passes:
        total += (2 * nb * kb * cb * bp * bq * spec.R * spec.S) / profile.rate(spec.dtype, name) \
            + beta * spec.itemsize * words[name] + alpha * (log + 2 * (ph > 1) + 2 * (pw > 1))
    return total


def _evaluate(spec, dims, algorithm, pass_, panel, profile):
    """``(time, words, msgs, peak, per_pass)`` of a fwd pass or a retained training step."""
    steps = TRAIN if pass_ == "train" else ((pass_, None),)
    per_pass = []
    for name, saved in steps:
        p = cost.predict(spec, dims, algorithm, name, panel, saved, profile)
        per_pass.append((name, p["words"], p["msgs"], p["peak_bytes"], p["time"]))
    return (sum(p[4] for p in per_pass), sum(p[1] for p in per_pass), sum(p[2] for p in per_pass),
            max(p[3] for p in per_pass), tuple(per_pass))


def rank_plans(spec, nranks, algorithms=None, pass_="fwd", memory=None, profile=None, template=None,
               panel=None, shortlist=24):
    """All admissible plans, best first (see module docstring).

    Parameters
    ----------
    algorithms : sequence of str, optional
        Default: ``2d``, ``2.5d`` and ``3d``.
    pass_ : {"fwd", "bwd-data", "bwd-weight", "train"}
    memory : int, optional
        Bytes per rank the algorithm's buffers may use.
    template : GridDims, optional
        Non-zero entries fix those extents.
    """
    profile = profile or default_profile()
    algorithms = list(algorithms or ("2d", "2.5d", "3d"))
    for name in algorithms:
        if name not in ALGORITHMS:
            raise CnnmmError(f"unknown algorithm {name!r}: choose from {', '.join(ALGORITHMS)}")
    grids = [GridDims(*t) for t in factorizations(nranks)
             if template is None or all(w in (0, g) for w, g in zip(template, t))]
    usable = [g for g in grids if _admissible(spec, g)] or grids
    if any(name == "2d" for name in algorithms) and len(algorithms) == 1:
        usable = [g for g in usable if g.pC == 1]
    estimate = _screen(spec, usable, pass_, profile) if usable else []
    scored = sorted(zip(estimate, range(len(usable))))
    scored = [(t, usable[i]) for t, i in scored]
    plans = []
    for _, dims in scored[:shortlist]:
        for name in algorithms:
            if (name == "2d" and dims.pC != 1) or (name == "2.5d" and dims.pC == 1 and "2d" in algorithms):
                continue
            time, words, msgs, peak, per_pass = _evaluate(spec, dims, name, pass_, panel, profile)
            if memory is not None and peak > memory:
                continue
            plans.append(Plan(spec, nranks, name, dims, panel, pass_, words, msgs, peak, time, per_pass))
    plans.sort(key=lambda p: (p.time, p.words, p.peak_bytes, sum(v > 1 for v in p.dims)))
    # Predicted times carry model error and words are exact: among plans within NEAR_TIE of
    # the fastest, prefer fewer words, then the faster prediction, then less memory.
    near = [p for p in plans if p.time <= plans[0].time * (1 + NEAR_TIE)] if plans else []
    near.sort(key=lambda p: (p.words, p.time, p.peak_bytes))
    return near + plans[len(near):] if near else plans


def plan_layer(spec, nranks, algorithms=None, pass_="fwd", memory=None, profile=None, template=None,
               panel=None):
    """The best :class:`Plan`; :class:`CnnmmError` when no grid fits the memory limit."""
    algorithms = list(algorithms or ("2d", "2.5d", "3d"))
    plans = rank_plans(spec, nranks, algorithms, pass_, memory, profile, template, panel)
    if plans:
        return plans[0]
    if memory is None:
        raise CnnmmError(f"no grid of {nranks} ranks matches {template} for algorithms {', '.join(algorithms)}")
    least = min(p.peak_bytes for p in rank_plans(spec, nranks, algorithms, pass_, None, profile, template, panel))
    raise CnnmmError(f"no grid of {nranks} ranks fits {memory} bytes per rank for {spec}; the leanest needs "
                     f"{least} bytes: raise the limit, use more ranks or a narrower panel")


def replication_sweep(spec, nranks, pass_="fwd", profile=None):
    """Best plan for each replication factor c = pC dividing P (for ``plan --plot``)."""
    out = []
    for c in (d for d in range(1, nranks + 1) if nranks % d == 0 and d <= spec.C):
        plans = rank_plans(spec, nranks, ("2d", "2.5d", "3d"), pass_, None, profile,
                           GridDims(0, 0, 0, 0, c))
        if plans:
            out.append((c, plans[0]))
    return out
