"""The thread pool of the BLAS numpy loaded: find the library, read and set its size.

The kernels multiply with numpy's BLAS, and so do the algorithms and tests; the library's pool
is sized once when it loads. Changing it later needs a call into that very library: this module
finds it among the shared objects of this process (numpy's bundled scipy-openblas exports
``scipy_openblas_set_num_threads64_``; a system OpenBLAS ``openblas_set_num_threads``, MKL
``MKL_Set_Num_Threads``, BLIS ``bli_thread_set_num_threads``), recognising it by its
``cblas_dgemm`` symbol, and calls it through ctypes. Nothing is allocated.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

__all__ = ["library", "get_threads", "set_threads"]

# (symbol prefix, suffix) of cblas_dgemm: ILP64 builds (numpy >= 2 wheels) first.
_NAMINGS = (("scipy_", "64_"), ("", "64_"), ("scipy_", ""), ("", ""))
# Thread-count setters and getters by library family, tried in order.
_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads", "openblas_set_num_threads", "MKL_Set_Num_Threads",
            "bli_thread_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
            "scipy_openblas_get_num_threads", "openblas_get_num_threads", "MKL_Get_Max_Threads",
            "bli_thread_get_num_threads")


class _Lib:
    """The loaded BLAS: its path and thread setter/getter (or None)."""

    def __init__(self, path, handle):
        self.path = path
        self.setter = next((getattr(handle, n) for n in _SETTERS if hasattr(handle, n)), None)
        self.getter = next((getattr(handle, n) for n in _GETTERS if hasattr(handle, n)), None)
        if self.getter is not None:
            self.getter.restype, self.getter.argtypes = ctypes.c_int, []
        if self.setter is not None:
            self.setter.restype, self.setter.argtypes = None, [ctypes.c_int]


def _candidates():
    """Shared libraries that may be the BLAS numpy uses: loaded ones first, then numpy's own."""
    seen = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if "/" in line else ""
                low = os.path.basename(path).lower()
                if path not in seen and ("blas" in low or "mkl" in low or "blis" in low) and ".so" in low:
                    seen.append(path)
    except OSError:  # not Linux: look beside numpy
        pass
    base = os.path.dirname(os.path.dirname(np.__file__))
    for pattern in ("numpy.libs/*blas*", "numpy/.dylibs/*blas*", "numpy.libs/*mkl*"):
        seen += [p for p in sorted(glob.glob(os.path.join(base, pattern))) if p not in seen]
    return seen


def _find():
    np.dot(np.ones((2, 2)), np.ones((2, 2)))  # make sure numpy's BLAS is loaded
    for path in _candidates():
        try:
            handle = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in _NAMINGS:
            if hasattr(handle, f"{prefix}cblas_dgemm{suffix}"):
                return _Lib(path, handle)
    return None


_LIB = _find()


def library():
    """Path of the BLAS library numpy uses, or None when it was not found."""
    return _LIB.path if _LIB is not None else None


def get_threads():
    """Threads of the loaded BLAS's pool, or None when it cannot be asked."""
    if _LIB is None or _LIB.getter is None:
        return None
    return int(_LIB.getter())


def set_threads(n):
    """Resize the loaded BLAS's thread pool to ``n``; False when the library has no setter."""
    if _LIB is None or _LIB.setter is None:
        return False
    _LIB.setter(int(n))
    return True
