"""The float64 oracle against a literal seven-loop definition on tiny layers."""

import numpy as np
import pytest

from cnnmm import ConvSpec, reference


def naive_forward(x, w, spec):
    (sh, sw), (ph, pw), (dh, dw) = spec.stride, spec.pad, spec.dilation
    out = np.zeros(spec.output_shape)
    for n, k, p, q, c, r, s in np.ndindex(spec.N, spec.K, spec.P, spec.Q, spec.C, spec.R, spec.S):
        i, j = p * sh + r * dh - ph, q * sw + s * dw - pw
        if 0 <= i < spec.H and 0 <= j < spec.W:
            out[n, k, p, q] += x[n, c, i, j] * w[k, c, r, s]
    return out


@pytest.mark.parametrize("text", [
    "N=2,C=2,K=3,H=5,W=4,R=3,S=2,stride=2x1,pad=1x0",
    "N=1,C=3,K=2,H=7,W=7,R=3,S=3,dilation=2,pad=2",
    "N=1,C=1,K=1,H=2,W=3,R=1,S=1,pad=3,stride=3",
])
def test_reference_against_loops_and_adjoints(text):
    spec = ConvSpec.parse(text)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(spec.input_shape), rng.standard_normal(spec.weight_shape)
    y = reference.conv2d_forward(x, w, spec)
    np.testing.assert_allclose(y, naive_forward(x, w, spec), rtol=0, atol=1e-12)
    dy = rng.standard_normal(spec.output_shape)
    lhs = np.vdot(y, dy)
    assert np.isclose(lhs, np.vdot(x, reference.conv2d_backward_data(dy, w, spec)), rtol=1e-12)
    assert np.isclose(lhs, np.vdot(w, reference.conv2d_backward_weight(x, dy, spec)), rtol=1e-12)
