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

from .ukernel import TAP_ENTRIES, add_taps_every_other, copy_every_other, keep_alive

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
    """Pack block ``(n0:n1, p0:p1)`` of ``x`` (N, C, H, W) into ``cols`` (see module doc); both
    C-contiguous (stride 2 along rows copies by vectors, :func:`~.ukernel.copy_every_other`)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    rows = p1 - p0
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
                        base = (i * rows + p - p0) * Q
                        ih = p * sh + r * dh - top
                        if ih < 0 or ih >= H:
                            for q in range(Q):
                                cols[row, base + q] = 0
                            continue
                        if sw == 2:
                            copy_every_other(c_addr + (row * ncol + base) * item,
                                             x_addr + (((n * C + c) * H + ih) * W + off) * item, lo, hi, Q, tag)
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
    if sw == 2:
        _col2im_every_other(cols, x, n0, n1, p0, p1, Q, R, S, sh, dh, dw, top, left)
        return
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
                        ih = p * sh + r * dh - top
                        if ih < 0 or ih >= H:
                            continue
                        base = (i * rows + p - p0) * Q
                        if sw == 1:
                            # Contiguous destination: a separate loop lets LLVM vectorise the add.
                            for q in range(lo, hi):
                                x[n, c, ih, off + q] += cols[row, base + q]
                        else:
                            for q in range(lo, hi):
                                x[n, c, ih, q * sw + off] += cols[row, base + q]


@njit(cache=True)
def _col2im_every_other(cols, x, n0, n1, p0, p1, Q, R, S, sh, dh, dw, top, left):
    """:func:`col2im` for ``sw == 2``, one input row at a time: every tap that lands in it, from
    a table, summed in registers and added into the row once (:func:`~.ukernel.add_taps_every_other`;
    ``x`` and ``cols`` are addressed as C-contiguous)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    rows, ncol = p1 - p0, cols.shape[1]
    x_addr, c_addr, item, tag = x.ctypes.data, cols.ctypes.data, x.itemsize, np.empty(0, x.dtype)
    # Tap column s: output column q lands in input column 2*(q + shift[s]) + odd[s].
    shift, odd = np.empty(S, np.int64), np.empty(S, np.int64)
    lo, hi = np.empty(S, np.int64), np.empty(S, np.int64)
    for s in range(S):
        off = s * dw - left
        lo[s], hi[s] = _qrange(off, 2, W, Q)
        odd[s] = off % 2
        shift[s] = (off - odd[s]) // 2
    table = np.empty(R * S * TAP_ENTRIES, np.int64)
    ih_lo, ih_hi = max(0, p0 * sh - top), min(H, (p1 - 1) * sh + (R - 1) * dh - top + 1)
    for c in range(C):
        for i in range(n1 - n0):
            for ih in range(ih_lo, ih_hi):
                ntaps = 0
                for r in range(R):
                    t = ih + top - r * dh
                    if t < p0 * sh or t % sh != 0 or t // sh >= p1:
                        continue
                    base = (i * rows + t // sh - p0) * Q
                    for s in range(S):
                        if lo[s] < hi[s]:
                            at = ntaps * TAP_ENTRIES
                            table[at] = c_addr + (((c * R + r) * S + s) * ncol + base) * item
                            table[at + 1], table[at + 2], table[at + 3], table[at + 4] = shift[s], lo[s], hi[s], odd[s]
                            ntaps += 1
                if ntaps:
                    add_taps_every_other(x_addr + (((n0 + i) * C + c) * H + ih) * W * item, table.ctypes.data,
                                         ntaps, W, tag)
    keep_alive((table,))
