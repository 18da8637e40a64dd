"""Process-level set-up shared by the API and the CLI: thread pools and kernel warm-up.

This module imports neither numpy nor numba at load time: :func:`default_thread_env` must run
before they are imported, because BLAS and Numba size their thread pools when they load.
"""

from __future__ import annotations

import os

__all__ = ["THREAD_VARS", "default_thread_env", "local_ranks", "warm_kernels"]

#: Environment variables that size the BLAS/OpenMP and Numba thread pools.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")

# Set by the common launchers: MPICH/Hydra, Open MPI, Intel MPI, SLURM's srun.
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")


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

_warmed = set()


def warm_kernels(comm, dtypes):
    """Compile (or load from Numba's on-disk cache) the node kernels for ``dtypes``.

    Ranks on one node take turns: the node's first rank compiles and writes the cache, the
    others wait at a barrier and then only load it, so no two ranks compile the same kernel at
    once or race on a cache file. Collective over ``comm``; a no-op after the first call.
    """
    from mpi4py import MPI

    from . import kernels

    todo = tuple(sorted(set(dtypes) - _warmed))
    if comm.allreduce(len(todo), op=MPI.MAX) == 0:
        return
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        if node.Get_rank() == 0 and todo:
            kernels.warmup(todo)
        node.Barrier()
        if node.Get_rank() != 0 and todo:
            kernels.warmup(todo)
    finally:
        node.Free()
    _warmed.update(todo)
