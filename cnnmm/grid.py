"""The process grid over the five conv dimensions and its fibers.

Two objects, in the manner of mpi4py-fft's ``Subcomm``:

* :class:`GridDims` is a plain value ``(pN, pH, pW, pK, pC)``: parsed, validated, printable,
  no MPI. The planner and the CLI work with it.
* :class:`ProcessGrid` puts a :class:`GridDims` on an MPI Cartesian communicator and owns the
  sub-communicators every algorithm needs: one per dimension, and the three fibers

  - pixel fiber (pN*pH*pW ranks sharing k and c): weights are gathered/broadcast along it,
  - K fiber (pK ranks sharing n, h, w and c): input is gathered/broadcast along it,
  - C fiber (pC ranks sharing n, h, w and k): partial outputs are reduced along it.

The Cartesian order is ``(N, H, W, K, C)``, row-major, so the C fiber is made of consecutive
ranks (on one node when ranks are packed by node) and the pixel fiber's rank equals the
row-major index of ``(n, h, w)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .errors import GridError

__all__ = ["AXES", "GridDims", "ProcessGrid", "factorizations"]

AXES = ("N", "H", "W", "K", "C")


class GridDims(NamedTuple):
    """Grid extents ``(pN, pH, pW, pK, pC)``; 0 in a requested grid means "let MPI choose"."""

    pN: int
    pH: int
    pW: int
    pK: int
    pC: int

    @classmethod
    def parse(cls, text):
        """Parse ``"2,1,1,2,1"`` (also ``2x1x1x2x1``) or a 5-sequence of ints; 0 = let MPI choose."""
        if isinstance(text, str):
            parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
            try:
                values = [int(p) for p in parts]
            except ValueError:
                raise GridError(f"grid {text!r}: expected five integers pN,pH,pW,pK,pC") from None
        else:
            values = list(text)
        if len(values) != 5 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise GridError(f"grid {text!r}: expected five integers pN,pH,pW,pK,pC")
        if min(values) < 0:
            raise GridError(f"grid {text!r}: extents must be positive (0 = let MPI choose)")
        return cls(*values)

    @property
    def size(self):
        """Number of ranks, ``pN*pH*pW*pK*pC``."""
        return math.prod(self)

    @property
    def pixel(self):
        """Extent of the pixel fiber, ``q = pN*pH*pW``."""
        return self.pN * self.pH * self.pW

    def resolve(self, nranks):
        """Fill zeros so that the product is ``nranks`` (as ``MPI_Dims_create`` does).

        Raises
        ------
        GridError
            If the fixed extents do not divide ``nranks`` or, with no zeros, do not multiply to it.
        """
        fixed = math.prod(v for v in self if v)
        free = [i for i, v in enumerate(self) if v == 0]
        if not free:
            if fixed != nranks:
                raise GridError(f"grid {self}: product {fixed} is not the number of ranks {nranks}; "
                                f"choose extents that multiply to {nranks} or use 0 for 'any'")
            return self
        if nranks % fixed:
            raise GridError(f"grid {self}: fixed extents multiply to {fixed}, which does not divide "
                            f"the number of ranks {nranks}")
        values = list(self)
        for i, v in zip(free, _balanced_factors(nranks // fixed, len(free))):
            values[i] = v
        return GridDims(*values)

    def as_dict(self):
        return dict(zip(("pN", "pH", "pW", "pK", "pC"), map(int, self)))

    def __str__(self):
        return ",".join(str(v) for v in self)

    def describe(self):
        """One line: ``grid pN=2 pH=1 pW=1 pK=2 pC=1 (P=4, pixel fiber 2)``."""
        body = " ".join(f"{k}={v}" for k, v in self.as_dict().items())
        return f"grid {body} (P={self.size}, pixel fiber {self.pixel})"


def _balanced_factors(n, k):
    """Split ``n`` into ``k`` factors as evenly as possible, largest first (like Dims_create)."""
    factors = [1] * k
    primes = []
    m, p = n, 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    for prime in sorted(primes, reverse=True):
        factors[factors.index(min(factors))] *= prime
    return sorted(factors, reverse=True)


def factorizations(nranks, parts=5):
    """All ordered ``parts``-tuples of positive ints whose product is ``nranks``."""
    if parts == 1:
        return [(nranks,)]
    out = []
    for d in range(1, nranks + 1):
        if nranks % d == 0:
            out.extend((d,) + rest for rest in factorizations(nranks // d, parts - 1))
    return out


class ProcessGrid:
    """A :class:`GridDims` laid on an MPI communicator.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        Parent communicator; its size must equal the grid's product. Collective.
    dims : GridDims or str or sequence
        Requested extents ``(pN, pH, pW, pK, pC)``; zeros are filled as by ``MPI_Dims_create``.

    Attributes
    ----------
    dims : GridDims
        Resolved extents.
    coords : GridDims
        This rank's coordinates ``(n, h, w, k, c)``.
    axis : dict
        ``{"N": comm, ...}``: sub-communicator along each single dimension.
    pixel, kfiber, cfiber : mpi4py.MPI.Comm
        Fiber communicators (see module docstring).

    Notes
    -----
    Construction is collective and validation happens before any communication: every rank
    raises the same :class:`~cnnmm.errors.GridError` for a grid that does not fit.
    Communicators are freed by :meth:`free` (also a context manager).
    """

    def __init__(self, comm, dims):
        requested = dims if isinstance(dims, GridDims) else GridDims.parse(dims)
        self.dims = requested.resolve(comm.Get_size())
        self.comm = comm
        self.cart = comm.Create_cart(list(self.dims), periods=[False] * 5, reorder=False)
        self.rank = self.cart.Get_rank()
        self.coords = GridDims(*self.cart.Get_coords(self.rank))
        self.axis = {name: self.cart.Sub([j == i for j in range(5)]) for i, name in enumerate(AXES)}
        self.pixel = self.cart.Sub([True, True, True, False, False])
        self.kfiber = self.axis["K"]
        self.cfiber = self.axis["C"]

    @property
    def pixel_index(self):
        """This rank's position in the pixel fiber: row-major index of ``(n, h, w)``."""
        n, h, w = self.coords[:3]
        return (n * self.dims.pH + h) * self.dims.pW + w

    def rank_of(self, coords):
        """Rank in :attr:`cart` of the grid point ``coords``."""
        return self.cart.Get_cart_rank(list(coords))

    def neighbours(self, axis):
        """``(lower, upper)`` ranks along ``axis`` in :attr:`cart` (``MPI.PROC_NULL`` at edges)."""
        return self.cart.Shift(AXES.index(axis), 1)

    def free(self):
        for c in [*self.axis.values(), self.pixel, self.cart]:
            c.Free()
        self.axis = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    def __str__(self):
        return f"{self.dims.describe()} rank {self.rank} at {tuple(self.coords)}"
