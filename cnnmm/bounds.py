"""Communication lower bounds per rank (design note §2.2, §4.7), in words.

* ``indep``: memory-independent, ``3 (G/P)^(2/3) rho^(-1/3) - (|In| + |W| + |Out|)/P``, from
  ``MACs(tile) <= sqrt(rho * I * W * O)``; algorithm-agnostic.
* ``mem``: memory-dependent, ``2 G / (P sqrt(rho M)) - M`` for ``M`` words of memory per rank.
* ``grid``: the least face sum minus owned data over *real* grids ``p_X in [1, X]`` with
  ``prod p_X = P``, with the halo relaxed to ``e (1 - 1/p)``: what any grid of this family moves
  at best, so the ratio to it is the integrality and shape loss of the chosen grid. The
  relaxation takes ``stride x output`` rows (and columns) as the input extent, which holds
  for "same"-padded and exactly tiling layers; for a heavily padded small input it overstates
  the input face and is no longer a bound.

``G = N*K*C*P*Q*R*S`` multiply-adds and ``rho = max(1, R/sh) * max(1, S/sw)`` the im2col reuse.
All are clipped at 0 (a bound of 0 means "nothing is forced", e.g. when P is small).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["rho", "lower_bound_indep", "lower_bound_mem", "lower_bound_grid", "lower_bounds"]


def rho(spec):
    return max(1.0, spec.R / spec.stride[0]) * max(1.0, spec.S / spec.stride[1])


def _owned(spec, nranks):
    return sum(spec.sizes().values()) / nranks


def lower_bound_indep(spec, nranks):
    return max(0.0, 3 * (spec.macs / nranks) ** (2 / 3) * rho(spec) ** (-1 / 3) - _owned(spec, nranks))


def lower_bound_mem(spec, nranks, memory_words):
    if not memory_words or memory_words <= 0:
        return 0.0
    return max(0.0, 2 * spec.macs / (nranks * math.sqrt(rho(spec) * memory_words)) - memory_words)


def _faces(spec, p):
    """Relaxed per-rank face sum for real extents ``p = (pN, pH, pW, pK, pC)`` (arrays ok)."""
    pn, ph, pw, pk, pc = p
    (sh, sw), (xh, xw) = spec.stride, spec.extent
    eh, ew = max(0, xh - sh), max(0, xw - sw)
    rows = sh * spec.P / ph + eh * (1 - 1 / ph)
    cols = sw * spec.Q / pw + ew * (1 - 1 / pw)
    x_tile = spec.N / pn * spec.C / pc * rows * cols
    w_tile = spec.K / pk * spec.C / pc * spec.R * spec.S
    y_tile = spec.N / pn * spec.K / pk * spec.P / ph * spec.Q / pw
    return x_tile + w_tile + y_tile


def _project(v, total, upper):
    """Euclidean projection of ``v`` onto ``{u : sum u = total, 0 <= u <= upper}``."""
    lo, hi = float(np.min(v - upper)) - 1.0, float(np.max(v)) + 1.0
    for _ in range(100):
        tau = (lo + hi) / 2
        if np.clip(v - tau, 0, upper).sum() > total:
            lo = tau
        else:
            hi = tau
    return np.clip(v - (lo + hi) / 2, 0, upper)


def lower_bound_grid(spec, nranks, iterations=400):
    """The grid-relaxed bound: min over real grids of faces minus owned (see module doc).

    The face sum is a posynomial, convex in ``log p``; projected gradient descent on the
    polytope ``sum log p = log P, 0 <= log p_X <= log X`` from a few starts finds its minimum.
    """
    upper = np.log(np.array([spec.N, spec.P, spec.Q, spec.K, spec.C], dtype=float))
    total = math.log(nranks)
    if total > upper.sum() + 1e-12:
        total = upper.sum()  # more ranks than iteration-space points: the extra ranks idle

    def f(u):
        return _faces(spec, np.exp(u))

    probes = np.vstack([np.eye(5), -np.eye(5)]) * 1e-6
    # convex: one start reaches the global minimum; the balanced start converges fastest
    u = _project(np.full(5, total / 5), total, upper)
    value, step = f(u), 0.5
    for _ in range(iterations):
        around = _faces(spec, np.exp(u + probes).T)
        grad = (around[:5] - around[5:]) / 2e-6
        while step > 1e-10:
            cand = _project(u - step * grad / max(1.0, np.abs(grad).max()), total, upper)
            cval = f(cand)
            if cval < value * (1 - 1e-12):
                u, value = cand, cval
                step *= 1.5
                break
            step /= 2
        else:
            break
    best = value
    return max(0.0, best - _owned(spec, nranks))


def lower_bounds(spec, nranks, memory_words=None):
    """``{"indep", "mem", "grid", "alg"}`` with ``alg = max(indep, mem)``."""
    indep = lower_bound_indep(spec, nranks)
    mem = lower_bound_mem(spec, nranks, memory_words)
    return {"indep": indep, "mem": mem, "alg": max(indep, mem), "grid": lower_bound_grid(spec, nranks)}
