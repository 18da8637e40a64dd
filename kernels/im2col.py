"""Numba packing kernels: im2col of a block of output pixels and the col2im scatter-add.

A *block* is images ``n0:n1`` and output rows ``p0:p1`` (all ``Q`` columns). Its column
matrix ``cols`` has shape ``(C*R*S, (n1-n0)*(p1-p0)*Q)``: row ``(c*R + r)*S + s`` holds the
input pixels tap ``(r, s)`` of channel ``c`` reads, column ``((n-n0)*(p1-p0) + p-p0)*Q + q``
is output pixel ``(n, p, q)``. Reads outside the input are zeros (padding).

``top``/``left`` are the offsets of output pixel ``(0, 0)``'s first tap; they may be negative
(the backward-data pass uses this kernel with a cropping offset). The bottom and right padding
only matter through ``P`` and ``Q``, which the caller fixes.

The GEMMs stay outside these kernels (numpy ``@``): a BLAS call inside ``@njit`` would link a
second BLAS copy with its own thread pool. Every argument is a C-contiguous array or a Python
int, so each kernel compiles once per dtype.
"""

import numpy as np
from numba import njit

from .ukernel import add_every_other

__all__ = ["im2col", "col2im"]


@njit(cache=True)
def _qrange(off, sw, W, Q):
    """Output columns ``q`` in ``[lo, hi)`` read inside ``[0, W)`` at ``q*sw + off``."""
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    last = W - 1 - off
    hi = last // sw + 1 if last >= 0 else 0
    if hi > Q:
        hi = Q
    if lo > hi:
        lo = hi
    return lo, hi


@njit(cache=True)
def im2col(x, cols, n0, n1, p0, p1, Q, R, S, sh, sw, dh, dw, top, left):
    """Pack block ``(n0:n1, p0:p1)`` of ``x`` (N, C, H, W) into ``cols`` (see module doc)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    rows = p1 - p0
    for c in range(C):
        for r in range(R):
            for s in range(S):
                row = (c * R + r) * S + s
                off = s * dw - left
                lo, hi = _qrange(off, sw, W, Q)
                for i in range(n1 - n0):
                    n = n0 + i
                    for p in range(p0, p1):
                        base = (i * rows + p - p0) * Q
                        ih = p * sh + r * dh - top
                        if ih < 0 or ih >= H:
                            for q in range(Q):
                                cols[row, base + q] = 0
                            continue
                        for q in range(lo):
                            cols[row, base + q] = 0
                        if sw == 1:
                            # Contiguous source: a separate loop lets LLVM vectorise the copy.
                            src = off
                            for q in range(lo, hi):
                                cols[row, base + q] = x[n, c, ih, src + q]
                        else:
                            for q in range(lo, hi):
                                cols[row, base + q] = x[n, c, ih, q * sw + off]
                        for q in range(hi, Q):
                            cols[row, base + q] = 0


@njit(cache=True)
def col2im(cols, x, n0, n1, p0, p1, Q, R, S, sh, sw, dh, dw, top, left):
    """Adjoint of :func:`im2col`: ``x[...] += cols`` scattered; padding taps are dropped.
    ``x`` and ``cols`` are C-contiguous."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    rows = p1 - p0
    # Stride 2: by vectors (x and cols are C-contiguous, so flat offsets are addresses).
    x_addr, c_addr, item, tag = x.ctypes.data, cols.ctypes.data, x.itemsize, np.empty(0, x.dtype)
    ncol = cols.shape[1]
    for c in range(C):
        for r in range(R):
            for s in range(S):
                row = (c * R + r) * S + s
                off = s * dw - left
                lo, hi = _qrange(off, sw, W, Q)
                for i in range(n1 - n0):
                    n = n0 + i
                    for p in range(p0, p1):
                        ih = p * sh + r * dh - top
                        if ih < 0 or ih >= H:
                            continue
                        base = (i * rows + p - p0) * Q
                        if sw == 2:
                            add_every_other(x_addr + (((n * C + c) * H + ih) * W + off) * item,
                                            c_addr + (row * ncol + base) * item, lo, hi, tag)
                        elif sw == 1:
                            for q in range(lo, hi):
                                x[n, c, ih, off + q] += cols[row, base + q]
                        else:
                            for q in range(lo, hi):
                                x[n, c, ih, q * sw + off] += cols[row, base + q]


