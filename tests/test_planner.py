"""Planner, bounds and the plan command (no MPI needed)."""

import json
import math
import subprocess
import sys
import time

import pytest

from cnnmm import ConvSpec, bounds, cost, planner
from cnnmm.grid import GridDims, factorizations
from cnnmm.profiles import builtin_profiles, load_profile

from helpers import LAYERS


def _spans(spec):
    return spec.stride[0] * spec.P == spec.H and spec.stride[1] * spec.Q == spec.W


@pytest.mark.parametrize("text", [t for t in LAYERS if _spans(ConvSpec.parse(t))] + [
    "N=8,C=64,K=32,H=28,W=28,R=3,S=3,pad=1", "N=16,C=32,K=64,H=14,W=14,R=1,S=1,stride=2",
    "N=4,C=3,K=16,H=32,W=32,R=7,S=7,stride=2,pad=3", "N=6,C=12,K=10,H=15,W=15,R=5,S=5,pad=2"])
@pytest.mark.parametrize("nranks", [1, 2, 6, 12])
def test_no_integer_grid_beats_the_grid_bound(text, nranks):
    # The relaxation reads stride x output rows of input (design note §4.7): a bound where
    # that is the input ("same" or exactly tiling layers), not for heavily padded tiny ones.
    spec = ConvSpec.parse(text)
    lb = bounds.lower_bound_grid(spec, nranks)
    for t in factorizations(nranks):
        dims = GridDims(*t)
        if not planner._admissible(spec, dims):
            continue
        words = cost.rank_costs(spec, dims, "3d", "fwd").total_words.max()
        assert words >= lb * (1 - 1e-9), (dims, words, lb)


def test_bounds_reproduce_design_note():
    res5 = ConvSpec.parse("N=256,C=512,K=512,H=7,W=7,R=3,S=3,pad=1")
    res2 = ConvSpec.parse("N=256,C=64,K=64,H=56,W=56,R=3,S=3,pad=1")
    assert bounds.lower_bound_indep(res5, 64) == pytest.approx(6.25e5, rel=0.01)
    assert bounds.lower_bound_grid(res2, 1024) == pytest.approx(4.40e4 / 1.087, rel=0.01)
    assert bounds.lower_bound_indep(res2, 64) == 0


def test_evenly_dividing_identity():
    spec = ConvSpec.parse("N=8,C=8,K=8,H=8,W=8,R=1,S=1")
    for t in factorizations(8):
        words, identity = cost.words_identity_check(spec, t)
        assert words == identity


@pytest.mark.parametrize("pass_", ["fwd", "train"])
def test_planner_picks_the_least_predicted_time(pass_):
    spec = ConvSpec.parse("N=4,C=16,K=24,H=14,W=14,R=3,S=3,pad=1")
    plans = planner.rank_plans(spec, 12, pass_=pass_, shortlist=10**6)
    fastest = min(p.time for p in plans)
    assert plans[0].time <= fastest * (1 + planner.NEAR_TIE)
    assert all(p.words >= plans[0].words for p in plans if p.time <= fastest * (1 + planner.NEAR_TIE))
    best = planner.plan_layer(spec, 12, pass_=pass_)
    assert best.time <= fastest * (1 + planner.NEAR_TIE)
    assert "split" in str(best) or "reduce" in str(best)


def test_memory_limit_filters_and_explains():
    spec = ConvSpec.parse("N=8,C=64,K=64,H=28,W=28,R=3,S=3,pad=1")
    free = planner.plan_layer(spec, 4)
    limited = planner.rank_plans(spec, 4, memory=free.peak_bytes // 2)
    assert all(p.peak_bytes <= free.peak_bytes // 2 for p in limited)
    with pytest.raises(Exception, match="fits 1 bytes"):
        planner.plan_layer(spec, 4, memory=1)


def test_template_keeps_fixed_extents():
    spec = ConvSpec.parse("N=8,C=64,K=64,H=28,W=28,R=3,S=3,pad=1")
    plan = planner.plan_layer(spec, 8, template=GridDims(0, 0, 0, 0, 2))
    assert plan.dims.pC == 2


def test_profiles_load_and_interpolate():
    for name in builtin_profiles():
        prof = load_profile(name)
        for op in ("bcast", "allgather", "reduce_scatter", "reduce", "p2p"):
            small, big = prof.op_constants(op, 2), prof.op_constants(op, 4096)
            assert small[0] > 0 and big[0] >= small[0]


def test_plan_command_is_fast_and_needs_no_mpi():
    cmd = [sys.executable, "-m", "cnnmm", "plan", "--layer", "N=256,C=64,K=64,H=56,W=56,R=3,S=3,pad=1",
           "-P", "4096", "--json"]
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["plan_seconds"] < 1.0
    assert math.prod(record["grid"].values()) == 4096
    assert record["ratio_grid"] < 1.3
    assert elapsed < 30


def test_plan_net_table():
    result = subprocess.run([sys.executable, "-m", "cnnmm", "plan", "--net", "vgg16", "-P", "8", "--pass", "train",
                             "--memory", "1GiB"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("chosen:") == 9 and "network: 9 distinct layers" in result.stdout


def test_plan_bad_memory():
    result = subprocess.run([sys.executable, "-m", "cnnmm", "plan", "-P", "4", "--memory", "lots"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--memory 'lots'" in result.stderr


def test_calibrate_writes_a_profile_the_planner_loads(tmp_path):
    from helpers import mpiexec
    out = tmp_path / "profile.json"
    result = mpiexec(3, [sys.executable, "-m", "cnnmm", "calibrate", "--quick", "--output", str(out)], timeout=300)
    assert result.returncode == 0, result.stderr
    prof = load_profile(str(out))
    assert set(prof.ops["bcast"]) == {2, 3} and prof.rate("float32", "fwd") > 0 and prof.call_overhead > 0
    spec = ConvSpec.parse("N=4,C=16,K=16,H=8,W=8,R=3,S=3,pad=1")
    assert planner.plan_layer(spec, 3, profile=prof).dims.size == 3


def test_bench_model_reports_measured_and_predicted():
    from helpers import mpiexec
    result = mpiexec(2, [sys.executable, "-m", "cnnmm", "bench", "model", "--batch", "1", "--layers",
                         "res5.1x1b,res4.3x3", "--top", "3", "--repeat", "1", "--json"], timeout=300)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    layers, summary = records[:-1], records[-1]
    assert [r["net_layer"] for r in layers] == ["res4.3x3", "res5.1x1b"] and summary["layers"] == 2
    for r in layers:
        assert 1 <= len(r["plans"]) <= 3 and all(p["measured_s"] > 0 and p["predicted_s"] > 0 for p in r["plans"])
        assert r["chosen_over_best"] >= 1.0


def test_plan_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "c.png"
    result = subprocess.run([sys.executable, "-m", "cnnmm", "plan", "--layer", "N=8,C=64,K=64,H=14,W=14,R=3,S=3,pad=1",
                             "-P", "8", "--plot", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
