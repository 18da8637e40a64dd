"""The convolution layer: sizes, derived output shape, flops, tensor sizes.

A :class:`ConvSpec` is a small immutable value shared by every rank. It knows nothing about
MPI; the grid, the layouts, the algorithms and the cost model all read it.

Conventions (as in ``torch.nn.functional.conv2d``): input ``x`` is NCHW with shape
``(N, C, H, W)``, weights are KCRS with shape ``(K, C, R, S)``, output is ``(N, K, P, Q)``
with ``P, Q`` the output height and width::

    out[n, k, p, q] = sum_{c, r, s} x[n, c, p*sh + r*dh - ph, q*sw + s*dw - pw] * w[k, c, r, s]

where indices outside ``[0, H) x [0, W)`` read zeros (padding).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from .errors import LayerError

__all__ = ["ConvSpec", "DTYPES"]

DTYPES = ("float32", "float64")

_INT_FIELDS = ("N", "C", "K", "H", "W", "R", "S")
_PAIR_FIELDS = {"stride": 1, "pad": 0, "dilation": 1}
_ALIASES = {"padding": "pad", "dil": "dilation"}


def _pair(name, value):
    """Return ``value`` as a pair of ints; accepts an int, a pair, or ``"2x1"``."""
    if isinstance(value, str):
        parts = value.lower().split("x")
        if len(parts) not in (1, 2):
            raise LayerError(f"{name}={value!r}: expected an integer or two joined by 'x' (e.g. 2x1)")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise LayerError(f"{name}={value!r}: expected an integer or two joined by 'x' (e.g. 2x1)") from None
    elif np.ndim(value) == 0:
        nums = [value]
    else:
        nums = list(value)
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in nums):
        raise LayerError(f"{name}={value!r}: expected an integer or a pair of integers")
    return (int(nums[0]), int(nums[1]))


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution layer.

    Parameters
    ----------
    N, C, K, H, W : int
        Batch, input channels, output channels, input height and width.
    R, S : int
        Filter height and width.
    stride, pad, dilation : int or (int, int) or str
        Per-axis (height, width) values; a single int sets both, ``"2x1"`` sets them apart.
    dtype : {"float32", "float64"}
        Element type of all three tensors.

    Raises
    ------
    LayerError
        For non-positive sizes, negative padding, or a dilated filter larger than the padded
        input. The message names the offending value.
    """

    N: int
    C: int
    K: int
    H: int
    W: int
    R: int
    S: int
    stride: tuple = (1, 1)
    pad: tuple = (0, 0)
    dilation: tuple = (1, 1)
    dtype: str = "float64"

    def __post_init__(self):
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise LayerError(f"{name}={value!r}: must be an integer")
            if value < 1:
                raise LayerError(f"{name}={value}: must be a positive integer")
            object.__setattr__(self, name, int(value))
        for name in _PAIR_FIELDS:
            object.__setattr__(self, name, _pair(name, getattr(self, name)))
        if min(self.stride) < 1:
            raise LayerError(f"stride={self.stride}: must be positive")
        if min(self.dilation) < 1:
            raise LayerError(f"dilation={self.dilation}: must be positive")
        if min(self.pad) < 0:
            raise LayerError(f"pad={self.pad}: must be non-negative")
        dtype = np.dtype(self.dtype).name if not isinstance(self.dtype, str) else self.dtype
        if dtype not in DTYPES:
            raise LayerError(f"dtype={self.dtype!r}: must be one of {', '.join(DTYPES)}")
        object.__setattr__(self, "dtype", dtype)
        for axis, size, ext, pad in (("H", self.H, self.extent[0], self.pad[0]),
                                     ("W", self.W, self.extent[1], self.pad[1])):
            if ext > size + 2 * pad:
                raise LayerError(
                    f"filter extent {ext} along {axis} (dilated {'R' if axis == 'H' else 'S'}) is larger "
                    f"than the padded input {size}+2*{pad}={size + 2 * pad}: increase the padding or "
                    f"shrink the filter")

    # --- construction -------------------------------------------------------------------
    @classmethod
    def parse(cls, text, dtype="float64"):
        """Build a spec from ``"N=8,C=64,K=64,H=56,W=56,R=3,S=3,stride=1,pad=1,dilation=1"``.

        ``N, C, K, H, W, R, S`` are required; ``stride``, ``pad`` and ``dilation`` default to
        1, 0 and 1 and accept ``AxB`` to set height and width apart.
        """
        fields = {}
        for item in filter(None, (t.strip() for t in re.split(r"[,\s]+", text.strip()))):
            key, sep, value = item.partition("=")
            key = _ALIASES.get(key.strip(), key.strip())
            if not sep or not value:
                raise LayerError(f"layer item {item!r}: expected key=value")
            if key not in _INT_FIELDS and key not in _PAIR_FIELDS and key != "dtype":
                raise LayerError(f"layer key {key!r} is unknown: use {', '.join(_INT_FIELDS)}, "
                                 f"stride, pad, dilation")
            if key in fields:
                raise LayerError(f"layer key {key!r} is given twice")
            if key in _INT_FIELDS:
                try:
                    fields[key] = int(value)
                except ValueError:
                    raise LayerError(f"{key}={value!r}: must be an integer") from None
            else:
                fields[key] = value
        missing = [k for k in _INT_FIELDS if k not in fields]
        if missing:
            raise LayerError(f"layer {text!r} lacks {', '.join(missing)} (N, C, K, H, W, R, S are required)")
        fields.setdefault("dtype", dtype)
        return cls(**fields)

    def with_dtype(self, dtype):
        return dataclasses.replace(self, dtype=np.dtype(dtype).name)

    # --- derived sizes ------------------------------------------------------------------
    @property
    def extent(self):
        """Dilated filter extent ``(dh*(R-1)+1, dw*(S-1)+1)``."""
        return (self.dilation[0] * (self.R - 1) + 1, self.dilation[1] * (self.S - 1) + 1)

    @property
    def P(self):
        """Output height."""
        return (self.H + 2 * self.pad[0] - self.extent[0]) // self.stride[0] + 1

    @property
    def Q(self):
        """Output width."""
        return (self.W + 2 * self.pad[1] - self.extent[1]) // self.stride[1] + 1

    @property
    def input_shape(self):
        return (self.N, self.C, self.H, self.W)

    @property
    def weight_shape(self):
        return (self.K, self.C, self.R, self.S)

    @property
    def output_shape(self):
        return (self.N, self.K, self.P, self.Q)

    @property
    def macs(self):
        """Multiply-adds of one pass: ``N*K*C*P*Q*R*S``."""
        return self.N * self.K * self.C * self.P * self.Q * self.R * self.S

    @property
    def flops(self):
        """Floating-point operations of one pass (2 per multiply-add)."""
        return 2 * self.macs

    @property
    def itemsize(self):
        return np.dtype(self.dtype).itemsize

    def sizes(self):
        """Element counts of the three tensors as a dict ``{"input", "weight", "output"}``."""
        return {"input": int(np.prod(self.input_shape)), "weight": int(np.prod(self.weight_shape)),
                "output": int(np.prod(self.output_shape))}

    # --- printing -----------------------------------------------------------------------
    def __str__(self):
        def fmt(pair):
            return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"
        return (f"N={self.N},C={self.C},K={self.K},H={self.H},W={self.W},R={self.R},S={self.S},"
                f"stride={fmt(self.stride)},pad={fmt(self.pad)},dilation={fmt(self.dilation)}")

    def as_dict(self):
        d = dataclasses.asdict(self)
        for key in _PAIR_FIELDS:
            d[key] = list(d[key])
        d.update(P=self.P, Q=self.Q)
        return d
