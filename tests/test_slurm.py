"""Every script in ``jobs/`` submitted to a real single-node SLURM, checked by state and results.

A session fixture starts a private cluster on 127.0.0.1 with ``tests/slurm/cluster.sh``
(munged, slurmctld and slurmd from Debian's packages, every file in a temp dir, free ports) and
stops it at the end. When SLURM is missing the script installs it with apt-get, which needs
root; without root or apt-get these tests skip and say what is missing. ``-m "not slurm"``
deselects them, as does ``CNNMM_SLURM_TESTS=0``.

All jobs are submitted at once by a module fixture, so SLURM runs them side by side (the node
declares 4 CPUs) while the tests wait for theirs in turn. A job counts only if SLURM reports
COMPLETED with exit code 0:0 and every result record was verified against the float64
reference within tolerance.
"""

import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

from cnnmm import nets
from cnnmm.spec import ConvSpec

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs"
CLUSTER_SH = Path(__file__).resolve().parent / "slurm" / "cluster.sh"
#: Seconds a test waits for its job (they queue behind each other on a 2-core machine).
WAIT = int(os.environ.get("CNNMM_SLURM_JOB_TIMEOUT", "600"))
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
SMALL = "N=2,C=6,K=8,H=10,W=9,R=3,S=3,pad=1"
#: Time limit of every test job: one that hangs ends in minutes, not at the templates' 30.
LIMIT = "--time=5"


def _free_ports(count):
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _clean_env():
    """This environment without SLURM's input variables: a test run inside a real job must not
    send our submissions to that cluster's partition or account."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}


class Cluster:
    """The running test cluster: its directory and a client environment (``SLURM_CONF``)."""

    def __init__(self, path, conf):
        self.path = path
        self.env = dict(_clean_env(), SLURM_CONF=conf)

    def run(self, *args, timeout=60):
        return subprocess.run(args, capture_output=True, text=True, env=self.env, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def sbatch(self, script, *options, env=None, cwd=None):
        done = subprocess.run(["sbatch", "--parsable", *options, str(script)], capture_output=True, text=True,
                              env=dict(self.env, **(env or {})), cwd=cwd, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"sbatch {script} failed: {done.stderr}"
        return done.stdout.strip().split(";")[0]

    def jobs(self, job_id):
        """``[{JobId, ArrayTaskId, JobState, ExitCode, Reason}]``: the job, or each task of an array."""
        done = self.run("scontrol", "show", "job", "-o", job_id)
        assert done.returncode == 0, f"scontrol show job {job_id}: {done.stderr}"
        keys = ("JobId", "ArrayJobId", "ArrayTaskId", "JobState", "ExitCode", "Reason", "RunTime", "StartTime",
                "EndTime", "StdOut")
        return [{k: (re.search(rf"\b{k}=(\S+)", line) or [None, None])[1] for k in keys}
                for line in done.stdout.splitlines() if line.strip()]

    def wait(self, job_id, timeout=WAIT):
        """Poll until the job (every array task) has ended; cancel it and fail after ``timeout``.

        A job or task that failed inside ``MPI_Init``, before any cnnmm code ran, is requeued
        once with a warning: the MPICH wheel's UCX start-up very rarely fails on a loaded
        machine (pmodels/mpich#7417), and that is no verdict on the job script.
        """
        deadline = time.monotonic() + timeout
        retried = set()
        while True:
            jobs = self.jobs(job_id)
            if jobs and all(j["JobState"] not in ACTIVE for j in jobs):
                again = [j for j in jobs if j["JobState"] == "FAILED" and _task(j) not in retried
                         and MPI_INIT_FAILED.search(_read(j["StdOut"]))]
                if not again:
                    return jobs
                for j in again:
                    warnings.warn(f"job {_task(j)} failed in MPI_Init; requeued once:\n{_read(j['StdOut'])[-1500:]}")
                    retried.add(_task(j))
                    self.run("scontrol", "requeue", _task(j))
                    # a requeued job is held back for minutes unless told to start now
                    self.run("scontrol", "update", f"JobId={_task(j)}", "StartTime=now")
            elif time.monotonic() > deadline:
                self.run("scancel", job_id)
                pytest.fail(f"job {job_id} still {[j['JobState'] for j in jobs]} after {timeout} s\n"
                            + self.logs(jobs))
            time.sleep(0.3)

    @staticmethod
    def logs(jobs):
        return "\n".join(f"--- job {_task(j)} {j['JobState']} exit {j['ExitCode']} ({j['StdOut']})\n"
                         f"{_read(j['StdOut'])[-4000:]}" for j in jobs)


#: MPICH's message when MPI_Init fails (the start-up, not the program).
MPI_INIT_FAILED = re.compile(r"Fatal error in internal_Init_thread|MPI_Init_thread\(.*\) failed")


def _task(job):
    """The ID scontrol takes for one job or one array task."""
    return f"{job['ArrayJobId']}_{job['ArrayTaskId']}" if job.get("ArrayTaskId") else job["JobId"]


def _read(path):
    path = Path(path or "")
    return path.read_text(errors="replace") if path.is_file() else "(no output file)"


@pytest.fixture(scope="session")
def cluster():
    if os.environ.get("CNNMM_SLURM_TESTS") == "0":
        pytest.skip("SLURM tests turned off by CNNMM_SLURM_TESTS=0")
    check = subprocess.run(["bash", str(CLUSTER_SH), "check"], capture_output=True, text=True, timeout=60)
    if check.returncode == 11:
        pytest.skip(f"SLURM tests need a local SLURM (slurmctld, slurmd, munge): {check.stdout.strip()}")
    # short: munge's socket path must fit in 108 bytes, and pytest's tmp paths can be long
    path = tempfile.mkdtemp(prefix="cnnmm-slurm-", dir="/tmp")
    env = dict(_clean_env(), CNNMM_SLURM_PORTS=" ".join(map(str, _free_ports(2))), CNNMM_SLURM_CPUS="4")
    try:
        up = subprocess.run(["bash", str(CLUSTER_SH), "up", path], capture_output=True, text=True, env=env,
                            timeout=900, stdin=subprocess.DEVNULL)
        assert up.returncode == 0, f"could not start the test cluster:\n{up.stdout}\n{up.stderr[-6000:]}"
        conf = up.stdout.strip().splitlines()[-1].split("=", 1)[1]
        yield Cluster(path, conf)
    finally:
        subprocess.run(["bash", str(CLUSTER_SH), "down", path], capture_output=True, env=env, timeout=120,
                       stdin=subprocess.DEVNULL)
        shutil.rmtree(path, ignore_errors=True)


def _has_command(name):
    return importlib.util.find_spec(f"cnnmm.commands.{name}") is not None


class Submitted:
    """A submitted job and where its results go."""

    def __init__(self, job_ids, results):
        self.job_ids, self.results = job_ids, results


SITE = """\
# test site: this interpreter, launched by {launcher}
export PATH={bindir}:$PATH
CNNMM_PYTHON={python}
cnnmm_launch() {{ {launch} "$@"; }}
"""


@pytest.fixture(scope="module")
def submitted(cluster, tmp_path_factory):
    """Submit every job up front (SLURM runs them side by side); name -> Submitted."""
    work = tmp_path_factory.mktemp("slurm")
    results = work / "results dir"  # a space, to prove the scripts quote their paths
    site = work / "site.sh"
    site.write_text(SITE.format(launcher="srun", launch="srun --kill-on-bad-exit=1 --mpi=pmi2",
                                python=shlex.quote(sys.executable),
                                bindir=shlex.quote(os.path.dirname(sys.executable))))
    base = {"CNNMM_SITE": str(site), "CNNMM_JOBS_DIR": str(JOBS), "CNNMM_RESULTS": str(results),
            "CNNMM_REPEAT": "1"}
    log = f"--output={work}/%x-%j.out"
    subs = {}

    def job(name, script, *options, env=None, cwd=work):
        job_id = cluster.sbatch(JOBS / script, f"--job-name={name}", log, LIMIT, *options,
                                env=dict(base, **(env or {})), cwd=cwd)
        subs[name] = Submitted([job_id], results / f"{name}-{job_id}")
        return job_id

    # the biggest first, so the small ones fill in around them
    job("net", "net.sbatch", "--ntasks-per-node=2", env={"CNNMM_NET": "resnet50", "CNNMM_BATCH": "1"})
    # the calibration early: a layer job planned with its profile waits for it (afterok)
    if _has_command("calibrate") and _has_command("plan"):
        calib = job("calibrate", "calibrate.sbatch", "--ntasks-per-node=2", env={"CNNMM_QUICK": "1"})
        job("layer-planned", "layer.sbatch", "--ntasks-per-node=2", f"--dependency=afterok:{calib}",
            env={"CNNMM_LAYER": SMALL, "CNNMM_PROFILE": str(subs["calibrate"].results / "profile.json")})
    elif _has_command("plan"):
        from cnnmm.profiles import builtin_profiles
        job("layer-planned", "layer.sbatch", "--ntasks-per-node=2",
            env={"CNNMM_LAYER": SMALL, "CNNMM_PROFILE": builtin_profiles()[0]})
    # two points each: on 2 cores a 4-rank point costs more than the rest of a study
    for mode, tasks in (("strong", "1 2"), ("weak", "1 2")):
        study = work / f"{mode} study"
        env = dict(cluster.env, **base, CNNMM_STUDY_DIR=str(study), CNNMM_NODES="1", CNNMM_TASKS_PER_NODE=tasks,
                   CNNMM_LAYER="N=2,C=16,K=16,H=12,W=12,R=3,S=3,pad=1")
        driver = subprocess.run(["bash", str(JOBS / "scaling.sh"), mode, LIMIT], capture_output=True, text=True,
                                env=env, timeout=120, cwd=work)
        assert driver.returncode == 0, driver.stderr
        subs[f"scaling.sh {mode}"] = Submitted([line.split()[0] for line in driver.stdout.splitlines()], study)
    # documented use: submitted from the checkout, jobs/ found through the submit directory
    job("layer-srun", "layer.sbatch", "--ntasks-per-node=2", "--cpus-per-task=2", cwd=REPO,
        env={"CNNMM_JOBS_DIR": "", "CNNMM_LAYER": SMALL, "CNNMM_PASS": "train", "CNNMM_DTYPE": "float64"})
    if (Path(sys.prefix) / "bin" / "activate").is_file():
        # the shipped site file, with its venv and launcher settings
        job("layer-mpiexec", "layer.sbatch", "--ntasks-per-node=2", env={
            "CNNMM_SITE": "", "CNNMM_VENV": sys.prefix, "CNNMM_LAUNCHER": "mpiexec", "CNNMM_LAYER": SMALL,
            "CNNMM_ALGO": "2d", "CNNMM_GRID": "1,2,1,1,1"})
    params = work / "sweep.txt"
    params.write_text(f"# test sweep\n--layer {SMALL} --algo 2d\n--layer {SMALL} --algo 2.5d --replication 2\n"
                      f"--layer {SMALL} --algo spatial --pass bwd-data\n")
    array = job("sweep", "sweep.sbatch", "--array=0-2", "--ntasks-per-node=2", f"--output={work}/%x-%A_%a.out",
                env={"CNNMM_PARAMS": str(params)})
    subs["sweep"].results = results / f"sweep-{array}"
    job("bad-layer", "layer.sbatch", "--ntasks-per-node=1", env={"CNNMM_LAYER": "N=2,C=3"})
    # a script rendered by `cnnmm jobs`, handed to sbatch by --submit
    rendered = subprocess.run(
        [sys.executable, "-m", "cnnmm", "jobs", "layer", "--ntasks-per-node", "2", "-c", "1", "-t", "5",
         "-p", "debug", "-A", "cnnmm", "-J", "rendered", "--log", f"{work}/%x-%j.out", "--layer", SMALL,
         "--algo", "3d", "--grid", "1,1,1,2,1", "--repeat", "1", "--results", str(results), "--site", str(site),
         "--submit"], capture_output=True, text=True, env=cluster.env, cwd=work, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    job_id = rendered.stdout.strip()
    subs["rendered"] = Submitted([job_id], results / f"rendered-{job_id}")
    yield subs
    # what each job took, for the log of a slow or failed run (shown with -s or on failure)
    for name, sub in subs.items():
        for job_id in sub.job_ids:
            for j in cluster.jobs(job_id):
                print(f"slurm job {name:18s} {j['JobId']:>5s} {j['JobState']:10s} exit {j['ExitCode']} "
                      f"run {j['RunTime']} ({j['StartTime']} to {j['EndTime']})", file=sys.stderr)


def records(path):
    """Every result record under ``path``."""
    out = []
    for f in sorted(Path(path).rglob("*.jsonl")):
        out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def assert_completed(cluster, sub):
    """Every job (and array task) COMPLETED with exit code 0:0."""
    for job_id in sub.job_ids:
        jobs = cluster.wait(job_id)
        bad = [j for j in jobs if j["JobState"] != "COMPLETED" or j["ExitCode"] != "0:0"]
        assert not bad, Cluster.logs(bad)
        yield from jobs


def assert_verified(recs, count):
    assert len(recs) == count, recs
    for r in recs:
        assert r["verified"] is True and r["rel_err"] <= TOLERANCE[r["dtype"]], r
        assert r["words_max"] == r["words_predicted"], r


def meta(sub, stem="results"):
    return json.loads((sub.results / f"{stem}.meta.json").read_text())


# --- one test per script ---------------------------------------------------------------------
def test_layer_job_with_srun_pins_threads(cluster, submitted):
    sub = submitted["layer-srun"]
    list(assert_completed(cluster, sub))
    recs = records(sub.results)
    assert_verified(recs, 3)
    assert [r["pass"] for r in recs] == ["fwd", "bwd-data", "bwd-weight"]
    assert all(r["P"] == 2 and r["dtype"] == "float64" and r["layer"] == str(ConvSpec.parse(SMALL)) for r in recs)
    m = meta(sub)
    assert m["slurm"]["cpus_per_task"] == "2" and m["slurm"]["ntasks"] == "2"
    assert set(m["threads"].values()) == {"2"}
    # what the ranks saw, not just what the script exported
    assert m["ranks"]["ranks"] == 2 and m["ranks"]["numba_threads"] == 2
    assert m["ranks"]["env"]["OMP_NUM_THREADS"] == "2"
    assert m["launcher"] == 'srun --kill-on-bad-exit=1 --mpi=pmi2 "$@"'
    # thread pools the ranks report beyond Numba's (kernels, BLAS), where `cnnmm info` has them
    assert all(n in (2, None) for n in m["ranks"].get("threads", {}).values()), m["ranks"]
    assert (sub.results / "results.sbatch").read_text().startswith("#!/bin/bash")


def test_layer_job_with_mpiexec_and_the_shipped_site_file(cluster, submitted):
    if "layer-mpiexec" not in submitted:
        pytest.skip(f"{sys.prefix} is not a venv with bin/activate, which the shipped site file activates")
    sub = submitted["layer-mpiexec"]
    list(assert_completed(cluster, sub))
    (rec,) = records(sub.results)
    assert_verified([rec], 1)
    assert rec["algo"] == "2d" and rec["grid"] == {"pN": 1, "pH": 2, "pW": 1, "pK": 1, "pC": 1}
    m = meta(sub)
    assert m["site"] == str(JOBS / "site.sh") and m["ranks"]["ranks"] == 2 and m["ranks"]["numba_threads"] == 1
    assert m["launcher"].startswith("env -u SRUN_CPUS_PER_TASK mpiexec -n")


def test_net_job_runs_every_layer(cluster, submitted):
    sub = submitted["net"]
    list(assert_completed(cluster, sub))
    recs = records(sub.results)
    assert_verified(recs, len(nets.layers("resnet50")))
    assert [r["net_layer"] for r in recs] == [layer.name for layer in nets.layers("resnet50")]
    assert all(r["layer"].startswith("N=1,") and r["P"] == 2 for r in recs)


def test_sweep_job_array(cluster, submitted):
    sub = submitted["sweep"]
    tasks = list(assert_completed(cluster, sub))
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1", "2"]
    files = sorted(p.name for p in sub.results.glob("*.jsonl"))
    assert files == ["task-0.jsonl", "task-1.jsonl", "task-2.jsonl"]
    recs = [r for f in files for r in records_file(sub.results / f)]
    assert_verified(recs, 3)
    assert [(r["algo"], r["pass"]) for r in recs] == [("2d", "fwd"), ("2.5d", "fwd"), ("3d", "bwd-data")]
    assert recs[1]["grid"]["pC"] == 2
    assert meta(sub, "task-2")["slurm"]["array_task_id"] == "2"


def records_file(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("mode", ["strong", "weak"])
def test_scaling_study_and_report(cluster, submitted, mode, tmp_path):
    sub = submitted[f"scaling.sh {mode}"]
    list(assert_completed(cluster, sub))
    recs = records(sub.results)
    ps = (1, 2)
    assert_verified(recs, len(ps))
    assert sorted(r["P"] for r in recs) == list(ps)
    batches = sorted(int(re.match(r"N=(\d+)", r["layer"]).group(1)) for r in recs)
    assert batches == ([2, 2] if mode == "strong" else [2, 4])
    png = tmp_path / "scaling.png"
    done = subprocess.run([sys.executable, "-m", "cnnmm", "report", str(sub.results), "--check", "--plot", str(png)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{mode} scaling:" in done.stdout
    rows = re.findall(r"^(\d+)\s+1\s+[\d.]+\s+\S+\s+[\d.]+\s+\d+\s+\d+%$", done.stdout, re.M)
    assert [int(p) for p in rows] == list(ps), done.stdout
    if importlib.util.find_spec("matplotlib"):
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_rendered_script_submitted_by_cnnmm_jobs(cluster, submitted):
    sub = submitted["rendered"]
    list(assert_completed(cluster, sub))
    (rec,) = records(sub.results)
    assert_verified([rec], 1)
    assert rec["algo"] == "3d" and rec["grid"]["pK"] == 2
    m = meta(sub)
    assert m["slurm"]["job_name"] == "rendered" and m["slurm"]["job_partition"] == "debug"
    assert m["slurm"]["job_account"] == "cnnmm"


def test_calibrate_job(cluster, submitted):
    if "calibrate" not in submitted:
        pytest.skip("`cnnmm calibrate` is not there yet: calibrate.sbatch cannot run")
    sub = submitted["calibrate"]
    list(assert_completed(cluster, sub))
    profile = json.loads((sub.results / "profile.json").read_text())
    assert isinstance(profile, dict) and profile
    plan = json.loads((sub.results / "plan.json").read_text())
    assert "grid" in plan and "algo" in plan and plan["P"] == 2


def test_layer_job_planned_with_a_profile(cluster, submitted):
    """After calibrate.sbatch (afterok) with its profile, or with a built-in profile before it exists."""
    if "layer-planned" not in submitted:
        pytest.skip("`cnnmm plan` is not there yet")
    planned = submitted["layer-planned"]
    list(assert_completed(cluster, planned))
    (rec,) = records(planned.results)
    assert_verified([rec], 1)
    chosen = json.loads((planned.results / "results.plan.json").read_text())
    grid = chosen["grid"]
    if not isinstance(grid, dict):
        grid = dict(zip(("pN", "pH", "pW", "pK", "pC"), map(int, grid)))
    assert rec["algo"] == chosen["algo"] and rec["grid"] == grid, (rec, chosen)


def test_a_failing_job_fails_in_slurm(cluster, submitted):
    sub = submitted["bad-layer"]
    (job,) = cluster.wait(sub.job_ids[0])
    assert job["JobState"] == "FAILED" and job["ExitCode"] == "2:0", job
    assert "lacks" in Path(job["StdOut"]).read_text()
    assert records(sub.results) == []


FLAKY = """#!/bin/bash
if [[ -z ${SLURM_RESTART_COUNT:-} ]]; then echo "Fatal error in internal_Init_thread: Other MPI error"; exit 15; fi
echo "second run"
"""


def test_the_harness_requeues_a_job_that_failed_in_mpi_init_once(cluster, tmp_path):
    script = tmp_path / "flaky.sh"
    script.write_text(FLAKY)
    job_id = cluster.sbatch(script, f"--output={tmp_path}/%j.out", "--time=2")
    with pytest.warns(UserWarning, match=f"job {job_id} failed in MPI_Init; requeued once"):
        (job,) = cluster.wait(job_id, timeout=120)
    assert job["JobState"] == "COMPLETED" and "second run" in _read(job["StdOut"])


def test_every_script_in_jobs_was_submitted(submitted):
    covered = {"layer.sbatch": "layer-srun", "net.sbatch": "net", "sweep.sbatch": "sweep",
               "calibrate.sbatch": "calibrate", "scaling.sh": "scaling.sh strong"}
    sourced = {"common.sh", "site.sh"}
    scripts = {p.name for p in JOBS.iterdir() if p.is_file()}
    assert scripts - sourced == set(covered), "a script in jobs/ has no SLURM test"
    missing = [s for s, name in covered.items() if name not in submitted]
    if missing == ["calibrate.sbatch"]:
        pytest.skip("calibrate.sbatch waits for `cnnmm calibrate`")
    assert not missing
