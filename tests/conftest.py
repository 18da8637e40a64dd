"""Shared test set-up.

Two ways tests run:

* ``python -m pytest`` (the README's command): serial tests, plus ``tests/test_mpi_suites.py``
  which launches ``tests/mpi`` under ``mpiexec -n 1, 2, 3, 4`` and fails with the ranks' logs
  if any rank fails or the run exceeds its time limit.
* ``mpiexec -n P python -m mpi4py tests/mpi_main.py``: what those launches run (pytest with
  ``--with-mpi -x`` on ``tests/mpi``). Rank 0 reports to the console; other ranks write to
  ``$CNNMM_TEST_LOGDIR/rank<r>.log``.
"""

import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_ignore_collect(collection_path, config):
    # The MPI suites run only under mpiexec with --with-mpi (launched by test_mpi_suites.py);
    # a serial run must not list them as skipped checks.
    if not config.getoption("with_mpi", False):
        return os.path.commonpath([str(collection_path), os.path.join(HERE, "mpi")]) == os.path.join(HERE, "mpi")
    return None


@pytest.fixture
def comm():
    """COMM_WORLD, fenced by barriers so no test starts while another rank is still in the last."""
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    world.Barrier()
    yield world
    world.Barrier()
