"""Machine profiles: the constants of the time model, measured or taken from public specs.

A profile is JSON::

    {"name": ..., "description": ..., "source": ...,
     "ops": {"bcast": {"2": [alpha_s, beta_s_per_byte], "4": [...]}, "allgather": {...},
             "reduce_scatter": {...}, "reduce": {...}, "p2p": {"2": [...]}},
     "gflops": {"float32": {"fwd": .., "bwd-data": .., "bwd-weight": ..}, "float64": {...}},
     "call_overhead_s": ...}

``ops[op][p]`` is a fit ``T = alpha + beta * bytes`` of one call of ``op`` on a communicator
of ``p`` ranks (``bytes``: the data the model attributes to the call, see
:mod:`cnnmm.cost`); sizes between measured ones are interpolated in ``log2 p`` and larger
ones extrapolated with ``alpha`` growing like ``log2 p``. ``gflops`` is one rank's kernel
rate per pass; ``call_overhead_s`` the fixed cost of one kernel call (Python, packing set-up).

Built-in profiles live next to this file: ``python -m cnnmm plan --profile NAME`` takes a
name or a path. ``python -m cnnmm calibrate`` writes a profile of the machine it runs on.
"""

from __future__ import annotations

import functools
import json
import math
import os

import numpy as np

from ..errors import CnnmmError

__all__ = ["Profile", "load_profile", "default_profile", "builtin_profiles", "OPS"]

OPS = ("bcast", "allgather", "reduce_scatter", "reduce", "p2p")
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = "laptop-2core"


class Profile:
    """Time-model constants (see module docstring)."""

    def __init__(self, data):
        self.data = data
        self.name = data.get("name", "unnamed")
        try:
            self.ops = {op: {int(p): (float(a), float(b)) for p, (a, b) in data["ops"][op].items()} for op in OPS}
            self.gflops = {dt: {ps: float(v) for ps, v in rates.items()} for dt, rates in data["gflops"].items()}
            self.call_overhead = float(data.get("call_overhead_s", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise CnnmmError(f"profile {self.name!r} is malformed ({exc}): see cnnmm.profiles for the format") from None
        for op in OPS:
            if not self.ops[op]:
                raise CnnmmError(f"profile {self.name!r} has no entries for {op!r}")

    def op_constants(self, op, p):
        """``(alpha, beta)`` of one ``op`` call on ``p`` ranks."""
        table = self.ops[op]
        if p in table:
            return table[p]
        sizes = sorted(table)
        if p >= sizes[-1]:
            a, b = table[sizes[-1]]
            grow = max(1.0, math.log2(p) / max(1.0, math.log2(sizes[-1])))
            return a * grow, b
        if p <= sizes[0]:
            return table[sizes[0]]
        hi = next(s for s in sizes if s > p)
        lo = max(s for s in sizes if s < p)
        f = (math.log2(p) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
        return tuple((1 - f) * x + f * y for x, y in zip(table[lo], table[hi]))

    def rate(self, dtype, pass_):
        """Kernel flops per second of one rank."""
        try:
            return self.gflops[dtype][pass_] * 1e9
        except KeyError:
            raise CnnmmError(f"profile {self.name!r} has no kernel rate for {dtype} {pass_}") from None

    def time(self, costs, spec, pass_):
        """Predicted seconds per rank (array) of a :class:`~cnnmm.cost.RankCosts`."""
        seconds = costs.flops / self.rate(spec.dtype, pass_) + costs.kernel_calls * self.call_overhead
        for op, p, volume, count in costs.calls:
            alpha, beta = self.op_constants(op, p)
            seconds = seconds + count * alpha + beta * spec.itemsize * np.asarray(volume, dtype=np.float64)
        return seconds

    def as_dict(self):
        return self.data


def builtin_profiles():
    """Names of the profiles shipped with cnnmm."""
    return sorted(f[:-5] for f in os.listdir(HERE) if f.endswith(".json"))


@functools.lru_cache(maxsize=None)
def _load_builtin(name):
    with open(os.path.join(HERE, name + ".json")) as f:
        return Profile(json.load(f))


def load_profile(name_or_path):
    """A profile from a built-in name or a JSON file path (a :class:`Profile` passes through)."""
    if name_or_path is None:
        return default_profile()
    if isinstance(name_or_path, Profile):
        return name_or_path
    if name_or_path in builtin_profiles():
        return _load_builtin(name_or_path)
    if not os.path.exists(name_or_path):
        raise CnnmmError(f"profile {name_or_path!r} is neither a file nor a built-in profile "
                         f"({', '.join(builtin_profiles())})")
    try:
        with open(name_or_path) as f:
            return Profile(json.load(f))
    except json.JSONDecodeError as exc:
        raise CnnmmError(f"profile file {name_or_path!r} is not valid JSON: {exc}") from None


def default_profile():
    """The built-in profile used when none is given."""
    return _load_builtin(DEFAULT)
