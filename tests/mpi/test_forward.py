"""Distributed forward pass against the float64 reference, on every grid of this rank count."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cnnmm import Conv2d, ConvSpec, conv2d, cost, reference
from helpers import LAYERS, all_grids, assert_all, random_arrays, rel_err

pytestmark = pytest.mark.mpi

TOL = {"float64": 1e-12, "float32": 1e-5}


def run_layer(comm, spec, algorithm, grid, panel, x, w):
    """Scatter, forward, gather; returns (global y on rank 0, counted words, predicted words)."""
    with Conv2d(spec, comm, algorithm, grid, panel) as layer:
        x_local, w_local = layer.scatter("input", x), layer.scatter("weight", w)
        layer.ledger.reset()
        y_local = layer.forward(x_local, w_local)
        assert y_local.shape == layer.local_shapes()["output"]
        counted = layer.ledger.total()
        predicted = cost.predict_rank(spec, layer.dims, layer.grid.coords, algorithm, panel)
        return layer.gather("output", y_local), counted, (predicted.total_words, predicted.total_msgs)


@pytest.mark.parametrize("text", LAYERS)
@pytest.mark.parametrize("algorithm", ["2d", "2.5d"])
def test_every_grid_matches_reference(comm, text, algorithm):
    spec = ConvSpec.parse(text)
    x, w = random_arrays(spec, seed=len(text))
    ref = reference.conv2d_forward(x, w, spec)
    for dims in all_grids(comm.size, algorithm):
        for panel in (1, 2, None):
            y, counted, predicted = run_layer(comm, spec, algorithm, dims, panel, x, w)
            err = rel_err(y, ref) if comm.rank == 0 else 0.0
            assert_all(comm, err <= TOL["float64"], f"{text} {algorithm} grid {dims} panel {panel}: rel_err {err:.2e}")
            assert_all(comm, counted == predicted,
                       f"{text} {algorithm} grid {dims} panel {panel}: counted {counted} != model {predicted}")


@pytest.mark.parametrize("algorithm", ["2d", "2.5d"])
def test_float32(comm, algorithm):
    spec = ConvSpec.parse("N=3,C=17,K=9,H=12,W=10,R=3,S=3,pad=1", dtype="float32")
    x, w = random_arrays(spec, seed=3)
    ref = reference.conv2d_forward(x, w, spec)
    for dims in all_grids(comm.size, algorithm):
        y = conv2d(x, w, 1, 1, comm=comm, algorithm=algorithm, grid=dims)
        ok = comm.rank != 0 or (y.dtype == np.float32 and rel_err(y, ref) <= TOL["float32"])
        assert_all(comm, ok, f"float32 {algorithm} grid {dims}")


def test_global_api_default_grid_and_root(comm):
    spec = ConvSpec.parse("N=2,C=6,K=4,H=7,W=7,R=3,S=3,stride=2,pad=1")
    x, w = random_arrays(spec, seed=5)
    root = comm.size - 1
    y = conv2d(x if comm.rank == root else None, w if comm.rank == root else None, 2, 1, comm=comm, root=root)
    if comm.rank == root:
        assert rel_err(y, reference.conv2d_forward(x, w, spec)) <= TOL["float64"]
    else:
        assert y is None


def test_split_communicator(comm):
    """The API runs on any communicator, not only COMM_WORLD."""
    sub = comm.Split(comm.rank % 2, comm.rank)
    spec = ConvSpec.parse("N=3,C=4,K=5,H=6,W=7,R=3,S=3,pad=1")
    x, w = random_arrays(spec, seed=11)
    y = conv2d(x, w, 1, 1, comm=sub, grid=(0, 0, 0, 0, 1))
    ok = sub.rank != 0 or rel_err(y, reference.conv2d_forward(x, w, spec)) <= TOL["float64"]
    sub.Free()
    assert_all(comm, ok, "split communicator")


layers = st.builds(
    lambda n, c, k, h, w, r, s, sh, sw, ph, pw, dh, dw: dict(N=n, C=c, K=k, H=h + (dh * (r - 1)), W=w + (dw * (s - 1)),
                                                              R=r, S=s, stride=(sh, sw), pad=(ph, pw), dilation=(dh, dw)),
    *[st.integers(1, 5)] * 3, *[st.integers(1, 9)] * 2, *[st.integers(1, 4)] * 2, *[st.integers(1, 3)] * 2,
    *[st.integers(0, 2)] * 2, *[st.integers(1, 2)] * 2)


@settings(derandomize=True, database=None, max_examples=40, deadline=None)
@given(fields=layers, choice=st.integers(0, 10**6), algo=st.sampled_from(["2d", "2.5d"]))
def test_property_random_layers_and_grids(fields, choice, algo):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    spec = ConvSpec(**fields)
    grids = all_grids(comm.size, algo)
    dims = grids[choice % len(grids)]
    x, w = random_arrays(spec, seed=choice)
    y, counted, predicted = run_layer(comm, spec, algo, dims, 1 + choice % 3, x, w)
    err = rel_err(y, reference.conv2d_forward(x, w, spec)) if comm.rank == 0 else 0.0
    assert_all(comm, err <= TOL["float64"] and counted == predicted, f"{spec} {algo} {dims}: err {err}, "
               f"counted {counted}, model {predicted}")
