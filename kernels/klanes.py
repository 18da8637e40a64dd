"""Direct convolution with output channels in the vector lanes (the orientation oneDNN uses).

The GEMM of :mod:`.direct` turned over: ``res[pixel, k] = sum_t A[pixel, t] * B[t, k]``. A
tile of the micro-kernel (:data:`~.ukernel.microkernel_px`) is ``MR_K`` output pixels by
``NV_K`` vectors of output channels: each step broadcasts one input element per pixel, from
an address of its own (``prow[i] + aoff[t]``), and loads ``NV_K`` vectors of the transposed
filter ``B = w[k, t]``. Pixels can sit anywhere in the source, so there are no junk columns
(:mod:`.direct` computes ``(dw*(S-1))//sw`` of them per output row, 23-40% of the work on
7x7 and 14x14 images) and no stride phases: the source is the input read in place when no
tap reaches outside it, else a zero-padded copy of the block (whole-row copies, also for
strided layers).

The price is the transposed filter. :func:`tiles` transposes it one reduction chunk at a
time, just before the chunk's tiles use it, into *panels*: the chunk's ``CHUNK x NV_K*lanes``
block of each channel tile, contiguous (:func:`fill_panels`; :data:`~.ukernel.transpose_tile`
moves square tiles through vector registers). So the filter is read once per block and the
transposed chunk never leaves the caches; a panel holds the B operand of every pixel tile in L1. (A whole
transposed filter of row pitch ``K``, the earlier layout, put a panel's rows 1-2 KiB apart
on a few L1 sets when ``K`` is 256 or 512, and its copy through memory cost 18% of the call
on 7x7 images.) Blocks are large (``BLOCK_BYTES``) because each one transposes the filter
again; the result is transposed back to NCHW by :func:`store` (3-7% of the 3x3 layers'
time; conv1, with 64 channels of 112x112 pixels to write, 21%). :func:`cost` puts the
transpositions next to the GEMM so that the drivers can compare it with
:class:`.direct.Plan`'s estimate (measurements at :data:`.drivers.KLANES_MARGIN`).

Stride-1 backward-data is the forward convolution of ``dy`` with the flipped, transposed
filter (``forward(..., flipped=True)``); its panels gather that filter from ``w`` in place
(:func:`fill_panels_flipped`, a strided gather, by vector gathers since they measured 1.15-1.8x
faster than a loop: calls on ResNet-50's res4/res5 3x3 layers took 2-6% longer with the loop
than with panels transposed from a flipped copy, but making that copy took 8-25% of a call).
:func:`.drivers.backward_data` applies the forward pass's rule to it. Measured against
the direct kernel (one thread, alternating, medians of 9, float64 5): ResNet-50 at batch 8,
3x3 layers, float32 1.06-1.17x, float64 1.02-1.28x; VGG-16 at batch 1, float32 0.95-1.19x,
float64 0.99-1.16x.

Memory per call: per kernel thread, one chunk's panels (``CHUNK x K`` elements, K rounded up
to ``NV_K`` vectors: 256 KiB for K = 512 in float32), and per block the ``pixels x K``
result (about ``BLOCK_BYTES``) and, when some tap reads padding, a zero-padded copy of the
block's input rows (``C`` channels of ``((rows-1)*sh + (R-1)*dh + 1) x ((Q-1)*sw + (S-1)*dw + 1)``
elements per image).
"""

import numpy as np
from numba import njit

from . import threads
from .direct import _odd_lines, _up, pack_slab, transpose
from .ukernel import MR_K, NV_K, VBYTES, gather_stride, keep_alive, lanes, microkernel_px

#: Result of one block: every chunk's tiles add into all of it, so it is sized for L2. Each
#: block transposes the filter again, so blocks are no smaller.
BLOCK_BYTES = 1 << 21
#: Reduction steps per micro-kernel call: a panel (CHUNK x NV_K vectors) stays in L1.
CHUNK = 128
#: Cost of transposing one filter element in :func:`tiles`, in multiply-adds of the GEMM
#: (:func:`cost`). Measured on its own, one thread: 0.45 ns per element from cache, 1.1 ns
#: (float32) to 1.4 ns (float64) from memory (ResNet-50's largest filter, 512 x 4608), where
#: a float32 multiply-add takes about 0.008 ns.
TRANSPOSE_MADDS = 100
#: True or False forces this path for every layer wider than 1x1 (tests); None: :func:`cost`.
FORCE = None


def k_pitch(K, itemsize):
    """The block result's row pitch: ``K`` rounded up to whole tiles of output channels."""
    return _up(max(K, 1), NV_K * lanes(itemsize))


def _in_place(x_shape, P, Q, R, S, sh, sw, dh, dw, top, left):
    """Whether every tap of every output pixel reads inside ``x`` (no padded copy needed)."""
    H, W = x_shape[2], x_shape[3]
    return (top <= 0 and left <= 0 and (P - 1) * sh + (R - 1) * dh - top < H
            and (Q - 1) * sw + (S - 1) * dw - left < W)


def blocks(N, K, P, Q, itemsize):
    """``(n0, n1, p0, p1)`` blocks whose ``pixels x K`` result holds about ``BLOCK_BYTES``:
    several whole images, else bands of output rows of one image. (A chunk's tiles read only
    the chunk's channels of the source, so its copy need not fit in a cache.)"""
    row = Q * k_pitch(K, itemsize) * itemsize
    if P * row <= BLOCK_BYTES:
        nb = max(1, min(N, BLOCK_BYTES // max(P * row, 1)))
        nblk = -(-N // nb)
        nb = -(-N // nblk)
        return [(n0, min(N, n0 + nb), 0, P) for n0 in range(0, N, nb)]
    rows = max(1, min(P, BLOCK_BYTES // max(row, 1)))
    nband = -(-P // rows)
    rows = -(-P // nband)
    return [(n, n + 1, p0, min(P, p0 + rows)) for n in range(N) for p0 in range(0, P, rows)]


def cost(x_shape, K, P, Q, R, S, itemsize):
    """Estimated multiply-adds of :func:`forward`: the GEMM over pixel tiles (K rounded up to
    tiles of output channels) plus the filter's transposition, once per block."""
    C = x_shape[1]
    kred = C * R * S
    pixels = nblocks = 0
    for n0, n1, p0, p1 in blocks(x_shape[0], K, P, Q, itemsize):
        pixels += _up((n1 - n0) * (p1 - p0) * Q, MR_K)
        nblocks += 1
    return (pixels * k_pitch(K, itemsize) + nblocks * K * TRANSPOSE_MADDS) * kred


@njit(cache=True, nogil=True)
def fill_panels(t0, steps, kt0, kt1, wm, kred, K, panels):
    """Chunk ``t0:t0+steps`` of the (K, kred) filter ``wm`` (flat), transposed, for channel tiles
    ``kt0:kt1`` (``nk = NV_K*lanes`` channels each): ``panels[((kt - kt0)*steps + t)*nk + j] =
    w[kt*nk + j, t0 + t]`` for channels below ``K``; the rest of ``panels`` is left as it is."""
    nk = NV_K * (VBYTES // wm.itemsize)
    for kt in range(kt0, kt1):
        k_lo = kt * nk
        transpose(wm, t0, kred, panels, (kt - kt0) * steps * nk - k_lo, nk, 0, steps, k_lo, min(K, k_lo + nk),
                  0, False)


@njit(cache=True, nogil=True)
def fill_panels_flipped(t0, steps, kt0, kt1, wm, RS, C, panels):
    """:func:`fill_panels` for the flipped, transposed filter of a backward-data pass, read from
    the (K, C, R, S) filter ``wm`` (flat) in place: output channel ``c`` (``C`` of them) and
    step ``k*RS + u`` take ``w[k, c, RS - 1 - u]`` (tap ``u`` of ``R*S``, row-major, turned
    around), gathered by vectors (:func:`~.ukernel.gather_stride`)."""
    nk = NV_K * (VBYTES // wm.itemsize)
    w0, p0, item, tag = wm.ctypes.data, panels.ctypes.data, wm.itemsize, np.empty(0, wm.dtype)
    for kt in range(kt0, kt1):
        c_lo = kt * nk
        c_hi = min(C, c_lo + nk)
        for t in range(steps):
            k, u = (t0 + t) // RS, (t0 + t) % RS
            src = (k * C + c_lo) * RS + RS - 1 - u
            dst = ((kt - kt0) * steps + t) * nk
            gather_stride(p0 + dst * item, w0 + src * item, RS, c_hi - c_lo, tag)


@njit(cache=True, nogil=True)
def tiles(u0, u1, by_channel, ntiles, nkt, src, poff, aoff, wm, K, chunk, flip_rs, res):
    """``res[p*Kp + k] = sum_t src[poff[p] + aoff[t]] * w[k, t]`` (``wm`` is the (K, C*R*S)
    filter, flat) for work units ``u0:u1``: channel tiles (``NV_K`` vectors each) over all
    ``ntiles`` pixel tiles when ``by_channel``, else pixel tiles (``MR_K`` pixels each;
    ``poff`` is padded to whole tiles) over all ``nkt`` channel tiles. Channels from ``K`` to
    ``Kp = nkt*NV_K*lanes`` (the row pitch of ``res``) get zeros. ``flip_rs`` > 0: ``wm`` is
    a (C, K, R, S) filter with ``R*S = flip_rs``, used flipped and transposed."""
    kred = aoff.shape[0]
    item = src.itemsize
    nk = NV_K * (VBYTES // item)
    Kp = nkt * nk
    kt0, kt1, it0, it1 = (u0, u1, 0, ntiles) if by_channel else (0, nkt, u0, u1)
    # Panels of channels past K keep these zeros: the transposition writes only k < K.
    panels = np.zeros(chunk * (kt1 - kt0) * nk, src.dtype)
    # Data addresses taken once (see :func:`.direct.stripes`).
    s0, p0, a0, b0, r0 = src.ctypes.data, poff.ctypes.data, aoff.ctypes.data, panels.ctypes.data, res.ctypes.data
    tag = np.empty(0, src.dtype)
    for t0 in range(0, kred, chunk):
        steps = min(chunk, kred - t0)
        if flip_rs:
            fill_panels_flipped(t0, steps, kt0, kt1, wm, flip_rs, K, panels)
        else:
            fill_panels(t0, steps, kt0, kt1, wm, kred, K, panels)
        # Channel tile outermost: its panel stays in L1 while every pixel tile passes over it.
        for kt in range(kt0, kt1):
            b_addr = b0 + (kt - kt0) * steps * nk * item
            for it in range(it0, it1):
                microkernel_px(steps, s0, p0 + it * MR_K * 8, a0 + t0 * 8, b_addr, nk,
                               r0 + (it * MR_K * Kp + kt * nk) * item, Kp, 1 if t0 > 0 else 0, tag)
    keep_alive((panels,))


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


def forward(x, w, P, Q, sh, sw, dh, dw, top, left, out, accumulate, flipped=False):
    """``out (+)= conv(x, w)`` for output size ``(P, Q)`` and first-tap offsets ``top``/``left``
    (may be negative); ``x``, ``w`` (K, C, R, S) and ``out`` are C-contiguous of one dtype and
    none of N, C, K, P, Q is 0 (:func:`.drivers.forward` deals with empty shapes).

    ``flipped``: convolve with the flipped, transposed filter instead (``w`` is (C, K, R, S):
    ``x`` has ``C`` channels, ``out`` ``K``), as a stride-1 backward-data pass does; the
    panels gather it from ``w`` in place (:func:`fill_panels_flipped`)."""
    N, C, H, W = x.shape
    if flipped:
        _, K, R, S = w.shape
    else:
        K, _, R, S = w.shape
    item = x.dtype.itemsize
    Kp = k_pitch(K, item)
    nkt = Kp // (NV_K * lanes(item))
    wm = w.reshape(-1)
    in_place = _in_place(x.shape, P, Q, R, S, sh, sw, dh, dw, top, left)
    Wp = (Q - 1) * sw + (S - 1) * dw + 1
    flat_out = out.reshape(-1)
    res = src = None
    offsets = (None, None)
    for n0, n1, p0, p1 in blocks(N, K, P, Q, item):
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
        # Threads split the channel tiles when there are enough (each transposes only its own
        # panels), else the pixel tiles (each transposes every panel: a small filter).
        ntiles = poff.size // MR_K
        by_channel = nkt >= min(threads.count(), ntiles)
        threads.run_range(tiles, nkt if by_channel else ntiles, by_channel, ntiles, nkt, source, poff, aoff, wm,
                          K, CHUNK, R * S if flipped else 0, res)
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
