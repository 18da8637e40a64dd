"""``python -m cnnmm`` end to end under mpiexec."""

import json
import sys
import time

import pytest

from helpers import mpiexec

CNNMM = [sys.executable, "-m", "cnnmm"]


def run(nranks, *args, timeout=300):
    return mpiexec(nranks, CNNMM + list(args), timeout=timeout)


@pytest.mark.parametrize("nranks,layer,algo,grid,dtype", [
    (1, "N=2,C=3,K=4,H=9,W=7,R=3,S=3,pad=1", "2d", None, "float64"),
    (2, "N=1,C=5,K=3,H=10,W=9,R=3,S=2,stride=2x1,pad=1x0", "2d", "1,2,1,1,1", "float64"),
    (3, "N=4,C=6,K=5,H=7,W=8,R=1,S=1,stride=2", "2.5d", "1,1,1,1,3", "float32"),
    (4, "N=3,C=7,K=9,H=11,W=13,R=3,S=3,dilation=2,pad=2", "2d", "0,0,0,0,1", "float32"),
    (4, "N=1,C=8,K=4,H=9,W=9,R=7,S=7,stride=2,pad=3", "2.5d", "1,2,1,1,2", "float64"),
])
def test_run_json_verifies(nranks, layer, algo, grid, dtype):
    args = ["run", "--layer", layer, "--algo", algo, "--dtype", dtype, "--verify", "--json", "--repeat", "2"]
    result = run(nranks, *args, *(["--grid", grid] if grid else []))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout  # only rank 0 prints, one object per pass
    rec = lines[0]
    for key in ("algo", "grid", "P", "pass", "dtype", "layer", "time_s", "gflops", "max_abs_err", "rel_err",
                "words_max", "msgs_max", "peak_bytes"):
        assert key in rec, key
    assert rec["P"] == nranks and rec["pass"] == "fwd" and rec["dtype"] == dtype and rec["algo"] == algo
    assert set(rec["grid"]) == {"pN", "pH", "pW", "pK", "pC"}
    assert rec["rel_err"] <= (1e-12 if dtype == "float64" else 1e-5)
    assert rec["words_max"] == rec["words_predicted"]
    assert rec["time_s"] > 0 and rec["peak_bytes"] > 0
    # Start-up: import to kernels ready, including the warm-up (cache load or compile).
    assert rec["startup_s"] >= rec["warmup_s"] > 0


@pytest.mark.parametrize("nranks,algo,extra", [
    (2, "2d", []), (3, "2.5d", ["--replication", "3"]), (4, "3d", ["--grid", "1,2,1,1,2"]),
    (4, "spatial", []), (3, "channel", ["--retain", "no"]),
])
def test_train_reports_each_pass(nranks, algo, extra):
    layer = "N=3,C=6,K=5,H=9,W=8,R=3,S=3,pad=1,stride=2x1"
    result = run(nranks, "run", "--layer", layer, "--algo", algo, "--pass", "train", "--dtype", "float64",
                 "--verify", "--json", "--repeat", "1", *extra)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [r["pass"] for r in records] == ["fwd", "bwd-data", "bwd-weight"]
    for r in records:
        assert r["rel_err"] <= 1e-12 and r["words_max"] == r["words_predicted"], r
        assert r["retain"] == ("no" not in extra)


@pytest.mark.parametrize("pass_", ["bwd-data", "bwd-weight"])
def test_single_backward_pass(pass_):
    result = run(3, "run", "--layer", "N=2,C=4,K=5,H=7,W=7,R=3,S=3,pad=1", "--algo", "2.5d", "--grid", "1,1,1,1,3",
                 "--pass", pass_, "--verify", "--json", "--repeat", "1")
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert record["pass"] == pass_ and record["verified"] and record["words_max"] == record["words_predicted"]


def test_default_example_runs_and_verifies():
    result = run(2, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("PASS") == 1, result.stdout
    assert "N=8,C=128,K=128,H=28,W=28,R=3,S=3" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["run", "--layer", "N=2,C=3,K=4,H=5,W=5,R=3,S=3", "--grid", "3,1,1,1,1"], "is not the number of ranks 2"),
    (["run", "--layer", "N=0,C=3,K=4,H=5,W=5,R=3,S=3"], "N=0: must be a positive integer"),
    (["run", "--layer", "N=1,C=3,K=4,H=5,W=5,R=9,S=3,pad=1"], "larger than the padded input"),
    (["run", "--layer", "N=1,C=3,K=4,H=5,W=5,R=3,S=3", "--algo", "cannon"], "unknown algorithm 'cannon'"),
    (["run", "--layer", "N=1,C=3,K=4,H=5,W=5,R=3"], "lacks S"),
    (["run", "--layer", "N=1,C=3,K=4,H=5,W=5,R=3,S=3", "--algo", "2d", "--grid", "1,1,1,1,2"], "needs pC=1"),
    (["run", "--repeat", "0"], "--repeat 0"),
    (["run", "--algo", "data", "--grid", "2,1,1,1,1"], "fixes the grid"),
    (["run", "--algo", "2.5d", "--replication", "3"], "does not divide the number of ranks 2"),
    (["run", "--algo", "2d", "--replication", "2"], "needs pC=1"),
])
def test_bad_input_fails_fast_with_one_message(args, message):
    start = time.monotonic()
    result = run(2, *args, timeout=60)
    assert time.monotonic() - start < 60
    assert result.returncode != 0
    assert result.stderr.count(message) == 1, result.stderr  # same error everywhere, printed once
    assert "Traceback" not in result.stderr


def test_bad_option_prints_usage_once():
    result = run(2, "run", "--dtype", "float16", timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("usage:") == 1


ABORT_SCRIPT = """
import sys, types, cnnmm.cli as cli
from mpi4py import MPI
def boom(args):
    if MPI.COMM_WORLD.rank == 1:
        raise RuntimeError("only rank 1 fails")
    MPI.COMM_WORLD.Barrier()   # the other ranks would wait here forever
command = types.SimpleNamespace(NAME=("boom",), HELP="fail on one rank", add_arguments=lambda p: None, main=boom)
cli.commands = lambda: [command]
sys.exit(cli.main(["boom"]))
"""


def test_exception_on_one_rank_aborts_instead_of_hanging():
    start = time.monotonic()
    result = mpiexec(3, [sys.executable, "-c", ABORT_SCRIPT], timeout=60)
    assert time.monotonic() - start < 60
    assert result.returncode != 0
    assert "[rank 1]" in result.stderr and "only rank 1 fails" in result.stderr


def test_info():
    result = run(2, "info", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["ranks"] == 2 and info["mpi_library"] and info["numba"]


def test_net_run_appends_json_lines(tmp_path):
    out = tmp_path / "results.jsonl"
    out.write_text("")
    result = run(2, "run", "--net", "resnet50", "--batch", "1", "--repeat", "1", "--json", "--output", str(out),
                 timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    records = [json.loads(line) for line in out.read_text().splitlines()]
    from cnnmm import nets
    assert [r["net_layer"] for r in records] == [layer.name for layer in nets.layers("resnet50")]
    assert all(r["net"] == "resnet50" and r["words_max"] == r["words_predicted"] for r in records)


IMPORT_FAILURE_SCRIPT = """
import os
import cnnmm
rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
if rank == 1:
    raise ImportError("rank 1 fails before MPI is initialised")
from mpi4py import MPI
MPI.COMM_WORLD.Barrier()   # the other ranks would wait here (or in MPI_Init) forever
"""


def test_failure_before_mpi_init_aborts_instead_of_hanging():
    start = time.monotonic()
    result = mpiexec(3, [sys.executable, "-c", IMPORT_FAILURE_SCRIPT], timeout=60)
    assert time.monotonic() - start < 60
    assert result.returncode != 0
    assert "rank 1 fails before MPI is initialised" in result.stderr
