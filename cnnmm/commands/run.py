"""``python -m cnnmm run``: one layer distributed; time, words, memory and error per pass."""

from __future__ import annotations

import json

from ..cli import emit, human_bytes, say

NAME = ("run",)
HELP = "run one layer distributed and report time, words, memory and error per pass"

#: The default example: a ResNet-50 stage-3 3x3 layer, about 1.8 GFLOP per pass.
DEFAULT_LAYER = "N=8,C=128,K=128,H=28,W=28,R=3,S=3,stride=1,pad=1,dilation=1"

#: pass name -> (Conv2d method, the blocks it takes, the layout of its result, retained tiles it adds)
PASSES = {
    "fwd": ("forward", ("input", "weight"), "output", ("input", "weight")),
    "bwd-data": ("backward_data", ("output", "weight"), "input", ("dout",)),
    "bwd-weight": ("backward_weight", ("input", "output"), "weight", ()),
}


def add_arguments(p):
    from ..algorithms import NAMES
    what = p.add_mutually_exclusive_group()
    what.add_argument("--layer", default=None,
                      help="layer as N=..,C=..,K=..,H=..,W=..,R=..,S=..[,stride=1][,pad=0][,dilation=1]; "
                           f"AxB sets height and width apart (default: {DEFAULT_LAYER})")
    what.add_argument("--net", default=None, help="run every conv layer of a network: resnet50 or vgg16")
    p.add_argument("--batch", type=int, default=8, help="batch size N of the --net layers (default: %(default)s)")
    p.add_argument("--algo", default="auto", help=f"algorithm or strategy: {', '.join(NAMES)} (default: %(default)s)")
    p.add_argument("--grid", default=None, help="pN,pH,pW,pK,pC; 0 = let MPI choose (default: planner's choice)")
    p.add_argument("--profile", default=None, help="machine profile for the planner: a built-in name or a JSON file")
    p.add_argument("--replication", type=int, default=None, metavar="c",
                   help="replication factor c = pC for the planner to keep (2.5d, 3d)")
    p.add_argument("--panel", type=int, default=None, help="SUMMA panel width in channels")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--pass", dest="pass_", default="fwd", choices=("fwd", "bwd-data", "bwd-weight", "train"),
                   help="pass to run; train runs fwd, bwd-data and bwd-weight and reports each")
    p.add_argument("--retain", default="yes", choices=("yes", "no"),
                   help="train: keep tiles gathered in earlier passes for later ones (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--verify", action="store_true", help="compare with the float64 reference on rank 0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads per rank for the kernels, Numba and BLAS (default: cores / ranks on the node)")
    p.add_argument("--json", action="store_true", help="one JSON object per pass on stdout")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="append the report (JSON lines with --json) to FILE instead of stdout")


def _reference(spec, pass_, x, w, dy):
    from .. import reference
    if pass_ == "fwd":
        return reference.conv2d_forward(x, w, spec)
    if pass_ == "bwd-data":
        return reference.conv2d_backward_data(dy, w, spec)
    return reference.conv2d_backward_weight(x, dy, spec)


def _targets(args):
    """``[(network layer name or None, ConvSpec)]`` to run, validated."""
    from .. import nets
    from ..errors import AlgorithmError
    from ..spec import ConvSpec
    if args.repeat < 1:
        raise AlgorithmError(f"--repeat {args.repeat}: must be at least 1")
    if args.net is not None:
        if args.batch < 1:
            raise AlgorithmError(f"--batch {args.batch}: must be at least 1")
        return [(layer.name, layer.spec) for layer in nets.layers(args.net, args.batch, args.dtype)]
    return [(None, ConvSpec.parse(args.layer or DEFAULT_LAYER, dtype=args.dtype))]


def main(args):
    from mpi4py import MPI

    from ..comm import collective_check

    if args.threads is not None:
        from ..runtime import set_threads
        set_threads(args.threads)
    comm = MPI.COMM_WORLD
    targets = collective_check(comm, lambda: _targets(args))
    status = 0
    for net_layer, spec in targets:
        for record in run_layer(comm, spec, args):
            if net_layer is not None:
                record["net"], record["net_layer"] = args.net, net_layer
            if "verified" in record and not record["verified"]:
                status = 1
            _write(args, record if args.json else _report(record))
    return comm.bcast(status, root=0)


def _write(args, item):
    if args.output is None:
        emit(item)
        return
    from mpi4py import MPI
    if MPI.COMM_WORLD.Get_rank() == 0:
        with open(args.output, "a") as f:
            f.write((item if isinstance(item, str) else json.dumps(item)) + "\n")


def run_layer(comm, spec, args):
    """Run the passes ``args`` asks for on one layer; returns the records (complete on rank 0)."""
    import numpy as np
    from mpi4py import MPI

    from .. import bounds, cost
    from ..api import Conv2d
    from ..runtime import startup_seconds

    layer = Conv2d(spec, comm, args.algo, args.grid, args.panel, args.replication, profile=args.profile)
    passes = list(PASSES) if args.pass_ == "train" else [args.pass_]
    retain = args.pass_ == "train" and args.retain == "yes"
    say(f"cnnmm: {spec} {spec.dtype} | {layer.algorithm.name} | {layer.dims.describe()} | "
        f"{args.pass_}{' (retaining tiles)' if retain else ''}")
    rng = np.random.default_rng(args.seed)
    glob = {"input": None, "weight": None, "output": None}
    if comm.rank == 0:
        glob = {name: rng.standard_normal(shape).astype(spec.dtype) for name, shape in
                (("input", spec.input_shape), ("weight", spec.weight_shape), ("output", spec.output_shape))}
    local = {name: layer.scatter(name, array) for name, array in glob.items()}
    times = {p: [] for p in passes}
    stats, results = {}, {}
    for _ in range(args.repeat):
        saved = {} if retain else None
        have = set()
        for pass_ in passes:
            method, inputs, result_layout, adds = PASSES[pass_]
            layer.ledger.reset()
            layer.meter.reset_peak()
            comm.Barrier()
            t0 = MPI.Wtime()
            out = getattr(layer, method)(*(local[name] for name in inputs), saved=saved)
            times[pass_].append(comm.allreduce(MPI.Wtime() - t0, op=MPI.MAX))
            words, msgs = layer.ledger.total()
            stats[pass_] = (words, msgs, layer.meter.peak, layer.ledger.as_dict(), set(have) if retain else None)
            results[pass_] = (result_layout, out)
            if retain:
                have.update(adds)
        if saved:
            layer.release(saved)
    records = []
    for pass_ in passes:
        words, msgs, peak, phases, had = stats[pass_]
        model = cost.rank_costs(spec, layer.dims, layer.algorithm.name, pass_, args.panel, had)
        lower = bounds.lower_bounds(spec, comm.size, int(model.peak_bytes.max()) / spec.itemsize)
        record = {
            "algo": layer.algorithm.name, "grid": layer.dims.as_dict(), "P": comm.size, "pass": pass_,
            "dtype": spec.dtype, "layer": str(spec), "time_s": float(np.median(times[pass_])),
            "times_s": times[pass_], "retain": retain,
            "words_max": comm.allreduce(words, op=MPI.MAX), "msgs_max": comm.allreduce(msgs, op=MPI.MAX),
            "peak_bytes": comm.allreduce(peak, op=MPI.MAX),
            "words_predicted": int(model.total_words.max()), "msgs_predicted": int(model.total_msgs.max()),
            "peak_bytes_predicted": int(model.peak_bytes.max()),
            "time_predicted_s": float(layer.profile.time(model, spec, pass_).max()),
            "words_lower_bound": lower["alg"], "words_lower_bound_indep": lower["indep"],
            "words_lower_bound_mem": lower["mem"], "words_lower_bound_grid": lower["grid"],
            "phases": _max_phases(comm, phases),
        }
        startup_s, warmup_s = startup_seconds()
        record["startup_s"] = comm.allreduce(startup_s or 0.0, op=MPI.MAX)
        record["warmup_s"] = comm.allreduce(warmup_s, op=MPI.MAX)
        record["gflops"] = spec.flops / record["time_s"] / 1e9 if record["time_s"] > 0 else None
        for key in ("alg", "grid"):
            bound = lower[key]
            record[f"words_ratio_{key}"] = record["words_max"] / bound if bound > 0 else None
        gathered = layer.gather(*results[pass_])
        if args.verify and comm.rank == 0:
            say(f"cnnmm: verifying {pass_} against the float64 reference")
            ref = _reference(spec, pass_, glob["input"], glob["weight"], glob["output"])
            err = float(np.max(np.abs(gathered - ref))) if ref.size else 0.0
            scale = float(np.max(np.abs(ref))) if ref.size else 0.0
            record["max_abs_err"] = err
            record["rel_err"] = err / scale if scale > 0 else err
            record["verified"] = record["rel_err"] <= (1e-12 if spec.dtype == "float64" else 1e-5)
        records.append(record)
    layer.free()
    return records


def _max_phases(comm, phases):
    """Per phase, the max over ranks of words and of messages."""
    merged = {}
    for ranks_phases in comm.allgather(phases):
        for name, counts in ranks_phases.items():
            slot = merged.setdefault(name, {"words": 0, "msgs": 0})
            slot["words"] = max(slot["words"], counts["words"])
            slot["msgs"] = max(slot["msgs"], counts["msgs"])
    return merged


def _report(r):
    lines = [
        f"pass      {r['pass']}{' (training step, gathered tiles retained)' if r['retain'] else ''}",
        f"layer     {r['layer']} ({r['dtype']})",
        f"algorithm {r['algo']} on grid " + " ".join(f"{k}={v}" for k, v in r["grid"].items()) + f" (P={r['P']})",
        f"time      {r['time_s'] * 1e3:.2f} ms median of {len(r['times_s'])}  ({r['gflops']:.1f} GFLOP/s)",
        f"words     {r['words_max']} max per rank (model {r['words_predicted']}; lower bounds "
        f"{r['words_lower_bound']:.0f} any algorithm, {r['words_lower_bound_grid']:.0f} any grid), "
        f"{r['msgs_max']} messages",
        f"memory    {human_bytes(r['peak_bytes'])} peak algorithm buffers per rank "
        f"(model {human_bytes(r['peak_bytes_predicted'])})",
        f"model     {r['time_predicted_s'] * 1e3:.2f} ms predicted time",
        f"startup   {r['startup_s']:.2f} s from import to kernels ready, {r['warmup_s']:.2f} s of it "
        f"loading or compiling them (slowest rank)",
    ]
    if "rel_err" in r:
        verdict = "PASS" if r["verified"] else "FAIL"
        lines.append(f"verify    rel_err {r['rel_err']:.2e} (max abs {r['max_abs_err']:.2e}) {verdict}")
    return "\n".join(lines)
