"""Public node-level conv2d kernels: argument checks, then the block drivers of :mod:`.drivers`.

Stride-1 backward-data is a forward convolution of ``dy`` with the flipped, transposed filter
(no scatter-add); other strides use a GEMM to columns followed by a scatter-add.

Memory, direct kernels (filters wider than 1x1: forward, stride-1 backward-data, and
backward-weight with at most 256 output channels; :mod:`.direct`): one source
block (the input rows a block reads, phase-split, or its im2col columns on small images) plus
one block result or transposed ``dy`` block, together about ``direct.BLOCK_BYTES`` (1 MiB)
unless one output row or ``direct.MIN_COLS`` columns need more; backward-weight adds
``R*S*C*K`` accumulators (C*R*S and K rounded up to the tile) and backward-data a copy of the
filter's last ``C % ukernel.MR`` input channels (the filter itself is read in place). A
forward or stride-1 backward-data that goes to :mod:`.klanes` (output channels in the vector
lanes; backward-data gathers the flipped filter in place) holds,
per kernel thread, one reduction chunk of the transposed filter (``klanes.CHUNK x K``, K
rounded up to whole vector tiles: 256 KiB for K = 512 in float32), and per block a
``pixels x K`` result of about ``klanes.BLOCK_BYTES`` (2 MiB) plus, when a tap reads padding,
a zero-padded copy of the block's input rows.
A 1x1 stride-1 layer that goes to :mod:`.pointwise` holds a packed copy of the filter (K
rounded up to the tile) and, per kernel thread, one column block's packed input (384 KiB in
float32); the output is written in place. A 1x1 backward-weight that goes there
holds, per kernel thread, one reduction chunk's transposed input panel
(``pointwise.WEIGHT_CHUNK`` pixels by 64 channels in float32, 32 in float64: 256 KiB).

Memory, packing + BLAS (the other cases). Work goes in blocks whose packed column matrix has about
``T = min(max(B, M*C*R*S), max(B, 2**21))`` elements (``B = drivers.BLOCK_ELEMS = 2**18``,
``drivers.BLOCK_ELEMS_BWD_WEIGHT = 2**20`` for backward-weight; ``M`` = 256 columns,
``drivers.WEIGHT_MIN_COLS`` = 1024 for backward-weight and ``drivers.SCATTER_MIN_COLS`` = 1024
for strided backward-data) but at least one output row (``C*R*S*(Q + dw*(S-1)//sw)``
elements). Besides that column buffer, a block needs a GEMM
result or widened ``dy`` of ``K`` times the block's columns and, for images with at least
``drivers.WIDE_MIN_PIXELS`` output pixels, a slab holding the input rows the band reads
(about ``C * band rows * sh * Wx``). Non-contiguous arguments are copied once; a
non-contiguous ``out`` costs one output-sized buffer. Example: with C*R*S <= 1024 the column
buffer is 2**18 elements (1 MiB in float32) for forward, 2**20 (4 MiB) for backward-weight
and 2**18 to 2**20 for strided backward-data, unless one output row needs more; with larger
C*R*S backward-weight takes up to 2**21; it never exceeds 2**21 elements (8 MiB) unless one
output row does.
"""

import numpy as np

from . import _checks as chk
from . import drivers as drv
from . import fastload
from .im2col import col2im, im2col
from .wide import pack_wide, unpack_wide

__all__ = ["conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight", "warmup", "warmup_parts",
           "WARMUP_STAGES"]


def _finish(work, out, accumulate):
    if out is None:
        return work
    if work is not out:
        out[...] = work
    return out


def conv2d_forward(x, w, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), out=None,
                   accumulate=False):
    """Forward 2-D convolution (cross-correlation, as in ``torch.nn.functional.conv2d``).

    ``out[n,k,p,q] = sum_{c,r,s} x[n, c, p*sh + r*dh - top, q*sw + s*dw - left] * w[k,c,r,s]``
    with zeros read outside ``x``.

    Parameters
    ----------
    x : ndarray, shape (N, C, Hx, Wx)
        Input, float32 or float64. Need not be contiguous (a contiguous copy is made).
    w : ndarray, shape (K, C, R, S)
        Filter, same dtype as ``x``.
    stride, dilation : int or (int, int)
        Per-axis (height, width) stride and dilation, each >= 1.
    padding : int or (int, int, int, int)
        ``(top, bottom, left, right)`` zero padding, each >= 0; may be asymmetric.
    out : ndarray, shape (N, K, P, Q), optional
        Preallocated output of the same dtype, with
        ``P = (Hx + top + bottom - dh*(R-1) - 1)//sh + 1`` (``Q`` likewise), or 0 when the padded
        input is shorter than the dilated filter.
    accumulate : bool
        If True, add the result into ``out`` (which must be given) instead of overwriting it.

    Returns
    -------
    out : ndarray, shape (N, K, P, Q)

    Notes
    -----
    Internal buffers: see the module docstring. Filters wider than 1x1: a source block and a
    result block of about 1 MiB together (direct kernels); where the output-channel-lanes kernel
    runs, a result block of about 2 MiB, a padded copy of the block's input rows and one
    chunk of the transposed filter per kernel thread. 1x1: a packed column block of about
    ``T`` elements and a GEMM result of ``K/(C*R*S)`` times that; an unpadded 1x1 layer
    packs nothing on images of ``drivers.WIDE_MIN_PIXELS`` output pixels or more, and on
    smaller ones copies the input into one pixel-major matrix (an input-sized and an
    output-sized temporary); with stride > 1 it first copies the pixels it samples
    (``1/(sh*sw)`` of the input).
    """
    sh, sw = chk.pair("stride", stride, 1)
    dh, dw = chk.pair("dilation", dilation, 1)
    top, bottom, left, right = chk.padding4(padding)
    x, w = chk.tensor("x", x), chk.tensor("w", w, "KCRS")
    dtype = chk.same_dtype(x=x, w=w)
    N, C, H, W = x.shape
    K, Cw, R, S = w.shape
    if Cw != C:
        raise ValueError(f"x has C={C} channels but w has C={Cw} (w must be (K, C, R, S))")
    chk.filter_taps(R, S)
    P = chk.out_size(H, top, bottom, sh, dh, R)
    Q = chk.out_size(W, left, right, sw, dw, S)
    work, out = chk.result(out, (N, K, P, Q), dtype, accumulate, "the output (N, K, P, Q)")
    drv.forward(x, w, P, Q, sh, sw, dh, dw, top, left, work, accumulate)
    return _finish(work, out, accumulate)


def conv2d_backward_data(dy, w, input_hw, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                         out=None, accumulate=False):
    """Gradient with respect to the input: the exact adjoint of :func:`conv2d_forward`.

    Parameters
    ----------
    dy : ndarray, shape (N, K, P, Q)
        Output gradient, float32 or float64; ``P, Q`` must be what the forward pass gives
        for ``input_hw`` and these stride/padding/dilation.
    w : ndarray, shape (K, C, R, S)
        Filter, same dtype as ``dy``.
    input_hw : (int, int)
        ``(Hx, Wx)``, the forward input's height and width.
    stride, padding, dilation, accumulate
        As in :func:`conv2d_forward`.
    out : ndarray, shape (N, C, Hx, Wx), optional
        Preallocated result of the same dtype.

    Returns
    -------
    dx : ndarray, shape (N, C, Hx, Wx)
        Contributions that fall into the padding are dropped.

    Notes
    -----
    Stride 1: a forward convolution of ``dy`` with the flipped filter, so buffers are as in
    :func:`conv2d_forward` (with K and C swapped); wider filters than 1x1 are read in place, a
    1x1 filter is copied (``K*C``) unless the layer is unpadded with fewer than
    ``drivers.WIDE_MIN_PIXELS`` pixels per image. Other strides:
    a column block of about ``T`` elements (module docstring) that one GEMM writes and a
    scatter-add consumes, a widened or transposed copy of the block of ``dy`` (``K/(C*R*S)``
    of that) and, where the block is a band of a large image and ``C*R*S <= 256``, the band's
    input-sized slab.
    """
    sh, sw = chk.pair("stride", stride, 1)
    dh, dw = chk.pair("dilation", dilation, 1)
    top, bottom, left, right = chk.padding4(padding)
    H, W = chk.hw_pair("input_hw", input_hw)
    dy, w = chk.tensor("dy", dy, "NKPQ"), chk.tensor("w", w, "KCRS")
    dtype = chk.same_dtype(dy=dy, w=w)
    N, K, P, Q = dy.shape
    Kw, C, R, S = w.shape
    if Kw != K:
        raise ValueError(f"dy has K={K} channels but w has K={Kw} (w must be (K, C, R, S))")
    chk.filter_taps(R, S)
    Pe, Qe = chk.out_size(H, top, bottom, sh, dh, R), chk.out_size(W, left, right, sw, dw, S)
    if (P, Q) != (Pe, Qe):
        raise ValueError(f"dy has output size P x Q = {P} x {Q}, but input_hw={(H, W)} with this "
                         f"filter, stride, padding and dilation gives {Pe} x {Qe}")
    work, out = chk.result(out, (N, C, H, W), dtype, accumulate, "dx (N, C, Hx, Wx)")
    drv.backward_data(dy, w, H, W, sh, sw, dh, dw, top, left, work, accumulate)
    return _finish(work, out, accumulate)


def conv2d_backward_weight(x, dy, filter_rs, stride=(1, 1), padding=(0, 0, 0, 0),
                           dilation=(1, 1), out=None, accumulate=False):
    """Gradient with respect to the filter.

    ``dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, c, p*sh + r*dh - top, q*sw + s*dw - left]``.

    Parameters
    ----------
    x : ndarray, shape (N, C, Hx, Wx)
        Forward input, float32 or float64.
    dy : ndarray, shape (N, K, P, Q)
        Output gradient, same dtype; ``P, Q`` must match the forward output size.
    filter_rs : (int, int)
        ``(R, S)``, the filter height and width.
    stride, padding, dilation, accumulate
        As in :func:`conv2d_forward`.
    out : ndarray, shape (K, C, R, S), optional
        Preallocated result of the same dtype.

    Returns
    -------
    dw : ndarray, shape (K, C, R, S)

    Notes
    -----
    1x1 layers without padding, with at least 64 input and 64-1024 output channels
    (:func:`.pointwise.use_weight`): one transposed input panel per kernel thread (256 KiB);
    ``x``, ``dy`` and ``dw`` are used in place, but a strided layer first copies the input
    pixels it samples (``N*C*P*Q`` elements). Direct kernel (where
    :func:`.drivers.use_direct_weight` holds: filters wider than 1x1, at most 256 output
    channels): the block's phase-split input rows and transposed ``dy``
    (about 1 MiB together), its pixels' slab columns (8 bytes each) and ``R*S*C*K``
    accumulators (``C*R*S`` and ``K`` rounded up to the tile). Otherwise: a column block of
    about ``T`` elements with ``B = 2**20`` and ``M = 1024`` (module docstring), a widened or
    transposed copy of the block of ``dy`` (``K/(C*R*S)`` of that), the block's input slab, and one
    ``K*C*R*S`` partial product per block after the first (every block when accumulating).
    """
    sh, sw = chk.pair("stride", stride, 1)
    dh, dw_ = chk.pair("dilation", dilation, 1)
    top, bottom, left, right = chk.padding4(padding)
    R, S = chk.hw_pair("filter_rs", filter_rs)
    chk.filter_taps(R, S)
    x, dy = chk.tensor("x", x), chk.tensor("dy", dy, "NKPQ")
    dtype = chk.same_dtype(x=x, dy=dy)
    N, C, H, W = x.shape
    Ny, K, P, Q = dy.shape
    if Ny != N:
        raise ValueError(f"x has N={N} images but dy has N={Ny}")
    Pe, Qe = chk.out_size(H, top, bottom, sh, dh, R), chk.out_size(W, left, right, sw, dw_, S)
    if (P, Q) != (Pe, Qe):
        raise ValueError(f"dy has output size P x Q = {P} x {Q}, but x ({H} x {W}) with this "
                         f"filter, stride, padding and dilation gives {Pe} x {Qe}")
    work, out = chk.result(out, (K, C, R, S), dtype, accumulate, "dw (K, C, R, S)")
    drv.backward_weight(x, dy, R, S, sh, sw, dh, dw_, top, left, work, accumulate)
    return _finish(work, out, accumulate)


def load_cached(dtypes=("float32", "float64")):
    """Install the kernels for ``dtypes`` from Numba's on-disk cache without compiling
    (:func:`.fastload.load`); True when every one was there. Only reads files, so any number
    of processes may call it at once. False leaves :func:`warmup` to compile."""
    return all([fastload.load(_dtype(name)) for name in dtypes])


def _dtype(name):
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype not in chk.DTYPES:
        raise ValueError(f"kernel dtype {name!r}: only float32 and float64 are supported")
    return dtype


def warmup(dtypes=("float32", "float64")):
    """Compile (or load from Numba's on-disk cache) every jitted kernel for ``dtypes``.

    When the cache holds every entry point, :func:`.fastload.load` installs the cached code
    without Numba's compiler (milliseconds). Otherwise this runs each entry point once on tiny
    arrays, and each Numba kernel directly (so every packing path is covered whatever the
    drivers' size thresholds), with exactly the argument types the drivers pass, which
    compiles or loads them and writes the cache. Later calls never compile. Buffers are
    negligible (< 1000 elements).
    """
    for name in dtypes:
        dtype = _dtype(name)
        if fastload.load(dtype):
            continue
        for part in _PARTS.values():
            part(dtype)
        x = np.ones((2, 2, 5, 5), dtype)
        w = np.ones((2, 2, 3, 3), dtype)
        for stride in ((1, 1), (2, 2)):
            y = conv2d_forward(x, w, stride, (1, 1, 1, 1))
            conv2d_backward_data(y, w, (5, 5), stride, (1, 1, 1, 1))
            conv2d_backward_weight(x, y, (3, 3), stride, (1, 1, 1, 1))


def _warm_packing(dtype):
    """Compile (or load) the packing kernels of :mod:`.im2col` and :mod:`.wide`: calls on image 0
    of a tiny input, 3x3 filter, stride 1, pad 1, P = Q = 5."""
    x = np.ones((2, 2, 5, 5), dtype)
    cols = np.zeros((2 * 9, 25), dtype)
    im2col(x, cols, 0, 1, 0, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1)
    col2im(cols, x, 0, 1, 0, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1)
    slab, cols = np.zeros((2, 7 * 7), dtype), np.zeros((2 * 9, 5 * 7 - 2), dtype)
    pack_wide(x, 0, slab, cols, 0, 7, 3, 3, 1, 1, 1, 1, 1, 1)
    unpack_wide(cols, slab, x, 0, 0, 7, 3, 3, 1, 1, 1, 1, 1, 1)


#: :func:`warmup`'s parts, by the kernels they compile.
_PARTS = {"direct": drv.direct.warmup, "klanes": drv.klanes.warmup, "pointwise": drv.pw.warmup,
          "packing": _warm_packing}

#: :func:`warmup` in stages of groups of parts, for processes that share a node's cores
#: (:func:`cnnmm.runtime.warm_kernels`): once the stages before it have run, each group of a
#: stage compiles kernels (callees included) that no other group of the stage compiles, and
#: writes their own cache files, so the groups of a stage may run in separate processes at
#: once. Direct's kernels come first: they hold the callees the others share (``im2col._qrange``,
#: ``direct.pack_slab``); klanes and pointwise both add specialisations of ``direct.transpose``,
#: so they stay in one group. One process, empty cache, float32: direct 4.7 s, klanes 1.9 s,
#: pointwise 2.6 s, packing 3.8 s; :func:`warmup` after all of them compiles nothing more.
WARMUP_STAGES = ((("direct",),), (("klanes", "pointwise"), ("packing",)))


def warmup_parts(group, dtypes):
    """Compile (or load) the kernels of the :data:`WARMUP_STAGES` parts named in ``group`` for
    ``dtypes``, without trying :func:`.fastload.load` first."""
    for name in dtypes:
        dtype = _dtype(name)
        for part in group:
            _PARTS[part](dtype)
