"""``python -m cnnmm bench kernels``: records, summary, rank-0-only output, torch optional."""

import importlib.util
import json
import sys

from helpers import mpiexec

from cnnmm.commands import bench_kernels as bk

CNNMM = [sys.executable, "-m", "cnnmm", "bench", "kernels"]
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def test_json_records_and_summary():
    args = ["--layers", "res5.1x1b,res3.3x3/2", "--batch", "1", "--repeat", "3", "--json", "--compare", "torch"]
    result = mpiexec(2, CNNMM + args, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    records, summary = lines[:-1], lines[-1]
    assert len(records) == 2 * 3 * 2  # layers x passes x dtypes, rank 0 only
    assert {(r["layer"], r["pass"], r["dtype"]) for r in records} == {
        (layer, p, d) for layer in ("res5.1x1b", "res3.3x3/2") for p in bk.PASSES for d in bk.DTYPES}
    for r in records:
        assert r["gflops"] > 0 and r["gemm_gflops"] > 0 and r["threads"] == 1
        # Ratios are medians of the per-round ratios, each round's methods back to back.
        rounds = len(r["times_s"])
        assert rounds == len(r["gemm_times_s"]) == 3 and r["time_s"] == sorted(r["times_s"])[1]
        flops = r["gflops"] * 1e9 * r["time_s"]
        pct = sorted(100 * (flops / t) / (2 * r["gemm_n"] ** 3 / g)
                     for t, g in zip(r["times_s"], r["gemm_times_s"]))
        assert abs(r["gemm_pct"] - pct[1]) < 1e-6 * pct[1]
        assert ("ratio_torch" in r) == HAVE_TORCH
        if HAVE_TORCH:
            ratios = sorted(t / s for t, s in zip(r["torch_times_s"], r["times_s"]))
            assert abs(r["ratio_torch"] - ratios[1]) < 1e-9 * ratios[1]
        # One thread asked for: the kernels keep about one core busy (process CPU / wall).
        assert 0 < r["threads_busy"] < 1.5, r
    assert len(summary["summary"]) == 6 and summary["batch"] == 1
    if not HAVE_TORCH:
        assert "torch is not installed" in result.stderr


def test_table_and_bad_layer():
    result = mpiexec(1, CNNMM + ["--layers", "res5.1x1b", "--batch", "1", "--repeat", "1", "--pass", "fwd",
                                 "--dtype", "float32"], timeout=300)
    assert result.returncode == 0, result.stderr
    assert "res5.1x1b" in result.stdout and "geomean" in result.stdout
    result = mpiexec(1, CNNMM + ["--layers", "nope"], timeout=120)
    assert result.returncode == 2 and "nope" in result.stderr


def test_summary_targets():
    def rec(layer, ratio, pct, crs, dtype="float32"):
        return {"dtype": dtype, "pass": "fwd", "layer": layer, "gflops": pct, "gemm_gflops": 100.0,
                "gemm_pct": pct, "crs": crs, "ratio_torch": ratio, "threads_busy": 1.0,
                "torch_threads_busy": 1.9 if layer == "b" else 1.0}

    good = [rec("a", 1.2, 80, 576), rec("b", 0.9, 50, 64)]
    (row,) = bk._summary(good, ("fwd",), ("float32",), True)
    assert row["target_met"] and row["min_ratio_layer"] == "b" and row["min_gemm_pct_big_crs"] == 80
    for bad in ([rec("a", 1.5, 70, 576), rec("b", 1.0, 90, 64)],  # < 75% of GEMM with C*R*S >= 576
                [rec("a", 2.0, 90, 576), rec("b", 0.6, 90, 64)],  # one layer below 0.7x
                [rec("a", 0.95, 90, 576)]):  # geomean below 1
        assert not bk._summary(bad, ("fwd",), ("float32",), True)[0]["target_met"]
    (row,) = bk._summary([rec("a", 1.4, 50, 576, "float64")], ("fwd",), ("float64",), True)
    assert not row["target_met"] and "min_gemm_pct_big_crs" not in row
    # A method busier than the threads asked for is called out next to the summary.
    text = bk._summary_text(bk._summary(good, ("fwd",), ("float32",), True), True, 1)
    assert "WARNING: torch kept 1.9 cores busy" in text and "cnnmm kept" not in text
