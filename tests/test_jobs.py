"""The job scripts in ``jobs/``, ``cnnmm jobs`` and ``cnnmm report``, without SLURM.

The scripts run here under plain bash with a stand-in launcher that records the command it
would start, so their argument handling and quoting are checked on any machine;
``tests/test_slurm.py`` submits them to a real SLURM.
"""

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cnnmm import slurm
from cnnmm.cli import build_parser
from cnnmm.commands import jobs as jobs_command
from cnnmm.commands import report

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs"
BATCH = sorted(JOBS.glob("*.sbatch"))
SCRIPTS = BATCH + sorted(JOBS.glob("*.sh"))


def cnnmm(*args, env=None, cwd=None, timeout=120):
    """``python -m cnnmm ARGS`` as a subprocess (these commands need no launcher)."""
    return subprocess.run([sys.executable, "-m", "cnnmm", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=None if env is None else dict(os.environ, **env), cwd=cwd)


@pytest.fixture
def command(monkeypatch, capsys):
    """Run ``cnnmm jobs|report ...`` in this process: ``(exit status, stdout, stderr)``.

    Much faster than a subprocess (no new interpreter importing cnnmm and Numba). The rank-0
    print helpers are replaced by plain prints, so MPI is never initialized here.
    """
    def emit(item):
        print(item if isinstance(item, str) else json.dumps(item))

    def say(*args, **kwargs):
        print(*args, file=sys.stderr, **kwargs)

    for module in (jobs_command, report):
        monkeypatch.setattr(module, "emit", emit)
        monkeypatch.setattr(module, "say", say)

    def run(*argv):
        capsys.readouterr()
        args = build_parser().parse_args([str(a) for a in argv])
        status = args.func(args)
        out = capsys.readouterr()
        return status, out.out, out.err
    return run


# --- the scripts as files ------------------------------------------------------------------
def test_the_batch_jobs_the_issue_asks_for_exist():
    assert {p.stem for p in BATCH} == set(slurm.KINDS)
    assert (JOBS / "scaling.sh").is_file() and (JOBS / "site.sh").is_file() and (JOBS / "common.sh").is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_bash_n(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", BATCH, ids=lambda p: p.name)
def test_batch_scripts_have_a_full_header_and_source_common(script):
    text = script.read_text()
    for option in ("job-name", "nodes", "ntasks-per-node", "cpus-per-task", "time", "output"):
        assert re.search(rf"^#SBATCH --{option}=\S+$", text, re.M), option
    assert 'source "$CNNMM_JOBS_DIR/common.sh"' in text
    assert text.splitlines()[0] == "#!/bin/bash"


@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.name != "site.sh"], ids=lambda p: p.name)
def test_site_specific_lines_live_only_in_site_sh(script):
    code = [line for line in script.read_text().splitlines() if not line.lstrip().startswith("#")]
    for word in (r"\bsrun\b", r"\bmpiexec\b", r"\bmpirun\b", r"\bmodule\s", r"\bactivate\b", r"\bconda\b"):
        hits = [line for line in code if re.search(word, line)]
        assert not hits, f"{script.name}: site-specific line {hits}"


def test_shipped_sweep_array_matches_its_parameters_file():
    header = re.search(r"^#SBATCH --array=0-(\d+)$", (JOBS / "sweep.sbatch").read_text(), re.M)
    assert int(header.group(1)) + 1 == slurm.count_params(JOBS / "params" / "sweep.txt")


# --- the scripts run by bash with a stand-in launcher --------------------------------------
FAKE_SITE = """
CNNMM_PYTHON={python}
cnnmm_launch() {{
  # a cnnmm info launch must produce JSON; everything else is recorded, one word per line
  if [[ " $* " == *" info "* ]]; then echo '{{"ranks": 1}}'; return; fi
  printf '%s\\n' "$@" >>"$CNNMM_OUT/launched"
  printf '%s\\0' "$@" >>"$CNNMM_OUT/launched0"
}}
"""


@pytest.fixture
def fake_env(tmp_path):
    site = tmp_path / "site.sh"
    site.write_text(FAKE_SITE.format(python=shlex.quote(sys.executable)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CNNMM_"))}
    env.update(CNNMM_SITE=str(site), CNNMM_JOBS_DIR=str(JOBS), CNNMM_RESULTS=str(tmp_path / "my results"),
               SLURM_JOB_ID="42", SLURM_JOB_NAME="test", SLURM_NTASKS="2", SLURM_CPUS_PER_TASK="3",
               SLURM_JOB_NUM_NODES="1")
    return env


def run_job(script, env, *args):
    result = subprocess.run(["bash", str(JOBS / script), *args], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def launched(outdir):
    return (outdir / "launched0").read_text().split("\0")[:-1]


def test_common_pins_threads_and_names_the_result_directory(fake_env, tmp_path):
    probe = ('source "$CNNMM_JOBS_DIR/common.sh"; echo "$OMP_NUM_THREADS $NUMBA_NUM_THREADS $OPENBLAS_NUM_THREADS '
             '$MKL_NUM_THREADS $SRUN_CPUS_PER_TASK"; echo "$CNNMM_OUT"; echo "$CNNMM_STEM"')
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=fake_env, timeout=30)
    assert out.stdout.splitlines() == ["3 3 3 3 3", str(tmp_path / "my results" / "test-42"), "results"]
    array = dict(fake_env, SLURM_ARRAY_JOB_ID="40", SLURM_ARRAY_TASK_ID="2")
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=array, timeout=30)
    assert out.stdout.splitlines()[1:] == [str(tmp_path / "my results" / "test-40"), "task-2"]
    no_cpus = {k: v for k, v in fake_env.items() if k != "SLURM_CPUS_PER_TASK"}
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=no_cpus, timeout=30)
    assert out.stdout.splitlines()[0] == "1 1 1 1 1"


def test_common_refuses_a_site_without_launcher(fake_env, tmp_path):
    (tmp_path / "empty.sh").write_text("true\n")
    result = subprocess.run(["bash", str(JOBS / "layer.sbatch")], capture_output=True, text=True, timeout=30,
                            env=dict(fake_env, CNNMM_SITE=str(tmp_path / "empty.sh")))
    assert result.returncode == 2 and "does not define cnnmm_launch" in result.stderr


@pytest.mark.parametrize("launcher,expect", [
    ("srun", 'srun --kill-on-bad-exit=1 --mpi="${CNNMM_SRUN_MPI:-pmi2}" "$@"'),
    ("mpiexec", 'env -u SRUN_CPUS_PER_TASK mpiexec -n "${SLURM_NTASKS:-1}" "$@"'),
])
def test_shipped_site_file_launchers(launcher, expect, tmp_path):
    probe = 'source "$CNNMM_JOBS_DIR/site.sh"; declare -f cnnmm_launch | sed -n 3p'
    env = dict(os.environ, CNNMM_JOBS_DIR=str(JOBS), CNNMM_LAUNCHER=launcher, CNNMM_VENV="")
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env, timeout=30)
    assert out.stdout.strip() == expect
    bad = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30,
                         env=dict(env, CNNMM_LAUNCHER="ssh"))
    assert bad.returncode == 2 and "use srun or mpiexec" in bad.stderr
    missing = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30,
                             env=dict(env, CNNMM_VENV=str(tmp_path / "no venv")))
    assert missing.returncode == 2 and "has no bin/activate" in missing.stderr


def test_layer_job_runs_the_layer_with_output_in_its_directory(fake_env, tmp_path):
    env = dict(fake_env, CNNMM_LAYER="N=2,C=3,K=4,H=5,W=5,R=3,S=3", CNNMM_ALGO="2.5d", CNNMM_GRID="1,1,1,1,2")
    run_job("layer.sbatch", env, "--replication", "2")
    out = tmp_path / "my results" / "test-42"
    argv = launched(out)
    assert argv[:3] == [sys.executable, "-m", "cnnmm"] and argv[3] == "run"
    assert argv[argv.index("--layer") + 1] == "N=2,C=3,K=4,H=5,W=5,R=3,S=3"
    assert argv[argv.index("--grid") + 1] == "1,1,1,1,2" and "--verify" in argv and "--json" in argv
    assert argv[argv.index("--output") + 1] == str(out / "results.jsonl")
    assert argv[-2:] == ["--replication", "2"]
    meta = json.loads((out / "results.meta.json").read_text())
    assert meta["kind"] == "layer" and meta["slurm"]["job_id"] == "42" and meta["slurm"]["cpus_per_task"] == "3"
    assert meta["threads"]["NUMBA_NUM_THREADS"] == "3" and meta["ranks"] == {"ranks": 1}
    assert meta["layer"] == "N=2,C=3,K=4,H=5,W=5,R=3,S=3"


def test_layer_job_with_a_profile_plans_first(fake_env, tmp_path):
    from cnnmm.profiles import builtin_profiles
    profile = builtin_profiles()[0]
    run_job("layer.sbatch", dict(fake_env, CNNMM_LAYER="N=2,C=8,K=8,H=6,W=6,R=3,S=3,pad=1", CNNMM_PROFILE=profile))
    out = tmp_path / "my results" / "test-42"
    plan = json.loads((out / "results.plan.json").read_text())
    argv = launched(out)
    grid = ",".join(str(plan["grid"][k]) for k in ("pN", "pH", "pW", "pK", "pC"))
    assert argv[argv.index("--algo") + 1] == plan["algo"] and argv[argv.index("--grid") + 1] == grid
    assert argv[argv.index("--profile") + 1] == profile
    assert plan["P"] == 2


def test_net_job_runs_the_network(fake_env, tmp_path):
    run_job("net.sbatch", dict(fake_env, CNNMM_NET="vgg16", CNNMM_BATCH="2", CNNMM_VERIFY="0"))
    argv = launched(tmp_path / "my results" / "test-42")
    assert argv[argv.index("--net") + 1] == "vgg16" and argv[argv.index("--batch") + 1] == "2"
    assert "--verify" not in argv


def test_sweep_line_is_split_into_words_and_never_evaluated(fake_env, tmp_path):
    params = tmp_path / "params.txt"
    params.write_text("# comment\n\n--layer N=1,C=1,K=1,H=3,W=3,R=1,S=1 --algo 2d\n"
                      "--layer $(touch${IFS}pwned) `touch pwned` ;touch pwned\n")
    env = dict(fake_env, CNNMM_PARAMS=str(params), SLURM_ARRAY_JOB_ID="40", SLURM_ARRAY_TASK_ID="1")
    run_job("sweep.sbatch", env)
    out = tmp_path / "my results" / "test-40"
    argv = launched(out)
    assert argv[argv.index("--layer") + 1:argv.index("--verify")] == [
        "$(touch${IFS}pwned)", "`touch", "pwned`", ";touch", "pwned"]
    assert not list(tmp_path.rglob("pwned")) and not Path("pwned").exists()
    assert json.loads((out / "task-1.meta.json").read_text())["params"].startswith("--layer $(touch")
    result = subprocess.run(["bash", str(JOBS / "sweep.sbatch")], capture_output=True, text=True, timeout=60,
                            env=dict(env, SLURM_ARRAY_TASK_ID="2"))
    assert result.returncode == 2 and "submit with --array=0-1" in result.stderr


def test_scaling_driver_submits_one_job_per_point(tmp_path):
    """jobs/scaling.sh against a stand-in sbatch that records each submission."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text('#!/bin/bash\nn=$(( $(ls "$LOG" | wc -l) + 1 ))\n'
                    '{ printf "%s\\n" "$@"; echo "LAYER=$CNNMM_LAYER"; echo "RESULTS=$CNNMM_RESULTS"; '
                    'echo "KIND=$CNNMM_STUDY_KIND"; } >"$LOG/$n"\necho "$((100 + n));cluster"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "log"
    log.mkdir()
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(log), CNNMM_NODES="1 2",
               CNNMM_TASKS_PER_NODE="2 4", CNNMM_LAYER="C=3,N=2,K=4,H=5,W=5,R=3,S=3",
               CNNMM_STUDY_DIR=str(tmp_path / "study dir"))
    result = subprocess.run(["bash", str(JOBS / "scaling.sh"), "weak", "-p", "debug"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:4] == ["101 weak-1n-2t", "102 weak-1n-4t", "103 weak-2n-2t", "104 weak-2n-4t"]
    calls = [(log / str(i)).read_text().splitlines() for i in range(1, 5)]
    assert "--nodes=2" in calls[3] and "--ntasks-per-node=4" in calls[3] and "-p" in calls[3]
    assert [c[-3] for c in calls] == [f"LAYER=C=3,N={2 * p},K=4,H=5,W=5,R=3,S=3" for p in (2, 4, 4, 8)]
    assert calls[0][-2] == f"RESULTS={tmp_path / 'study dir'}" and calls[0][-1] == "KIND=weak"
    assert calls[0][-4] == str(JOBS / "layer.sbatch")
    bad = subprocess.run(["bash", str(JOBS / "scaling.sh"), "sideways"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "usage" in bad.stderr


# --- rendering -----------------------------------------------------------------------------
def render(kind="layer", settings=None, **resources):
    return slurm.render(kind, slurm.Resources(**resources), settings or {}, JOBS)


@pytest.mark.parametrize("kind", slurm.KINDS)
def test_rendered_scripts_pass_bash_n(kind, tmp_path):
    script = tmp_path / f"{kind}.sh"
    script.write_text(render(kind, nodes=2, ntasks_per_node=8, cpus_per_task=4, time="1-00:00:00",
                             partition="batch", account="proj-1", exclusive=True))
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    for line in ("--nodes=2", "--ntasks-per-node=8", "--cpus-per-task=4", "--time=1-00:00:00",
                 "--partition=batch", "--account=proj-1", "--exclusive", f"--job-name=cnnmm-{kind}"):
        assert f"#SBATCH {line}\n" in text
    # sbatch reads #SBATCH lines only before the first command
    first_command = next(i for i, line in enumerate(text.splitlines()[1:]) if not line.startswith("#"))
    assert all(not line.startswith("#SBATCH") for line in text.splitlines()[1 + first_command:])


@pytest.mark.parametrize("field,value", [
    ("partition", "debug; rm -rf /"), ("partition", "a b"), ("partition", "-x"), ("account", "$(id)"),
    ("account", "acct'"), ("job_name", "my job"), ("job_name", "x\ny"), ("log", "out file.log"),
    ("log", "a;b"), ("time", "1:75"), ("time", "ten"), ("time", "0"), ("time", "2-24:00:00"),
    ("nodes", "0"), ("nodes", "2 nodes"), ("ntasks_per_node", "-1"), ("cpus_per_task", "1.5"),
])
def test_unsafe_or_malformed_header_values_are_rejected(field, value):
    with pytest.raises(slurm.JobError):
        render(**{field: value})


@pytest.mark.parametrize("time", ["30", "30:00", "04:00:00", "2-12", "2-12:30", "2-12:30:15"])
def test_every_slurm_time_format_is_accepted(time):
    assert slurm.check_time(time) == time


@pytest.mark.parametrize("option,value", [
    ("layer", "N=1,$(id)"), ("layer", "N=1,C=2"), ("algo", "cannon"), ("grid", "1,1,1"), ("pass", "sideways"),
    ("net", "alexnet"), ("batch", "0"), ("launcher", "ssh"), ("results", "a\nrm -rf /"), ("params", ""),
])
def test_malformed_job_settings_are_rejected(option, value):
    kind = next(k for s in slurm.SETTINGS if s.option == option for k in s.kinds)
    with pytest.raises(Exception) as info:
        render(kind, {option: value})
    assert isinstance(info.value, slurm.CnnmmError)


def test_settings_that_do_not_apply_are_rejected():
    with pytest.raises(slurm.JobError, match="does not apply to net jobs"):
        render("net", {"layer": "N=1,C=1,K=1,H=3,W=3,R=1,S=1"})
    with pytest.raises(slurm.JobError, match="sweep jobs only"):
        render("layer", array="0-3")


def test_paths_with_spaces_and_shell_characters_are_quoted(tmp_path):
    nasty = str(tmp_path / "it's a $HOME `x` dir; $(touch pwned)")
    text = render("sweep", {"results": nasty, "site": nasty + "/site.sh", "params": nasty + "/p.txt"}, array="0-2")
    exports = "\n".join(line for line in text.splitlines() if line.startswith("export "))
    probe = subprocess.run(["bash", "-c", exports + '\nprintf "%s\\n" "$CNNMM_RESULTS" "$CNNMM_SITE" "$CNNMM_PARAMS"'],
                           capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert probe.stdout.splitlines() == [nasty, nasty + "/site.sh", nasty + "/p.txt"]
    assert not list(tmp_path.rglob("pwned"))


def test_sweep_array_is_sized_from_the_parameters_file(tmp_path):
    params = tmp_path / "p.txt"
    params.write_text("# two configurations\n--algo 2d\n\n--algo 3d\n")
    assert "#SBATCH --array=0-1\n" in render("sweep", {"params": str(params)})
    assert "#SBATCH --output=%x-%A_%a.out\n" in render("sweep", {"params": str(params)})
    assert "#SBATCH --array=0-9%2\n" in render("sweep", array="0-9%2")


def test_jobs_command_prints_writes_and_rejects(tmp_path, command):
    status, out, err = command("jobs", "net", "--net", "vgg16", "--batch", "4", "-N", "2", "-c", "2")
    assert status == 0, err
    assert "export CNNMM_NET=vgg16" in out and "#SBATCH --nodes=2" in out
    script = tmp_path / "job.sh"
    status, out, err = command("jobs", "layer", "-o", script, "--layer", "N=1,C=2,K=2,H=4,W=4,R=3,S=3")
    assert status == 0 and out == "" and script.read_text().startswith("#!/bin/bash\n")
    assert os.access(script, os.X_OK)
    status, out, err = command("jobs", "layer", "--layer", "N=1,$(reboot)")
    assert status == 2 and "layer item '$(reboot)'" in err


def test_jobs_command_rejects_once_without_traceback():
    bad = cnnmm("jobs", "layer", "--account", "x; reboot")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("cnnmm: error: account 'x; reboot'") == 1 and "Traceback" not in bad.stderr


FAKE_SBATCH = """#!/bin/bash
printf '%s\\n' "$@" >"$SBATCH_LOG.args"
if [[ $# -eq 1 ]]; then cat >"$SBATCH_LOG.stdin"; fi
[[ -z ${SBATCH_FAIL:-} ]] || { echo "sbatch: error: Invalid account" >&2; exit 1; }
echo "77;cluster"
"""


def test_submit_hands_the_script_to_sbatch(tmp_path, command, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_LOG", str(tmp_path / "sbatch"))
    status, out, err = command("jobs", "calibrate", "--quick", "1", "--submit")
    assert status == 0, err
    assert out.strip() == "77" and "submitted job 77" in err
    assert (tmp_path / "sbatch.args").read_text() == "--parsable\n"
    assert "export CNNMM_QUICK=1" in (tmp_path / "sbatch.stdin").read_text()
    script = tmp_path / "job.sh"
    status, out, err = command("jobs", "layer", "-o", script, "--submit")
    assert out.strip() == "77" and (tmp_path / "sbatch.args").read_text() == f"--parsable\n{script}\n"
    monkeypatch.setenv("SBATCH_FAIL", "1")
    status, out, err = command("jobs", "layer", "--submit")
    assert status == 1
    assert "sbatch refused the job (exit 1): sbatch: error: Invalid account" in err
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    status, out, err = command("jobs", "layer", "--submit")
    assert status == 1 and "sbatch not found" in err


# --- report --------------------------------------------------------------------------------
def _record(P, time_s, layer="N=8,C=16,K=16,H=8,W=8,R=3,S=3,stride=1,pad=1,dilation=1", **extra):
    rec = {"algo": "2d", "grid": {"pN": P, "pH": 1, "pW": 1, "pK": 1, "pC": 1}, "P": P, "pass": "fwd",
           "dtype": "float32", "layer": layer, "time_s": time_s, "gflops": 1.0, "words_max": 10 * P,
           "words_predicted": 10 * P, "rel_err": 1e-7, "max_abs_err": 1e-6, "verified": True}
    rec.update(extra)
    return rec


def write_study(root, kind, points):
    """One directory per job, as jobs/scaling.sh leaves them."""
    for i, (P, rec) in enumerate(points):
        job = root / f"{kind}-1n-{P}t-{i}"
        job.mkdir(parents=True)
        (job / "results.jsonl").write_text(json.dumps(rec) + "\n")
        (job / "results.meta.json").write_text(json.dumps(
            {"kind": "layer", "study": kind, "slurm": {"job_id": str(i), "job_num_nodes": "1"}}))


def test_report_strong_scaling_table(tmp_path, command):
    write_study(tmp_path, "strong", [(1, _record(1, 0.8, time_predicted_s=0.7)), (2, _record(2, 0.5)),
                                     (4, _record(4, 0.25))])
    (series,) = report.series(report.load(tmp_path))
    label, kind, points = series
    assert kind == "strong" and [p["P"] for p in points] == [1, 2, 4]
    assert [round(p["speedup"], 3) for p in points] == [1.0, 1.6, 3.2]
    assert [round(p["efficiency"], 3) for p in points] == [1.0, 0.8, 0.8]
    status, out, err = command("report", tmp_path, "--no-plot", "--check")
    assert status == 0, err
    assert "strong scaling: N=8,C=16" in out and "80%" in out
    assert re.search(r"^1\s+1\s+800\.000\s+700\.000\s+1\.00\s+1\s+100%$", out, re.M), out


def test_report_weak_scaling_from_metadata(tmp_path):
    layer = "N={},C=16,K=16,H=8,W=8,R=3,S=3,stride=1,pad=1,dilation=1"
    write_study(tmp_path, "weak", [(P, _record(P, t, layer=layer.format(2 * P))) for P, t in
                                   ((1, 1.0), (2, 1.25), (4, 2.0))])
    (series,) = report.series(report.load(tmp_path))
    label, kind, points = series
    assert kind == "weak" and label.startswith("N=2/rank,C=16")
    assert [round(p["efficiency"], 3) for p in points] == [1.0, 0.8, 0.5]
    assert [round(p["speedup"], 3) for p in points] == [1.0, 1.6, 2.0]


def test_report_study_is_one_series_whatever_algorithm_the_planner_picked(tmp_path):
    write_study(tmp_path, "strong", [(1, _record(1, 0.8)), (2, _record(2, 0.5, algo="3d"))])
    (series,) = report.series(report.load(tmp_path))
    assert series[0].endswith("fwd float32 2d/3d")
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a.jsonl").write_text(json.dumps(_record(1, 0.8)) + "\n" + json.dumps(_record(2, 0.5, algo="3d")) + "\n")
    assert report.series(report.load(loose)) == []


def test_report_check_flags_unverified_records(tmp_path):
    write_study(tmp_path, "strong", [(1, _record(1, 0.1)), (2, _record(2, 0.1, verified=False)),
                                     (3, _record(3, 0.1, rel_err=1e-3))])
    assert len(report.failures(report.load(tmp_path))) == 2
    done = cnnmm("report", tmp_path, "--no-plot", "--check")
    assert done.returncode == 1
    assert "2 of 3 records not verified" in done.stderr and "rel_err 0.001 above 1e-05" in done.stderr


def test_report_errors(tmp_path, command):
    assert command("report", tmp_path / "missing")[0] == 2
    (tmp_path / "bad.jsonl").write_text('{"P": 1,\n')
    status, out, err = command("report", tmp_path)
    assert status == 2 and "bad.jsonl:1: not JSON" in err
    (tmp_path / "bad.jsonl").write_text('{"other": "records"}\n')
    status, out, err = command("report", tmp_path)
    assert status == 2 and "no results" in err


def test_report_plot(tmp_path, command):
    pytest.importorskip("matplotlib")
    write_study(tmp_path, "strong", [(1, _record(1, 0.8, time_predicted_s=0.7)), (2, _record(2, 0.5))])
    status, out, err = command("report", tmp_path, "--plot", tmp_path / "s.png")
    assert status == 0, err
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {tmp_path / 's.png'}" in err
    # no series, but model predictions: a measured-against-model scatter instead
    other = tmp_path / "one"
    write_study(other, "strong", [(2, _record(2, 0.5, time_predicted_s=0.4))])
    assert command("report", other)[0] == 0 and (other / "scaling.png").is_file()


def test_report_without_matplotlib_prints_the_table_and_skips_the_plot(tmp_path, command, monkeypatch):
    write_study(tmp_path, "strong", [(1, _record(1, 0.8)), (2, _record(2, 0.5))])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    status, out, err = command("report", tmp_path)
    assert status == 0, err
    assert "strong scaling" in out
    assert "matplotlib is not installed, so no plot" in err
    assert not (tmp_path / "scaling.png").exists()
