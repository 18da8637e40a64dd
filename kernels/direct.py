"""Direct (implicit-GEMM) convolution on the register-tiled micro-kernel of :mod:`.ukernel`.

The GEMM is ``res[k, column] = sum_t A[k, t] * B[t, column]`` over the ``C*R*S`` taps ``t``
with A the filter. Its B operand, the im2col matrix, is never formed for layers with large
images: it is read in place from a *slab*, the block's input rows split into the ``sh*sw``
stride phases, where every tap is a stride-1 shift (:func:`slab_offsets`). Slab columns
follow output pixels on rows ``Q + (dw*(S-1))//sw`` wide, so each output row carries a few
*junk* columns (2 of 58 for a 3x3 layer on 56x56 images) that are computed and dropped.
B comes from one of two sources, whichever :class:`Plan` estimates cheaper:

* ``SLAB``: the phase-split input rows above (one input-sized copy per call);
* ``COLS``: an explicit im2col block (:func:`pack_cols`) where junk columns would cost
  more than packing (a 3x3 layer on 7x7 images: 9 columns per 7 pixels); its copy costs
  ``C*R*S`` elements per pixel, repaid over the ``K`` output channels.

A block (whole images, or a band of output rows of one image) is sized so that its source
and its result fit in L2 together. Its columns are split into *stripes* of ``NV*lanes``
(:func:`stripes`), which run on this rank's kernel threads (:mod:`.threads`); the
reduction goes in chunks of ``CHUNK`` taps, so a stripe's B rows stay in L1 while every
row tile of the filter passes over them. The block result is then copied to the output
(:func:`unblock`), row by row, dropping junk columns.

Memory per call: one source block and one block result (together about ``BLOCK_BYTES``,
1 MiB, more only when one output row or ``MIN_COLS`` columns need it), plus a copy of the
last ``K % MR`` filter rows; the filter itself is read in place. Backward-data reads the
flipped filter in place too, through a step-offset table, with a zero-padded copy of its
last ``C % MR`` channels (one stride phase's taps).
"""

import numpy as np
from numba import njit

from . import buffers, threads
from .im2col import _qrange
from .ukernel import (MR, MR_W, NV, NV_W, VBYTES, copy_elems, copy_row, deinterleave_row, keep_alive, lanes,
                      microkernel_cols, microkernel_px, tile_cols, transpose_tile)

#: Source plus result of one block, aimed at the L2 cache.
BLOCK_BYTES = 1 << 20
#: Reduction steps per micro-kernel call: B's rows for one stripe stay in L1 meanwhile ...
CHUNK = 128
#: ... fewer when the filter's rows for one chunk would not fit in this many bytes (L2).
A_CHUNK_BYTES = 1 << 19
#: Blocks of small images have at least this many columns (a partial stripe wastes less).
MIN_COLS = 384
#: Cost of packing one im2col element, in multiply-adds of the GEMM (chooses COLS vs SLAB) ...
PACK_MADDS = 96
#: ... and of one slab element of a layer strided along rows (an element-wise gather; with
#: ``sw == 1`` rows are block copies, counted as free). Measured on the element-wise gather;
#: stride 2 with both column phases used now deinterleaves by vectors, 2-3x faster
#: (:func:`~.ukernel.deinterleave_row`), which this constant does not yet reflect.
PHASE_PACK_MADDS = 150
#: Rows shorter than this are packed by masked vector copies (:func:`~.ukernel.copy_row`), longer
#: ones by ``memcpy``, whose call costs more than a short row's copy (:func:`pack_cols` alone,
#: float32 batch 8: 7x7 images 1.16x faster, 14x14 1.14x, 28x28 1.07x). Whole calls on 56x56
#: images read 2-7% slower with vector copies, within this machine's noise; they keep ``memcpy``.
SHORT_ROW = 32
SLAB, COLS = "slab", "cols"
#: Source for every layer (``SLAB`` or ``COLS``); None lets :class:`Plan` choose. For tests.
FORCE_MODE = None


def _up(a, b):
    return -(-a // b) * b


def _odd_lines(n, itemsize):
    """A row pitch of at least ``n`` elements spanning an odd number of 64-byte lines: B's rows
    at a power-of-two pitch would share a few L1 sets (a 14x14 slab row is 1 KiB)."""
    per_line = 64 // itemsize
    lines = -(-n // per_line)
    return (lines | 1) * per_line


def slab_offsets(C, R, S, sh, sw, dh, dw, Wph, L):
    """Per-tap slab offsets ``koff`` (tap ``(c, r, s)`` at ``(c*R + r)*S + s``) and the flags of
    the stride phases some tap reads, for a slab of row pitch ``L`` and output rows ``Wph``
    wide. Phase ``(a, b)`` of channel ``c`` is slab row ``(a*sw + b)*C + c``."""
    r, s = np.arange(R) * dh, np.arange(S) * dw
    phase = (r % sh)[:, None] * sw + (s % sw)[None, :]
    tap = phase * C * L + ((r // sh) * Wph)[:, None] + (s // sw)[None, :]
    koff = (np.arange(C)[:, None, None] * L + tap[None]).reshape(-1).astype(np.int64)
    used = np.zeros(sh * sw, np.bool_)
    used[phase.ravel()] = True
    return koff, used


@njit(cache=True, nogil=True)
def pack_slab(c0, c1, x, n0, n1, p0, Hb, Wph, L, sh, sw, used, top, left, slab):
    """Fill channels ``c0:c1`` of the slab of images ``n0:n1``, output rows from ``p0``: phase
    ``(a, b)`` of channel ``c`` holds ``x[n0+i, c, (p0+h)*sh + a - top, j*sw + b - left]``
    (zero outside ``x``) at ``((a*sw + b)*C + c)*L + (i*Hb + h)*Wph + j`` for ``h < Hb,
    j < Wph``. With ``sw == 2`` and both column phases used, each input row fills both phase
    rows in one vector pass (:func:`~.ukernel.deinterleave_row`)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    xf = x.reshape(-1)
    s_addr, x_addr, tag, item = slab.ctypes.data, xf.ctypes.data, np.empty(0, slab.dtype), x.itemsize
    # sw == 2 with both column phases used: each x row goes to both phase rows in one pass.
    lo0, hi0 = _qrange(-left, 2, W, Wph)
    lo1, hi1 = _qrange(1 - left, 2, W, Wph)
    for c in range(c0, c1):
        for a in range(sh):
            if sw == 2 and used[2 * a] and used[2 * a + 1]:
                row0, row1 = (2 * a * C + c) * L, ((2 * a + 1) * C + c) * L
                for i in range(n1 - n0):
                    plane = ((n0 + i) * C + c) * H * W
                    for h in range(Hb):
                        ih = (p0 + h) * sh + a - top
                        inside = 0 <= ih < H
                        deinterleave_row(s_addr + (row0 + (i * Hb + h) * Wph) * item,
                                         s_addr + (row1 + (i * Hb + h) * Wph) * item,
                                         x_addr + (plane + ih * W - left) * item, lo0, hi0 if inside else lo0,
                                         lo1, hi1 if inside else lo1, Wph, tag)
                continue
            for b in range(sw):
                ph = a * sw + b
                if not used[ph]:
                    continue
                off = b - left
                lo, hi = _qrange(off, sw, W, Wph)
                row = (ph * C + c) * L
                for i in range(n1 - n0):
                    plane = ((n0 + i) * C + c) * H * W
                    for h in range(Hb):
                        ih = (p0 + h) * sh + a - top
                        base = row + (i * Hb + h) * Wph
                        inside = 0 <= ih < H
                        if not inside or (sw == 1 and Wph < SHORT_ROW):
                            copy_row(s_addr + base * item, x_addr + (plane + ih * W + off) * item,
                                     lo if inside else 0, hi if inside else 0, Wph, tag)
                            continue
                        # Row copies inline: a helper taking the arrays ran 4x slower, and 1.3-4.8x
                        # slower even when inlined by Numba (inline="always").
                        for j in range(lo):
                            slab[base + j] = 0
                        src = plane + ih * W + lo * sw + off
                        if sw == 1:
                            copy_elems(s_addr + (base + lo) * item, x_addr + src * item, hi - lo, tag)
                        else:
                            for j in range(hi - lo):
                                slab[base + lo + j] = xf[src + j * sw]
                        for j in range(hi, Wph):
                            slab[base + j] = 0


@njit(cache=True, nogil=True)
def pack_cols(t0, t1, x, n0, n1, p0, p1, Q, R, S, sh, sw, dh, dw, top, left, cols, pitch):
    """Rows ``t0:t1`` of the im2col block of images ``n0:n1``, output rows ``p0:p1``: row
    ``(c*R + r)*S + s``, column ``(i*(p1-p0) + p)*Q + q`` of the flat ``cols`` (row pitch
    ``pitch``) holds ``x[n0+i, c, (p0+p)*sh + r*dh - top, q*sw + s*dw - left]`` (zero outside
    ``x``)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    xf = x.reshape(-1)
    c_addr, x_addr, tag, item = cols.ctypes.data, xf.ctypes.data, np.empty(0, cols.dtype), x.itemsize
    rows = p1 - p0
    for t in range(t0, t1):
        c, rs = t // (R * S), t % (R * S)
        r, s = rs // S, rs % S
        off = s * dw - left
        lo, hi = _qrange(off, sw, W, Q)
        for i in range(n1 - n0):
            plane = ((n0 + i) * C + c) * H * W
            for p in range(rows):
                ih = (p0 + p) * sh + r * dh - top
                base = t * pitch + (i * rows + p) * Q
                inside = 0 <= ih < H
                if not inside or (sw == 1 and Q < SHORT_ROW):
                    copy_row(c_addr + base * item, x_addr + (plane + ih * W + off) * item,
                             lo if inside else 0, hi if inside else 0, Q, tag)
                    continue
                for q in range(lo):
                    cols[base + q] = 0
                src = plane + ih * W + lo * sw + off
                if sw == 1:
                    copy_elems(c_addr + (base + lo) * item, x_addr + src * item, hi - lo, tag)
                else:
                    for q in range(hi - lo):
                        cols[base + lo + q] = xf[src + q * sw]
                for q in range(hi, Q):
                    cols[base + q] = 0


@njit(cache=True, nogil=True)
def stripes(js0, js1, wm, wtail, lda, aoff, aoff_tail, K, src, src_base, koff, ncol, tail_safe, res, ldr):
    """``res[k*ldr + j] = sum_t A[k, t] * B[t, j]`` for all ``Kp`` rows and the columns of
    stripes ``js0:js1``; ``ldr`` is a multiple of the stripe width.

    A's row ``k`` starts at element ``k*lda`` of ``wm`` (read in place) and its step ``t`` is
    element ``t`` of that row, or ``aoff[t]`` when ``aoff`` is not empty; a last partial row tile
    reads ``wtail`` instead (its rows padded with zeros to ``MR``; steps ``t`` or
    ``aoff_tail[t]``). B's row ``t``
    starts at element ``src_base + koff[t]`` of ``src`` and has ``ncol`` columns; when
    ``tail_safe`` is 0 the last stripe is copied first (reading past ``ncol`` is not
    allowed), else the source has a stripe of readable slack.
    """
    kred = koff.shape[0]
    Kp = (K + MR - 1) // MR * MR
    table = aoff.shape[0] > 0
    lda_tail = lda if table else kred
    item = src.itemsize
    vl = VBYTES // item
    nr = NV * vl
    # Data addresses taken once, and a dtype tag of this call's own: each ``.ctypes`` and each
    # array passed to a call touches the array's reference count, and threads doing that in
    # their inner loops on one shared array serialise on its cache line (measured: two threads
    # slower than one; one thread 30% slower too).
    r0, s0, k0, w0, wt0 = res.ctypes.data, src.ctypes.data, koff.ctypes.data, wm.ctypes.data, wtail.ctypes.data
    ao0, at0 = aoff.ctypes.data, aoff_tail.ctypes.data
    # A stripe reading past ``ncol`` (only the last) gets its B rows copied to ``tb``.
    full = js1 if (tail_safe or js1 * nr <= ncol) else js1 - 1
    tb = np.zeros(kred * nr if full < js1 else 0, src.dtype)
    tk = np.arange(kred) * nr
    tb0, tk0 = tb.ctypes.data, tk.ctypes.data
    tag = np.empty(0, src.dtype)
    if full < js1:
        j0 = full * nr
        for t in range(kred):
            for u in range(ncol - j0):
                tb[t * nr + u] = src[src_base + koff[t] + j0 + u]
    # Chunk outermost: the filter's chunk (K x chunk) is read from L2 by every stripe, a
    # stripe's B chunk from L1 by every row tile.
    chunk = max(16, min(CHUNK, (A_CHUNK_BYTES // item) // max(Kp, 1)))
    for t0 in range(0, kred, chunk):
        steps = min(chunk, kred - t0)
        for js in range(js0, js1):
            j0 = js * nr
            if js < full:
                b_addr, k_addr = s0 + (src_base + j0) * item, k0
            else:
                b_addr, k_addr = tb0, tk0
            nvec = min(NV, -(-(ncol - j0) // vl))  # the last stripe may be partial
            for kt in range(0, Kp, MR):
                c_addr, acc = r0 + (kt * ldr + j0) * item, 1 if t0 > 0 else 0
                if kt + MR <= K:  # A in place: steps from the table, or consecutive
                    a_addr, a_ld, ao_addr = w0 + (kt * lda + (0 if table else t0)) * item, lda, ao0
                else:  # the zero-padded copy of the last rows
                    a_addr, a_ld, ao_addr = wt0 + (0 if table else t0) * item, lda_tail, at0
                microkernel_cols(nvec, table, steps, a_addr, a_ld, ao_addr + t0 * 8, b_addr, k_addr + t0 * 8,
                                 c_addr, ldr, acc, tag)
    keep_alive((tb, tk))  # read through their addresses only


@njit(cache=True, nogil=True)
def unblock(k0, k1, res, ldr, out, K, Ho, Wo, Q, n0, nb, p0, rows, img_pitch, row_pitch,
            oh0, osh, ow0, osw, accumulate):
    """Store rows ``k0:k1`` of a block result into the flat C-ordered (N, K, Ho, Wo) ``out``:
    column ``i*img_pitch + p*row_pitch + q`` (``i < nb, p < rows, q < Q``) is pixel
    ``out[n0 + i, k, oh0 + (p0 + p)*osh, ow0 + q*osw]``; other columns are junk."""
    plane = Ho * Wo
    item = res.itemsize
    o_addr, r_addr = out.ctypes.data, res.ctypes.data
    tag = np.empty(0, res.dtype)
    # Without junk, an image's rows are one run (long copies are what the hardware streams).
    runs_whole = row_pitch == Q and osh == 1 and osw == 1 and Wo == Q
    for k in range(k0, k1):
        for i in range(nb):
            o_img = ((n0 + i) * K + k) * plane + (oh0 + p0 * osh) * Wo + ow0
            s_img = k * ldr + i * img_pitch
            if runs_whole:
                n = rows * Q
                if accumulate:
                    for q in range(n):
                        out[o_img + q] += res[s_img + q]
                else:
                    copy_elems(o_addr + o_img * item, r_addr + s_img * item, n, tag)
                continue
            for p in range(rows):
                s0 = s_img + p * row_pitch
                o0 = o_img + p * osh * Wo
                if osw == 1 and accumulate:
                    for q in range(Q):
                        out[o0 + q] += res[s0 + q]
                elif osw == 1:
                    copy_elems(o_addr + o0 * item, r_addr + s0 * item, Q, tag)
                else:
                    for q in range(Q):
                        if accumulate:
                            out[o0 + q * osw] += res[s0 + q]
                        else:
                            out[o0 + q * osw] = res[s0 + q]


def filter_rows(w):
    """A for :func:`stripes`: ``w`` (K, C, R, S) as a flat row-major ``K x C*R*S`` matrix and
    its last ``K % MR`` rows padded with zeros to a full tile (empty when ``MR`` divides K)."""
    K = w.shape[0]
    kred = int(np.prod(w.shape[1:]))
    wm = np.ascontiguousarray(w).reshape(-1)
    full = K // MR * MR
    wtail = np.zeros(MR * kred if full < K else 0, w.dtype)
    wtail[:(K - full) * kred] = wm[full * kred:]
    return wm, wtail


class Plan:
    """Source mode and blocks ``(n0, n1, p0, p1)`` of one layer (see the module docstring).

    ``cost`` is in multiply-adds: the GEMM over every computed column (junk included) plus
    the packing of ``COLS``. ``mode`` forces a source (``SLAB`` or ``COLS``).
    """

    def __init__(self, x_shape, K, P, Q, R, S, sh, sw, dh, dw, itemsize, mode=None):
        N, C, H, W = x_shape
        self.eh, self.ew = (dh * (R - 1)) // sh, (dw * (S - 1)) // sw
        self.Wph = Q + self.ew
        self.kred = C * R * S
        nr = tile_cols(itemsize)
        Kp = _up(K, MR)
        _, self.used = slab_offsets(C, R, S, sh, sw, dh, dw, self.Wph, 1)
        phases = int(self.used.sum())
        modes = {COLS: (self.kred * Q, 0, Q, 0),
                 SLAB: (phases * C * self.Wph, phases * C * self.eh * self.Wph, self.Wph, self.eh)}
        if mode is not None:
            modes = {mode: modes[mode]}
        best = None
        for mode, (src_row, src_fixed, pitch, extra_rows) in modes.items():
            per_row = (src_row + Kp * pitch) * itemsize
            blocks = _blocks(N, P, pitch, per_row, src_fixed * itemsize)
            cost = 0
            for n0, n1, p0, p1 in blocks:
                rows = p1 - p0
                ncol = (n1 - n0 - 1) * (rows + extra_rows) * pitch + rows * pitch
                cost += _up(ncol, nr) * Kp * self.kred
                if mode == COLS:
                    cost += ncol * self.kred * PACK_MADDS
                elif sw > 1:
                    cost += phases * C * (n1 - n0) * (rows + extra_rows) * pitch * PHASE_PACK_MADDS
            if best is None or cost < best[0]:
                best = (cost, mode, blocks)
        self.cost, self.mode, self.blocks = best
        self.pitch = Q if self.mode != SLAB else self.Wph
        self.extra_rows = self.eh if self.mode == SLAB else 0
        self.shape = (C, R, S, sh, sw, dh, dw)

    def columns(self, blk):
        """``(nb, rows, img_pitch, ncol)`` of block ``blk``: images, output rows, columns per
        image and columns in all (the last image's junk rows excluded)."""
        n0, n1, p0, p1 = blk
        nb, rows = n1 - n0, p1 - p0
        img_pitch = (rows + self.extra_rows) * self.pitch
        return nb, rows, img_pitch, (nb - 1) * img_pitch + rows * self.pitch

    def pack_slab(self, x, blk, slab, top, left):
        """Fill ``slab`` with block ``blk`` of ``x`` on the kernel threads; returns its row pitch
        ``L`` and the per-tap offsets ``koff``. ``slab`` must hold ``slab_elems(L)``."""
        C, R, S, sh, sw, dh, dw = self.shape
        nb, rows, img_pitch, _ = self.columns(blk)
        L = _odd_lines(nb * img_pitch, x.dtype.itemsize)
        threads.run_range(pack_slab, C, x, blk[0], blk[1], blk[2], rows + self.eh, self.Wph, L, sh, sw,
                          self.used, top, left, slab)
        return L, slab_offsets(C, R, S, sh, sw, dh, dw, self.Wph, L)[0]

    def slab_elems(self, L):
        """Elements of a slab of row pitch ``L``: the phase rows of the ``C`` channels, plus the
        slack that junk columns read (up to ``eh*Wph + ew`` past a row)."""
        C, _, _, sh, sw = self.shape[:5]
        return sh * sw * C * L + self.eh * self.Wph + self.ew


def _blocks(N, P, pitch, per_row, fixed):
    """``(n0, n1, p0, p1)`` blocks of about ``BLOCK_BYTES``: several whole images (at least
    ``MIN_COLS`` columns, ``pitch`` per output row, where the batch allows), else bands of
    output rows of one image."""
    per_image = P * per_row + fixed
    if per_image <= BLOCK_BYTES or P * pitch < MIN_COLS:
        nb = max(1, min(N, max(BLOCK_BYTES // max(per_image, 1), -(-MIN_COLS // (P * pitch)))))
        nblk = -(-N // nb)
        nb = -(-N // nblk)
        return [(n0, min(N, n0 + nb), 0, P) for n0 in range(0, N, nb)]
    rows = max(1, min(P, (BLOCK_BYTES - fixed) // max(per_row, 1)))
    nband = -(-P // rows)
    rows = -(-P // nband)
    return [(n, n + 1, p0, min(P, p0 + rows)) for n in range(N) for p0 in range(0, P, rows)]


def forward(x, w, P, Q, sh, sw, dh, dw, top, left, out, accumulate, out_origin=(0, 1, 0, 1),
            mode=None, plan=None):
    """``out (+)= conv(x, w)``; see :func:`_forward` (``w`` is (K, C, R, S), C-contiguous)."""
    K, C, R, S = w.shape
    wm, wtail = filter_rows(w)
    empty = np.empty(0, np.int64)
    _forward(x, (wm, wtail, C * R * S, empty, empty, K), R, S, P, Q, sh, sw, dh, dw, top, left, out,
             accumulate, out_origin, mode, plan)


def _forward(x, filt, R, S, P, Q, sh, sw, dh, dw, top, left, out, accumulate, out_origin=(0, 1, 0, 1),
             mode=None, plan=None):
    """``out (+)= conv(x, w)`` for output size ``(P, Q)`` and first-tap offsets ``top``/``left``.

    ``filt = (wm, wtail, lda, aoff, aoff_tail, K)`` is the filter as :func:`stripes` reads it
    (``K`` output channels, taps in the order of ``slab_offsets`` for ``R x S``).
    ``x`` and ``out`` are C-contiguous of one dtype; output pixel ``(p, q)`` of image
    ``n`` goes to ``out[n, k, oh0 + p*osh, ow0 + q*osw]`` with ``out_origin = (oh0, osh, ow0,
    osw)`` (backward-data writes one stride phase of ``dx`` per call this way). ``mode``
    forces the source of B (``SLAB`` or ``COLS``; tests and warm-up); ``plan`` is this
    layer's :class:`Plan` when the caller already has it.
    """
    N, C, H, W = x.shape
    K = filt[5]
    if N == 0 or K == 0 or P == 0 or Q == 0:
        return
    oh0, osh, ow0, osw = out_origin
    if C == 0:
        if not accumulate:
            out[:, :, oh0::osh, ow0::osw][:, :, :P, :Q] = 0
        return
    item = x.dtype.itemsize
    nr = tile_cols(item)
    Kp = _up(K, MR)
    if plan is None:
        plan = Plan(x.shape, K, P, Q, R, S, sh, sw, dh, dw, item, mode or FORCE_MODE)
    kred = plan.kred
    flat_out = out.reshape(-1)  # C-contiguous: a view
    store = (K, out.shape[2], out.shape[3], Q)
    geom = (oh0, osh, ow0, osw, 1 if accumulate else 0)
    src = res = None
    for blk in plan.blocks:
        n0, n1, p0, p1 = blk
        nb, rows, img_pitch, ncol = plan.columns(blk)
        nst = -(-ncol // nr)
        if res is None:
            res = np.empty(Kp * nst * nr, x.dtype)  # the first block is the largest
        if plan.mode == COLS:
            pitch = _odd_lines(ncol, item)
            if src is None:
                src = np.empty(kred * pitch, x.dtype)
            threads.run_range(pack_cols, kred, x, n0, n1, p0, p1, Q, R, S, sh, sw, dh, dw, top, left,
                              src, pitch)
            koff = np.arange(kred, dtype=np.int64) * pitch
            source, base, tail_safe = src, 0, 0
        else:
            if src is None:
                # Zeros keep junk reads finite; one stripe of slack past the last row.
                src = np.zeros(plan.slab_elems(_odd_lines(nb * img_pitch, item)) + nr, x.dtype)
            _, koff = plan.pack_slab(x, blk, src, top, left)
            source, base, tail_safe = src, 0, 1
        ldr = nst * nr
        threads.run_range(stripes, nst, *filt, source, base, koff, ncol, tail_safe, res, ldr)
        threads.run_range(unblock, K, res, ldr, flat_out, *store, n0, nb, p0, rows, img_pitch,
                          plan.pitch, *geom)


def backward_data(dy, w, H, W, sh, sw, dh, dw, top, left, dx, accumulate):
    """``dx (+)= conv_transpose(dy, w)`` as ``sh*sw`` stride-1 forward convolutions of ``dy``.

    Input rows ``ih = ih0 + m*sh`` (one *phase*) receive only the taps ``r`` with
    ``(ih + top - r*dh) % sh == 0``; those are evenly spaced, so each phase is a stride-1
    correlation of ``dy`` with a flipped, transposed sub-filter, written to
    ``dx[:, :, ih0::sh, iw0::sw]`` (no scatter-add). Stride 1 is the single phase with every
    tap. The filter is read in place through a step-offset table (:func:`_flipped`): no
    flipped copy. ``dy``, ``w`` and ``dx`` are C-contiguous.
    """
    for ih0 in range(min(sh, H)):
        rs, dh2, top2 = _phase_taps(ih0, top, sh, dh, w.shape[2])
        for iw0 in range(min(sw, W)):
            ss, dw2, left2 = _phase_taps(iw0, left, sw, dw, w.shape[3])
            Hp, Wp = len(range(ih0, H, sh)), len(range(iw0, W, sw))
            if rs is None or ss is None or dy.shape[1] == 0:
                if not accumulate:
                    dx[:, :, ih0::sh, iw0::sw] = 0
                continue
            rows = np.arange(w.shape[2])[rs].astype(np.int64)
            cols = np.arange(w.shape[3])[ss].astype(np.int64)
            _forward(dy, _flipped(w, rows, cols), len(rows), len(cols), Hp, Wp, 1, 1, dh2, dw2, top2,
                     left2, dx, accumulate, out_origin=(ih0, sh, iw0, sw))


def warmup(dtype):
    """Compile (or load from Numba's cache) this module's kernels for ``dtype``, both sources."""
    x = np.ones((1, 2, 5, 5), dtype)
    w = np.ones((3, 2, 3, 3), dtype)
    out = np.empty((1, 3, 5, 5), dtype)
    for mode in (SLAB, COLS):
        forward(x, w, 5, 5, 1, 1, 1, 1, 1, 1, out, False, mode=mode)
        forward(x, w, 5, 5, 1, 1, 1, 1, 1, 1, out, True, mode=mode)
    backward_weight(x, out, 3, 3, 1, 1, 1, 1, 1, 1, w, False)
    backward_data(out, w, 5, 5, 1, 1, 1, 1, 1, 1, x, False)


def _flipped(w, rows, cols):
    """The transposed, flipped filter of one backward-data phase as :func:`stripes` reads it,
    without copying ``w``: output channel ``c`` (row ``c`` at pitch ``R*S``) and step
    ``(k, i, j)`` at offset ``k*C*R*S + rows[i]*S + cols[j]``; the last ``C % MR`` channels
    are copied, zero-padded, into a ``(K, MR, R*S)`` tail."""
    K, C, R, S = w.shape
    RS = R * S
    taps = (rows[:, None] * S + cols[None, :]).ravel()
    aoff = (np.arange(K, dtype=np.int64)[:, None] * (C * RS) + taps[None, :]).ravel()
    full = C // MR * MR
    wtail = np.zeros((K, MR, RS) if full < C else 0, w.dtype)
    if full < C:
        wtail[:, :C - full] = w[:, full:].reshape(K, C - full, RS)
    aoff_tail = (np.arange(K, dtype=np.int64)[:, None] * (MR * RS) + taps[None, :]).ravel()
    return w.reshape(-1), wtail.reshape(-1), RS, aoff, aoff_tail, C


def _phase_taps(i0, top, stride, dil, R):
    """Taps (a reversed slice of the filter axis, or None), ``dy``-side dilation and first-tap
    offset of the phase of input rows ``i0::stride``."""
    u = i0 + top
    phi, base = u % stride, u // stride
    taps = [r for r in range(R) if (r * dil) % stride == phi]
    if not taps:
        return None, 1, 0
    step = dil // int(np.gcd(stride, dil))
    t_last = (taps[-1] * dil - phi) // stride
    spacing = taps[1] - taps[0] if len(taps) > 1 else 1
    flipped = slice(taps[-1], taps[0] - 1 if taps[0] else None, -spacing)
    return flipped, int(step), int(t_last - base)


@njit(cache=True, nogil=True)
def transpose(src, s0, lds, dst, d0, ldd, a0, a1, b0, b1, accumulate, dst_rows_outer):
    """``dst[d0 + a*ldd + b] (+)= src[s0 + b*lds + a]`` for ``a0 <= a < a1, b0 <= b < b1``:
    square tiles transposed in registers (:data:`~.ukernel.transpose_tile`), then the ragged
    edges element by element. Tiles go a band of ``lanes`` destination rows at a time when
    ``dst_rows_outer``, else of source rows: :mod:`.klanes`' filter panels
    (:func:`.klanes.fill_panels`) and :func:`pack_dyt` measured fastest by source rows (each
    source line read once, in order: a whole-filter copy of ResNet-50's largest filters ran at
    1.3-2.4 GB/s, against 0.7-1.9 element by element; conv1's ``dy`` 1.4x faster than by
    destination rows), klanes' store of the result by destination
    rows (by source rows, ResNet-50's res2 and res3 3x3 calls ran 2-17% slower, measured
    alternating)."""
    item = src.itemsize
    lanes_ = VBYTES // item
    sa, da, tag = src.ctypes.data, dst.ctypes.data, np.empty(0, src.dtype)
    af, bf = a0 + (a1 - a0) // lanes_ * lanes_, b0 + (b1 - b0) // lanes_ * lanes_
    # Outer and inner tile loops over a or b: (o0, o1) and (i0, i1) with a = o or i.
    o0, o1, i0, i1 = (a0, af, b0, bf) if dst_rows_outer else (b0, bf, a0, af)
    for o in range(o0, o1, lanes_):
        for i in range(i0, i1, lanes_):
            a, b = (o, i) if dst_rows_outer else (i, o)
            transpose_tile(sa + (s0 + b * lds + a) * item, lds, da + (d0 + a * ldd + b) * item, ldd,
                           accumulate, tag)
    for a in range(a0, a1):
        for b in range(bf if a < af else b0, b1):
            if accumulate:
                dst[d0 + a * ldd + b] += src[s0 + b * lds + a]
            else:
                dst[d0 + a * ldd + b] = src[s0 + b * lds + a]


@njit(cache=True, nogil=True)
def pack_dyt(t0, t1, dy, n0, p0, rows, dyt, ldy):
    """Pixels ``t0:t1`` (of the block's ``nb*rows*Q``: images ``n0:n0+nb``, output rows
    ``p0:p0+rows``) of ``dy`` transposed into pixel-major rows: ``dyt[t*ldy + k] =
    dy[n0+i, k, p0+p, q]`` for ``t = (i*rows + p)*Q + q``; columns ``k >= K`` are left as
    they are."""
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    per_image = rows * Q
    dyf = dy.reshape(-1)
    t = t0
    while t < t1:
        i = t // per_image
        a0, a1 = t - i * per_image, min(t1 - i * per_image, per_image)
        transpose(dyf, ((n0 + i) * K * P + p0) * Q, P * Q, dyt, i * per_image * ldy, ldy, a0, a1, 0, K, 0, False)
        t = i * per_image + a1


@njit(cache=True, nogil=True)
def store_weight(k0, k1, acc, Kp, dwt, G, accumulate):
    """``dwt[k*G + g] (+)= acc[g*Kp + k]`` for output channels ``k0:k1`` and taps ``g < G``
    (``dwt`` flat)."""
    transpose(acc, 0, Kp, dwt, 0, G, k0, k1, 0, G, accumulate, True)


@njit(cache=True, nogil=True)
def weight_tiles(i0, i1, slab, rows_at, pixels_at, dyt, ldy, Kp, npx, chunk, dwt):
    """``dwt[g*Kp + k] += sum_t slab[rows_at[g] + pixels_at[t]] * dyt[t*ldy + k]`` over the
    block's ``npx`` pixels ``t``, for the row tiles ``i0:i1`` (tile ``i`` is rows ``g`` from
    ``i*MR_W`` on: the taps ``(c, r, s)`` in filter order, plus padding rows). A tile's
    accumulators stay in registers for ``chunk`` pixels and in L1 between chunks; a chunk of
    ``dyt`` (a column panel of ``NV_W`` vectors) stays in L1 while every tile passes over it,
    and the slab rows stream from L2."""
    item = slab.itemsize
    nrw = NV_W * (VBYTES // item)
    # Addresses taken once (see :func:`stripes`).
    s0, y0, d0 = slab.ctypes.data, dyt.ctypes.data, dwt.ctypes.data
    r0, p0 = rows_at.ctypes.data, pixels_at.ctypes.data
    tag = np.empty(0, slab.dtype)
    for kt in range(0, Kp, nrw):
        for j0 in range(0, npx, chunk):
            b_addr = y0 + (j0 * ldy + kt) * item
            for it in range(i0, i1):
                microkernel_px(min(chunk, npx - j0), s0, r0 + it * MR_W * 8, p0 + j0 * 8, b_addr, ldy,
                               d0 + (it * MR_W * Kp + kt) * item, Kp, 1, tag)
    keep_alive((slab, rows_at, pixels_at, dyt, dwt))


#: Pixels per backward-weight micro-kernel call.
WEIGHT_CHUNK = 128


def _slab_pixels(nb, rows, Q, img_pitch, Wph):
    """Slab columns of a block's pixels ``(i, p, q)`` in that order (junk columns skipped)."""
    cols = (np.arange(nb)[:, None, None] * img_pitch + np.arange(rows)[None, :, None] * Wph
            + np.arange(Q)[None, None, :])
    return cols.reshape(-1).astype(np.int64)


def backward_weight(x, dy, R, S, sh, sw, dh, dw, top, left, dwt, accumulate):
    """``dwt (+)= sum over pixels of dy x im2col(x)``; ``dwt`` is (K, C, R, S), C-contiguous.

    The GEMM ``dW[(c, r, s), k] = sum_t B[(c, r, s), t] * dyT[t, k]`` runs over the pixels
    ``t`` of each block, with B read in place from the block's slab (as in :func:`forward`;
    a row table gives each tap's slab row, a pixel table each pixel's column, so junk
    columns are never computed) and ``dy`` transposed into pixel-major rows. Its tiles are
    ``MR_W`` taps (any channels: a 3-channel layer fills them too) by ``NV_W`` vectors of
    output channels; they are split over the threads, so no partial sums need reducing.
    Memory: the slab and the transposed ``dy`` of one block (about ``BLOCK_BYTES``) and
    ``C*R*S*K`` accumulators (rounded up to the tile).
    """
    N, C, H, W = x.shape
    _, K, P, Q = dy.shape
    item = x.dtype.itemsize
    RS = R * S
    nrw = NV_W * lanes(item)
    Kp, Gp = _up(K, nrw), _up(C * RS, MR_W)
    acc_w = buffers.zeros(Gp * Kp, x.dtype)
    if N and P and Q and C and K:
        plan = Plan(x.shape, Kp, P, Q, R, S, sh, sw, dh, dw, item, SLAB)
        src = dyt = None
        tables = (None, None, None)  # (block shape, rows_at, pixels_at): blocks share them
        # dy's rows at a pitch of an odd number of cache lines: at Kp = 256 or 512 (1-2 KiB)
        # a chunk's rows would share a quarter or an eighth of L1's sets.
        ldy = _odd_lines(Kp, item)
        for blk in plan.blocks:
            n0, _, p0, _ = blk
            nb, rows, img_pitch, _ = plan.columns(blk)
            npx = nb * rows * Q
            if src is None:  # the first block is the largest
                src = buffers.empty(plan.slab_elems(_odd_lines(nb * img_pitch, item)), x.dtype)
                dyt = buffers.empty(npx * ldy, x.dtype)
                if Kp > K:  # padding output channels: zeros, never written by pack_dyt
                    dyt.reshape(npx, ldy)[:, K:Kp] = 0
            L, koff = plan.pack_slab(x, blk, src, top, left)
            if tables[0] != (nb, rows, L):
                rows_at = np.zeros(Gp, np.int64)  # padding rows read tap 0, land in padding
                rows_at[:C * RS] = koff
                tables = ((nb, rows, L), rows_at, _slab_pixels(nb, rows, Q, img_pitch, plan.Wph))
            threads.run_range(pack_dyt, npx, dy, n0, p0, rows, dyt, ldy)
            threads.run_range(weight_tiles, Gp // MR_W, src, tables[1], tables[2], dyt, ldy, Kp, npx,
                              WEIGHT_CHUNK, acc_w)
    threads.run_range(store_weight, K, acc_w, Kp, dwt.reshape(-1), C * RS, int(bool(accumulate)))
