"""Node-level conv2d kernels (forward, backward-data, backward-weight) for one rank.

Numba packs (im2col / col2im scatter-add), numpy's BLAS multiplies. No MPI here. Padding is
``(top, bottom, left, right)`` and may be asymmetric; any of N, C, K, H, W, P, Q may be 0.
Nothing compiles at import time: call :func:`warmup` once (it loads Numba's on-disk cache
when present) so later calls never compile.
"""

from .conv import conv2d_backward_data, conv2d_backward_weight, conv2d_forward, warmup

__all__ = ["conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight", "warmup"]
