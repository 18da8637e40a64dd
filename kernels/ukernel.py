"""Register-tiled micro-kernel of the direct convolution, emitted as LLVM IR through a Numba
intrinsic.

LLVM's loop vectoriser does not keep a GEMM tile in registers across a reduction, so the
inner kernel is written out: a tile of ``MR`` rows (output channels) by ``NV`` vectors of
``W`` lanes (output pixels) stays in vector registers for a whole run of ``steps`` reduction
steps. Step ``t`` broadcasts ``a[i*lda + t]`` for the ``MR`` rows ``i`` (A is the filter,
read in place: ``MR`` sequential streams) and loads ``NV`` vectors from ``b + koff[t]``: B is
addressed through a per-step offset table, so it can be the shifted windows of an input
slab (an implicit im2col, never materialised) or the rows of an explicit column block. At
the end the tile is stored to, or added into, ``c[i*ldc + j]``.

Tile shapes measured on an AVX-512 Xeon (float32, operands in L1, GFLOP/s at a moment when
the FMA limit measured 135): 8 x 3 vectors 132, 4 x 4 126, 14 x 2 90, 8 x 2 87; in whole
convolutions 8 x 3, 6 x 4 and 4 x 4 were within noise of each other. AVX-512 hosts use
``MR = 8, NV = 3`` (24 of the 32 vector registers accumulate). Hosts without AVX-512 have 16
vector registers of 32 bytes: ``MR = 4, NV = 3``. float64 uses the same shape with half the
lanes.

Callers pass addresses as int64 (``array.ctypes.data``), strides and offsets in elements,
and guarantee that every access is in bounds. Nothing is allocated.
"""

import os

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["VBYTES", "MR", "NV", "MR_W", "NV_W", "lanes", "tile_cols", "microkernel", "microkernel_at",
           "microkernel_cols", "MR_K", "NV_K", "microkernel_px", "copy_elems", "copy_row", "copy_tile_row",
           "deinterleave_row", "copy_every_other", "gather_stride", "TAP_ENTRIES", "add_taps_every_other",
           "prefetch_read", "prefetch_write", "keep_alive", "transpose_tile"]


def _has_avx512():
    try:
        import llvmlite.binding as ll
        return bool(ll.get_host_cpu_features().get("avx512f", False))
    except Exception:  # noqa: BLE001 - unknown host: the narrower tile is valid everywhere
        return False


def _vector_bytes():
    # CNNMM_VECTOR_BYTES=32 builds the narrower tile on an AVX-512 host, to test it. Numba's
    # cache does not see this setting: give such runs their own NUMBA_CACHE_DIR.
    forced = os.environ.get("CNNMM_VECTOR_BYTES", "")
    if forced:
        if forced not in ("32", "64"):
            raise ValueError(f"CNNMM_VECTOR_BYTES={forced!r}: use 32 or 64")
        return int(forced)
    return 64 if _has_avx512() else 32


#: Bytes of one vector register the tile is built for.
VBYTES = _vector_bytes()
#: Tile rows (output channels) ...
MR = 8 if VBYTES == 64 else 4
#: ... and vectors per row.
NV = 3  # microkernel_cols has the narrower tiles of 1 and 2 vectors


def lanes(itemsize):
    """Vector lanes for elements of ``itemsize`` bytes."""
    return VBYTES // itemsize


def tile_cols(itemsize):
    """Columns (output pixels) of one tile: ``NV * lanes``."""
    return NV * lanes(itemsize)


def _store_or_add(builder, acc, ptrs, values):
    """Store ``values`` (vectors) to ``ptrs``, or add them into what is there if ``acc != 0``."""
    with builder.if_else(builder.icmp_signed("!=", acc, ir.Constant(acc.type, 0))) as (add, store):
        with add:
            for p, value in zip(ptrs, values):
                builder.store(builder.fadd(builder.load(p, align=1), value), p, align=1)
        with store:
            for p, value in zip(ptrs, values):
                builder.store(value, p, align=1)


def _codegen(real, width, mr, nv, a_table, row_table=False):
    i64 = ir.IntType(64)
    vec = ir.VectorType(real, width)

    def codegen(context, builder, sig, args):
        if a_table:
            steps, a_addr, lda, aoff_addr, b_addr, koff_addr, c_addr, ldc, acc = args[:9]
            aoff = builder.inttoptr(aoff_addr, i64.as_pointer())
        else:
            steps, a_addr, lda, b_addr, koff_addr, c_addr, ldc, acc = args[:8]
        rptr = real.as_pointer()
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                             f"llvm.fma.v{width}{_vname(real)}")
        a0 = builder.inttoptr(a_addr, rptr)
        if row_table:  # ``lda`` is the address of the rows' offsets
            prow = builder.inttoptr(lda, i64.as_pointer())
            arows = [builder.gep(a0, [builder.load(builder.gep(prow, [ir.Constant(i64, i)]))])
                     for i in range(mr)]
        else:
            arows = [builder.gep(a0, [builder.mul(lda, ir.Constant(i64, i))]) for i in range(mr)]
        b0 = builder.inttoptr(b_addr, rptr)
        koff = None if row_table else builder.inttoptr(koff_addr, i64.as_pointer())
        zero = ir.Constant(vec, None)
        entry = builder.block
        loop = builder.append_basic_block("uk.loop")
        done = builder.append_basic_block("uk.done")
        builder.cbranch(builder.icmp_signed(">", steps, ir.Constant(i64, 0)), loop, done)

        builder.position_at_end(loop)
        t = builder.phi(i64)
        accs = [builder.phi(vec) for _ in range(mr * nv)]
        # With a row table the ``koff`` argument is B's row stride: one load per step fewer.
        bstep = builder.mul(t, koff_addr) if row_table else builder.load(builder.gep(koff, [t]))
        brow = builder.gep(b0, [bstep])
        bvecs = [builder.load(builder.bitcast(builder.gep(brow, [ir.Constant(i64, v * width)]),
                                              vec.as_pointer()), align=1)
                 for v in range(nv)]
        a_index = builder.load(builder.gep(aoff, [t])) if a_table else t
        new = []
        for i in range(mr):
            s = builder.load(builder.gep(arows[i], [a_index]))
            splat = _splat(builder, s, vec)
            for v in range(nv):
                new.append(builder.call(fma, [splat, bvecs[v], accs[i * nv + v]]))
        t1 = builder.add(t, ir.Constant(i64, 1))
        tail = builder.block
        builder.cbranch(builder.icmp_signed("<", t1, steps), loop, done)
        t.add_incoming(ir.Constant(i64, 0), entry)
        t.add_incoming(t1, tail)
        for phi, value in zip(accs, new):
            phi.add_incoming(zero, entry)
            phi.add_incoming(value, tail)

        builder.position_at_end(done)
        sums = []
        for value in new:
            phi = builder.phi(vec)
            phi.add_incoming(zero, entry)
            phi.add_incoming(value, tail)
            sums.append(phi)
        c0 = builder.inttoptr(c_addr, rptr)
        ptrs = [builder.bitcast(builder.gep(c0, [builder.add(builder.mul(ldc, ir.Constant(i64, i)),
                                                              ir.Constant(i64, v * width))]),
                                vec.as_pointer())
                for i in range(mr) for v in range(nv)]
        _store_or_add(builder, acc, ptrs, sums)
        return context.get_dummy_value()

    return codegen


def _splat(builder, value, vec):
    """The scalar ``value`` in every lane of a vector of type ``vec``."""
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vec.count), [0] * vec.count))


def _vname(real):
    """An LLVM element type's name in intrinsic names (``llvm.fma.v16f32``)."""
    return "f32" if isinstance(real, ir.FloatType) else "f64"


def _masked(builder, real, width):
    """LLVM's masked vector load and store of ``width`` elements of ``real`` (declared in
    ``builder``'s module): ``load(ptr, align, mask, passthru)``, ``store(value, ptr, align, mask)``."""
    i32 = ir.IntType(32)
    vec, mvec = ir.VectorType(real, width), ir.VectorType(ir.IntType(1), width)
    vptr = vec.as_pointer()
    load = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vptr, i32, mvec, vec]),
                                          f"llvm.masked.load.v{width}{_vname(real)}.p0")
    store = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [vec, vptr, i32, mvec]),
                                           f"llvm.masked.store.v{width}{_vname(real)}.p0")
    return load, store


def _ceil_div(builder, n, d):
    """``ceil(n / d)`` of the non-negative i64 value ``n`` and the constant ``d``."""
    i64 = ir.IntType(64)
    return builder.sdiv(builder.add(n, ir.Constant(i64, d - 1)), ir.Constant(i64, d))


def _lanes_from(builder, start, ivec, offsets=None):
    """The i64 vector ``start + offsets[lane]`` (``offsets``: the lane numbers by default)."""
    return builder.add(_splat(builder, start, ivec),
                       ir.Constant(ivec, list(range(ivec.count)) if offsets is None else offsets))


def _within(builder, index, lo, hi):
    """Mask of the lanes with ``lo <= index < hi`` (``index`` an i64 vector, ``lo``/``hi`` i64
    scalars; ``lo`` None: only ``index < hi``)."""
    below = builder.icmp_signed("<", index, _splat(builder, hi, index.type))
    if lo is None:
        return below
    return builder.and_(builder.icmp_signed(">=", index, _splat(builder, lo, index.type)), below)


def _real(tag):
    """LLVM element type and item size of the dtype tag ``tag`` (None for other dtypes)."""
    if tag.dtype == types.float32:
        return ir.FloatType(), 4
    if tag.dtype == types.float64:
        return ir.DoubleType(), 8
    return None, 0


def _intrinsic(mr, nv, a_table=False, row_table=False):
    def typer(tag):
        real, item = _real(tag)
        if real is None:
            return None
        sig = types.void(*([types.int64] * (9 if a_table else 8)), tag)
        return sig, _codegen(real, lanes(item), mr, nv, a_table, row_table)

    # Numba's intrinsics take a fixed argument list.
    if a_table:
        def kernel(typingctx, steps, a, lda, aoff, b, koff, c, ldc, acc, tag):
            return typer(tag)
    else:
        def kernel(typingctx, steps, a, lda, b, koff, c, ldc, acc, tag):
            return typer(tag)

    where = "a[prow[i] + aoff[t]]" if row_table else "a[i*lda + aoff[t]]" if a_table else "a[i*lda + t]"
    bwhere = "b[t*ldb + j]" if row_table else "b[koff[t] + j]"
    kernel.__doc__ = f"""``c[i*ldc + j] (+)= sum_t {where} * {bwhere}`` for ``i < {mr}``,
    ``j < {nv}*lanes``; arguments ``(steps, a, {'prow' if row_table else 'lda'}, {'aoff, ' if a_table else ''}b,
    {'ldb' if row_table else 'koff'}, c, ldc, acc, tag)``.

    All arguments but ``tag`` are int64 (addresses from ``array.ctypes.data``); ``acc != 0``
    adds into ``c``. ``tag`` is any array of the operands' dtype: it selects float32 or
    float64 code at compile time.
    """
    return intrinsic(kernel)


#: The ``MR x NV`` tile (forward and backward-data) ...
microkernel = _intrinsic(MR, NV)
#: ... with A's step offsets from a table: backward-data reads the filter in place, flipped.
microkernel_at = _intrinsic(MR, NV, a_table=True)
# The same tile cut to 1 and 2 vectors of columns (of NV = 3), plain and with an A table, for a
# block's last, partial stripe (:func:`microkernel_cols`).
_narrow1, _narrow2 = _intrinsic(MR, 1), _intrinsic(MR, 2)
_narrow_at1, _narrow_at2 = _intrinsic(MR, 1, a_table=True), _intrinsic(MR, 2, a_table=True)


@njit(inline="always")
def microkernel_cols(nvec, table, steps, a, lda, aoff, b, koff, c, ldc, acc, tag):
    """:data:`microkernel` (``table`` false; ``aoff`` unused) or :data:`microkernel_at`
    (``table`` true) on only the first ``nvec`` (at most ``NV``) vectors of the tile's columns.

    A block's last stripe holds ``ncol % tile_cols`` columns: a full tile over it computes up to
    ``NV - 1`` vectors of padding (7% of the work on a float32 block of 392 columns, eight 7x7
    images; measured 1.05x faster there)."""
    if nvec >= NV:
        if table:
            microkernel_at(steps, a, lda, aoff, b, koff, c, ldc, acc, tag)
        else:
            microkernel(steps, a, lda, b, koff, c, ldc, acc, tag)
    elif nvec == 2:
        if table:
            _narrow_at2(steps, a, lda, aoff, b, koff, c, ldc, acc, tag)
        else:
            _narrow2(steps, a, lda, b, koff, c, ldc, acc, tag)
    elif table:
        _narrow_at1(steps, a, lda, aoff, b, koff, c, ldc, acc, tag)
    else:
        _narrow1(steps, a, lda, b, koff, c, ldc, acc, tag)


#: The tile with output channels in the vector lanes, which come in multiples of 64 in common
#: networks (an ``NV = 3`` tile would pad K = 64 to 96) ...
MR_W, NV_W = (6, 4) if VBYTES == 64 else (MR, NV)
#: ... and A's rows at offsets from a table: :mod:`.klanes` broadcasts input pixels (rows at
#: any positions, so no junk columns) against vectors of output channels; backward-weight
#: broadcasts any ``MR_W`` filter taps' input values, pixel by pixel.
MR_K, NV_K = MR_W, NV_W
microkernel_px = _intrinsic(MR_K, NV_K, a_table=True, row_table=True)


@intrinsic
def copy_elems(typingctx, dst, src, n, tag):
    """Copy ``n`` elements of ``tag``'s dtype from address ``src`` to address ``dst`` (int64s;
    the ranges must not overlap) with ``llvm.memcpy``: the C library's copy, about twice
    as fast as a Numba loop on the rows that packing moves."""
    def codegen(context, builder, sig, args):
        d, s_, count = args[:3]
        i8p = ir.IntType(8).as_pointer()
        item = context.get_abi_sizeof(context.get_data_type(tag.dtype))
        nbytes = builder.mul(count, ir.Constant(ir.IntType(64), item))
        cgutils.raw_memcpy(builder, builder.inttoptr(d, i8p), builder.inttoptr(s_, i8p), nbytes, 1)
        return context.get_dummy_value()

    return types.void(types.int64, types.int64, types.int64, tag), codegen


@intrinsic
def copy_row(typingctx, dst, src, lo, hi, n, tag):
    """``dst[j] = src[j]`` for ``lo <= j < hi``, ``dst[j] = 0`` for the other ``j < n``: a row of
    a packed block with its zero padding, elements of ``tag``'s dtype at int64 addresses
    ``dst`` and ``src`` (``src[j]`` is never read outside ``lo:hi``), by whole vectors with
    masked loads and stores. For short rows: a loop over a 7-element row cost about 30 cycles,
    a ``memcpy`` call more."""
    real, item = _real(tag)
    if real is None:
        return None
    width = lanes(item)

    def codegen(context, builder, sig, args):
        d_addr, s_addr, lo_, hi_, n_ = args[:5]
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vec, ivec = ir.VectorType(real, width), ir.VectorType(i32, width)
        vptr = vec.as_pointer()
        load, store = _masked(builder, real, width)
        rptr = real.as_pointer()
        d0, s0 = builder.inttoptr(d_addr, rptr), builder.inttoptr(s_addr, rptr)
        iota = ir.Constant(ivec, list(range(width)))

        def lane(bound, j0):  # ``bound - j0`` clamped to [0, width], as an i32 splat
            v = builder.sub(bound, j0)
            v = builder.select(builder.icmp_signed("<", v, ir.Constant(i64, 0)), ir.Constant(i64, 0), v)
            v = builder.select(builder.icmp_signed(">", v, ir.Constant(i64, width)), ir.Constant(i64, width), v)
            return _splat(builder, builder.trunc(v, i32), ivec)

        chunks = _ceil_div(builder, n_, width)
        align = ir.Constant(i32, 1)
        with cgutils.for_range(builder, chunks) as loop:
            # Masks from 32-bit lane numbers: one vector compare each.
            j0 = builder.mul(loop.index, ir.Constant(i64, width))
            read = builder.and_(builder.icmp_signed(">=", iota, lane(lo_, j0)),
                                builder.icmp_signed("<", iota, lane(hi_, j0)))
            value = builder.call(load, [builder.bitcast(builder.gep(s0, [j0]), vptr), align, read,
                                        ir.Constant(vec, None)])
            builder.call(store, [value, builder.bitcast(builder.gep(d0, [j0]), vptr), align,
                                 builder.icmp_signed("<", iota, lane(n_, j0))])
        return context.get_dummy_value()

    return types.void(*([types.int64] * 5), tag), codegen


def _every_other_codegen(real, width, both):
    """Code of :func:`deinterleave_row` (``both``) and :func:`copy_every_other` (the even
    phase alone, whose odd lanes are never read)."""

    def codegen(context, builder, sig, args):
        if both:
            e_addr, o_addr, s_addr, lo0_, hi0_, lo1_, hi1_, n_ = args[:8]
        else:
            (e_addr, s_addr, lo0_, hi0_, n_), o_addr = args[:5], None
            lo1_ = hi1_ = ir.Constant(ir.IntType(64), 0)
        i1, i32, i64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
        vec, ivec, mvec = ir.VectorType(real, width), ir.VectorType(i64, width), ir.VectorType(i1, width)
        vptr = vec.as_pointer()
        load, store = _masked(builder, real, width)
        rptr = real.as_pointer()
        s0 = builder.inttoptr(s_addr, rptr)
        outputs = [builder.inttoptr(e_addr, rptr)] + ([builder.inttoptr(o_addr, rptr)] if both else [])
        align, zero = ir.Constant(i32, 1), ir.Constant(vec, None)
        odd_lane = ir.Constant(mvec, [lane % 2 for lane in range(width)])
        pick = [ir.Constant(ir.VectorType(i32, width), list(range(first, 2 * width, 2))) for first in (0, 1)]
        with cgutils.for_range(builder, _ceil_div(builder, n_, width)) as loop:
            j0 = builder.mul(loop.index, ir.Constant(i64, width))
            halves = []
            for half in range(2):  # source elements 2*j0 + half*width + lane: j = j0 + (half*width + lane)//2
                j = _lanes_from(builder, j0, ivec, [(half * width + lane) // 2 for lane in range(width)])
                read = builder.select(odd_lane, _within(builder, j, lo1_, hi1_), _within(builder, j, lo0_, hi0_))
                at = builder.gep(s0, [builder.add(builder.add(j0, j0), ir.Constant(i64, half * width))])
                halves.append(builder.call(load, [builder.bitcast(at, vptr), align, read, zero]))
            write = _within(builder, _lanes_from(builder, j0, ivec), None, n_)
            for dst, order in zip(outputs, pick):
                builder.call(store, [builder.shuffle_vector(halves[0], halves[1], order),
                                     builder.bitcast(builder.gep(dst, [j0]), vptr), align, write])
        return context.get_dummy_value()

    return codegen


@intrinsic
def deinterleave_row(typingctx, even, odd, src, lo0, hi0, lo1, hi1, n, tag):
    """The two column phases of a row of a layer strided by 2, with their zero padding:
    ``even[j] = src[2*j]`` for ``lo0 <= j < hi0``, ``odd[j] = src[2*j + 1]`` for ``lo1 <= j <
    hi1``, zeros for the other ``j < n`` (elements of ``tag``'s dtype at int64 addresses;
    ``src`` is never read outside those ranges). Per vector of each phase: two masked loads
    and a shuffle, then a masked store, as :func:`copy_row` does. (Numba's loop over the pair
    of strided reads ran at about 1 ns per element.)"""
    real, item = _real(tag)
    if real is None:
        return None
    return types.void(*([types.int64] * 8), tag), _every_other_codegen(real, lanes(item), True)


@intrinsic
def copy_every_other(typingctx, dst, src, lo, hi, n, tag):
    """``dst[j] = src[2*j]`` for ``lo <= j < hi``, zeros for the other ``j < n``: one column
    phase of a row of a layer strided by 2 (:func:`~.im2col.im2col`), as
    :func:`deinterleave_row` without the odd phase."""
    real, item = _real(tag)
    if real is None:
        return None
    return types.void(*([types.int64] * 5), tag), _every_other_codegen(real, lanes(item), False)


@intrinsic
def gather_stride(typingctx, dst, src, stride, n, tag):
    """``dst[j] = src[j*stride]`` for ``j < n`` (elements of ``tag``'s dtype at int64
    addresses, ``stride`` in elements): a vector gather and a masked store per vector of
    ``dst``. For :func:`~.klanes.fill_panels_flipped`, which reads the filter's channels
    ``R*S`` apart (Numba's loop: 1.0-2.4 ns per element; this: 0.6-1.9, the most on filters
    read from memory)."""
    real, item = _real(tag)
    if real is None:
        return None
    width = lanes(item)

    def codegen(context, builder, sig, args):
        d_addr, s_addr, stride_, n_ = args[:4]
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vec, ivec, mvec = ir.VectorType(real, width), ir.VectorType(i64, width), ir.VectorType(ir.IntType(1), width)
        rptr = real.as_pointer()
        pvec = ir.VectorType(rptr, width)
        gather = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [pvec, i32, mvec, vec]),
                                                f"llvm.masked.gather.v{width}{_vname(real)}.v{width}p0")
        _, store = _masked(builder, real, width)
        d0 = builder.inttoptr(d_addr, rptr)
        step = builder.mul(stride_, ir.Constant(i64, item))
        iota = ir.Constant(ivec, list(range(width)))
        offsets = builder.mul(iota, _splat(builder, step, ivec))
        with cgutils.for_range(builder, _ceil_div(builder, n_, width)) as loop:
            j0 = builder.mul(loop.index, ir.Constant(i64, width))
            base = builder.add(s_addr, builder.mul(j0, step))
            ptrs = builder.inttoptr(builder.add(_splat(builder, base, ivec), offsets), pvec)
            inside = _within(builder, _lanes_from(builder, j0, ivec), None, n_)
            values = builder.call(gather, [ptrs, ir.Constant(i32, item), inside, ir.Constant(vec, None)])
            builder.call(store, [values, builder.bitcast(builder.gep(d0, [j0]), vec.as_pointer()),
                                 ir.Constant(i32, 1), inside])
        return context.get_dummy_value()

    return types.void(types.int64, types.int64, types.int64, types.int64, tag), codegen


#: Entries per tap of :func:`add_taps_every_other`'s table.
TAP_ENTRIES = 5


@intrinsic
def add_taps_every_other(typingctx, dst, taps, ntaps, n, tag):
    """``dst[2*(q + d) + e] += src[q]`` for ``lo <= q < hi``, summed over ``ntaps`` taps
    ``(src, d, lo, hi, e)`` (int64s, :data:`TAP_ENTRIES` per tap, at address ``taps``; ``src``
    an element address, ``e`` 0 or 1), on the ``n`` elements of the row at address ``dst``:
    every tap that lands in one input row of a layer strided by 2, scattered back from a column
    block (:func:`~.im2col.col2im`). Per vector of each phase: a masked load per tap into
    register sums of the even and the odd positions, two shuffles that interleave them, and a
    masked load, add and store of each half of ``dst``'s span, so ``dst`` is read and written
    once. (Numba's element-wise loop, one tap at a time, ran at about 1 ns per element.)"""
    real, item = _real(tag)
    if real is None:
        return None
    width = lanes(item)
    half = width // 2

    def codegen(context, builder, sig, args):
        d_addr, t_addr, ntaps_, n_ = args[:4]
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vec, ivec = ir.VectorType(real, width), ir.VectorType(i64, width)
        vptr = vec.as_pointer()
        load, store = _masked(builder, real, width)
        rptr = real.as_pointer()
        d0, table = builder.inttoptr(d_addr, rptr), builder.inttoptr(t_addr, i64.as_pointer())
        align, zero = ir.Constant(i32, 1), ir.Constant(vec, None)
        sums = [cgutils.alloca_once(builder, vec) for _ in range(2)]

        def entry(t, k):
            return builder.load(builder.gep(table, [builder.add(builder.mul(t, ir.Constant(i64, TAP_ENTRIES)),
                                                                ir.Constant(i64, k))]))

        # Chunks of ``width`` positions of each phase: ``2*width`` elements of dst.
        with cgutils.for_range(builder, _ceil_div(builder, n_, 2 * width)) as chunk:
            m0 = builder.mul(chunk.index, ir.Constant(i64, width))
            for acc in sums:
                builder.store(zero, acc)
            with cgutils.for_range(builder, ntaps_) as tap:
                src, shift, lo, hi, odd = (entry(tap.index, k) for k in range(TAP_ENTRIES))
                q0 = builder.sub(m0, shift)
                read = _within(builder, _lanes_from(builder, q0, ivec), lo, hi)
                at = builder.inttoptr(builder.add(src, builder.mul(q0, ir.Constant(i64, item))), vptr)
                values = builder.call(load, [at, align, read, zero])
                is_odd = builder.icmp_signed("!=", odd, ir.Constant(i64, 0))
                for acc, take in ((sums[0], builder.select(is_odd, zero, values)),
                                  (sums[1], builder.select(is_odd, values, zero))):
                    builder.store(builder.fadd(builder.load(acc), take), acc)
            even, odd_ = (builder.load(acc) for acc in sums)
            for part in range(2):  # dst[2*m0 + part*width + lane]: position m0 + part*half + lane//2
                spread = builder.shuffle_vector(even, odd_, ir.Constant(
                    ir.VectorType(i32, width), [part * half + lane // 2 + (width if lane % 2 else 0)
                                                for lane in range(width)]))
                first = builder.add(builder.add(m0, m0), ir.Constant(i64, part * width))
                inside = _within(builder, _lanes_from(builder, first, ivec), None, n_)
                at = builder.bitcast(builder.gep(d0, [first]), vptr)
                old = builder.call(load, [at, align, inside, zero])
                builder.call(store, [builder.fadd(old, spread), at, align, inside])
        return context.get_dummy_value()

    return types.void(types.int64, types.int64, types.int64, types.int64, tag), codegen


@intrinsic
def copy_tile_row(typingctx, dst, src, tag):
    """Copy one row of a tile, :func:`tile_cols` elements of ``tag``'s dtype, from address
    ``src`` to address ``dst`` as ``NV`` unaligned vector loads and stores (a ``memcpy`` call
    per row cost more than the copy: packing ran at half the speed)."""
    real, item = _real(tag)
    if real is None:
        return None
    vec = ir.VectorType(real, lanes(item))

    def codegen(context, builder, sig, args):
        vptr = vec.as_pointer()
        d, s_ = builder.inttoptr(args[0], vptr), builder.inttoptr(args[1], vptr)
        values = [builder.load(builder.gep(s_, [ir.Constant(ir.IntType(64), v)]), align=1) for v in range(NV)]
        for v, value in enumerate(values):
            builder.store(value, builder.gep(d, [ir.Constant(ir.IntType(64), v)]), align=1)
        return context.get_dummy_value()

    return types.void(types.int64, types.int64, tag), codegen


def _prefetch(write):
    def codegen(context, builder, sig, args):
        addr, ld, rows, nbytes = args
        i8p, i32, i64 = ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        line = ir.Constant(i64, 64)
        nlines = builder.sdiv(builder.add(nbytes, ir.Constant(i64, 63)), line)
        with cgutils.for_range(builder, rows) as row:
            start = builder.add(addr, builder.mul(row.index, ld))
            with cgutils.for_range(builder, nlines) as ln:
                p = builder.inttoptr(builder.add(start, builder.mul(ln.index, line)), i8p)
                # rw, locality 3 (keep in all levels), data cache
                builder.call(fn, [p, ir.Constant(i32, int(write)), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    def kernel(typingctx, addr, ld, rows, nbytes):
        return types.void(types.int64, types.int64, types.int64, types.int64), codegen

    kernel.__doc__ = f"""Prefetch for {'writing' if write else 'reading'} ``rows`` rows of ``nbytes`` bytes
    starting at address ``addr``, ``ld`` bytes apart (int64s). A hint: it never faults."""
    return intrinsic(kernel)


#: Prefetch hints for the pointwise kernel (:mod:`.pointwise`): the next input rows it packs
#: and the output lines its next tile writes (their misses are what it waits for otherwise).
prefetch_read = _prefetch(False)
prefetch_write = _prefetch(True)


@intrinsic
def keep_alive(typingctx, arrays):
    """Emits no code; a use of the tuple ``arrays`` that keeps them allocated up to here.

    Numba frees a function's own array after its last use, and an address taken from it
    (``.ctypes.data``) is not a use: an array read only through its address by the
    micro-kernel can be freed, and its memory handed to the next allocation (of this thread
    or another), while the kernel still reads it. Call this at the end of such a function."""
    if not isinstance(arrays, types.BaseTuple):
        return None
    return types.void(arrays), lambda context, builder, sig, args: context.get_dummy_value()


def _transpose_codegen(real, width):
    i64 = ir.IntType(64)
    vec = ir.VectorType(real, width)

    def codegen(context, builder, sig, args):
        s_addr, lds, d_addr, ldd, acc = args[:5]
        rptr = real.as_pointer()
        s0, d0 = builder.inttoptr(s_addr, rptr), builder.inttoptr(d_addr, rptr)

        def row(base, ld, i):
            return builder.bitcast(builder.gep(base, [builder.mul(ld, ir.Constant(i64, i))]), vec.as_pointer())

        rows = [builder.load(row(s0, lds, i), align=1) for i in range(width)]
        # Stage ``s`` swaps the off-diagonal s x s blocks of every 2s x 2s block; all stages
        # together swap row and column index bit by bit: the transpose.
        s = width // 2
        while s:
            lo = [j if not j & s else width + j - s for j in range(width)]
            hi = [j + s if not j & s else width + j for j in range(width)]
            for i in range(width):
                if i & s:
                    continue
                a, b = rows[i], rows[i + s]
                rows[i] = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), width), lo))
                rows[i + s] = builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), width), hi))
            s //= 2
        ptrs = [row(d0, ldd, i) for i in range(width)]
        _store_or_add(builder, acc, ptrs, rows)
        return context.get_dummy_value()

    return codegen


@intrinsic
def transpose_tile(typingctx, src, lds, dst, ldd, acc, tag):
    """``dst[i*ldd + j] (+)= src[j*lds + i]`` for ``i, j < lanes``: one square tile of vector
    registers transposed by shuffles (no element-wise loads or stores). Addresses and strides
    as for :data:`microkernel` (int64, strides in elements); ``acc != 0`` adds into ``dst``;
    ``tag``'s dtype selects float32 or float64 code."""
    real, item = _real(tag)
    if real is None:
        return None
    return types.void(*([types.int64] * 5), tag), _transpose_codegen(real, lanes(item))
