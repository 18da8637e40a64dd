import math

import pytest

from cnnmm import GridDims, GridError
from cnnmm.grid import factorizations


def test_parse_and_print():
    g = GridDims.parse("2,1,1,2,1")
    assert g == (2, 1, 1, 2, 1) and g.size == 4 and g.pixel == 2
    assert GridDims.parse("2x1x1x2x1") == g
    assert str(g) == "2,1,1,2,1"
    assert g.describe() == "grid pN=2 pH=1 pW=1 pK=2 pC=1 (P=4, pixel fiber 2)"


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d,e", "1,1,1,1,-1", "1,1,1,1,1,1"])
def test_parse_errors(text):
    with pytest.raises(GridError):
        GridDims.parse(text)


@pytest.mark.parametrize("nranks", range(1, 25))
def test_resolve_fills_zeros(nranks):
    for req in [(0, 0, 0, 0, 0), (0, 1, 1, 0, 1), (1, 1, 1, 1, 0)]:
        g = GridDims(*req).resolve(nranks)
        assert g.size == nranks and all(v >= 1 for v in g)
        assert all(r in (0, v) for r, v in zip(req, g))


def test_resolve_errors():
    with pytest.raises(GridError, match="is not the number of ranks 4"):
        GridDims(2, 1, 1, 1, 1).resolve(4)
    with pytest.raises(GridError, match="does not divide"):
        GridDims(3, 0, 1, 1, 1).resolve(4)


@pytest.mark.parametrize("nranks", [1, 2, 6, 12, 16, 30])
def test_factorizations_count(nranks):
    # ordered 5-factor factorizations: prod over primes of C(e + 4, 4)
    n, count, p = nranks, 1, 2
    while n > 1:
        e = 0
        while n % p == 0:
            n //= p
            e += 1
        count *= math.comb(e + 4, 4)
        p += 1
    found = factorizations(nranks)
    assert len(found) == len(set(found)) == count
    assert all(math.prod(t) == nranks for t in found)
