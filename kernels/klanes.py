"""Direct convolution with output channels in the vector lanes (the orientation oneDNN uses).

The GEMM of :mod:`.direct` turned over: ``res[pixel, k] = sum_t A[pixel, t] * B[t, k]``. A
tile of the micro-kernel (:data:`~.ukernel.microkernel_px`) is ``MR_K`` output pixels by
``NV_K`` vectors of output channels: each step broadcasts one input element per pixel, from
an address of its own (``prow[i] + aoff[t]``), and loads ``NV_K`` vectors of the transposed
filter ``B = wt[t, k]``. Pixels can sit anywhere in the source, so there are no junk columns
(:mod:`.direct` computes ``(dw*(S-1))//sw`` of them per output row, 23-40% of the work on
7x7 and 14x14 images) and no stride phases: the source is the input read in place when no
tap reaches outside it, else a zero-padded copy of the block (whole-row copies, also for
strided layers).

The price is the transposed filter, ``K*C*R*S`` elements copied per call, and a transposed
store of the result (:func:`store`); both move square tiles through vector registers
(:data:`~.ukernel.transpose_tile`). The filter's copy still runs at only 1.3-2.4 GB/s on
ResNet-50's largest filters (it is 18% of the call on 7x7 images), so about 200
multiply-adds' time per element is budgeted; the store is 3-7% of the 3x3 layers' time
(conv1, with 64 channels of 112x112 pixels to write, 21%). :func:`cost` puts the
transposition next to the GEMM so that the drivers can compare it with :class:`.direct.Plan`'s
estimate (measurements at :data:`.drivers.KLANES_MARGIN`).

Memory per call: the transposed filter (``C*R*S x K``, K rounded up to ``NV_K`` vectors),
and per block (about ``BLOCK_BYTES``) a padded source copy and the ``pixels x K`` result.
"""

import numpy as np
from numba import njit

from . import threads
from .direct import _odd_lines, _up, pack_slab, transpose
from .ukernel import MR_K, NV_K, VBYTES, lanes, microkernel_px

#: Padded source plus result of one block, aimed at the L2 cache.
BLOCK_BYTES = 1 << 20
#: Reduction steps per micro-kernel call: one call's filter vectors stay in L1.
CHUNK = 128
#: Cost of transposing one filter element, in multiply-adds of the GEMM (:func:`cost`).
TRANSPOSE_MADDS = 200
#: True or False forces this path for every layer wider than 1x1 (tests); None: :func:`cost`.
FORCE = None


def k_pitch(K, itemsize):
    """The transposed filter's row pitch: ``K`` rounded up to whole tiles of output channels."""
    return _up(max(K, 1), NV_K * lanes(itemsize))


def _in_place(x_shape, P, Q, R, S, sh, sw, dh, dw, top, left):
    """Whether every tap of every output pixel reads inside ``x`` (no padded copy needed)."""
    H, W = x_shape[2], x_shape[3]
    return (top <= 0 and left <= 0 and (P - 1) * sh + (R - 1) * dh - top < H
            and (Q - 1) * sw + (S - 1) * dw - left < W)


def blocks(x_shape, K, P, Q, R, S, sh, sw, dh, dw, itemsize, in_place):
    """``(n0, n1, p0, p1)`` blocks of about ``BLOCK_BYTES`` (source copy plus result): several
    whole images, else bands of output rows of one image."""
    N, C = x_shape[0], x_shape[1]
    Kp = k_pitch(K, itemsize)
    Wp = (Q - 1) * sw + (S - 1) * dw + 1
    src_row = 0 if in_place else C * sh * Wp
    per_image = ((0 if in_place else C * ((P - 1) * sh + (R - 1) * dh + 1) * Wp) + P * Q * Kp) * itemsize
    if per_image <= BLOCK_BYTES:
        nb = max(1, min(N, BLOCK_BYTES // max(per_image, 1)))
        nblk = -(-N // nb)
        nb = -(-N // nblk)
        return [(n0, min(N, n0 + nb), 0, P) for n0 in range(0, N, nb)]
    rows = max(1, min(P, BLOCK_BYTES // max((src_row + Q * Kp) * itemsize, 1)))
    nband = -(-P // rows)
    rows = -(-P // nband)
    return [(n, n + 1, p0, min(P, p0 + rows)) for n in range(N) for p0 in range(0, P, rows)]


def cost(x_shape, K, P, Q, R, S, sh, sw, dh, dw, top, left, itemsize):
    """Estimated multiply-adds of :func:`forward`: the GEMM over pixel tiles (K rounded up to
    tiles of output channels) plus the filter's transposition."""
    C = x_shape[1]
    kred = C * R * S
    in_place = _in_place(x_shape, P, Q, R, S, sh, sw, dh, dw, top, left)
    total = 0
    for n0, n1, p0, p1 in blocks(x_shape, K, P, Q, R, S, sh, sw, dh, dw, itemsize, in_place):
        total += _up((n1 - n0) * (p1 - p0) * Q, MR_K)
    return total * k_pitch(K, itemsize) * kred + K * kred * TRANSPOSE_MADDS


@njit(cache=True, nogil=True)
def transpose_filter(k0, k1, wm, kred, wt, Kp):
    """``wt[t*Kp + k] = wm[k*kred + t]`` for output channels ``k0:k1``."""
    transpose(wm, 0, kred, wt, 0, Kp, 0, kred, k0, k1, 0, False)


@njit(cache=True, nogil=True)
def tiles(i0, i1, src, poff, aoff, wt, Kp, res):
    """``res[p*Kp + k] = sum_t src[poff[p] + aoff[t]] * wt[t*Kp + k]`` for the pixels of tiles
    ``i0:i1`` (``MR_K`` pixels each; ``poff`` is padded to whole tiles) and all ``Kp``
    channels."""
    kred = aoff.shape[0]
    item = src.itemsize
    nk = NV_K * (VBYTES // item)
    # Data addresses taken once (see :func:`.direct.stripes`).
    s0, p0, a0, w0, r0 = src.ctypes.data, poff.ctypes.data, aoff.ctypes.data, wt.ctypes.data, res.ctypes.data
    tag = np.empty(0, src.dtype)
    # Chunk and channel tile outermost: their filter vectors (CHUNK x nk) stay in L1 while
    # every pixel tile passes over them.
    for t0 in range(0, kred, CHUNK):
        steps = min(CHUNK, kred - t0)
        for kt in range(0, Kp, nk):
            for it in range(i0, i1):
                microkernel_px(steps, s0, p0 + it * MR_K * 8, a0 + t0 * 8, w0 + (t0 * Kp + kt) * item, Kp,
                               r0 + (it * MR_K * Kp + kt) * item, Kp, 1 if t0 > 0 else 0, tag)


@njit(cache=True, nogil=True)
def store(k0, k1, res, Kp, out, K, P, Q, n0, nb, p0, rows, accumulate):
    """Channels ``k0:k1`` of a block result into the flat C-ordered (N, K, P, Q) ``out``:
    ``res[(i*rows*Q + j)*Kp + k]`` is element ``j`` of the run ``out[n0 + i, k, p0:p0 + rows, :]``."""
    run = rows * Q
    for i in range(nb):
        transpose(res, i * run * Kp, Kp, out, (n0 + i) * K * P * Q + p0 * Q, P * Q, k0, k1, 0, run,
                  accumulate, True)


def _offsets(nb, rows, Q, C, R, S, sh, sw, dh, dw, img, row, chan):
    """Pixel offsets (padded with the last pixel to whole tiles) and tap offsets of a block
    whose images, rows and channels start ``img``, ``row`` and ``chan`` elements apart."""
    i, p, q = np.meshgrid(np.arange(nb), np.arange(rows), np.arange(Q), indexing="ij")
    poff = (i * img + p * (sh * row) + q * sw).ravel().astype(np.int64)
    poff = np.concatenate([poff, np.full(_up(poff.size, MR_K) - poff.size, poff[-1], np.int64)])
    c, r, s = np.meshgrid(np.arange(C), np.arange(R), np.arange(S), indexing="ij")
    return poff, (c * chan + r * (dh * row) + s * dw).ravel().astype(np.int64)


def forward(x, w, P, Q, sh, sw, dh, dw, top, left, out, accumulate):
    """``out (+)= conv(x, w)`` for output size ``(P, Q)`` and first-tap offsets ``top``/``left``
    (may be negative); ``x``, ``w`` (K, C, R, S) and ``out`` are C-contiguous of one dtype and
    none of N, C, K, P, Q is 0 (:func:`.drivers.forward` deals with empty shapes)."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    item = x.dtype.itemsize
    kred = C * R * S
    Kp = k_pitch(K, item)
    wt = np.zeros(kred * Kp, x.dtype)
    threads.run_range(transpose_filter, K, w.reshape(-1), kred, wt, Kp)
    in_place = _in_place(x.shape, P, Q, R, S, sh, sw, dh, dw, top, left)
    Wp = (Q - 1) * sw + (S - 1) * dw + 1
    flat_out = out.reshape(-1)
    res = src = None
    offsets = (None, None)
    for n0, n1, p0, p1 in blocks(x.shape, K, P, Q, R, S, sh, sw, dh, dw, item, in_place):
        nb, rows = n1 - n0, p1 - p0
        if in_place:
            source, base = x.reshape(-1), ((n0 * C * H) + p0 * sh - top) * W - left
            key = (nb, rows)
            if offsets[0] != key:
                offsets = (key, _offsets(nb, rows, Q, C, R, S, sh, sw, dh, dw, C * H * W, W, H * W))
        else:
            Hb = (rows - 1) * sh + (R - 1) * dh + 1
            L = _odd_lines(nb * Hb * Wp, item)
            if src is None:  # the first block is the largest
                src = np.empty(C * L, x.dtype)
            # Rows p0*sh - top + h, columns j - left of x, zero outside: one stride-1 "phase".
            threads.run_range(pack_slab, C, x, n0, n1, p0 * sh, Hb, Wp, L, 1, 1, _ONE_PHASE, top, left, src)
            source, base = src, 0
            key = (nb, rows, L)
            if offsets[0] != key:
                offsets = (key, _offsets(nb, rows, Q, C, R, S, sh, sw, dh, dw, Hb * Wp, Wp, L))
        poff, aoff = offsets[1]
        if base:
            poff = poff + base
        if res is None:
            res = np.empty(poff.size * Kp, x.dtype)
        threads.run_range(tiles, poff.size // MR_K, source, poff, aoff, wt, Kp, res)
        threads.run_range(store, K, res, Kp, flat_out, K, P, Q, n0, nb, p0, rows, 1 if accumulate else 0)


_ONE_PHASE = np.ones(1, np.bool_)


def warmup(dtype):
    """Compile (or load from Numba's cache) this module's kernels for ``dtype``: a padded
    and an in-place source, overwrite and accumulate."""
    x = np.ones((1, 2, 5, 5), dtype)
    w = np.ones((3, 2, 3, 3), dtype)
    out = np.empty((1, 3, 5, 5), dtype)
    forward(x, w, 5, 5, 1, 1, 1, 1, 1, 1, out, False)
    forward(x, w, 3, 3, 1, 1, 1, 1, 0, 0, out, True)
