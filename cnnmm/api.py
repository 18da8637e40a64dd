"""Python API: a distributed conv layer on a process grid, and one-call global helpers.

Two levels:

* :class:`Conv2d` keeps data distributed. Build it once per layer (collective), ask it which
  block each rank owns (:meth:`Conv2d.local_shapes`, :meth:`Conv2d.boxes`), then call
  :meth:`Conv2d.forward` on local blocks. Scatter/gather helpers move global arrays from and
  to a root.
* :func:`conv2d` takes global arrays on the root (``None`` elsewhere) and returns the global
  output on the root.
"""

from __future__ import annotations

import numpy as np

from . import algorithms
from .algorithms.base import Context
from .comm import collective_check
from .errors import AlgorithmError, ShapeError
from .grid import ProcessGrid
from .layout import BlockDistribution
from .profiles import load_profile
from .runtime import warm_kernels
from .spec import ConvSpec

__all__ = ["Conv2d", "conv2d", "conv2d_backward_data", "conv2d_backward_weight"]


def _world(comm):
    if comm is None:
        from mpi4py import MPI
        return MPI.COMM_WORLD
    return comm


class Conv2d:
    """One conv layer distributed over a process grid.

    Parameters
    ----------
    spec : ConvSpec
        The layer (identical on every rank).
    comm : mpi4py.MPI.Comm, optional
        Ranks to run on; default ``COMM_WORLD``.
    algorithm : str
        ``"auto"`` (default: the planner chooses algorithm and grid), ``"2d"`` (SUMMA, pC = 1),
        ``"2.5d"`` (SUMMA inside pC layers), ``"3d"`` (whole tiles gathered), or a strategy
        that fixes the grid: ``"data"``, ``"spatial"``, ``"filter"``, ``"channel"`` (see
        :mod:`cnnmm.algorithms`).
    grid : GridDims, str or sequence of 5 ints, optional
        ``(pN, pH, pW, pK, pC)``; 0 entries are filled as ``MPI_Dims_create`` would. Default:
        the planner's choice for this layer, algorithm and rank count.
    panel : int, optional
        SUMMA panel width in channels (default :data:`~cnnmm.algorithms.passes.DEFAULT_PANEL`).
    replication : int, optional
        Replication factor ``c = pC`` for the planner to keep when it chooses the grid.
    profile : str, optional
        Machine profile (built-in name or JSON path) the planner times grids with.

    Notes
    -----
    Construction is collective; every argument is validated on every rank before any data
    moves, so a bad argument raises the same :class:`~cnnmm.errors.CnnmmError` on all ranks.

    Memory per rank: the canonical shards ``(|x| + |w| + |y|)/P`` (owned by the caller) plus the
    algorithm's buffers: the halo-extended input shard, two panels of ``panel`` channels and
    the output tile (``pC`` partial copies over the C fiber with 2.5D).
    Communication per rank and pass: see :mod:`cnnmm.algorithms.summa`; every word is counted
    in :attr:`ledger`.
    """

    def __init__(self, spec, comm=None, algorithm="auto", grid=None, panel=None, replication=None, profile=None):
        comm = _world(comm)

        def setup():
            self.profile = load_profile(profile)
            return _check_setup(spec, comm.Get_size(), algorithm, grid, panel, replication, self.profile)

        self.algorithm, dims = collective_check(comm, setup)
        self.spec, self.panel = spec, panel
        self.grid = ProcessGrid(comm, dims)
        self.ctx = Context(spec, self.grid)
        lay = self.ctx.layout
        self._dist = {
            "input": BlockDistribution(spec.input_shape, [lay.input_box(c) for c in lay.all_coords()]),
            "weight": BlockDistribution(spec.weight_shape, [lay.weight_box(c) for c in lay.all_coords()]),
            "output": BlockDistribution(spec.output_shape, [lay.output_box(c) for c in lay.all_coords()]),
        }
        warm_kernels(comm, [spec.dtype])

    # --- layout -----------------------------------------------------------------------
    @property
    def dims(self):
        return self.grid.dims

    @property
    def ledger(self):
        """Words and messages this rank received, per phase (:class:`~cnnmm.comm.Ledger`)."""
        return self.ctx.ledger

    @property
    def meter(self):
        """Buffer accounting of this rank (:class:`~cnnmm.memory.MemoryMeter`)."""
        return self.ctx.meter

    def boxes(self):
        """This rank's ``{"input", "weight", "output"}`` blocks as ``((start, stop), ...)`` per axis."""
        return {name: dist.boxes[self.grid.rank] for name, dist in self._dist.items()}

    def local_shapes(self):
        """This rank's ``{"input", "weight", "output"}`` block shapes."""
        return {name: dist.shapes[self.grid.rank] for name, dist in self._dist.items()}

    # --- passes -----------------------------------------------------------------------
    def _run(self, pass_, blocks, saved):
        shapes = self.local_shapes()
        collective_check(self.grid.comm, lambda: [_check_local(name, a, shapes[kind], self.spec)
                                                  for name, kind, a in blocks])
        if saved is not None and not isinstance(saved, dict):
            raise TypeError("saved must be a dict (or None)")
        arrays = [np.ascontiguousarray(a) for _, _, a in blocks]
        options = {"panel": self.panel, "saved": saved}
        result = getattr(self.algorithm, pass_)(self.ctx, *arrays, options)
        self.ctx.meter.free(result)  # counted in this pass's peak; the caller owns it now
        return result

    def forward(self, x_local, w_local, saved=None):
        """Output block of this rank from its input and weight blocks (collective).

        ``saved``: a dict in which to retain the gathered input and weight tiles for later
        backward passes (memory: the tiles; saves their traffic). Release with :meth:`release`.
        """
        return self._run("forward", [("input", "input", x_local), ("weight", "weight", w_local)], saved)

    def backward_data(self, dy_local, w_local, saved=None):
        """Input-gradient block (input layout) from the output-gradient and weight blocks.

        Gathers dOut over the C fiber and weight panels over the pixel fiber (unless retained
        in ``saved``), reduces input-gradient panels over the K fiber and returns the halo
        contributions to their owners.
        """
        return self._run("backward_data", [("dy", "output", dy_local), ("weight", "weight", w_local)], saved)

    def backward_weight(self, x_local, dy_local, saved=None):
        """Weight-gradient block (weight layout) from the input and output-gradient blocks.

        Gathers the input (with halo) over the K fiber and dOut over the C fiber (unless
        retained in ``saved``) and reduces weight-gradient panels over the pixel fiber.
        """
        return self._run("backward_weight", [("input", "input", x_local), ("dy", "output", dy_local)], saved)

    def release(self, saved):
        """Free the tiles retained in ``saved`` by earlier passes."""
        from .algorithms.passes import release
        release(self.ctx, saved)

    # --- global arrays ----------------------------------------------------------------
    def scatter(self, name, array, root=0):
        """This rank's block of the global ``array`` held by ``root`` (``name``: input, weight, output)."""
        return self._dist[name].scatter(self.ctx.world, array, self.spec.dtype, root)

    def gather(self, name, local, root=0):
        """The global array assembled on ``root`` from every rank's block; ``None`` elsewhere."""
        return self._dist[name].gather(self.ctx.world, local, root)

    def free(self):
        """Release the grid's communicators."""
        self.grid.free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    def __repr__(self):
        return f"Conv2d({self.spec}, algorithm={self.algorithm.name!r}, {self.dims.describe()})"


def _check_setup(spec, nranks, algorithm, grid, panel, replication, profile):
    if not isinstance(spec, ConvSpec):
        raise ShapeError(f"spec must be a cnnmm.ConvSpec, not {type(spec).__name__}")
    if panel is not None and (not isinstance(panel, (int, np.integer)) or panel < 1):
        raise AlgorithmError(f"panel={panel!r}: must be a positive number of channels")
    return algorithms.resolve(algorithm, grid, spec, nranks, replication, profile)


def _check_local(name, array, shape, spec):
    if not isinstance(array, np.ndarray):
        raise ShapeError(f"{name} block must be a numpy array, not {type(array).__name__}")
    if array.shape != tuple(shape):
        raise ShapeError(f"{name} block has shape {array.shape}; this rank owns {tuple(shape)}")
    if array.dtype != np.dtype(spec.dtype):
        raise ShapeError(f"{name} block has dtype {array.dtype}; the layer is {spec.dtype}")


def _shape4(name, a):
    if not isinstance(a, np.ndarray) or a.ndim != 4:
        got = type(a).__name__ + (f" {a.shape}" if hasattr(a, "shape") else "")
        raise ShapeError(f"{name} must be a 4-D numpy array on the root rank (got {got})")
    return a.shape


def _shape_tuple(name, shape):
    if not (isinstance(shape, (tuple, list)) and len(shape) == 4
            and all(isinstance(v, (int, np.integer)) for v in shape)):
        raise ShapeError(f"{name}={shape!r}: expected four integers")
    return tuple(int(v) for v in shape)


def _layer_meta(x_shape, w_shape, dtype, stride, padding, dilation):
    (n, c, h, wd), (k, c2, r, s) = x_shape, w_shape
    if c != c2:
        raise ShapeError(f"the input has C={c} channels (shape {tuple(x_shape)}) but the weights expect "
                         f"C={c2} (shape {tuple(w_shape)})")
    return dict(N=n, C=c, K=k, H=h, W=wd, R=r, S=s, stride=stride, pad=padding, dilation=dilation,
                dtype=np.dtype(dtype).name)


def _same_dtype(**arrays):
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        raise ShapeError(" but ".join(f"{n} is {d}" for n, d in dtypes.items())
                         + ": use one dtype (float32 or float64)")
    return next(iter(dtypes.values()))


def _global_spec(comm, root, meta_on_root):
    """Validate on the root, share the metadata, build the spec on every rank (collectively)."""
    rank = comm.Get_rank()
    meta = collective_check(comm, lambda: meta_on_root() if rank == root else None)
    meta = comm.bcast(meta, root=root)
    return collective_check(comm, lambda: ConvSpec(**meta))


def _run_global(comm, root, spec, algorithm, grid, panel, pass_, inputs, result):
    rank = comm.Get_rank()
    with Conv2d(spec, comm, algorithm, grid, panel) as layer:
        blocks = [layer.scatter(kind, a if rank == root else None, root) for kind, a in inputs]
        local = getattr(layer, pass_)(*blocks)
        return layer.gather(result, local, root)


def conv2d(x, w, stride=1, padding=0, dilation=1, *, comm=None, algorithm="auto", grid=None, panel=None,
           root=0):
    """Distributed 2-D convolution of global arrays held by ``root``.

    Parameters
    ----------
    x : numpy.ndarray or None
        Input ``(N, C, H, W)`` on ``root``; ignored (may be ``None``) on other ranks.
    w : numpy.ndarray or None
        Weights ``(K, C, R, S)`` on ``root``, same dtype (float32 or float64).
    stride, padding, dilation : int or (int, int)
        Per-axis (height, width) values, as in ``torch.nn.functional.conv2d``.
    comm : mpi4py.MPI.Comm, optional
        Default ``COMM_WORLD``. Collective over ``comm``.
    algorithm, grid, panel
        See :class:`Conv2d`; ``algorithm`` also takes the strategies ``data``, ``spatial``,
        ``filter`` and ``channel``.
    root : int
        Rank holding ``x`` and ``w`` and receiving the result.

    Returns
    -------
    numpy.ndarray or None
        The output ``(N, K, P, Q)`` on ``root``, ``None`` elsewhere.

    Notes
    -----
    Besides the algorithm's own traffic, the root scatters ``x`` and ``w`` and gathers ``y``
    (each rank receives or sends its block once); the root holds the global arrays plus one
    packed copy of each while doing so.
    """
    comm = _world(comm)
    spec = _global_spec(comm, root, lambda: _layer_meta(_shape4("x", x), _shape4("w", w), _same_dtype(x=x, w=w),
                                                          stride, padding, dilation))
    return _run_global(comm, root, spec, algorithm, grid, panel, "forward", [("input", x), ("weight", w)],
                       "output")


def conv2d_backward_data(dy, w, input_shape, stride=1, padding=0, dilation=1, *, comm=None, algorithm="auto",
                         grid=None, panel=None, root=0):
    """Gradient with respect to the input, from ``dy = dL/dy (N, K, P, Q)`` and ``w``.

    ``input_shape`` is ``(N, C, H, W)`` of the forward input (the output size alone does not
    determine it when the stride exceeds 1). Other parameters and costs as :func:`conv2d`.
    Returns ``dx (N, C, H, W)`` on ``root``, ``None`` elsewhere.
    """
    comm = _world(comm)

    def meta():
        _shape4("dy", dy), _shape4("w", w)
        spec_meta = _layer_meta(_shape_tuple("input_shape", input_shape), w.shape, _same_dtype(dy=dy, w=w),
                                stride, padding, dilation)
        _check_dy(dy, ConvSpec(**spec_meta))
        return spec_meta

    spec = _global_spec(comm, root, meta)
    return _run_global(comm, root, spec, algorithm, grid, panel, "backward_data", [("output", dy), ("weight", w)],
                       "input")


def conv2d_backward_weight(x, dy, weight_shape, stride=1, padding=0, dilation=1, *, comm=None, algorithm="auto",
                           grid=None, panel=None, root=0):
    """Gradient with respect to the weights, from the input ``x`` and ``dy = dL/dy``.

    ``weight_shape`` is ``(K, C, R, S)``. Other parameters and costs as :func:`conv2d`.
    Returns ``dw (K, C, R, S)`` on ``root``, ``None`` elsewhere.
    """
    comm = _world(comm)

    def meta():
        _shape4("x", x), _shape4("dy", dy)
        spec_meta = _layer_meta(x.shape, _shape_tuple("weight_shape", weight_shape), _same_dtype(x=x, dy=dy),
                                stride, padding, dilation)
        _check_dy(dy, ConvSpec(**spec_meta))
        return spec_meta

    spec = _global_spec(comm, root, meta)
    return _run_global(comm, root, spec, algorithm, grid, panel, "backward_weight", [("input", x), ("output", dy)],
                       "weight")


def _check_dy(dy, spec):
    if dy.shape != spec.output_shape:
        raise ShapeError(f"dy has shape {dy.shape} but the layer's output is {spec.output_shape}")
