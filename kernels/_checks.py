"""Argument checks of the three kernels; every failure is a ``ValueError`` naming the value."""

import numpy as np

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def pair(name, value, minimum):
    """``value`` (an int or a pair of ints, each >= ``minimum``) as a pair of Python ints."""
    vals = (value, value) if _is_int(value) else tuple(value) if np.ndim(value) == 1 else None
    if vals is None or len(vals) != 2 or not all(_is_int(v) for v in vals):
        raise ValueError(f"{name}={value!r}: expected an integer or a pair of integers "
                         f"(height, width)")
    if min(vals) < minimum:
        raise ValueError(f"{name}={value!r}: each entry must be >= {minimum}")
    return int(vals[0]), int(vals[1])


def padding4(value):
    """``(top, bottom, left, right)`` from an int or a 4-sequence of non-negative ints."""
    vals = (value,) * 4 if _is_int(value) else tuple(value) if np.ndim(value) == 1 else None
    if vals is None or len(vals) != 4 or not all(_is_int(v) for v in vals):
        raise ValueError(f"padding={value!r}: expected an integer or four integers "
                         f"(top, bottom, left, right)")
    if min(vals) < 0:
        raise ValueError(f"padding={value!r}: padding must be non-negative")
    return tuple(int(v) for v in vals)


def tensor(name, a, dims="NCHW"):
    """``a`` as a C-contiguous, aligned, writeable 4-D float32/float64 array.

    Copied only when needed. Read-only or misaligned arrays are copied too: Numba would
    compile a separate specialization for them at call time, after :func:`warmup`.
    """
    a = np.asarray(a)
    if a.ndim != 4:
        raise ValueError(f"{name} must be 4-D ({', '.join(dims)}), got shape {a.shape}")
    if a.dtype not in DTYPES:
        raise ValueError(f"{name} has dtype {a.dtype}: only float32 and float64 are supported")
    return np.require(a, requirements=["C", "A", "W"])


def same_dtype(**arrays):
    names = list(arrays)
    dts = [arrays[n].dtype for n in names]
    if any(d != dts[0] for d in dts):
        desc = ", ".join(f"{n} is {d}" for n, d in zip(names, dts))
        raise ValueError(f"dtypes differ ({desc}): cast them to one of float32, float64")
    return dts[0]


def out_size(n, lo, hi, stride, dil, taps):
    """Output length along one axis; 0 when the padded input is shorter than the dilated filter."""
    return max(0, (n + lo + hi - dil * (taps - 1) - 1) // stride + 1)


def hw_pair(name, value):
    vals = tuple(value) if np.ndim(value) == 1 else None
    if vals is None or len(vals) != 2 or not all(_is_int(v) for v in vals) or min(vals) < 0:
        raise ValueError(f"{name}={value!r}: expected two non-negative integers")
    return int(vals[0]), int(vals[1])


def filter_taps(R, S):
    if R < 1 or S < 1:
        raise ValueError(f"filter size R x S = {R} x {S}: both must be >= 1")


def result(out, shape, dtype, accumulate, name):
    """Check ``out``; return ``(work, out)`` where ``work`` is C-contiguous to compute into.

    ``work`` is ``out`` itself unless ``out`` is not C-contiguous and aligned; then it is a copy
    (holding ``out``'s values when accumulating) that the caller copies back.
    """
    shape = tuple(int(v) for v in shape)
    if out is None:
        if accumulate:
            raise ValueError(f"accumulate=True needs out= (the {name} array to add into)")
        return np.empty(shape, dtype), None
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape} for {name}")
    if out.dtype != dtype:
        raise ValueError(f"out has dtype {out.dtype}, expected {dtype} (the inputs' dtype)")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if out.flags.c_contiguous and out.flags.aligned:
        return out, None
    return (np.ascontiguousarray(out) if accumulate else np.empty(shape, dtype)), out
