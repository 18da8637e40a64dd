"""Independent float64 oracle: forward, backward-data and backward-weight in plain numpy.

It shares no code with :mod:`cnnmm.kernels` and is written for obviousness, not speed: the
input is zero-padded once, then each filter tap ``(r, s)`` contributes one strided slice
contracted over channels with :func:`numpy.tensordot`. All arithmetic is float64 whatever the
argument dtypes.
"""

import numpy as np

__all__ = ["conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight"]


def _taps(spec):
    """Yield ``(r, s, rows, cols)``: the padded-input slices tap ``(r, s)`` reads."""
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    for r in range(spec.R):
        for s in range(spec.S):
            rows = slice(r * dh, r * dh + sh * (spec.P - 1) + 1, sh)
            cols = slice(s * dw, s * dw + sw * (spec.Q - 1) + 1, sw)
            yield r, s, rows, cols


def _padded(x, spec):
    ph, pw = spec.pad
    return np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def conv2d_forward(x, w, spec):
    """``out[n,k,p,q] = sum_{c,r,s} x_pad[n, c, p*sh + r*dh, q*sw + s*dw] * w[k,c,r,s]``."""
    xp = _padded(x, spec)
    w = np.asarray(w, dtype=np.float64)
    out = np.zeros(spec.output_shape)
    for r, s, rows, cols in _taps(spec):
        # (N, C, P, Q) x (K, C) -> (N, P, Q, K)
        out += np.moveaxis(np.tensordot(xp[:, :, rows, cols], w[:, :, r, s], axes=([1], [1])), 3, 1)
    return out


def conv2d_backward_data(dy, w, spec):
    """Gradient of the forward pass with respect to ``x``, given ``dy = d loss / d out``."""
    dy = np.asarray(dy, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    ph, pw = spec.pad
    dxp = np.zeros((spec.N, spec.C, spec.H + 2 * ph, spec.W + 2 * pw))
    for r, s, rows, cols in _taps(spec):
        # (N, K, P, Q) x (K, C) -> (N, P, Q, C)
        dxp[:, :, rows, cols] += np.moveaxis(np.tensordot(dy, w[:, :, r, s], axes=([1], [0])), 3, 1)
    return dxp[:, :, ph:ph + spec.H, pw:pw + spec.W].copy()


def conv2d_backward_weight(x, dy, spec):
    """Gradient of the forward pass with respect to ``w``, given ``dy = d loss / d out``."""
    xp = _padded(x, spec)
    dy = np.asarray(dy, dtype=np.float64)
    dw = np.zeros(spec.weight_shape)
    for r, s, rows, cols in _taps(spec):
        # (N, K, P, Q) x (N, C, P, Q) -> (K, C)
        dw[:, :, r, s] = np.tensordot(dy, xp[:, :, rows, cols], axes=([0, 2, 3], [0, 2, 3]))
    return dw
