"""Block drivers: the choice between the direct kernels of :mod:`.direct` and :mod:`.klanes`
(filters wider than 1x1; :func:`use_direct`, :func:`use_klanes`, :func:`use_direct_weight`),
the blocked GEMMs of :mod:`.pointwise` (1x1 stride-1 layers: some forwards,
:func:`.pointwise.use`; most backward-weights, :func:`.pointwise.use_weight`)
and, for the rest, Numba packing of a block of output pixels consumed by one numpy/BLAS GEMM.

Arguments here are already checked: C-contiguous, aligned, writeable 4-D arrays of one dtype
(so Numba sees exactly the types :func:`~.conv.warmup` compiled) and Python ints.
``top``/``left`` are first-tap offsets and may be negative.

Blocks are several whole images when images are small, else bands of output rows of one
image, sized so the packed columns stay near ``BLOCK_ELEMS`` elements: large enough for BLAS
to run near peak, small enough to stay in cache and avoid im2col's ``R*S/stride**2`` memory
blow-up.

Images with at least ``WIDE_MIN_PIXELS`` output pixels use the "wide" packing of
:mod:`.wide` (long contiguous copies, a few junk GEMM columns per output row); smaller images
are batched several per block through :func:`~.im2col.im2col` / :func:`~.im2col.col2im`
(a one-image im2col block's GEMM writes straight into the NCHW output).
"""

import numpy as np

from . import direct, klanes
from . import pointwise as pw
from .im2col import col2im, im2col
from .wide import pack_wide, unpack_wide

#: Target size (elements) of a packed column block ...
BLOCK_ELEMS = 1 << 18
#: ... raised so that a block has at least this many GEMM columns (thin GEMMs are slow: for
#: C = K = 512, 3x3 on 7x7 images, 49-column blocks ran at about half the speed of 196) ...
MIN_COLS = 256
#: ... but never above this (8 MiB in float32).
MAX_BLOCK_ELEMS = 1 << 21
#: Backward-weight reduces over pixels: larger blocks mean fewer partial-sum passes over dw.
BLOCK_ELEMS_BWD_WEIGHT = 1 << 20
#: ... and its blocks get at least this many columns (up to MAX_BLOCK_ELEMS): every block after
#: the first adds a (K, C*R*S) partial product into dw, and short GEMMs run slower. Against
#: 256 columns, one thread, alternating, on the layers that take this path (K = 512, 3x3):
#: ResNet-50 res5 at batch 8 float32 1.06-1.10x, float64 1.04-1.08x; VGG-16 conv4_x at batch
#: 1 1.05-1.09x; conv5_x (one block either way) 1.0x.
WEIGHT_MIN_COLS = 1024
#: Strided backward-data's GEMM reduces over only K: its blocks get at least this many columns
#: (several images when images are small). Against 256-column blocks, one thread, batch 8,
#: alternating: ResNet-50's strided layers float32 1.1-1.4x, float64 1.13-1.35x.
SCATTER_MIN_COLS = 1024
#: Images with fewer output pixels than this use batched im2col instead of the wide packing
#: (whose GEMMs are per image and whose junk columns cost ``(dw*(S-1)//sw)/Q`` extra flops).
WIDE_MIN_PIXELS = 128


def target_elems(crs, base, min_cols=MIN_COLS):
    """Column-block size for column length ``crs`` given the base target ``base``."""
    return min(max(base, crs * min_cols), max(base, MAX_BLOCK_ELEMS))


def blocks(N, P, Q, crs, base, min_cols=MIN_COLS):
    """Yield ``(n0, n1, p0, p1)`` covering ``N x P`` output rows, with about
    ``target_elems(crs, base, min_cols)`` column elements each."""
    target = target_elems(crs, base, min_cols)
    per_image = P * Q * crs
    if per_image == 0:
        return
    if per_image <= target:
        nb = max(1, target // per_image)
        for n0 in range(0, N, nb):
            yield n0, min(N, n0 + nb), 0, P
        return
    for n in range(N):
        for p0, p1 in bands(P, Q * crs, target):
            yield n, n + 1, p0, p1


def bands(P, row_elems, target):
    """Even bands ``(p0, p1)`` of the ``P`` rows with about ``target // row_elems`` rows each."""
    rows = max(1, min(P, target // max(row_elems, 1)))
    nblk = -(-P // rows)
    rows = -(-P // nblk)
    return [(p0, min(P, p0 + rows)) for p0 in range(0, P, rows)]


def view2d(a, m, n):
    """``a`` as an (m, n) view; raises rather than silently copying."""
    v = a.view()
    v.shape = (m, n)
    return v


def pixels_by_k(a, n0, n1, p0, p1):
    """Block ``a[n0:n1, :, p0:p1, :]`` of an (N, K, P, Q) array as a (K, pixels) matrix."""
    K, Q = a.shape[1], a.shape[3]
    if n1 - n0 == 1:
        return view2d(a[n0, :, p0:p1, :], K, (p1 - p0) * Q)
    nb, PQ = n1 - n0, a.shape[2] * Q
    return np.ascontiguousarray(a[n0:n1].reshape(nb, K, PQ).transpose(1, 0, 2)).reshape(K, nb * PQ)


def _store(dst, src, accumulate):
    if accumulate:
        dst += src
    else:
        dst[...] = src


def use_wide(P, Q):
    return P * Q >= WIDE_MIN_PIXELS


class Wide:
    """Geometry and reusable buffers of the wide packing (:mod:`.wide`) for one layer."""

    def __init__(self, C, K, P, Q, R, S, sh, sw, dh, dw, dtype, base, min_cols=MIN_COLS):
        self.eh, self.ew = (dh * (R - 1)) // sh, (dw * (S - 1)) // sw
        self.Wph = Q + self.ew
        self.C, self.K, self.crs, self.phases = C, K, C * R * S, sh * sw
        self.bands = bands(P, self.Wph * self.crs, target_elems(self.crs, base, min_cols))
        rows = max(p1 - p0 for p0, p1 in self.bands)
        self.slab = np.empty(self.phases * C * (rows + self.eh) * self.Wph, dtype)
        self.cols = np.empty(self.crs * rows * self.Wph, dtype)
        self.res = np.empty(K * rows * self.Wph, dtype)

    def get(self, rows):
        """``(slab, cols, res, ncol)`` views for a band of ``rows`` output rows."""
        Wph, ncol = self.Wph, rows * self.Wph - self.ew
        slab = view2d(self.slab[:self.phases * self.C * (rows + self.eh) * Wph],
                      self.phases * self.C, (rows + self.eh) * Wph)
        cols = view2d(self.cols[:self.crs * ncol], self.crs, ncol)
        res = view2d(self.res[:self.K * rows * Wph], self.K, rows * Wph)
        return slab, cols, res, ncol

    def widen(self, res, dy, n, p0, p1):
        """``res`` (K, rows*Wph) = ``dy[n, :, p0:p1, :]`` with zero junk columns."""
        res3 = res.reshape(self.K, p1 - p0, self.Wph)
        Q = dy.shape[3]
        res3[:, :, :Q] = dy[n, :, p0:p1, :]
        res3[:, :, Q:] = 0


def use_direct(R, S):
    """Whether forward and stride-1 backward-data go to the direct kernels of :mod:`.direct`
    rather than packing + BLAS. Filters wider than 1x1 do: their im2col copy is ``R*S``
    times the input, which the direct kernels never form; for 1x1 layers numpy's BLAS
    measured faster (ResNet-50, float32, one thread: 0.6-0.9x of BLAS's rate)."""
    return R * S > 1


#: :mod:`.klanes` takes a layer when its estimate is below this fraction of :mod:`.direct`'s.
#: Neither estimate counts the result's store nor every copy, nor the direct kernel's loads
#: of B that straddle cache lines (a slab's shifted taps); measured, klanes' estimate runs
#: about 25% high against direct's. Measured (one thread, alternating; estimate ratio ->
#: klanes' speed over direct's), ResNet-50 at batch 8, float32: conv1 0.81 -> 1.21, res2.3x3
#: 0.98 -> 1.03-1.15, res3.3x3 0.94 -> 1.06-1.12, res4.3x3 0.87 -> 1.17, the strided 3x3
#: layers 0.59-0.98 -> 1.18-1.45, res5.3x3 0.98 -> 1.16; float64 1.01-1.45, res5's 3x3 layers
#: 1.03 -> 1.32-1.45; VGG-16 at batch 1, float32: conv3_x-conv4_x 0.92-0.97 -> 1.06-1.15,
#: conv5_x 1.24 -> 0.98; float64 conv4_x 1.09 -> 1.40, conv5_x 1.24 -> 1.37.
KLANES_MARGIN = 1.3


def use_klanes(x_shape, K, P, Q, R, S, itemsize, plan):
    """Whether a forward convolution wider than 1x1 goes to :mod:`.klanes` (output channels
    in the vector lanes) rather than :func:`.direct.forward`, whose :class:`.direct.Plan` for
    the layer is ``plan`` (``klanes.FORCE`` overrides)."""
    if klanes.FORCE is not None:
        return bool(klanes.FORCE)
    return klanes.cost(x_shape, K, P, Q, R, S, itemsize) < KLANES_MARGIN * plan.cost


#: True or False sends every backward-weight wider than 1x1 to (or away from) the direct
#: kernel (tests); None: :func:`use_direct_weight`'s rule.
FORCE_DIRECT_WEIGHT = None
#: Backward-weight goes direct when it has at most this many output channels.
DIRECT_WEIGHT_MAX_K = 256


def use_direct_weight(K, R, S):
    """Whether backward-weight goes to :func:`.direct.backward_weight`: filters wider than 1x1
    with ``K <= DIRECT_WEIGHT_MAX_K``.

    Measured (one thread, batch 8, alternating; direct's speed over packing + BLAS) on
    ResNet-50's 3x3 layers and conv1: float32 K = 64-256 1.2-2.1 (conv1, C = 3, 2.0: a tile's
    rows are any ``MR_W`` taps, so three channels fill it), K = 512 (7x7 images) 0.6-0.75;
    float64 K = 64-128 1.1-1.8, K = 256 1.0-1.25, K = 512 0.7. (Earlier tiles of ``MR_W``
    channels of one tap, over every slab column, ran 0.4-0.5 on 7x7 images and 0.84-1.1 on
    conv1.)"""
    if FORCE_DIRECT_WEIGHT is not None:
        return R * S > 1 and bool(FORCE_DIRECT_WEIGHT)
    return R * S > 1 and K <= DIRECT_WEIGHT_MAX_K


def sampled_1x1(H, W, P, Q, R, S, sh, sw, top, left):
    """Whether the layer is 1x1 and reads exactly every ``sh``-th row and ``sw``-th column of
    its ``H x W`` input (no padding that adds output pixels)."""
    return R == S == 1 and top == left == 0 and (-(-H // sh), -(-W // sw)) == (P, Q)


def forward(x, w, P, Q, sh, sw, dh, dw, top, left, out, accumulate):
    """``out (+)= conv(x, w)`` for output size (P, Q) and first-tap offsets ``top``/``left``."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    if out.size == 0:
        return
    if C == 0:
        if not accumulate:
            out.fill(0)
        return
    if use_direct(R, S):
        item = x.dtype.itemsize
        plan = direct.Plan(x.shape, K, P, Q, R, S, sh, sw, dh, dw, item, direct.FORCE_MODE)
        if use_klanes(x.shape, K, P, Q, R, S, item, plan):
            klanes.forward(x, w, P, Q, sh, sw, dh, dw, top, left, out, accumulate)
        else:
            direct.forward(x, w, P, Q, sh, sw, dh, dw, top, left, out, accumulate, plan=plan)
        return
    crs = C * R * S
    wm = w.reshape(K, crs)
    if sampled_1x1(H, W, P, Q, R, S, sh, sw, top, left):
        # Strided: the sampled pixels copied first (a quarter of x at stride 2); against the
        # column packing below, ResNet-50's projections at batch 8: float32 1.15-1.19x,
        # float64 1.11-1.22x (whole-image GEMMs instead of blocks of rows).
        xs = x if sh == sw == 1 else np.ascontiguousarray(x[:, :, ::sh, ::sw])
        pointwise(xs.reshape(N, C, P * Q), wm, out.reshape(N, K, P * Q), accumulate)
    elif use_wide(P, Q):
        g = Wide(C, K, P, Q, R, S, sh, sw, dh, dw, x.dtype, BLOCK_ELEMS)
        for n in range(N):
            for p0, p1 in g.bands:
                slab, cols, res, ncol = g.get(p1 - p0)
                pack_wide(x, n, slab, cols, p0, g.Wph, R, S, sh, sw, dh, dw, top, left)
                np.matmul(wm, cols, out=res[:, :ncol])
                _store(out[n, :, p0:p1, :], res.reshape(K, p1 - p0, g.Wph)[:, :, :Q], accumulate)
    else:
        buf = None
        for n0, n1, p0, p1 in blocks(N, P, Q, crs, BLOCK_ELEMS):
            nb, ncol = n1 - n0, (n1 - n0) * (p1 - p0) * Q
            if buf is None:
                buf = np.empty(crs * ncol, x.dtype)  # the first block is the largest
            cols = view2d(buf[:crs * ncol], crs, ncol)
            im2col(x, cols, n0, n1, p0, p1, Q, R, S, sh, sw, dh, dw, top, left)
            if nb == 1:
                dst = view2d(out[n0, :, p0:p1, :], K, ncol)
                if accumulate:
                    dst += wm @ cols
                else:
                    np.matmul(wm, cols, out=dst)
            else:
                res = (wm @ cols).reshape(K, nb, P * Q).transpose(1, 0, 2)
                _store(out[n0:n1].reshape(nb, K, P * Q), res, accumulate)


def pointwise(xm, wm, om, accumulate):
    """``om[n] (+)= wm @ xm[n]`` for the (N, C, pixels) input ``xm``, the (K, C) filter and
    the (N, K, pixels) output ``om``: a 1x1 stride-1 layer, whose input already is the
    column matrix. The blocked GEMM of :mod:`.pointwise` where :func:`.pointwise.use` says it
    is faster than BLAS; else one GEMM per image on images with ``WIDE_MIN_PIXELS`` pixels or more;
    smaller images are first copied into one (C, N*pixels) matrix, so that a single GEMM
    spans them all (an input-sized and an output-sized temporary). Measured against a GEMM
    per image (one thread, batch 8): 7x7 images 1.2-1.3x float32, 1.4-2x float64; 14x14
    0.9x float32, 1.1x float64. (GEMMs over bands of output rows, as the other paths use,
    ran 0.85-0.95x of whole images on ResNet-50's 1x1 layers.)"""
    N, K = om.shape[0], om.shape[1]
    if pw.use(xm.shape[1], K, xm.shape[2], xm.dtype.itemsize):
        pw.forward(xm, wm, om, accumulate)
    elif xm.shape[2] < WIDE_MIN_PIXELS:
        gathered = np.ascontiguousarray(xm.transpose(1, 0, 2)).reshape(xm.shape[1], -1)
        _store(om, (wm @ gathered).reshape(K, N, -1).transpose(1, 0, 2), accumulate)
    elif accumulate:
        for n in range(N):
            om[n] += wm @ xm[n]
    else:
        np.matmul(wm, xm, out=om)


def backward_data(dy, w, H, W, sh, sw, dh, dw, top, left, dx, accumulate):
    """``dx (+)= conv_transpose(dy, w)``: stride 1 is a forward convolution of ``dy`` with the
    flipped, transposed filter (for filters wider than 1x1 :mod:`.klanes` or :mod:`.direct`,
    by :func:`use_klanes` as for a forward pass, both reading the filter in place; 1x1 filters
    through :func:`pointwise`, the filter transposed), other strides a GEMM to columns and a scatter-add
    (measured faster than the direct kernel's stride phases on most layers)."""
    N, K, P, Q = dy.shape
    C, R, S = w.shape[1:]
    if sh == sw == 1 and use_direct(R, S):
        item = dy.dtype.itemsize
        # Empty shapes go to .direct, which deals with them.
        if (N * K * P * Q and dx.size
                and use_klanes(dy.shape, C, H, W, R, S, item,
                               direct.Plan(dy.shape, C, H, W, R, S, 1, 1, dh, dw, item, direct.FORCE_MODE))):
            klanes.forward(dy, w, H, W, 1, 1, dh, dw, dh * (R - 1) - top, dw * (S - 1) - left, dx, accumulate,
                           flipped=True)
        else:
            direct.backward_data(dy, w, H, W, sh, sw, dh, dw, top, left, dx, accumulate)
    elif sh == sw == 1:
        # 1x1: the flipped filter is the (K, C) matrix transposed. Unpadded small images (one
        # GEMM over all images) read it as a view: numpy's copy of a large transposed filter
        # took up to half the call (ResNet-50's res5.1x1b, K*C = 2**20, 8 ms; without it
        # float32 1.7x, float64 1.3-1.4x). Per-image GEMMs ran 0.9-1.0x on the view in
        # float64: they (and .pointwise, which packs the filter) get a copy.
        wt = w.reshape(K, C).T
        if sampled_1x1(H, W, P, Q, R, S, sh, sw, top, left):
            if P * Q >= WIDE_MIN_PIXELS:
                wt = np.ascontiguousarray(wt)
            pointwise(dy.reshape(N, K, P * Q), wt, dx.reshape(N, C, H * W), accumulate)
        else:
            wt = np.ascontiguousarray(wt).reshape(C, K, 1, 1)
            forward(dy, wt, H, W, 1, 1, dh, dw, -top, -left, dx, accumulate)
    else:
        if not accumulate:
            dx.fill(0)
        backward_data_scatter(dy, w, sh, sw, dh, dw, top, left, dx)


def backward_data_scatter(dy, w, sh, sw, dh, dw, top, left, dx):
    """``dx += conv_transpose(dy, w)``: GEMM to columns, then a scatter-add into ``dx``."""
    N, K, P, Q = dy.shape
    _, C, R, S = w.shape
    if dx.size == 0 or dy.size == 0:
        return
    crs = C * R * S
    wmt = w.reshape(K, crs).T
    if use_wide(P, Q) and crs * SCATTER_MIN_COLS <= BLOCK_ELEMS:
        # Bands of one image already have SCATTER_MIN_COLS columns (ResNet-50's conv1: the
        # batched packing below ran 0.92-0.94x of this in float32).
        g = Wide(C, K, P, Q, R, S, sh, sw, dh, dw, dy.dtype, BLOCK_ELEMS)
        for n in range(N):
            for p0, p1 in g.bands:
                slab, cols, dyw, ncol = g.get(p1 - p0)
                g.widen(dyw, dy, n, p0, p1)  # zero junk columns -> zero junk in cols
                np.matmul(wmt, dyw[:, :ncol], out=cols)
                unpack_wide(cols, slab, dx, n, p0, g.Wph, R, S, sh, sw, dh, dw, top, left)
        return
    buf = None
    for n0, n1, p0, p1 in blocks(N, P, Q, crs, BLOCK_ELEMS, SCATTER_MIN_COLS):
        ncol = (n1 - n0) * (p1 - p0) * Q
        if buf is None:
            buf = np.empty(crs * ncol, dy.dtype)
        cols = view2d(buf[:crs * ncol], crs, ncol)
        np.matmul(wmt, pixels_by_k(dy, n0, n1, p0, p1), out=cols)
        col2im(cols, dx, n0, n1, p0, p1, Q, R, S, sh, sw, dh, dw, top, left)


def backward_weight(x, dy, R, S, sh, sw, dh, dw, top, left, dwt, accumulate):
    """``dwt (+)= sum over pixels of dy x cols`` (dwt is (K, C, R, S))."""
    N, C, H, W = x.shape
    _, K, P, Q = dy.shape
    if use_direct_weight(K, R, S):
        direct.backward_weight(x, dy, R, S, sh, sw, dh, dw, top, left, dwt, accumulate)
        return
    fresh = not accumulate
    if dwt.size:
        crs = C * R * S
        dwm = dwt.reshape(K, crs)

        def gemm(a, b):
            nonlocal fresh
            if fresh:
                np.matmul(a, b, out=dwm)
                fresh = False
            else:
                np.add(dwm, a @ b, out=dwm)

        sampled = sampled_1x1(H, W, P, Q, R, S, sh, sw, top, left)
        if sampled and P * Q and pw.use_weight(C, K):
            # Strided: the sampled pixels copied first (a quarter of x at stride 2), measured
            # 1.0-1.25x of the column packing + BLAS below on ResNet-50's projections.
            xs = x if sh == sw == 1 else np.ascontiguousarray(x[:, :, ::sh, ::sw])
            pw.backward_weight(xs.reshape(N, C, P * Q), dy.reshape(N, K, P * Q), dwm, accumulate)
            fresh = False
        elif sampled and sh == sw == 1 and P * Q >= WIDE_MIN_PIXELS:
            # Pointwise on large images: one GEMM per image, x and dy read in place (blocks
            # of images would first copy dy into pixel-major order).
            xm, dym = x.reshape(N, C, P * Q), dy.reshape(N, K, P * Q)
            for n in range(N):
                gemm(dym[n], xm[n].T)
        elif P * Q and use_wide(P, Q):
            g = Wide(C, K, P, Q, R, S, sh, sw, dh, dw, x.dtype, BLOCK_ELEMS_BWD_WEIGHT, WEIGHT_MIN_COLS)
            for n in range(N):
                for p0, p1 in g.bands:
                    slab, cols, dyw, ncol = g.get(p1 - p0)
                    pack_wide(x, n, slab, cols, p0, g.Wph, R, S, sh, sw, dh, dw, top, left)
                    g.widen(dyw, dy, n, p0, p1)  # junk columns of cols meet zeros
                    gemm(dyw[:, :ncol], cols.T)
        else:
            buf = None
            for n0, n1, p0, p1 in blocks(N, P, Q, crs, BLOCK_ELEMS_BWD_WEIGHT, WEIGHT_MIN_COLS):
                ncol = (n1 - n0) * (p1 - p0) * Q
                if buf is None:
                    buf = np.empty(crs * ncol, x.dtype)
                cols = view2d(buf[:crs * ncol], crs, ncol)
                im2col(x, cols, n0, n1, p0, p1, Q, R, S, sh, sw, dh, dw, top, left)
                gemm(pixels_by_k(dy, n0, n1, p0, p1), cols.T)
    if fresh:  # no pixels: the gradient is zero
        dwt.fill(0)
