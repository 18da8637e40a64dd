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


# Children's code: ``disps``, the kernel modules' own Numba dispatchers by "module.name".
_DISPATCHERS = """
import numba
from cnnmm.kernels import direct, im2col, klanes, pointwise, wide
disps = {mod.__name__.rsplit(".", 1)[1] + "." + name: obj for mod in (direct, im2col, klanes, pointwise, wide)
         for name, obj in vars(mod).items()
         if isinstance(obj, numba.core.registry.CPUDispatcher) and obj.__module__ == mod.__name__}
"""

# Run under mpiexec with an empty cache: the staged warm-up, then what each rank compiled.
_WARM_CHILD = """
import json
from mpi4py import MPI
from cnnmm import runtime
from cnnmm.kernels import fastload
comm = MPI.COMM_WORLD
runtime.warm_kernels(comm, ["float32"])
""" + _DISPATCHERS + """
compiled = {k: sum(d.stats.cache_misses.values()) for k, d in disps.items()}
everyone = comm.gather(compiled)
if comm.rank == 0:
    print("RESULT " + json.dumps({"by": {k: [r for r, c in enumerate(everyone) if c[k]] for k in compiled},
                                  "fastload": bool(fastload.installed("float32"))}))
"""


def _warm_run(nranks, cache):
    import json
    import sys

    from helpers import mpiexec
    result = mpiexec(nranks, [sys.executable, "-c", _WARM_CHILD], timeout=300,
                     env={"NUMBA_CACHE_DIR": str(cache), "CNNMM_FASTLOAD": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_staged_warm_up_compiles_each_kernel_on_one_rank(tmp_path):
    """With an empty cache, 3 ranks of a node warm up in stages (kernels.WARMUP_STAGES): the
    groups of a stage compile on different ranks at once, yet no kernel is compiled by two
    ranks, every entry point is compiled by one, and the cache they leave is whole: a second
    launch loads every kernel (fastload) and compiles nothing."""
    from cnnmm.kernels import fastload
    first = _warm_run(3, tmp_path)
    twice = {k: v for k, v in first["by"].items() if len(v) > 1}
    assert not twice, f"compiled on more than one rank: {twice}"
    for module, names in fastload.ENTRY_POINTS.items():
        for name in names:
            assert len(first["by"][f"{module}.{name}"]) == 1, (module, name)
    assert len({r for v in first["by"].values() for r in v}) >= 2, "the stages did not run side by side"
    second = _warm_run(3, tmp_path)
    assert second["fastload"] and not any(second["by"].values()), second


_STAGE_CHILD = """
import json, sys
from cnnmm import kernels
before, record = json.loads(sys.argv[1])
for group in before:
    kernels.warmup_parts(group, ["float32"])
""" + _DISPATCHERS + """
done = {k: dict(d.stats.cache_misses) for k, d in disps.items()}
kernels.warmup_parts(record, ["float32"])
new = sorted(f"{k} {sig}" for k, d in disps.items() for sig, n in d.stats.cache_misses.items()
             if n > done[k].get(sig, 0))
print("RESULT " + json.dumps(new))
"""


def test_warm_up_stage_groups_compile_disjoint_kernels(tmp_path):
    """The claim behind kernels.WARMUP_STAGES, checked without relying on timing: with the
    stages before it compiled into a cache, each group of a stage, run alone on its own copy
    of that cache, compiles kernel specialisations (callees included) that no other group of
    the stage compiles. (klanes and pointwise, say, both add one specialisation of
    direct.transpose; split into two groups they would compile it at once.)"""
    import json
    import shutil
    import subprocess
    import sys

    from cnnmm.kernels import WARMUP_STAGES

    def child(before, record, cache):
        result = subprocess.run([sys.executable, "-c", _STAGE_CHILD, json.dumps([before, record])],
                                capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, NUMBA_CACHE_DIR=str(cache), CNNMM_FASTLOAD="0"))
        assert result.returncode == 0, result.stderr[-3000:]
        return set(json.loads(result.stdout.split("RESULT ", 1)[1]))

    for i, stage in enumerate(WARMUP_STAGES):
        if len(stage) < 2:
            continue
        base = tmp_path / f"stage{i}"
        child([g for earlier in WARMUP_STAGES[:i] for g in earlier], [], base)
        compiled = []
        for j, group in enumerate(stage):
            shutil.copytree(base, tmp_path / f"stage{i}-{j}")
            compiled.append(child([], list(group), tmp_path / f"stage{i}-{j}"))
            assert compiled[-1], f"group {group} compiled nothing"
        for a in range(len(stage)):
            for b in range(a):
                shared = compiled[a] & compiled[b]
                assert not shared, f"groups {stage[b]} and {stage[a]} both compile {sorted(shared)}"
