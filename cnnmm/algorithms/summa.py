"""SUMMA streaming: the 2D algorithm (pC = 1) and, inside each of c = pC layers, 2.5D.

Forward on the grid ``(pN*pH*pW) x pK x pC``: each rank exchanges the halo of its own input
shard; then, for each C panel of its layer, the panel's input owner broadcasts it along the K
fiber and its weight owner along the pixel fiber, and every rank accumulates
``out_tile += conv(input panel, weight panel)``; with pC > 1 the partial output tiles are
reduce-scattered along the C fiber. The backward passes stream the same panels, reducing
gradient panels to their owners (see :mod:`cnnmm.algorithms.passes`).

Per-rank cost of forward (design note §4.4), with ``b`` the panel width, ``q = pN*pH*pW``:
words ``(1 - 1/pK)*In_tile + halo + (1 - 1/q)*W_tile + (1 - 1/pC)*Out_tile``; messages about
``ceil(C/(pC*b)) * (log2 pK + log2 q)``; memory the output tile (replicated pC times over the C
fiber), the halo-extended input shard and one panel buffer per operand.
"""

from .base import Algorithm, require_pc_one

__all__ = ["Summa2D", "Summa25D"]


class Summa2D(Algorithm):
    name = "2d"
    summary = "SUMMA on (pN*pH*pW) x pK with pC=1: C panels broadcast, output stationary"
    stream = True

    def check_grid(self, dims):
        require_pc_one(self.name, dims)


class Summa25D(Algorithm):
    name = "2.5d"
    summary = "SUMMA inside c=pC channel layers, partial outputs reduce-scattered across layers"
    stream = True
