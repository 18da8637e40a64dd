import os

from cnnmm.runtime import THREAD_VARS, default_thread_env, local_ranks


def cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_threads_shared_among_local_ranks():
    env = {"MPI_LOCALNRANKS": "2"}
    assert default_thread_env(env) == max(1, cores() // 2)
    assert all(env[v] == str(max(1, cores() // 2)) for v in THREAD_VARS)


def test_many_ranks_get_one_thread_each():
    env = {"OMPI_COMM_WORLD_LOCAL_SIZE": str(4 * cores())}
    assert default_thread_env(env) == 1


def test_slurm_cpus_per_task_wins():
    env = {"SLURM_CPUS_PER_TASK": "3", "MPI_LOCALNRANKS": "8"}
    assert default_thread_env(env) == 3


def test_user_setting_is_kept():
    env = {"OMP_NUM_THREADS": "5"}
    assert default_thread_env(env) is None
    assert env == {"OMP_NUM_THREADS": "5"}


def test_local_ranks_parses_slurm_lists(monkeypatch):
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4(x2)")
    assert local_ranks() == 4


def test_set_threads_resizes_numba_and_blas_together():
    from cnnmm.runtime import get_threads, set_threads
    before = get_threads()
    try:
        got = set_threads(1)
        assert got["numba"] == 1 and got["blas"] in (1, None)
    finally:
        set_threads(max(1, before["numba"]))
