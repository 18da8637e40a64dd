"""``python -m cnnmm info``: versions, MPI library, rank count and thread settings."""

from __future__ import annotations

import os

from ..cli import emit

NAME = ("info",)
HELP = "versions, MPI library, rank count and thread settings"


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print JSON")


def main(args):
    import mpi4py
    import numba
    import numpy
    from mpi4py import MPI

    from .. import __version__
    from ..kernels import blas
    from ..runtime import get_threads
    info = {
        "cnnmm": __version__, "numpy": numpy.__version__, "numba": numba.__version__,
        "mpi4py": mpi4py.__version__, "mpi_library": MPI.Get_library_version().strip().splitlines()[0],
        "mpi_standard": "%d.%d" % MPI.Get_version(), "ranks": MPI.COMM_WORLD.Get_size(),
        "numba_threads": numba.get_num_threads(), "numba_threading_layer": numba.config.THREADING_LAYER,
        "cpus": os.cpu_count(), "threads": get_threads(), "blas_library": blas.library(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                            "NUMBA_NUM_THREADS", "NUMBA_CACHE_DIR", "CNNMM_FASTLOAD")
                if k in os.environ},
    }
    if args.json:
        emit(info)
    else:
        emit("\n".join(f"{k:22s} {v}" for k, v in info.items()))
    return 0
