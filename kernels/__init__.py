"""Node-level conv2d kernels (forward, backward-data, backward-weight) for one rank.

Filters wider than 1x1 run a direct convolution on an LLVM-IR register-tiled micro-kernel
(:mod:`.direct`, :mod:`.ukernel`; the forward pass and stride-1 backward-data also
:mod:`.klanes`, output channels in the vector lanes, where its cost estimate is lower); 1x1
stride-1 layers with large images and at least twice as many input as output channels
(float32) or 128-255 pixels per image (float64) run a blocked GEMM on the same micro-kernel
(:mod:`.pointwise`), as do unpadded 1x1 backward-weights with at least 64 input and 64-1024
output channels (the input transposed into panels, ``dy`` read in place); other 1x1 layers,
strided backward-data and the other backward-weights pack with Numba (im2col / col2im
scatter-add) and multiply with numpy's BLAS (:mod:`.drivers`). No MPI here. Padding is
``(top, bottom, left, right)`` and may be asymmetric; any of N, C, K, H, W, P, Q may be 0.
Nothing compiles at import time: call :func:`warmup` once (it loads Numba's on-disk cache
when present, without Numba's compiler when the cache holds every kernel: :mod:`.fastload`)
so later calls never compile; :func:`load_cached` only loads.
"""

from .conv import (WARMUP_STAGES, conv2d_backward_data, conv2d_backward_weight, conv2d_forward, load_cached, warmup,
                   warmup_parts)

__all__ = ["conv2d_forward", "conv2d_backward_data", "conv2d_backward_weight", "warmup", "load_cached",
           "WARMUP_STAGES", "warmup_parts"]
