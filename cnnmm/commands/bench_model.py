"""``python -m cnnmm bench model``: measured against predicted time for every grid of a layer.

Under ``mpiexec -n P``: for each layer (a sample of a network's conv layers by default), the
planner lists every admissible grid and algorithm with its predicted time; each is run and
timed, the plans interleaved round by round so that machine noise hits them alike. Reports,
per layer, measured and predicted time of each plan and whether the planner's choice was the
measured fastest or within 10% (and 15%) of it; then the fraction of layers where it was.
Only rank 0 prints; ``--json`` gives one object per layer and a summary object.
"""

from __future__ import annotations

from ..cli import emit, say

NAME = ("bench", "model")
HELP = "every grid of a set of layers at this P: measured vs predicted time, and the planner's pick"


def add_arguments(p):
    p.add_argument("--net", default="resnet50", help="network whose layers to sample (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--layers", default=None, help="comma-separated layer names of --net (default: all)")
    p.add_argument("--pass", dest="pass_", default="fwd", choices=("fwd", "train"))
    p.add_argument("--profile", default=None, help="profile the planner predicts with (built-in name or file)")
    p.add_argument("--top", type=int, default=12, help="time at most this many best-predicted plans per layer")
    p.add_argument("--repeat", type=int, default=5, help="rounds (median reported)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--json", action="store_true")


def _run_once(layer, local, pass_):
    from mpi4py import MPI
    comm = layer.grid.comm
    comm.Barrier()
    t0 = MPI.Wtime()
    saved = {} if pass_ == "train" else None
    y = layer.forward(local["input"], local["weight"], saved=saved)
    if pass_ == "train":
        layer.backward_data(local["output"], local["weight"], saved=saved)
        layer.backward_weight(local["input"], local["output"], saved=saved)
        layer.release(saved)
    del y
    return comm.allreduce(MPI.Wtime() - t0, op=MPI.MAX)


def main(args):
    import numpy as np
    from mpi4py import MPI

    from .. import nets, planner
    from ..api import Conv2d
    from ..comm import collective_check
    from ..errors import CnnmmError
    from ..profiles import load_profile

    comm = MPI.COMM_WORLD

    def check():
        if min(args.batch, args.top, args.repeat) < 1:
            raise CnnmmError("--batch, --top and --repeat must be at least 1")
        layers = nets.layers(args.net, args.batch, args.dtype)
        if args.layers:
            wanted = args.layers.split(",")
            unknown = [w for w in wanted if w not in {layer.name for layer in layers}]
            if unknown:
                raise CnnmmError(f"--layers: {', '.join(unknown)} not in {args.net}")
            layers = [layer for layer in layers if layer.name in wanted]
        return layers, load_profile(args.profile)

    layers, profile = collective_check(comm, check)
    rows = []
    for net_layer in layers:
        spec = net_layer.spec
        plans = planner.rank_plans(spec, comm.size, None, args.pass_, None, profile)[:args.top]
        rng = np.random.default_rng(0)
        arrays = {"input": rng.standard_normal(spec.input_shape).astype(spec.dtype),
                  "weight": rng.standard_normal(spec.weight_shape).astype(spec.dtype),
                  "output": rng.standard_normal(spec.output_shape).astype(spec.dtype)}
        runs = []
        for plan in plans:
            layer = Conv2d(spec, comm, plan.algorithm, plan.dims, profile=profile)
            local = {name: layer.scatter(name, a if comm.rank == 0 else None) for name, a in arrays.items()}
            _run_once(layer, local, args.pass_)  # warm-up
            runs.append((plan, layer, local, []))
        for _ in range(args.repeat):
            for plan, layer, local, times in runs:
                times.append(_run_once(layer, local, args.pass_))
        measured = [float(np.median(times)) for _, _, _, times in runs]
        for _, layer, _, _ in runs:
            layer.free()
        best = int(np.argmin(measured))
        chosen = measured[0] / measured[best]
        row = {"net_layer": net_layer.name, "layer": str(spec), "P": comm.size, "pass": args.pass_,
               "profile": profile.name, "chosen": plans[0].as_dict(), "chosen_measured_s": measured[0],
               "best": plans[best].as_dict(), "best_measured_s": measured[best], "chosen_over_best": chosen,
               "within_10pct": chosen <= 1.10, "within_15pct": chosen <= 1.15,
               "plans": [{"algo": p.algorithm, "grid": p.dims.as_dict(), "predicted_s": p.time, "measured_s": m}
                         for p, m in zip(plans, measured)]}
        rows.append(row)
        say(f"bench model: {net_layer.name}: chosen {plans[0].algorithm} {plans[0].dims} {measured[0] * 1e3:.2f} ms, "
            f"best {plans[best].algorithm} {plans[best].dims} {measured[best] * 1e3:.2f} ms ({chosen:.2f}x)")
        emit(row if args.json else _row_text(row))
    summary = {"summary": True, "P": comm.size, "layers": len(rows),
               "within_10pct": sum(r["within_10pct"] for r in rows) / max(1, len(rows)),
               "within_15pct": sum(r["within_15pct"] for r in rows) / max(1, len(rows))}
    emit(summary if args.json else f"planner's choice within 10% of the measured best on "
         f"{summary['within_10pct']:.0%} of {len(rows)} layers, within 15% on {summary['within_15pct']:.0%}")
    return 0


def _row_text(r):
    lines = [f"{r['net_layer']}: {r['layer']} P={r['P']} {r['pass']}",
             f"  {'algo':>5} {'grid':>12} {'predicted ms':>13} {'measured ms':>12}"]
    for p in r["plans"]:
        grid = ",".join(str(v) for v in p["grid"].values())
        lines.append(f"  {p['algo']:>5} {grid:>12} {p['predicted_s'] * 1e3:>13.3f} {p['measured_s'] * 1e3:>12.3f}")
    lines.append(f"  chosen/best measured: {r['chosen_over_best']:.3f}")
    return "\n".join(lines)
