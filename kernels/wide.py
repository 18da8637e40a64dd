"""Numba "wide" packing: im2col whose packed rows are long contiguous copies.

For a band of output rows ``p0:p0+rows`` of image ``n``, the input the band reads is first
copied into a *slab*, split into ``sh*sw`` stride phases: phase ``(a, b)`` holds
``x[n, c, (p0+i)*sh + a - top, j*sw + b - left]`` (zero outside ``x``) at ``[i, j]``, with row
pitch ``Wph = Q + (dw*(S-1))//sw``. In phase coordinates every tap is a stride-1 shift, so row
``(c, r, s)`` of the column matrix is one contiguous run of the slab, starting at
``((r*dh)//sh)*Wph + (s*dw)//sw`` of phase ``((r*dh)%sh, (s*dw)%sw)``. Column
``(p-p0)*Wph + q`` is output pixel ``(p, q)`` for ``q < Q``; the ``Wph - Q`` columns after each
output row are junk that callers drop (forward) or meet with zeros (backward). That costs
``(Wph - Q)/Q`` extra GEMM flops and buys copies that run at memory speed instead of the
short-row copies of :func:`~.im2col.im2col`.

Shapes: ``slab`` is (sh*sw*C, (rows + (dh*(R-1))//sh) * Wph), ``cols`` is
(C*R*S, rows*Wph - (dw*(S-1))//sw); both C-contiguous.
"""

import numpy as np
from numba import njit

from .direct import pack_slab
from .im2col import _qrange

__all__ = ["pack_wide", "unpack_wide"]


@njit(cache=True)
def _phases_used(R, S, sh, sw, dh, dw):
    """Which stride phases some tap reads (e.g. only (0, 0) for a 1x1 filter)."""
    used = np.zeros(sh * sw, np.bool_)
    for r in range(R):
        for s in range(S):
            used[((r * dh) % sh) * sw + (s * dw) % sw] = True
    return used


@njit(cache=True)
def pack_wide(x, n, slab, cols, p0, Wph, R, S, sh, sw, dh, dw, top, left):
    """Fill ``slab`` from image ``n`` of ``x`` (N, C, H, W), then ``cols`` from ``slab``."""
    C = x.shape[1]
    Hb = slab.shape[1] // Wph
    used = _phases_used(R, S, sh, sw, dh, dw)
    # np.int64(0), not 0: a literal would compile pack_slab a second time (Literal[int] arg).
    pack_slab(np.int64(0), C, x, n, n + 1, p0, Hb, Wph, Hb * Wph, sh, sw, used, top, left, slab.reshape(-1))
    ncol = cols.shape[1]
    for c in range(C):
        for r in range(R):
            a, ra = (r * dh) % sh, (r * dh) // sh
            for s in range(S):
                b, sb = (s * dw) % sw, (s * dw) // sw
                srow = (a * sw + b) * C + c
                start = ra * Wph + sb
                row = (c * R + r) * S + s
                for j in range(ncol):
                    cols[row, j] = slab[srow, start + j]


@njit(cache=True)
def unpack_wide(cols, slab, dx, n, p0, Wph, R, S, sh, sw, dh, dw, top, left):
    """Adjoint of :func:`pack_wide`: add ``cols`` into ``slab``, then ``slab`` into ``dx[n]``.

    Junk columns of ``cols`` must be zero (they land on real slab cells). Slab cells outside
    ``dx`` (padding) are dropped.
    """
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    Hb = slab.shape[1] // Wph
    used = _phases_used(R, S, sh, sw, dh, dw)
    L = slab.shape[1]
    for ph in range(sh * sw):
        if used[ph]:
            for c in range(C):
                for j in range(L):
                    slab[ph * C + c, j] = 0
    ncol = cols.shape[1]
    for c in range(C):
        for r in range(R):
            a, ra = (r * dh) % sh, (r * dh) // sh
            for s in range(S):
                b, sb = (s * dw) % sw, (s * dw) // sw
                srow = (a * sw + b) * C + c
                start = ra * Wph + sb
                row = (c * R + r) * S + s
                for j in range(ncol):
                    slab[srow, start + j] += cols[row, j]
    for a in range(sh):
        for b in range(sw):
            ph = a * sw + b
            if not used[ph]:
                continue
            off = b - left
            lo, hi = _qrange(off, sw, W, Wph)
            for c in range(C):
                srow = ph * C + c
                for i in range(Hb):
                    ih = (p0 + i) * sh + a - top
                    if ih < 0 or ih >= H:
                        continue
                    base = i * Wph
                    for j in range(lo, hi):
                        dx[n, c, ih, j * sw + off] += slab[srow, base + j]
