"""Bad input raises the same clear error on every rank, before any data moves."""

import numpy as np
import pytest

from cnnmm import AlgorithmError, Conv2d, ConvSpec, GridError, LayerError, ShapeError, conv2d

pytestmark = pytest.mark.mpi


def raises_everywhere(comm, exc_type, match, func):
    with pytest.raises(exc_type, match=match) as info:
        func()
    messages = comm.allgather(str(info.value))
    assert len(set(messages)) == 1, messages
    return info.value


def test_mismatched_channels(comm):
    x = np.zeros((2, 3, 5, 5)) if comm.rank == 0 else None
    w = np.zeros((4, 2, 3, 3)) if comm.rank == 0 else None
    raises_everywhere(comm, ShapeError, "C=3 channels", lambda: conv2d(x, w, comm=comm))


def test_mismatched_dtypes(comm):
    x = np.zeros((2, 3, 5, 5), np.float32) if comm.rank == 0 else None
    w = np.zeros((4, 3, 3, 3), np.float64) if comm.rank == 0 else None
    raises_everywhere(comm, ShapeError, "float32 but w is float64", lambda: conv2d(x, w, comm=comm))


def test_kernel_larger_than_padded_input(comm):
    x = np.zeros((1, 1, 4, 4)) if comm.rank == 0 else None
    w = np.zeros((1, 1, 7, 7)) if comm.rank == 0 else None
    raises_everywhere(comm, LayerError, "larger than the padded input", lambda: conv2d(x, w, padding=1, comm=comm))


def test_grid_product_not_p(comm):
    spec = ConvSpec.parse("N=2,C=2,K=2,H=4,W=4,R=1,S=1")
    bad = (comm.size + 1, 1, 1, 1, 1)
    raises_everywhere(comm, GridError, "is not the number of ranks", lambda: Conv2d(spec, comm, grid=bad))


def test_grid_for_2d_with_pc(comm):
    spec = ConvSpec.parse("N=2,C=2,K=2,H=4,W=4,R=1,S=1")
    raises_everywhere(comm, GridError, "needs pC=1", lambda: Conv2d(spec, comm, "2d", grid=(1, 1, 1, 1, comm.size))) \
        if comm.size > 1 else None


def test_unknown_algorithm(comm):
    spec = ConvSpec.parse("N=2,C=2,K=2,H=4,W=4,R=1,S=1")
    raises_everywhere(comm, AlgorithmError, "unknown algorithm 'cannon'", lambda: Conv2d(spec, comm, "cannon"))


def test_wrong_local_block(comm):
    spec = ConvSpec.parse("N=2,C=2,K=2,H=4,W=4,R=1,S=1")
    with Conv2d(spec, comm) as layer:
        shapes = layer.local_shapes()
        x = np.zeros(shapes["input"]) if comm.rank else np.zeros((9, 9, 9, 9))
        w = np.zeros(shapes["weight"])
        raises_everywhere(comm, ShapeError, "input block has shape", lambda: layer.forward(x, w))


def test_non_positive_size(comm):
    raises_everywhere(comm, LayerError, "N=0", lambda: ConvSpec.parse("N=0,C=2,K=2,H=4,W=4,R=1,S=1"))


def test_warm_up_failure_raises_on_every_rank(comm, monkeypatch):
    """A kernel warm-up that fails on one rank (a broken cache, a compiler error) raises on
    every rank instead of leaving the others at the node barrier."""
    from cnnmm import kernels, runtime

    def broken(dtypes):
        if comm.rank == 0:
            raise OSError("injected warm-up failure")
        real(dtypes)

    real = kernels.warmup
    monkeypatch.setattr(runtime, "_warmed", set())
    monkeypatch.setattr(kernels, "load_cached", lambda dtypes: False)  # as with no cache
    monkeypatch.setattr(kernels, "warmup", broken)
    expected = (OSError, "injected") if comm.rank == 0 else (RuntimeError, "failed on another rank")
    with pytest.raises(expected[0], match=expected[1]):
        runtime.warm_kernels(comm, ["float64"])


def test_cache_missing_on_one_rank_makes_all_take_turns(comm, monkeypatch):
    """When one rank cannot load every kernel from the cache, no rank returns early: all take
    the turn-taking warm-up (the node's first rank compiles, the others then load)."""
    from cnnmm import kernels, runtime

    calls = []
    real = kernels.warmup
    monkeypatch.setattr(runtime, "_warmed", set())
    monkeypatch.setattr(kernels, "load_cached", lambda dtypes: comm.rank != comm.size - 1)
    monkeypatch.setattr(kernels, "warmup", lambda dtypes: (calls.append(tuple(dtypes)), real(dtypes)))
    runtime.warm_kernels(comm, ["float64"])
    assert calls == [("float64",)]
    assert comm.allreduce(len(calls)) == comm.size
