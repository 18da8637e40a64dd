"""Pointwise (1x1, stride 1) forward and backward-weight as blocked GEMMs on the micro-kernels
of :mod:`.ukernel`.

Forward
-------
``out[n] = W @ x[n]`` for a (K, C) filter: the GEMM's columns are the ``N*H*W`` pixels of
all images in one column space, its reduction the ``C`` channels. The loops are BLIS's:

* a *column block* of ``NSTRIPES`` stripes (``tile_cols`` pixels each, several images when
  images are small) runs on one kernel thread;
* per chunk of ``KC`` channels, the block's input rows are copied into stripe-major
  micro-panels (``KC x tile_cols`` each), row by row in the order they lie in ``x``, in whole
  vectors (:func:`~.ukernel.copy_tile_row`), with the row two ahead prefetched: the copy
  reads every input element once, in long runs, so it is paid once per ``K`` outputs;
* the filter, packed once per call into ``MR``-row panels per chunk (:func:`pack_filter`),
  passes over each micro-panel in row tiles (``A_BLOCK_BYTES`` of it at a time, from L2)
  while the micro-panel stays in L1;
* a tile inside one image writes its ``MR`` output rows in place (their lines prefetched for
  writing one tile ahead); one that crosses an image or ends the columns (or the last
  ``K % MR`` rows) goes through a tile buffer.

:func:`.drivers.pointwise` takes this path (:func:`use`) where it measured faster than
numpy's BLAS: float32, large images, ``C >= 2*K``; float64, images of 128-255 pixels. One
thread, batch 8, alternating with OpenBLAS: ResNet-50's res2.1x1a' (C = 256, K = 64, 56x56)
1.36-1.55x, res3.1x1a (256 -> 128) 1.04-1.24x; res2.1x1a (64 -> 64) 0.95-1.05x; layers with
``K > C`` (output stores dominate) 0.6-0.9x, 28x28 and smaller images 0.6-0.95x; float64
14x14 1.07-1.21x, other sizes 0.85-1.03x (:data:`F64_PIXELS`).

Memory per call: the packed filter (``K`` rounded up to ``MR``, times ``C``); per thread a
column block's panels (``KC * NSTRIPES * tile_cols`` elements, 384 KiB in float32) and a tile.
Nothing else moves: ``x`` and ``out`` are read and written in place.

Backward-weight
---------------
``dW[k, c] = sum over pixels of dy[n, k, p] * x[n, c, p]`` (:func:`backward_weight`): both
operands hold the reduction (pixels) along their rows, so one of them must be transposed for
an outer-product tile. The tile is :data:`~.ukernel.microkernel_px`'s ``MR_K`` output
channels by ``NV_K`` vectors of input channels (a *stripe*: 64 channels in float32, 32 in
float64, so ResNet's channel counts fill whole stripes):

* the reduction runs in chunks of up to ``WEIGHT_CHUNK`` pixels of all images in one pixel
  space (a chunk crosses images freely: 7x7 images need no per-image calls);
* per chunk and stripe, the stripe's input rows are transposed into one pixel-major panel
  (square register transposes of ``lanes x lanes``, :func:`.direct.transpose`), so ``x`` is
  read once;
* ``dy`` is read in place: ``MR_K`` rows broadcast step by step, each step's pixel offset
  from a table (the image changes inside a chunk), rows past ``K`` clamped to the last;
* a tile's ``MR_K x NV_K`` sums stay in registers for a whole chunk, then are added into
  ``dW`` (prefetched one tile ahead); edge tiles go through a tile buffer.

Transposing ``x`` keeps ``dW`` in its own layout; transposing ``dy`` instead (and ``dW`` at
the end) measured 0.75-1.15x of this, with no rule that picked the winners. Measured on
ResNet-50's stride-1 1x1 layers (one thread, batch 8, alternating, against numpy's OpenBLAS
on the same call): float32 0.97-1.35x (res4.1x1b, K = 1024 on 14x14 images, even), float64
1.0-1.57x; the larger gains where images are large (OpenBLAS ran one GEMM per image) or
``C`` is small. Chunks of 128-512 pixels were within this machine's noise of 1024 or slower
(``K = 64``: 0.6-0.9x), also where ``K`` is large and a chunk of ``dy`` outgrows L2.

Memory per call, backward-weight: per thread one panel (``WEIGHT_CHUNK x NV_K*lanes``
elements, 256 KiB) and a chunk's offset table; ``x``, ``dy`` and ``dW`` are read and written
in place.
"""

import numpy as np
from numba import njit

from . import threads
from .direct import _up, transpose
from .ukernel import (MR, MR_K, NV, NV_K, VBYTES, copy_tile_row, keep_alive, lanes, microkernel_at,
                      microkernel_px, prefetch_read, prefetch_write, tile_cols)

#: Channels per reduction chunk (a micro-panel: KC x tile_cols, in L1 during its row tiles).
KC = 256
#: Stripes per column block (one thread's unit of work; its panels stay in L2).
NSTRIPES = 8
#: Packed filter rows passed over a column block at a time, in bytes of one chunk.
A_BLOCK_BYTES = 1 << 18
#: :func:`use`'s thresholds, float32: images of at least this many pixels ...
MIN_PIXELS = 2048
#: ... and at least this many input channels per output channel.
MIN_C_PER_K = 2
#: float64: images with ``F64_PIXELS[0] <= pixels < F64_PIXELS[1]``, where BLAS gets one thin
#: GEMM per image (smaller images are gathered into one GEMM by the drivers, larger ones run
#: BLAS near its peak). Measured against BLAS (one thread, batch 8, alternating), ResNet-50's
#: 14x14 1x1 layers: forward 1.07-1.21x, backward-data 1.00-1.05x; 7x7 forward 0.85-0.91x,
#: 28x28 0.93-1.03x, 56x56 0.87-0.94x.
F64_PIXELS = (128, 256)
#: True or False forces this path for every pointwise layer (tests); None: :func:`use`.
FORCE = None
#: Backward-weight: pixels per reduction chunk (its panel stays in L2, a tile's sums in
#: registers for the whole chunk).
WEIGHT_CHUNK = 1024
#: :func:`use_weight` takes layers with at least this many input and output channels (the
#: measured range: ResNet-50's 64-2048) ...
WEIGHT_MIN_CHANNELS = 64
#: ... and at most this many output channels: a chunk of ``dy`` (``K x WEIGHT_CHUNK``) is read
#: once per stripe of input channels, from memory when ``K`` is 2048. Measured against BLAS
#: (one thread, batch 8, alternating, two runs), ResNet-50's K = 2048 layers: res5.proj/2
#: float32 0.78-0.81x, float64 0.76-0.93x; res5.1x1b 0.84-0.99x, 0.81-0.88x; at K = 1024
#: (res4.1x1b) 0.93-1.09x, 0.98-1.09x.
WEIGHT_MAX_K = 1024
#: ... or every layer (True), or none (False): for tests. None: :func:`use_weight`.
FORCE_WEIGHT = None


def use(C, K, pixels, itemsize):
    """Whether a pointwise layer with ``pixels`` pixels per image goes here (else to BLAS)."""
    if FORCE is not None:
        return bool(FORCE)
    if itemsize == 4:
        return pixels >= MIN_PIXELS and C >= MIN_C_PER_K * K
    return F64_PIXELS[0] <= pixels < F64_PIXELS[1]


@njit(cache=True, nogil=True)
def pack_filter(t0, t1, wm, K, C, kc, apack):
    """Row tiles ``t0:t1`` of the (K, C) filter ``wm`` (flat) into ``apack``: chunk ``c0`` of
    tile ``kt`` (rows ``kt*MR...``, zero past ``K``) at ``c0*Kp + kt*MR*steps``, step ``t``'s
    ``MR`` elements together (Kp: K rounded up to ``MR``)."""
    Kp = (K + MR - 1) // MR * MR
    for tile in range(t0, t1):
        kt = tile * MR
        for c0 in range(0, C, kc):
            steps = min(kc, C - c0)
            base = c0 * Kp + kt * steps
            for t in range(steps):
                for i in range(MR):
                    k = kt + i
                    apack[base + t * MR + i] = wm[k * C + c0 + t] if k < K else 0


@njit(cache=True, nogil=True)
def column_blocks(b0, b1, xm, apack, K, kc, nstripes, krows, om, accumulate):
    """``om[n, k, p] (+)= sum_c W[k, c] * xm[n, c, p]`` for the columns (``n*HW + p``) of column
    blocks ``b0:b1`` (``nstripes * tile_cols`` columns each); ``apack`` from
    :func:`pack_filter` with chunks of ``kc``; ``krows`` packed rows (a multiple of ``MR``)
    pass over a block at a time."""
    N, C, HW = xm.shape
    item = xm.itemsize
    nr = NV * (VBYTES // item)
    Kp = (K + MR - 1) // MR * MR
    ncols = N * HW
    span = nstripes * nr
    panels = np.zeros(kc * span, xm.dtype)
    tile = np.zeros(MR * nr, xm.dtype)
    aoff = np.arange(kc) * MR
    koff = np.arange(kc) * nr
    xf, of = xm.reshape(-1), om.reshape(-1)
    # Data addresses taken once (see :func:`.direct.stripes`).
    x0, p0_, o0, a0 = xf.ctypes.data, panels.ctypes.data, of.ctypes.data, apack.ctypes.data
    ao0, ko0, t0_ = aoff.ctypes.data, koff.ctypes.data, tile.ctypes.data
    tag = np.empty(0, xm.dtype)
    # Per stripe of a block: its first column's image and pixel, and its width.
    first_n, first_p, width = np.empty(nstripes, np.int64), np.empty(nstripes, np.int64), np.empty(nstripes, np.int64)
    for blk in range(b0, b1):
        col_a = blk * span
        col_b = min(ncols, col_a + span)
        ns = (col_b - col_a + nr - 1) // nr
        for s in range(ns):
            col = col_a + s * nr
            first_n[s] = col // HW
            first_p[s] = col % HW
            width[s] = min(nr, col_b - col)
        n_a, p_a = first_n[0], first_p[0]
        for c0 in range(0, C, kc):
            steps = min(kc, C - c0)
            for t in range(steps):
                if t + 2 < steps:
                    prefetch_read(x0 + ((n_a * C + c0 + t + 2) * HW + p_a) * item, 0, 1,
                                  min(col_b - col_a, HW - p_a) * item)
                for s in range(ns):
                    m, n, p = width[s], first_n[s], first_p[s]
                    dst = (s * kc + t) * nr
                    if m == nr and p + nr <= HW:
                        copy_tile_row(p0_ + dst * item, x0 + ((n * C + c0 + t) * HW + p) * item, tag)
                        continue
                    j = 0
                    while j < m:  # pieces of consecutive images
                        piece = min(m - j, HW - p)
                        src = (n * C + c0 + t) * HW + p
                        for u in range(piece):
                            panels[dst + j + u] = xf[src + u]
                        j += piece
                        n += 1
                        p = 0
                    for u in range(m, nr):
                        panels[dst + u] = 0
            acc = 1 if (c0 > 0 or accumulate) else 0
            for kb in range(0, Kp, krows):
                ke = min(Kp, kb + krows)
                for s in range(ns):
                    m, n, p = width[s], first_n[s], first_p[s]
                    b_addr = p0_ + s * kc * nr * item
                    in_place = m == nr and p + nr <= HW
                    for kt in range(kb, ke, MR):
                        a_addr = a0 + (c0 * Kp + kt * steps) * item
                        if in_place and kt + MR <= K:
                            if kt + 2 * MR <= K:
                                prefetch_write(o0 + ((n * K + kt + MR) * HW + p) * item, HW * item, MR, nr * item)
                            microkernel_at(steps, a_addr, 1, ao0, b_addr, ko0, o0 + ((n * K + kt) * HW + p) * item,
                                           HW, acc, tag)
                            continue
                        microkernel_at(steps, a_addr, 1, ao0, b_addr, ko0, t0_, nr, 0, tag)
                        for i in range(min(MR, K - kt)):
                            nn, pp = n, p
                            for j in range(m):
                                o = (nn * K + kt + i) * HW + pp
                                if acc:
                                    of[o] += tile[i * nr + j]
                                else:
                                    of[o] = tile[i * nr + j]
                                pp += 1
                                if pp == HW:
                                    pp = 0
                                    nn += 1
    keep_alive((panels, tile, aoff, koff, first_n, first_p, width, tag))


def forward(xm, wm, om, accumulate):
    """``om[n] (+)= wm @ xm[n]`` for the C-contiguous (N, C, pixels) input ``xm``, (K, C)
    filter ``wm`` and (N, K, pixels) output ``om`` of one dtype, none of them empty."""
    N, C, HW = xm.shape
    K = wm.shape[0]
    item = xm.dtype.itemsize
    kc = min(KC, C)
    Kp = _up(K, MR)
    apack = np.empty(Kp * C, xm.dtype)
    threads.run_range(pack_filter, Kp // MR, wm.reshape(-1), K, C, kc, apack)
    krows = max(MR, min(Kp, A_BLOCK_BYTES // (kc * item) // MR * MR))
    nblocks = -(-(N * HW) // (NSTRIPES * tile_cols(item)))
    threads.run_range(column_blocks, nblocks, xm, apack, K, kc, NSTRIPES, krows, om, 1 if accumulate else 0)


def use_weight(C, K):
    """Whether a pointwise backward-weight goes here (else to BLAS): ``WEIGHT_MIN_CHANNELS <=
    C`` and ``WEIGHT_MIN_CHANNELS <= K <= WEIGHT_MAX_K``."""
    if FORCE_WEIGHT is not None:
        return bool(FORCE_WEIGHT)
    return min(C, K) >= WEIGHT_MIN_CHANNELS and K <= WEIGHT_MAX_K


@njit(inline="always")
def fill_panel(xm, g0, steps, c0, panel):
    """``panel[t*nr + j] = xm[n, c0 + j, p]`` for the chunk's pixels ``t < steps`` (pixel
    ``g0 + t`` of all images: image ``n``, pixel ``p``) and the stripe's channels below ``C``
    (``nr = NV_K*lanes`` of them; the others are left as they are): one
    :func:`.direct.transpose` per piece of an image, by source rows as klanes' filter panels."""
    N, C, L = xm.shape
    nr = NV_K * (VBYTES // xm.itemsize)
    xf = xm.reshape(-1)
    t = 0
    while t < steps:  # pieces of consecutive images
        n, p = (g0 + t) // L, (g0 + t) % L
        piece = min(steps - t, L - p)
        transpose(xf, n * C * L + p, L, panel, t * nr - c0, nr, 0, piece, c0, min(C, c0 + nr), 0, False)
        t += piece


@njit(cache=True, nogil=True)
def weight_tiles(u0, u1, by_stripe, nstripes, ntiles, xm, dym, chunk, dwm, accumulate):
    """``dwm[k, c] (+)= sum_{n, p} dym[n, k, p] * xm[n, c, p]`` for the stripes ``u0:u1`` and
    every row tile (``by_stripe``), or every stripe and the row tiles ``u0:u1``; chunks of
    ``chunk`` pixels. ``nstripes``: channel stripes (``NV_K*lanes`` channels each), ``ntiles``:
    row tiles (``MR_K`` output channels each)."""
    N, C, L = xm.shape
    K = dym.shape[1]
    item = xm.itemsize
    width = VBYTES // item
    nr = NV_K * width
    s0, s1 = (u0, u1) if by_stripe else (0, nstripes)
    kt0, kt1 = (0, ntiles) if by_stripe else (u0, u1)
    # The panel on a whole cache line: its rows are whole vectors. Channels past C (a last,
    # partial stripe) keep these zeros: the transposition writes only c < C.
    raw = np.zeros(chunk * nr + 64 // item, xm.dtype)
    skip = (-raw.ctypes.data % 64) // item
    panel = raw[skip:skip + chunk * nr]
    aoff = np.empty(chunk, np.int64)
    prow = np.empty(MR_K, np.int64)
    tile = np.zeros(MR_K * nr, xm.dtype)
    tag = np.empty(0, xm.dtype)
    yf, dwf = dym.reshape(-1), dwm.reshape(-1)
    # Data addresses taken once (see :func:`.direct.stripes`).
    y0, dw0, pn0 = yf.ctypes.data, dwf.ctypes.data, panel.ctypes.data
    ao0, pr0, tl0 = aoff.ctypes.data, prow.ctypes.data, tile.ctypes.data
    total = N * L
    for g0 in range(0, total, chunk):
        steps = min(chunk, total - g0)
        fresh = g0 == 0 and not accumulate
        for t in range(steps):
            aoff[t] = (g0 + t) // L * K * L + (g0 + t) % L
        for s in range(s0, s1):
            c0 = s * nr
            m = min(nr, C - c0)
            fill_panel(xm, g0, steps, c0, panel)
            for kt in range(kt0 * MR_K, kt1 * MR_K, MR_K):
                rows = min(MR_K, K - kt)
                for i in range(MR_K):
                    prow[i] = min(kt + i, K - 1) * L
                if m == nr and rows == MR_K:
                    if kt + 2 * MR_K <= kt1 * MR_K and kt + 2 * MR_K <= K:
                        prefetch_write(dw0 + ((kt + MR_K) * C + c0) * item, C * item, MR_K, nr * item)
                    microkernel_px(steps, y0, pr0, ao0, pn0, nr, dw0 + (kt * C + c0) * item, C,
                                   0 if fresh else 1, tag)
                    continue
                microkernel_px(steps, y0, pr0, ao0, pn0, nr, tl0, nr, 0, tag)
                for i in range(rows):
                    for j in range(m):
                        o = (kt + i) * C + c0 + j
                        if fresh:
                            dwf[o] = tile[i * nr + j]
                        else:
                            dwf[o] += tile[i * nr + j]
    keep_alive((raw, panel, aoff, prow, tile, tag))


def backward_weight(xm, dym, dwm, accumulate):
    """``dwm (+)= sum_n dym[n] @ xm[n].T`` for the C-contiguous (N, C, pixels) input ``xm``,
    (N, K, pixels) output gradient ``dym`` and (K, C) result ``dwm`` of one dtype, with
    ``N * pixels``, ``C`` and ``K`` all positive."""
    N, C, L = xm.shape
    K = dym.shape[1]
    item = xm.dtype.itemsize
    chunk = max(1, min(WEIGHT_CHUNK, N * L))
    nstripes, ntiles = -(-C // (NV_K * lanes(item))), -(-K // MR_K)
    # Threads split the stripes (each transposes only its own) when there are enough of them.
    by_stripe = nstripes >= min(threads.count(), ntiles)
    threads.run_range(weight_tiles, nstripes if by_stripe else ntiles, by_stripe, nstripes, ntiles, xm, dym, chunk,
                      dwm, 1 if accumulate else 0)


def warmup(dtype):
    """Compile (or load from Numba's cache) this module's kernels for ``dtype``."""
    lanes_ = lanes(np.dtype(dtype).itemsize)
    xm = np.ones((2, 3, lanes_ + 1), dtype)
    wm = np.ones((MR + 1, 3), dtype)
    om = np.empty((2, MR + 1, lanes_ + 1), dtype)
    forward(xm, wm, om, False)
    backward_weight(xm, om, wm, False)
