"""Process-level set-up shared by the API and the CLI: thread pools and kernel warm-up.

This module imports neither numpy nor numba at load time: :func:`default_thread_env` must run
before they are imported, because BLAS and Numba size their thread pools when they load.
"""

from __future__ import annotations

import os
import time

__all__ = ["THREAD_VARS", "default_thread_env", "local_ranks", "set_threads", "get_threads", "warm_kernels",
           "startup_seconds"]

#: When this process imported cnnmm (the runtime is its first module).
IMPORTED_AT = time.perf_counter()
_startup = {"ready_at": None, "warmup_s": 0.0}

#: Environment variables that size the BLAS/OpenMP and Numba thread pools.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")

# Set by the common launchers: MPICH/Hydra, Open MPI, Intel MPI, SLURM's srun.
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")


# Set by launchers in every rank of a multi-process job: MPICH/Hydra and Intel MPI (PMI_SIZE),
# Open MPI, SLURM's srun.
_WORLD_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")


def _launched_ranks(environ=os.environ):
    for var in _WORLD_SIZE_VARS:
        value = environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def install_abort_hook():
    """Make an uncaught exception in a multi-rank job abort the whole job.

    Without it, a rank that fails (even at import, before ``MPI_Init``) exits while the others
    wait for it in a collective or in ``MPI_Init`` itself: a hang. The hook prints the
    traceback, then initialises MPI if needed and calls ``MPI_Abort``. It is installed when
    cnnmm is imported in a process a launcher started as one of several ranks; set
    ``CNNMM_ABORT_HOOK=0`` to keep Python's default behaviour.
    """
    import sys
    if os.environ.get("CNNMM_ABORT_HOOK", "1") == "0" or _launched_ranks() <= 1:
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        if issubclass(kind, KeyboardInterrupt):
            return
        try:
            sys.stderr.flush()
            from mpi4py import MPI
            if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
                MPI.COMM_WORLD.Abort(1)
            elif not MPI.Is_initialized():
                MPI.Init()
                MPI.COMM_WORLD.Abort(1)
        except Exception:  # noqa: BLE001 - nothing more can be done; fall back to exit
            os._exit(1)

    sys.excepthook = hook


def local_ranks(environ=os.environ):
    """Ranks the launcher placed on this node (1 when not launched by a known launcher)."""
    for var in _LOCAL_SIZE_VARS:
        value = environ.get(var, "").split("(")[0].split(",")[0]
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def default_thread_env(environ=os.environ):
    """Give each rank an equal share of this process's cores unless the user chose.

    When none of :data:`THREAD_VARS` is set, sets all of them to
    ``max(1, cores // ranks_on_this_node)`` (``SLURM_CPUS_PER_TASK`` when set), so P ranks on
    one node never oversubscribe it. Returns the thread count in force, or ``None`` when the
    user's settings were kept.
    """
    if any(var in environ for var in THREAD_VARS):
        return None
    cpus = environ.get("SLURM_CPUS_PER_TASK", "")
    if cpus.isdigit() and int(cpus) > 0:
        threads = int(cpus)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // local_ranks(environ))
    for var in THREAD_VARS:
        environ[var] = str(threads)
    return threads


def set_threads(n, environ=os.environ):
    """Make this process use exactly ``n`` threads: Numba and BLAS pools together.

    Works before or after numpy and numba are imported: sets :data:`THREAD_VARS` (for pools
    not created yet and for child processes), then resizes the pools that exist: Numba's (up
    to the size it was launched with) and the loaded BLAS's (through its own
    ``*_set_num_threads`` call, :mod:`cnnmm.kernels.blas`).
    Returns :func:`get_threads`.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"threads={n}: must be at least 1")
    import sys
    for var in THREAD_VARS:
        # Numba re-reads its variable at each compilation and refuses a change once its pool
        # is launched: once loaded, its pool is resized below instead.
        if not (var == "NUMBA_NUM_THREADS" and environ is os.environ and "numba" in sys.modules):
            environ[var] = str(n)
    import numba

    from .kernels import blas
    blas.set_threads(n)
    try:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except (ValueError, RuntimeError):  # no threading layer here: nothing parallel to size
        pass
    return get_threads()


def get_threads():
    """The thread counts in force: ``{"numba", "blas"}`` (``blas`` None when the library cannot
    be asked)."""
    import numba

    from .kernels import blas
    return {"numba": numba.get_num_threads(), "blas": blas.get_threads()}


_warmed = set()


def warm_kernels(comm, dtypes):
    """Compile (or load from Numba's on-disk cache) the node kernels for ``dtypes``.

    When the cache holds every kernel, all ranks load it at once (:func:`.kernels.load_cached`
    only reads). Otherwise ranks on one node take turns: the node's first ranks compile the
    groups of each of :data:`.kernels.WARMUP_STAGES` side by side (each group its own kernels
    and cache files; the others wait at a barrier), then the first rank runs the whole warm-up
    (compiling whatever is left) and the others only load the cache, so no two ranks compile
    the same kernel at once or race on a cache file. Collective over ``comm``; a no-op after
    the first call. A failure on any rank raises on every rank (its own error where it
    happened, RuntimeError elsewhere) instead of leaving the others waiting.
    """
    from mpi4py import MPI

    from . import kernels

    t0 = time.perf_counter()
    todo = tuple(sorted(set(dtypes) - _warmed))
    if comm.allreduce(len(todo), op=MPI.MAX) == 0:
        return
    try:
        loaded = kernels.load_cached(todo)
    except Exception:  # noqa: BLE001 - the turn-taking path below raises it on every rank
        loaded = False
    if comm.allreduce(loaded, op=MPI.LAND):
        _ready(todo, t0)
        return
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    error = None
    try:
        for stage in kernels.WARMUP_STAGES:
            for group in stage[node.Get_rank()::node.Get_size()]:
                if todo and error is None:
                    error = _attempt(kernels.warmup_parts, group, todo)
            _sleeping_barrier(node)
        if node.Get_rank() == 0 and todo and error is None:
            error = _attempt(kernels.warmup, todo)
        _sleeping_barrier(node)
        if node.Get_rank() != 0 and todo and error is None:
            error = _attempt(kernels.warmup, todo)
    finally:
        node.Free()
    if comm.allreduce(error is not None, op=MPI.LOR):
        if error is not None:
            raise error
        raise RuntimeError("node-kernel warm-up failed on another rank (its error is in its output)")
    _ready(todo, t0)


def _ready(dtypes, t0):
    _warmed.update(dtypes)
    now = time.perf_counter()
    _startup["warmup_s"] += now - t0
    if _startup["ready_at"] is None:
        _startup["ready_at"] = now


def _attempt(fn, *args):
    """``fn(*args)``; the exception it raised, or None (to re-raise after a collective)."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - handed back to the caller, which raises it
        return exc
    return None


def _sleeping_barrier(comm, interval=0.005):
    """A barrier whose waiting ranks sleep instead of polling: while one rank compiles, its
    neighbours on an oversubscribed node would otherwise take most of its core."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(interval)


def startup_seconds():
    """``(startup_s, warmup_s)`` of this process: from ``import cnnmm`` until the node kernels
    were first ready, and the time spent in :func:`warm_kernels` (compiling, or loading
    Numba's cache, plus waiting for the node's other ranks); ``(None, 0.0)`` before that."""
    ready = _startup["ready_at"]
    return (None if ready is None else ready - IMPORTED_AT), _startup["warmup_s"]
