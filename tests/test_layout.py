"""Block and halo arithmetic, checked against brute force."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cnnmm import ConvSpec
from cnnmm.grid import GridDims
from cnnmm.layout import BlockDistribution, ConvLayout, block_range, exchange_plan, sub_range

from helpers import LAYERS


@given(st.integers(0, 60), st.integers(1, 13))
def test_block_range_partitions(n, p):
    ranges = [block_range(n, p, i) for i in range(p)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)  # first n % p get one more


def test_sub_range():
    assert [sub_range((10, 17), 3, i) for i in range(3)] == [(10, 13), (13, 15), (15, 17)]
    assert sub_range((4, 4), 2, 1) == (4, 4)


def _receptive_rows(spec, p0, p1):
    rows = {p * spec.stride[0] + r * spec.dilation[0] - spec.pad[0] for p in range(p0, p1) for r in range(spec.R)}
    return rows


@pytest.mark.parametrize("text", LAYERS)
@pytest.mark.parametrize("ph", [1, 2, 3, 5])
def test_row_window_is_the_receptive_field(text, ph):
    spec = ConvSpec.parse(text)
    lay = ConvLayout(spec, GridDims(1, ph, 1, 1, 1))
    for i in range(ph):
        p0, p1 = lay.p_range(i)
        win = lay.row_window(i)
        if p1 == p0:
            assert win == (0, 0, 0, 0)
            continue
        field = _receptive_rows(spec, p0, p1)
        inside = {r for r in field if 0 <= r < spec.H}
        lo, hi = min(field), max(field) + 1
        assert win.before + (win.hi - win.lo) + win.after == hi - lo
        clamp = lambda v: min(max(v, 0), spec.H)  # noqa: E731
        assert (win.lo, win.hi) == (clamp(lo), clamp(hi))
        assert set(range(win.lo, win.hi)) >= inside
        # the kernel sees exactly p1 - p0 output rows on the padded window
        ext = win.before + (win.hi - win.lo) + win.after
        assert (ext - spec.extent[0]) // spec.stride[0] + 1 == p1 - p0


@given(st.lists(st.integers(0, 6), min_size=1, max_size=6), st.data())
@settings(max_examples=200)
def test_exchange_plan_covers_needs(sizes, data):
    bounds = np.concatenate(([0], np.cumsum(sizes))).tolist()
    owned = list(zip(bounds[:-1], bounds[1:]))
    total = bounds[-1]
    needed = []
    for _ in owned:
        lo = data.draw(st.integers(0, total))
        needed.append((lo, data.draw(st.integers(lo, total))))
    for me in range(len(owned)):
        local, sends, recvs = exchange_plan(me, owned, needed)
        got = set(range(*local)) if local else set()
        for peer, (a, b) in recvs:
            assert owned[peer][0] <= a < b <= owned[peer][1]
            got |= set(range(a, b))
        assert got == set(range(*needed[me]))
        # what I send is exactly what the peers receive from me
        for peer, rng in sends:
            assert (me, rng) in exchange_plan(peer, owned, needed)[2]


@pytest.mark.parametrize("text", LAYERS[:4])
@pytest.mark.parametrize("dims", [(1, 1, 1, 1, 1), (2, 1, 1, 3, 1), (1, 2, 2, 1, 2), (3, 1, 1, 1, 4), (1, 3, 1, 2, 2)])
def test_canonical_layouts_partition_each_tensor(text, dims):
    spec = ConvSpec.parse(text)
    lay = ConvLayout(spec, GridDims(*dims))
    coords = lay.all_coords()
    for shape, boxes in ((spec.input_shape, [lay.input_box(c) for c in coords]),
                         (spec.weight_shape, [lay.weight_box(c) for c in coords]),
                         (spec.output_shape, [lay.output_box(c) for c in coords])):
        hits = np.zeros(shape, dtype=int)
        for box in boxes:
            hits[tuple(slice(a, b) for a, b in box)] += 1
        assert (hits == 1).all()  # no element stored twice, none missing
    # the compute tiles cover the iteration space (n, k, c, p, q) exactly once
    tiles = set()
    for c in coords:
        nr, kr, cr, pr, qr = lay.tile(c)
        tiles |= set(itertools.product(range(*nr), range(*kr), range(*cr), range(*pr), range(*qr)))
    assert len(tiles) == spec.N * spec.K * spec.C * spec.P * spec.Q


@pytest.mark.parametrize("c_layer,pk,q", [(0, 1, 1), (0, 3, 2), (1, 2, 4)])
def test_c_panels(c_layer, pk, q):
    spec = ConvSpec.parse("N=1,C=23,K=2,H=4,W=4,R=1,S=1")
    lay = ConvLayout(spec, GridDims(q, 1, 1, pk, 2))
    for width in (1, 3, 100):
        panels = lay.c_panels(c_layer, width)
        lo, hi = lay.c_range(c_layer)
        assert [p[0] for p in panels][0] == lo and panels[-1][1] == hi
        assert all(a[1] == b[0] for a, b in zip(panels, panels[1:]))
        for a, b, own_in, own_w in panels:
            assert 0 < b - a <= width
            ir, wr = sub_range((lo, hi), pk, own_in), sub_range((lo, hi), q, own_w)
            assert ir[0] <= a and b <= ir[1] and wr[0] <= a and b <= wr[1]


def test_block_distribution_boxes_round_trip():
    spec = ConvSpec.parse("N=3,C=5,K=4,H=7,W=6,R=3,S=3,pad=1")
    lay = ConvLayout(spec, GridDims(2, 1, 2, 1, 1))
    dist = BlockDistribution(spec.input_shape, [lay.input_box(c) for c in lay.all_coords()])
    assert sum(dist.counts) == np.prod(spec.input_shape)
