"""``python -m cnnmm bench kernels``: node-kernel GFLOP/s per layer and pass, against the same
run's GEMM rate and, when it is installed, torch (oneDNN).

Each timed round runs cnnmm, torch and a square GEMM back to back, the order rotated from round to
round. Ratios (to torch, to the GEMM rate) are medians of the per-round ratios: this machine's
kind switches between speed modes (1.6x apart) every few seconds, and a pair of calls tens of
milliseconds apart sees one mode where medians of separately timed calls may mix two. Rates
are medians; each record is reported as soon as it is measured. Rank 0
measures, other ranks return at once. Progress goes to stderr; the table (or with ``--json`` one object
per layer x pass x dtype, then a ``"summary"`` object) to stdout.
"""

from __future__ import annotations

import sys
import time

from ..cli import emit, say

NAME = ("bench", "kernels")
HELP = "node-kernel GFLOP/s per layer and pass vs the same run's GEMM rate and torch"

PASSES = ("fwd", "bwd-data", "bwd-weight")
DTYPES = ("float32", "float64")
#: Square GEMM size whose rate is the run's reference (the machine's usable FMA rate): one per
#: round, so not too long; at 1536 single-thread OpenBLAS runs at 0.99x its 2048 rate (both dtypes).
GEMM_N = {"float32": 1536, "float64": 1536}
#: The issue's targets: fp32 ratio geomean and worst layer, % of GEMM where C*R*S >= 576;
#: fp64 ratio geomean.
TARGETS = {"float32": {"geomean": 1.0, "min": 0.7, "gemm_pct": 75.0, "crs": 576},
           "float64": {"geomean": 1.5}}


def add_arguments(p):
    from ..nets import NETS
    p.add_argument("--net", default="resnet50", choices=sorted(NETS), help="network (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="batch size N (default: %(default)s)")
    p.add_argument("--layers", default=None, help="comma-separated layer names of --net to run (default: all)")
    p.add_argument("--pass", dest="pass_", default="all", choices=PASSES + ("all",))
    p.add_argument("--dtype", default="all", choices=DTYPES + ("all",))
    p.add_argument("--threads", type=int, default=1, help="threads for cnnmm and torch (default: %(default)s)")
    p.add_argument("--compare", default="none", choices=("torch", "none"),
                   help="also time torch (torch.nn.functional.conv2d and torch.nn.grad), if installed")
    p.add_argument("--repeat", type=int, default=5, help="timed rounds (median; default: %(default)s)")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="wall time, or this process's CPU time (less sensitive to other load)")
    p.add_argument("--json", action="store_true", help="JSON objects on stdout")


def _torch(threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def _methods(spec, pass_, dtype, torch, rng):
    """``(ours, theirs or None)``: zero-argument callables for one layer and pass."""
    import numpy as np

    from .. import kernels
    x = rng.standard_normal(spec.input_shape).astype(dtype)
    w = rng.standard_normal(spec.weight_shape).astype(dtype)
    dy = rng.standard_normal(spec.output_shape).astype(dtype)
    (ph, pw), st, dil = spec.pad, spec.stride, spec.dilation
    pad4 = (ph, ph, pw, pw)
    out = np.empty(spec.output_shape if pass_ == "fwd" else spec.input_shape if pass_ == "bwd-data"
                   else spec.weight_shape, dtype)
    ours = {
        "fwd": lambda: kernels.conv2d_forward(x, w, st, pad4, dil, out=out),
        "bwd-data": lambda: kernels.conv2d_backward_data(dy, w, (spec.H, spec.W), st, pad4, dil, out=out),
        "bwd-weight": lambda: kernels.conv2d_backward_weight(x, dy, (spec.R, spec.S), st, pad4, dil, out=out),
    }[pass_]
    if torch is None:
        return ours, None
    tx, tw, tdy = (torch.from_numpy(a) for a in (x, w, dy))
    grad = torch.nn.grad
    theirs = {
        "fwd": lambda: torch.nn.functional.conv2d(tx, tw, None, st, (ph, pw), dil),
        "bwd-data": lambda: grad.conv2d_input(tx.shape, tw, tdy, st, (ph, pw), dil),
        "bwd-weight": lambda: grad.conv2d_weight(tx, tw.shape, tdy, st, (ph, pw), dil),
    }[pass_]
    return ours, theirs


def _geomean(values):
    import math
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _measure(args, layers, passes, dtypes, torch, show=None):
    import numpy as np
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    rng = np.random.default_rng(0)
    records = []
    for dtype in dtypes:
        n = GEMM_N[dtype]
        a, b = rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype)
        c = np.empty((n, n), dtype)
        gemm_flops = 2 * n ** 3

        def gemm():
            np.matmul(a, b, out=c)

        gemm()
        for layer in layers:
            spec = layer.spec.with_dtype(dtype)
            for pass_ in passes:
                say(f"bench kernels: {dtype} {layer.name} {pass_}")
                ours, theirs = _methods(spec, pass_, dtype, torch, rng)
                ours()  # first call: page faults, lazy set-up
                if theirs is not None:
                    theirs()
                methods = [("ours", ours), ("theirs", theirs), ("gemm", gemm)]
                methods = [(name, m) for name, m in methods if m is not None]
                times = {name: [] for name, _ in methods}
                # CPU time over wall time: the threads each method really kept busy.
                busy = {name: [0.0, 0.0] for name, _ in methods}
                for round_ in range(args.repeat):
                    shift = round_ % len(methods)
                    for name, method in methods[shift:] + methods[:shift]:
                        c0, w0, t0 = time.process_time(), time.perf_counter(), clock()
                        method()
                        times[name].append(clock() - t0)
                        busy[name][0] += time.process_time() - c0
                        busy[name][1] += time.perf_counter() - w0
                t_ours = times["ours"]
                rec = {"net": args.net, "layer": layer.name, "spec": str(spec), "pass": pass_,
                       "dtype": dtype, "threads": args.threads, "crs": spec.C * spec.R * spec.S,
                       "time_s": float(np.median(t_ours)), "times_s": t_ours}
                rec["gflops"] = spec.flops / rec["time_s"] / 1e9
                rec["threads_busy"] = busy["ours"][0] / busy["ours"][1] if busy["ours"][1] > 0 else None
                if theirs is not None:
                    rec["torch_threads_busy"] = (busy["theirs"][0] / busy["theirs"][1]
                                                 if busy["theirs"][1] > 0 else None)
                    rec["torch_time_s"] = float(np.median(times["theirs"]))
                    rec["torch_times_s"] = times["theirs"]
                    rec["torch_gflops"] = spec.flops / rec["torch_time_s"] / 1e9
                    rec["ratio_torch"] = float(np.median(np.divide(times["theirs"], t_ours)))
                rec["gemm_n"] = n
                rec["gemm_times_s"] = times["gemm"]
                rec["gemm_gflops"] = gemm_flops / float(np.median(times["gemm"])) / 1e9
                rec["gemm_pct"] = float(np.median(100 * spec.flops / gemm_flops * np.divide(times["gemm"], t_ours)))
                records.append(rec)
                if show is not None:
                    show(rec)
    return records


def _summary(records, passes, dtypes, with_torch):
    import numpy as np
    rows = []
    for dtype in dtypes:
        for pass_ in passes:
            recs = [r for r in records if r["dtype"] == dtype and r["pass"] == pass_]
            if not recs:
                continue
            row = {"dtype": dtype, "pass": pass_, "layers": len(recs),
                   "geomean_gflops": _geomean([r["gflops"] for r in recs]),
                   "gemm_gflops": float(np.median([r["gemm_gflops"] for r in recs])),
                   "max_threads_busy": max((r["threads_busy"] or 0) for r in recs)}
            target = TARGETS[dtype]
            if "gemm_pct" in target:
                big = [r for r in recs if r["crs"] >= target["crs"]]
                row["min_gemm_pct_big_crs"] = min((r["gemm_pct"] for r in big), default=None)
            if with_torch:
                ratios = [r["ratio_torch"] for r in recs]
                row["geomean_ratio_torch"] = _geomean(ratios)
                worst = min(recs, key=lambda r: r["ratio_torch"])
                row["min_ratio_torch"], row["min_ratio_layer"] = worst["ratio_torch"], worst["layer"]
                row["max_torch_threads_busy"] = max((r["torch_threads_busy"] or 0) for r in recs)
                met = row["geomean_ratio_torch"] >= target["geomean"]
                if "min" in target:
                    met = met and row["min_ratio_torch"] >= target["min"]
                if row.get("min_gemm_pct_big_crs") is not None:
                    met = met and row["min_gemm_pct_big_crs"] >= target["gemm_pct"]
                row["target_met"] = bool(met)
            rows.append(row)
    return rows


def _row(r, with_torch):
    """One table line (the header when ``r`` is None)."""
    if r is None:
        head = f"{'dtype':8s} {'layer':13s} {'pass':10s} {'GFLOP/s':>8s} {'%GEMM':>6s}"
        return head + (f" {'torch':>8s} {'ratio':>6s}" if with_torch else "")
    line = f"{r['dtype']:8s} {r['layer']:13s} {r['pass']:10s} {r['gflops']:8.1f} {r['gemm_pct']:6.1f}"
    return line + (f" {r['torch_gflops']:8.1f} {r['ratio_torch']:6.2f}" if with_torch else "")


def _summary_text(summary, with_torch, threads):
    lines = []
    for s in summary:
        line = (f"{s['dtype']:8s} {s['pass']:10s} geomean {s['geomean_gflops']:6.1f} GFLOP/s "
                f"(GEMM {s['gemm_gflops']:.1f})")
        if s.get("min_gemm_pct_big_crs") is not None:
            line += f", min %GEMM (C*R*S>=576) {s['min_gemm_pct_big_crs']:.1f}"
        if with_torch:
            line += (f", vs torch geomean {s['geomean_ratio_torch']:.2f}x, min {s['min_ratio_torch']:.2f}x "
                     f"({s['min_ratio_layer']}), target {'met' if s['target_met'] else 'NOT met'}")
        lines.append(line)
        busy = [("cnnmm", s["max_threads_busy"])] + ([("torch", s["max_torch_threads_busy"])] if with_torch else [])
        for who, value in busy:
            if value > threads + 0.5:
                lines.append(f"  WARNING: {who} kept {value:.1f} cores busy on some layer, more than the "
                             f"{threads} thread(s) asked for: its rates are not comparable")
    return "\n".join(lines)


def main(args):
    from mpi4py import MPI

    from .. import nets
    from ..comm import collective_check
    from ..errors import AlgorithmError
    from ..runtime import set_threads

    comm = MPI.COMM_WORLD

    def check():
        if args.repeat < 1 or args.batch < 1 or args.threads < 1:
            raise AlgorithmError("--repeat, --batch and --threads must be at least 1")
        layers = nets.layers(args.net, args.batch)
        if args.layers:
            wanted = [name.strip() for name in args.layers.split(",") if name.strip()]
            unknown = sorted(set(wanted) - {layer.name for layer in layers})
            if unknown:
                raise AlgorithmError(f"--layers: {', '.join(unknown)} not in {args.net} "
                                     f"({', '.join(layer.name for layer in layers)})")
            layers = [layer for layer in layers if layer.name in wanted]
        return layers

    layers = collective_check(comm, check)
    if comm.rank != 0:  # idle (not in a busy-waiting barrier) while rank 0 measures
        return 0
    set_threads(args.threads)
    torch = _torch(args.threads) if args.compare == "torch" else None
    if args.compare == "torch" and torch is None:
        say("bench kernels: torch is not installed (pip install 'cnnmm[bench]'): no comparison")
    passes = PASSES if args.pass_ == "all" else (args.pass_,)
    dtypes = DTYPES if args.dtype == "all" else (args.dtype,)
    from .. import kernels
    kernels.warmup(dtypes)
    with_torch = torch is not None
    title = (f"bench kernels: {args.net} batch {args.batch}, {args.threads} thread(s), "
             f"{args.clock} clock, median of {args.repeat} rounds (ratios per round)"
             + (f", torch {torch.__version__}" if with_torch else ""))
    if not args.json:
        emit(title + "\n" + _row(None, with_torch))
    records = _measure(args, layers, passes, dtypes, torch,
                       show=emit if args.json else lambda rec: emit(_row(rec, with_torch)))
    summary = _summary(records, passes, dtypes, with_torch)
    if args.json:
        emit({"summary": summary, "net": args.net, "batch": args.batch, "threads": args.threads,
              "clock": args.clock, "repeat": args.repeat,
              "torch": None if torch is None else torch.__version__})
    else:
        emit("\n" + _summary_text(summary, with_torch, args.threads))
    sys.stderr.flush()
    return 0
