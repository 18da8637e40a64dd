"""Node-level kernels (cnnmm.kernels) against the float64 oracle cnnmm.reference.

The oracle takes symmetric padding; asymmetric padding is checked by zero-padding the input
explicitly and calling the oracle with pad=0 (cropping dx back for backward-data). Each case
also runs with the drivers' block-size knobs forced small, so the band blocking, the wide
(stride-1) packing and batched im2col are all exercised on small layers, and with each
source of the direct kernels (slab, explicit columns) forced, with one-stripe blocks and
short reduction chunks, with the output-channel-lanes kernel (:mod:`cnnmm.kernels.klanes`)
forced, and with the blocked pointwise GEMM (:mod:`cnnmm.kernels.pointwise`) forced on every
1x1 stride-1 layer (also with one-stripe blocks, 3-channel chunks and one row tile at a time).
"""

import contextlib
import itertools
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnmm import kernels
from cnnmm import reference as ref
from cnnmm.kernels import direct, drivers, fastload, im2col, klanes, pointwise, ukernel, wide
from cnnmm.spec import ConvSpec

TOL = {np.float64: 1e-12, np.float32: 1e-5}

# Knobs: default; one output row per band and always-wide stride 1 (and one-row direct blocks
# with 16-step chunks from explicit columns); never wide (direct from a slab, 1 MiB blocks).
# Both of these send every backward-weight with a filter wider than 1x1 to the direct
# kernel, whatever the image size, and every forward to .direct; the k-lanes configurations
# send every forward wider than 1x1 to .klanes (whole images, or one-row bands with 16-step
# chunks).
CONFIGS = {
    "default": {},
    "tiny-blocks": {(drivers, "BLOCK_ELEMS"): 1, (drivers, "BLOCK_ELEMS_BWD_WEIGHT"): 1,
                    (drivers, "MIN_COLS"): 1, (drivers, "MAX_BLOCK_ELEMS"): 1,
                    (drivers, "WIDE_MIN_PIXELS"): 0, (direct, "BLOCK_BYTES"): 1,
                    (direct, "MIN_COLS"): 1, (direct, "CHUNK"): 16, (direct, "FORCE_MODE"): "cols",
                    (direct, "WEIGHT_CHUNK"): 16, (drivers, "FORCE_DIRECT_WEIGHT"): True,
                    (klanes, "FORCE"): False},
    "no-wide": {(drivers, "BLOCK_ELEMS"): 64, (drivers, "MIN_COLS"): 1, (drivers, "MAX_BLOCK_ELEMS"): 64,
                (drivers, "WIDE_MIN_PIXELS"): 10**9, (direct, "FORCE_MODE"): "slab",
                (drivers, "FORCE_DIRECT_WEIGHT"): True, (klanes, "FORCE"): False},
    "k-lanes": {(klanes, "FORCE"): True},
    "k-lanes-tiny": {(klanes, "FORCE"): True, (klanes, "BLOCK_BYTES"): 1, (klanes, "CHUNK"): 16},
    "pointwise": {(pointwise, "FORCE"): True, (pointwise, "FORCE_WEIGHT"): True},
    "pointwise-tiny": {(pointwise, "FORCE"): True, (pointwise, "NSTRIPES"): 1, (pointwise, "KC"): 3,
                       (pointwise, "A_BLOCK_BYTES"): 1, (pointwise, "FORCE_WEIGHT"): True,
                       (pointwise, "WEIGHT_CHUNK"): 5},
}


@contextlib.contextmanager
def knobs(name):
    saved = {k: getattr(*k) for k in CONFIGS[name]}
    try:
        for (module, attr), v in CONFIGS[name].items():
            setattr(module, attr, v)
        yield
    finally:
        for (module, attr), v in saved.items():
            setattr(module, attr, v)


@pytest.fixture(scope="module", autouse=True)
def _warm():
    kernels.warmup()


def out_hw(H, W, R, S, stride, padding, dilation):
    t, b, l, r = padding
    return (max(0, (H + t + b - dilation[0] * (R - 1) - 1) // stride[0] + 1),
            max(0, (W + l + r - dilation[1] * (S - 1) - 1) // stride[1] + 1))


def oracle(x, w, dy, stride, padding, dilation):
    """(y, dx, dw) in float64 from cnnmm.reference on an explicitly padded input."""
    t, b, l, r = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (t, b), (l, r)))
    N, C, Hp, Wp = xp.shape
    K, _, R, S = w.shape
    spec = ConvSpec(N, C, K, Hp, Wp, R, S, stride=stride, pad=0, dilation=dilation)
    assert spec.output_shape == dy.shape
    y = ref.conv2d_forward(xp, w, spec)
    dx = ref.conv2d_backward_data(dy, w, spec)[:, :, t:Hp - b, l:Wp - r]
    dw = ref.conv2d_backward_weight(xp, dy, spec)
    return y, dx, dw


def close(got, want, dtype):
    assert got.dtype == dtype and got.shape == want.shape
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-300)
    err = float(np.abs(got.astype(np.float64) - want).max(initial=0.0)) / scale
    assert err <= TOL[dtype], f"relative error {err:.3g} > {TOL[dtype]}"


def make(rng, N, C, K, H, W, R, S, stride, padding, dilation, dtype):
    P, Q = out_hw(H, W, R, S, stride, padding, dilation)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, R, S)).astype(dtype)
    dy = rng.standard_normal((N, K, P, Q)).astype(dtype)
    return x, w, dy


def check_all(x, w, dy, stride, padding, dilation):
    dtype = x.dtype.type
    y, dx, dw = oracle(x, w, dy, stride, padding, dilation)
    H, W = x.shape[2:]
    R, S = w.shape[2:]
    close(kernels.conv2d_forward(x, w, stride, padding, dilation), y, dtype)
    close(kernels.conv2d_backward_data(dy, w, (H, W), stride, padding, dilation), dx, dtype)
    close(kernels.conv2d_backward_weight(x, dy, (R, S), stride, padding, dilation), dw, dtype)


# (N, C, K, H, W, R, S, stride, padding (t, b, l, r), dilation)
CASES = {
    "3x3-pad1": (2, 5, 6, 11, 13, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "stride2": (2, 3, 4, 12, 10, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),
    "stride3": (2, 4, 3, 13, 11, 3, 3, (3, 3), (1, 1, 1, 1), (1, 1)),
    "dilation2": (2, 3, 4, 11, 12, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2)),
    "dilation2-stride2": (1, 3, 2, 15, 14, 3, 2, (2, 2), (2, 1, 0, 3), (2, 2)),
    "1x1": (3, 7, 5, 6, 7, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    "1x1-wide": (3, 9, 19, 9, 11, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    # Whole and partial channel stripes and row tiles of pointwise backward-weight, which the
    # default configuration takes here; a chunk crosses images.
    "1x1-stripes": (3, 70, 65, 5, 7, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    # Strided: the sampled pixels copied, then the same kernel; bottom/right padding that adds
    # an output row or column (of zeros read) keeps the column packing.
    "1x1-strided-stripes": (2, 66, 64, 9, 8, 1, 1, (2, 3), (0, 0, 0, 0), (1, 1)),
    "1x1-stride2-bottom-pad": (2, 66, 64, 9, 8, 1, 1, (2, 2), (0, 2, 0, 1), (1, 1)),
    "1x1-stride2-pad": (2, 4, 3, 7, 8, 1, 1, (2, 2), (1, 2, 2, 1), (1, 1)),
    "1x1-pad": (2, 5, 4, 6, 7, 1, 1, (1, 1), (1, 0, 2, 1), (2, 2)),
    "1x1-bottom-pad": (2, 5, 4, 6, 7, 1, 1, (1, 1), (0, 2, 0, 1), (1, 1)),
    "7x7-stride2": (1, 3, 4, 23, 21, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1)),
    "R!=S": (2, 3, 5, 10, 9, 2, 5, (1, 1), (0, 1, 2, 2), (1, 1)),
    "primes": (3, 7, 11, 13, 17, 3, 5, (2, 3), (1, 1, 2, 2), (1, 2)),
    "asym-pad": (2, 3, 4, 9, 8, 3, 3, (1, 1), (2, 0, 0, 1), (1, 1)),
    "asym-pad-stride2": (2, 3, 4, 9, 8, 3, 3, (2, 2), (0, 2, 1, 0), (1, 1)),
    # Stride-2 slab rows longer than two vectors of either dtype, the last one partial.
    "stride2-wide-rows": (2, 3, 5, 9, 75, 3, 3, (2, 2), (1, 1, 1, 0), (1, 1)),
    "pad>extent": (1, 2, 3, 5, 4, 1, 2, (1, 1), (3, 2, 0, 4), (1, 1)),
    "stride-hw-differ": (2, 3, 2, 11, 12, 3, 3, (1, 2), (1, 1, 1, 1), (2, 1)),
    "N=1,C=1,K=1": (1, 1, 1, 8, 7, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "filter=input": (2, 3, 4, 5, 4, 5, 4, (1, 1), (0, 0, 0, 0), (1, 1)),
    "bands": (2, 16, 8, 40, 38, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "tiny-images": (9, 32, 16, 4, 3, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "K-tails": (2, 9, 70, 9, 8, 3, 3, (2, 1), (1, 1, 1, 1), (1, 1)),
    # Past drivers.DIRECT_WEIGHT_MAX_K: the default backward-weight packs and calls BLAS.
    "K>256": (2, 3, 257, 7, 6, 3, 3, (1, 2), (1, 0, 1, 1), (1, 1)),
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_against_reference(case, dtype, config):
    N, C, K, H, W, R, S, stride, padding, dilation = CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    x, w, dy = make(rng, N, C, K, H, W, R, S, stride, padding, dilation, dtype)
    with knobs(config):
        check_all(x, w, dy, stride, padding, dilation)


def test_symmetric_padding_through_spec():
    spec = ConvSpec(2, 3, 4, 10, 9, 3, 3, stride=2, pad=(2, 1), dilation=(1, 2))
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(spec.input_shape), rng.standard_normal(spec.weight_shape)
    dy = rng.standard_normal(spec.output_shape)
    pad = (2, 2, 1, 1)
    close(kernels.conv2d_forward(x, w, spec.stride, pad, spec.dilation),
          ref.conv2d_forward(x, w, spec), np.float64)
    close(kernels.conv2d_backward_data(dy, w, (spec.H, spec.W), spec.stride, pad, spec.dilation),
          ref.conv2d_backward_data(dy, w, spec), np.float64)
    close(kernels.conv2d_backward_weight(x, dy, (3, 3), spec.stride, pad, spec.dilation),
          ref.conv2d_backward_weight(x, dy, spec), np.float64)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("case", ["3x3-pad1", "stride2", "1x1", "tiny-images", "asym-pad"])
def test_out_and_accumulate(case, config):
    N, C, K, H, W, R, S, stride, padding, dilation = CASES[case]
    rng = np.random.default_rng(7)
    x, w, dy = make(rng, N, C, K, H, W, R, S, stride, padding, dilation, np.float64)
    y, dx, dw = oracle(x, w, dy, stride, padding, dilation)
    args = (stride, padding, dilation)
    calls = [
        (lambda **kw: kernels.conv2d_forward(x, w, *args, **kw), y),
        (lambda **kw: kernels.conv2d_backward_data(dy, w, (H, W), *args, **kw), dx),
        (lambda **kw: kernels.conv2d_backward_weight(x, dy, (R, S), *args, **kw), dw),
    ]
    with knobs(config):
        for call, want in calls:
            out = np.full(want.shape, np.nan)
            assert call(out=out) is out
            close(out, want, np.float64)
            base = rng.standard_normal(want.shape)
            out = base.copy()
            assert call(out=out, accumulate=True) is out
            close(out, want + base, np.float64)
            # Non-contiguous out: a strided view into a bigger array.
            big = np.zeros(want.shape[:-1] + (2 * want.shape[-1],))
            view = big[..., ::2]
            view[...] = base
            assert call(out=view, accumulate=True) is view
            close(view, want + base, np.float64)
            assert not big[..., 1::2].any()
            call(out=view)
            close(view, want, np.float64)


def test_noncontiguous_inputs():
    rng = np.random.default_rng(3)
    stride, padding, dilation = (2, 1), (1, 2, 0, 1), (1, 1)
    xb = rng.standard_normal((2, 8, 11, 9)).astype(np.float32)
    x = xb[:, ::2]  # channel-strided
    saved = xb.copy()
    w = np.asfortranarray(rng.standard_normal((5, 4, 3, 2)).astype(np.float32))
    P, Q = out_hw(11, 9, 3, 2, stride, padding, dilation)
    dy = rng.standard_normal((2, P, Q, 5)).astype(np.float32).transpose(0, 3, 1, 2)
    assert not (x.flags.c_contiguous or w.flags.c_contiguous or dy.flags.c_contiguous)
    check_all(x, w, dy, stride, padding, dilation)
    P, Q = out_hw(11, 9, 3, 2, (1, 1), (1, 1, 0, 0), dilation)
    dy = rng.standard_normal((5, 2, Q, P)).astype(np.float32).transpose(1, 0, 3, 2)
    check_all(x, w, dy, (1, 1), (1, 1, 0, 0), dilation)
    np.testing.assert_array_equal(xb, saved)  # inputs untouched


def test_noncontiguous_stride1():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 12, 11))[::-1, :, :, ::-1]
    w = rng.standard_normal((6, 4, 3, 3)).transpose(0, 1, 3, 2)
    dy = rng.standard_normal((3, 6, 12, 11))[:, ::-1]
    check_all(x, w, dy, (1, 1), (1, 1, 1, 1), (1, 1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hw", [5, 16])  # 16x16 takes the wide path
def test_empty_dimensions(dtype, hw):
    fwd, bd = kernels.conv2d_forward, kernels.conv2d_backward_data
    bw = kernels.conv2d_backward_weight
    z = lambda *s: np.zeros(s, dtype)  # noqa: E731
    one = lambda *s: np.ones(s, dtype)  # noqa: E731
    pad, h = (1, 1, 1, 1), hw
    # N = 0: empty results, zero dw
    assert fwd(z(0, 3, h, h), one(4, 3, 3, 3), padding=pad).shape == (0, 4, h, h)
    assert bd(z(0, 4, h, h), one(4, 3, 3, 3), (h, h), padding=pad).shape == (0, 3, h, h)
    dw = bw(z(0, 3, h, h), z(0, 4, h, h), (3, 3), padding=pad)
    assert dw.shape == (4, 3, 3, 3) and dw.dtype == dtype and not dw.any()
    # C = 0: forward is zeros, or out unchanged when accumulating
    y = fwd(z(2, 0, h, h), z(4, 0, 3, 3), padding=pad)
    assert y.shape == (2, 4, h, h) and not y.any()
    out = np.full((2, 4, h, h), 3.0, dtype)
    fwd(z(2, 0, h, h), z(4, 0, 3, 3), padding=pad, out=out, accumulate=True)
    assert (out == 3.0).all()
    assert bd(one(2, 4, h, h), z(4, 0, 3, 3), (h, h), padding=pad).shape == (2, 0, h, h)
    assert bw(z(2, 0, h, h), one(2, 4, h, h), (3, 3), padding=pad).shape == (4, 0, 3, 3)
    # K = 0: backward-data is zeros (also when overwriting a given out)
    assert fwd(one(2, 3, h, h), z(0, 3, 3, 3), padding=pad).shape == (2, 0, h, h)
    for stride in (1, 2):
        P = (h - 1) // stride + 1
        dx = np.full((2, 3, h, h), 5.0, dtype)
        assert bd(z(2, 0, P, P), z(0, 3, 3, 3), (h, h), stride, pad, out=dx) is dx
        assert not dx.any()
    assert bw(one(2, 3, h, h), z(2, 0, h, h), (3, 3), padding=pad).shape == (0, 3, 3, 3)
    # Hx = 0 with padding: P > 0 but every tap reads padding
    y = fwd(z(2, 3, 0, h), one(4, 3, 3, 3), padding=(2, 2, 1, 1))
    assert y.shape == (2, 4, 2, h) and not y.any()
    assert bd(one(2, 4, 2, h), one(4, 3, 3, 3), (0, h), 1, (2, 2, 1, 1)).shape == (2, 3, 0, h)
    dw = bw(z(2, 3, 0, h), one(2, 4, 2, h), (3, 3), 1, (2, 2, 1, 1))
    assert dw.shape == (4, 3, 3, 3) and not dw.any()
    # P = Q = 0: input smaller than the filter
    assert fwd(one(2, 3, 2, 2), one(4, 3, 3, 3)).shape == (2, 4, 0, 0)
    dx = bd(z(2, 4, 0, 0), one(4, 3, 3, 3), (2, 2), out=np.full((2, 3, 2, 2), 5.0, dtype))
    assert not dx.any()
    dw = bw(one(2, 3, 2, 2), z(2, 4, 0, 0), (3, 3), stride=2, out=np.full((4, 3, 3, 3), 5.0, dtype))
    assert not dw.any()
    # Wx = 0 with a 1x1 filter
    assert fwd(z(1, 2, 3, 0), one(2, 2, 1, 1)).shape == (1, 2, 3, 0)


@pytest.mark.parametrize("mode", ["slab", "cols", "klanes", "pointwise"])
def test_direct_kernels_on_several_threads(mode, monkeypatch):
    """Stripes (or pixel tiles, or column blocks), slab rows and im2col rows split over
    threads give the one-thread result."""
    import numba
    threads = min(3, numba.config.NUMBA_NUM_THREADS)
    if threads < 2:
        pytest.skip("Numba allows one thread here (NUMBA_NUM_THREADS=1)")
    cases = ("bands", "primes", "stride2", "tiny-images")
    if mode == "klanes":
        cases += ("K-tails",)  # several channel tiles: threads split them, not the pixel tiles
        monkeypatch.setattr(klanes, "FORCE", True)
        monkeypatch.setattr(klanes, "BLOCK_BYTES", 1 << 14)
    elif mode == "pointwise":
        monkeypatch.setattr(pointwise, "FORCE", True)
        monkeypatch.setattr(pointwise, "FORCE_WEIGHT", True)
        monkeypatch.setattr(pointwise, "NSTRIPES", 1)
        cases = ("1x1", "1x1-wide", "1x1-stripes")  # one stripe (threads split row tiles), or several
    else:
        monkeypatch.setattr(klanes, "FORCE", False)
        monkeypatch.setattr(direct, "FORCE_MODE", mode)
    monkeypatch.setattr(direct, "BLOCK_BYTES", 1 << 14)  # several blocks, bands included
    rng = np.random.default_rng(12)
    before = numba.get_num_threads()
    try:
        for case in cases:
            N, C, K, H, W, R, S, stride, padding, dilation = CASES[case]
            x, w, dy = make(rng, N, C, K, H, W, R, S, stride, padding, dilation, np.float64)
            numba.set_num_threads(threads)
            check_all(x, w, dy, stride, padding, dilation)
    finally:
        numba.set_num_threads(before)


def test_narrow_vector_tile(tmp_path):
    """The tile for hosts without AVX-512 (16 vector registers of 32 bytes), built here on
    demand, against the oracle on the direct paths and the pointwise GEMM, and the stride-2
    row kernels against their definitions (its own Numba cache: the cached code holds the
    vector width)."""
    import os
    import subprocess
    import sys
    script = """
import numpy as np, test_kernels as t
from cnnmm.kernels import direct, drivers, klanes, pointwise, ukernel
assert (ukernel.VBYTES, ukernel.MR, ukernel.NV) == (32, 4, 3)
drivers.FORCE_DIRECT_WEIGHT = True
pointwise.FORCE = pointwise.FORCE_WEIGHT = True
rng = np.random.default_rng(8)
for mode in ("slab", "cols", "klanes"):
    klanes.FORCE = mode == "klanes"
    direct.FORCE_MODE = None if klanes.FORCE else mode
    for dtype in (np.float32, np.float64):
        for case in ("3x3-pad1", "primes", "bands", "dilation2-stride2", "N=1,C=1,K=1", "K-tails", "1x1-wide",
                     "1x1-stripes", "stride2-wide-rows"):
            N, C, K, H, W, R, S, stride, padding, dilation = t.CASES[case]
            x, w, dy = t.make(rng, N, C, K, H, W, R, S, stride, padding, dilation, dtype)
            t.check_all(x, w, dy, stride, padding, dilation)
for dtype in (np.float32, np.float64):  # the stride-2 row copies and scatter by narrow vectors
    t.test_pack_slab_exact(dtype)
    t.test_col2im_adjoint_exact(dtype)
print("narrow tile ok")
"""
    env = dict(os.environ, CNNMM_VECTOR_BYTES="32", NUMBA_CACHE_DIR=str(tmp_path))
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in [env.get("PYTHONPATH")] if p])
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "narrow tile ok" in result.stdout, result.stderr[-3000:]


def test_adjoint():
    rng = np.random.default_rng(11)
    for case in ("3x3-pad1", "stride2", "dilation2-stride2", "asym-pad", "primes", "pad>extent"):
        N, C, K, H, W, R, S, stride, padding, dilation = CASES[case]
        x, w, yb = make(rng, N, C, K, H, W, R, S, stride, padding, dilation, np.float64)
        for config in CONFIGS:
            with knobs(config):
                fwd = kernels.conv2d_forward(x, w, stride, padding, dilation)
                bd = kernels.conv2d_backward_data(yb, w, (H, W), stride, padding, dilation)
                bw = kernels.conv2d_backward_weight(x, yb, (R, S), stride, padding, dilation)
            a, b, c = np.vdot(fwd, yb), np.vdot(x, bd), np.vdot(w, bw)
            scale = np.abs(fwd).sum() * np.abs(yb).max()
            assert abs(a - b) <= 1e-13 * scale and abs(a - c) <= 1e-13 * scale, (case, config)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_transposes_exact(dtype):
    """klanes' filter panels (:func:`klanes.fill_panels`: one chunk of each channel tile
    contiguous, channel tiles from the second on, as a thread's share; also gathered flipped
    by :func:`klanes.fill_panels_flipped`) and result store (over
    thread-like channel ranges that start off a tile boundary): tiles in registers plus ragged
    edges; a pure copy, so exact."""
    rng = np.random.default_rng(13)
    lanes = ukernel.lanes(np.dtype(dtype).itemsize)
    nk = ukernel.NV_K * lanes
    for K, kred, t0, steps in ((3 * nk + 3, 3 * lanes + 5, lanes + 1, 2 * lanes + 3), (2 * nk, lanes, 0, lanes),
                               (nk + 5, 7, 2, 4)):
        wm = rng.standard_normal(K * kred).astype(dtype)
        nkt = -(-K // nk)
        panels = np.full((nkt - 1) * steps * nk, 7, dtype)
        klanes.fill_panels(t0, steps, 1, nkt, wm, kred, K, panels)
        got = panels.reshape(nkt - 1, steps, nk).transpose(1, 0, 2).reshape(steps, (nkt - 1) * nk)
        np.testing.assert_array_equal(got[:, :K - nk], wm.reshape(K, kred)[nk:, t0:t0 + steps].T)
        assert np.all(got[:, K - nk:] == 7)
    # Backward-data's flipped, transposed filter, gathered from the (K, C, R, S) filter: the
    # panels of fill_panels on a flipped copy.
    for K, C, R, S, t0, steps in ((5, 2 * nk + 3, 3, 3, 4, 2 * lanes + 3), (3, nk, 2, 1, 0, 6), (2, 7, 1, 1, 1, 1)):
        w = rng.standard_normal((K, C, R, S)).astype(dtype)
        wt = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)).reshape(-1)
        nkt = -(-C // nk)
        want, got = np.full(nkt * steps * nk, 7, dtype), np.full(nkt * steps * nk, 7, dtype)
        klanes.fill_panels(t0, steps, 0, nkt, wt, K * R * S, C, want)
        klanes.fill_panels_flipped(t0, steps, 0, nkt, w.reshape(-1), R * S, C, got)
        np.testing.assert_array_equal(got, want)
    N, K, P, Q, rows, p0, n0, nb = 3, 2 * lanes + 5, 7, lanes + 3, 4, 2, 1, 2
    Kp = K + 1
    res = rng.standard_normal(nb * rows * Q * Kp).astype(dtype)
    want = np.zeros((N, K, P, Q), dtype)
    want[n0:n0 + nb, :, p0:p0 + rows] = res.reshape(nb, rows, Q, Kp)[..., :K].transpose(0, 3, 1, 2)
    for accumulate in (0, 1):
        out = np.zeros((N, K, P, Q), dtype)
        if accumulate:
            out += 1
        for k0, k1 in ((0, 3), (3, K)):
            klanes.store(k0, k1, res, Kp, out.reshape(-1), K, P, Q, n0, nb, p0, rows, accumulate)
        np.testing.assert_array_equal(out, want + accumulate)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pack_slab_exact(dtype):
    """The direct kernels' phase-split slab (:func:`direct.pack_slab`; stride 2 along rows
    takes both column phases of an input row at once, by vectors) against its definition
    on random strides, dilations, offsets (negative ones crop) and row lengths from under one
    vector to several; entries outside the used phases' rows stay untouched."""
    rng = np.random.default_rng(21)
    for _ in range(60):
        N, C, H, W = rng.integers(1, 3), rng.integers(1, 4), rng.integers(1, 20), rng.integers(1, 80)
        R, S, sh, sw, dh, dw = (int(v) for v in rng.integers(1, 4, 6))
        dh, dw = min(dh, 2), min(dw, 2)
        top, left = int(rng.integers(-1, 3)), int(rng.integers(-1, 3))
        P = (H + top + int(rng.integers(0, 3)) - dh * (R - 1) - 1) // sh + 1
        Q = (W + left + int(rng.integers(0, 3)) - dw * (S - 1) - 1) // sw + 1
        if P <= 0 or Q <= 0:
            continue
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
        xp = np.zeros((N, C, H + 2 * sh * P + 8, W + 2 * sw * Q + 8), dtype)  # x at offset (4, 4)
        xp[:, :, 4:4 + H, 4:4 + W] = x
        plan = direct.Plan(x.shape, 4, P, Q, R, S, sh, sw, dh, dw, x.itemsize, direct.SLAB)
        for n0, n1, p0, p1 in plan.blocks:
            nb, rows, img_pitch, _ = plan.columns((n0, n1, p0, p1))
            Hb, Wph = rows + plan.eh, plan.Wph
            L = direct._odd_lines(nb * img_pitch, x.itemsize)
            slab = np.full(plan.slab_elems(L), 7, dtype)
            direct.pack_slab(0, C, x, n0, n1, p0, Hb, Wph, L, sh, sw, plan.used, top, left, slab)
            want = np.full_like(slab, 7)
            for a, b in itertools.product(range(sh), range(sw)):
                if plan.used[a * sw + b]:
                    ih = (p0 + np.arange(Hb)) * sh + a - top + 4
                    iw = np.arange(Wph) * sw + b - left + 4
                    part = xp[n0:n1][:, :, ih][:, :, :, iw]  # (nb, C, Hb, Wph)
                    for c in range(C):
                        at = ((a * sw + b) * C + c) * L
                        want[at:at + nb * Hb * Wph] = part[:, c].reshape(-1)
            np.testing.assert_array_equal(slab, want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_col2im_adjoint_exact(dtype):
    """:func:`im2col.col2im` (stride 2 along rows by vectors) is the adjoint of
    :func:`im2col.im2col` on random blocks, strides, dilations and offsets (negative ones crop),
    rows from under one vector to several: ``<im2col(x), cols> == <x, col2im(cols)>``, and
    it adds into ``x``. Integer-valued data, so float32 sums are exact too."""
    rng = np.random.default_rng(22)
    for _ in range(80):
        N, C, H, W = rng.integers(1, 3), rng.integers(1, 4), rng.integers(1, 12), rng.integers(1, 90)
        R, S, sh, dh, dw = (int(v) for v in rng.integers(1, 4, 5))
        sw = int(rng.choice([1, 2, 2, 3]))
        dh, dw = min(dh, 2), min(dw, 2)
        top, left = int(rng.integers(-2, 3)), int(rng.integers(-2, 3))
        P = (H + top + int(rng.integers(-1, 3)) - dh * (R - 1) - 1) // sh + 1
        Q = (W + left + int(rng.integers(-1, 3)) - dw * (S - 1) - 1) // sw + 1
        if P <= 0 or Q <= 0:
            continue
        n0 = int(rng.integers(0, N))
        n1 = int(rng.integers(n0 + 1, N + 1))
        p0 = int(rng.integers(0, P))
        p1 = int(rng.integers(p0 + 1, P + 1))
        args = (n0, n1, p0, p1, Q, R, S, sh, sw, dh, dw, top, left)
        x = rng.integers(-4, 5, (N, C, H, W)).astype(dtype)
        cols = rng.integers(-4, 5, (C * R * S, (n1 - n0) * (p1 - p0) * Q)).astype(dtype)
        packed = np.empty_like(cols)
        im2col.im2col(x, packed, *args)
        base = rng.integers(-4, 5, x.shape).astype(dtype)
        got = base.copy()
        im2col.col2im(cols, got, *args)
        assert np.vdot(packed.astype(np.float64), cols) == np.vdot(x.astype(np.float64), got - base)
        # Only pixels some tap reads may change.
        touched = np.zeros(x.shape, dtype)
        im2col.col2im(np.ones_like(cols), touched, *args)
        assert np.all((got == base) | (touched != 0))


def test_dtype_preserved_and_int_params():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = kernels.conv2d_forward(x, w, np.int64(2), 1, 1)  # ints mean "both axes"/"all sides"
    assert y.dtype == np.float32
    y2 = kernels.conv2d_forward(x, w, (2, 2), (1, 1, 1, 1), (1, 1))
    np.testing.assert_array_equal(y, y2)


def test_warmup_then_no_compilation():
    kernels.warmup(("float32", "float64"))
    jitted = (im2col.im2col, im2col.col2im, wide.pack_wide, wide.unpack_wide, direct.pack_slab,
              direct.pack_cols, direct.stripes, direct.unblock, direct.pack_dyt, direct.weight_tiles,
              direct.store_weight, klanes.tiles, klanes.store,
              pointwise.pack_filter, pointwise.column_blocks, pointwise.weight_tiles)
    assert set(jitted) == set(fastload._dispatchers())
    # Each entry point is ready for both dtypes: compiled or loaded by Numba (its signatures),
    # or installed from the cache by fastload.
    installed = {dtype: fastload.installed(dtype) for dtype in ("float32", "float64")}
    for f in jitted:
        assert all(f in installed[dt] or any(dt in str(sig) for sig in f.signatures) for dt in installed), f
    before = [len(f.signatures) for f in jitted]
    assert sum(before) <= 2 * len(jitted)
    rng = np.random.default_rng(6)
    for dtype, force, case in itertools.product(
            (np.float32, np.float64), (None, True),
            ("stride2", "bands", "tiny-images", "primes", "7x7-stride2", "1x1-stride2-pad", "filter=input",
             "1x1-wide")):
        with contextlib.ExitStack() as stack:
            stack.callback(setattr, klanes, "FORCE", klanes.FORCE)
            stack.callback(setattr, pointwise, "FORCE", pointwise.FORCE)
            klanes.FORCE = pointwise.FORCE = force  # either direct kernel; BLAS or pointwise's
            N, C, K, H, W, R, S, stride, padding, dilation = CASES[case]
            x, w, dy = make(rng, N, C, K, H, W, R, S, stride, padding, dilation, dtype)
            kernels.conv2d_forward(x[:, ::-1], w, np.array(stride), padding, dilation)
            kernels.conv2d_backward_data(dy, w, np.array([H, W]), stride, padding, dilation)
            kernels.conv2d_backward_weight(x, dy, (R, S), stride, list(padding), dilation)
            x.setflags(write=False)
            dy.setflags(write=False)
            kernels.conv2d_forward(x, w, stride, padding, dilation)
            kernels.conv2d_backward_data(dy, w, (H, W), stride, padding, dilation)
            kernels.conv2d_backward_weight(x, dy, (R, S), stride, padding, dilation)
            raw = np.empty(x.nbytes + 1, np.uint8)[1:]  # misaligned
            xu = np.ndarray(x.shape, x.dtype, buffer=raw)
            xu[...] = x
            kernels.conv2d_forward(xu, w, stride, padding, dilation)
            raw = np.empty(xu.nbytes + 1, np.uint8)[1:]
            dxu = np.ndarray(x.shape, x.dtype, buffer=raw)
            kernels.conv2d_backward_data(dy, w, (H, W), stride, padding, dilation, out=dxu)
            np.testing.assert_allclose(
                dxu, kernels.conv2d_backward_data(dy, w, (H, W), stride, padding, dilation))
    assert [len(f.signatures) for f in jitted] == before
    with pytest.raises(ValueError, match="float16"):
        kernels.warmup(("float16",))


def _err(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def test_errors():
    f32, f64 = np.ones((2, 3, 5, 5), np.float32), np.ones((2, 3, 5, 5))
    w = np.ones((4, 3, 3, 3))
    dy = np.ones((2, 4, 3, 3))
    fwd, bd = kernels.conv2d_forward, kernels.conv2d_backward_data
    bw = kernels.conv2d_backward_weight
    _err("C=3 channels but w has C=2", fwd, f64, np.ones((4, 2, 3, 3)))
    _err("dtypes differ", fwd, f32, w)
    _err("dtypes differ", bd, dy.astype(np.float32), w, (5, 5))
    _err("dtypes differ", bw, f64, dy.astype(np.float32), (3, 3))
    _err("int64.*float32 and float64", fwd, np.ones((2, 3, 5, 5), np.int64), w.astype(np.int64))
    _err("float16", fwd, f64.astype(np.float16), w.astype(np.float16))
    _err("complex128", fwd, f64.astype(complex), w.astype(complex))
    _err("4-D", fwd, f64[0], w)
    _err("out has shape", fwd, f64, w, out=np.zeros((2, 4, 3, 4)))
    _err("out has dtype", fwd, f64, w, out=np.zeros((2, 4, 3, 3), np.float32))
    _err("read-only", fwd, f64, w, out=np.broadcast_to(np.zeros(1), (2, 4, 3, 3)))
    _err("numpy array", fwd, f64, w, out=[0.0])
    _err("accumulate=True needs out", fwd, f64, w, accumulate=True)
    _err("non-negative", fwd, f64, w, padding=(1, -1, 0, 0))
    _err("four integers", fwd, f64, w, padding=(1, 1))
    _err("four integers", fwd, f64, w, padding=1.0)
    _err("stride.*>= 1", fwd, f64, w, stride=(0, 1))
    _err("dilation.*>= 1", fwd, f64, w, dilation=(1, -1))
    _err("stride.*pair", fwd, f64, w, stride=(1, 1, 1))
    _err("stride.*pair", fwd, f64, w, stride=True)
    _err("R x S = 0 x 3", fwd, f64, np.ones((4, 3, 0, 3)))
    _err(r"P x Q = 3 x 3.*gives 5 x 5", bd, dy, w, (5, 5), padding=1)
    _err(r"P x Q = 3 x 3.*gives 2 x 2", bd, dy, w, (5, 5), stride=2)
    _err("K=4 channels but w has K=5", bd, dy, np.ones((5, 3, 3, 3)), (5, 5))
    _err("input_hw", bd, dy, w, (5, -5))
    _err("input_hw", bd, dy, w, 5)
    _err(r"P x Q = 3 x 3.*gives 5 x 5", bw, f64, dy, (3, 3), padding=1)
    _err("N=2 images but dy has N=3", bw, f64, np.ones((3, 4, 3, 3)), (3, 3))
    _err("filter_rs", bw, f64, dy, (3,))
    _err("out has shape", bw, f64, dy, (3, 3), out=np.zeros((4, 3, 3, 2)))
    _err("out has shape", bd, dy, w, (5, 5), out=np.zeros((2, 3, 5, 4)))


# Random small layers: every rank draws the same cases (derandomize).
@st.composite
def layers(draw):
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = tuple(draw(st.integers(0, 3)) for _ in range(4))
    ext = (dilation[0] * (R - 1) + 1, dilation[1] * (S - 1) + 1)
    # Input sizes from 0 upwards, as long as the padded input holds the dilated filter.
    H = max(0, ext[0] - padding[0] - padding[1]) + draw(st.integers(0, 9))
    W = max(0, ext[1] - padding[2] - padding[3]) + draw(st.integers(0, 9))
    return dict(N=draw(st.integers(1, 3)), C=draw(st.integers(1, 5)), K=draw(st.integers(1, 5)),
                H=H, W=W, R=R, S=S, stride=stride, padding=padding, dilation=dilation,
                dtype=draw(st.sampled_from([np.float64, np.float32])),
                config=draw(st.sampled_from(list(CONFIGS))), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=60, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(layers())
def test_random_layers(layer):
    L = layer
    rng = np.random.default_rng(L["seed"])
    x, w, dy = make(rng, L["N"], L["C"], L["K"], L["H"], L["W"], L["R"], L["S"], L["stride"],
                    L["padding"], L["dilation"], L["dtype"])
    with knobs(L["config"]):
        check_all(x, w, dy, L["stride"], L["padding"], L["dilation"])
