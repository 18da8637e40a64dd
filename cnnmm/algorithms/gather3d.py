"""3D: whole tiles gathered once, all of (pN*pH*pW), pK and pC free.

Forward: allgather the halo-extended input tile along the K fiber and the weight tile along the
pixel fiber, one local convolution, reduce-scatter the output along the C fiber. Words equal
SUMMA's on the same grid, with ``ceil(log2 p)`` messages per fiber instead of per panel, and
memory holds whole tiles: ``In_tile + W_tile + Out_tile*(1 + 1/pC)`` (design note §4.3).
"""

from .base import Algorithm

__all__ = ["Gather3D"]


class Gather3D(Algorithm):
    name = "3d"
    summary = "whole input/weight tiles allgathered, output reduce-scattered (Agarwal et al.)"
    stream = False
