"""Run the MPI test suites under mpiexec: ``mpiexec -n P python -m mpi4py tests/mpi_main.py [pytest args]``.

Rank 0 reports to the console; every other rank writes to ``$CNNMM_TEST_LOGDIR/rank<r>.log``
(or nowhere when unset), so the console shows one pytest report. The redirection happens
here, before pytest starts, because pytest keeps its own copy of the console when it loads.
``-x`` plus mpi4py's runner means the first failure on any rank aborts the whole job.
"""

import os
import sys

from mpi4py import MPI

HERE = os.path.dirname(os.path.abspath(__file__))


def _redirect(rank):
    logdir = os.environ.get("CNNMM_TEST_LOGDIR")
    target = os.path.join(logdir, f"rank{rank}.log") if logdir else os.devnull
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


if __name__ == "__main__":
    rank = MPI.COMM_WORLD.Get_rank()
    if rank != 0:
        _redirect(rank)
    import pytest

    args = sys.argv[1:]
    if not any(os.path.exists(a.split("::")[0]) for a in args):
        args.append(os.path.join(HERE, "mpi"))  # options only: run the MPI suites
    sys.exit(pytest.main(["--with-mpi", "-x", "-q", "-p", "no:cacheprovider", "--rootdir", os.path.dirname(HERE),
                          *args]))
