"""``python -m cnnmm plan``: rank grids and algorithms for a layer (or a network) and P.

Runs without an MPI launch: the model needs only arithmetic. Prints a ranked table (grid,
algorithm, words, messages, memory, predicted time, ratio to the lower bounds) or JSON, and
with ``--plot`` a PNG of predicted words and memory against the replication factor c.
"""

from __future__ import annotations

import re
import time

from ..cli import emit, human_bytes, say

NAME = ("plan",)
HELP = "rank every grid and algorithm for a layer or network at P ranks by predicted time (no MPI needed)"

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_bytes(text):
    """``"2GiB" -> 2147483648``; plain numbers are bytes."""
    from ..errors import CnnmmError
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise CnnmmError(f"--memory {text!r}: expected a size like 512MiB, 2GiB or 4GB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def add_arguments(p):
    what = p.add_mutually_exclusive_group()
    what.add_argument("--layer", default=None, help="layer as in `run --layer` (default: the run default)")
    what.add_argument("--net", default=None, help="plan every conv layer of resnet50 or vgg16")
    p.add_argument("--batch", type=int, default=8, help="batch size of --net layers (default: %(default)s)")
    p.add_argument("-P", "--ranks", type=int, required=True, help="number of ranks")
    p.add_argument("--memory", default=None, help="per-rank limit for algorithm buffers, e.g. 2GiB")
    p.add_argument("--profile", default=None, help="machine profile: built-in name or JSON file")
    p.add_argument("--pass", dest="pass_", default="fwd", choices=("fwd", "bwd-data", "bwd-weight", "train"))
    p.add_argument("--algo", default="auto", help="auto (all) or one of 2d, 2.5d, 3d")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--top", type=int, default=10, help="rows of the table (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="JSON: one object per layer")
    p.add_argument("--plot", default=None, metavar="PNG", help="plot predicted words and memory against c")


def main(args):
    from .. import bounds, nets, planner
    from ..errors import CnnmmError
    from ..profiles import load_profile
    from ..spec import ConvSpec
    from .run import DEFAULT_LAYER

    if args.ranks < 1 or args.top < 1 or args.batch < 1:
        raise CnnmmError("-P, --top and --batch must be at least 1")
    memory = parse_bytes(args.memory) if args.memory else None
    profile = load_profile(args.profile)
    algorithms = None if args.algo == "auto" else [args.algo]
    if args.net:
        targets = [(layer.name, layer.spec, layer.count) for layer in nets.layers(args.net, args.batch, args.dtype)]
    else:
        targets = [(None, ConvSpec.parse(args.layer or DEFAULT_LAYER, dtype=args.dtype), 1)]
    summary = []
    for name, spec, count in targets:
        start = time.perf_counter()
        plans = planner.rank_plans(spec, args.ranks, algorithms, args.pass_, memory, profile)
        elapsed = time.perf_counter() - start
        if not plans:
            raise CnnmmError(f"no grid of {args.ranks} ranks fits {human_bytes(memory)} per rank for {spec}")
        best = plans[0]
        lb = bounds.lower_bounds(spec, args.ranks, best.peak_bytes / spec.itemsize)
        scale = 3 if args.pass_ == "train" else 1   # a training step moves every face about twice-thrice
        record = {"layer": str(spec), "net_layer": name, "count": count, "P": args.ranks, "pass": args.pass_,
                  "profile": profile.name, "memory_limit": memory, "plan_seconds": elapsed,
                  "lower_bounds": lb, **best.as_dict(),
                  "ratio_grid": best.words / (scale * lb["grid"]) if lb["grid"] > 0 else None,
                  "ratio_alg": best.words / (scale * lb["alg"]) if lb["alg"] > 0 else None,
                  "candidates": [p.as_dict() for p in plans[:args.top]]}
        summary.append(record)
        if args.json:
            emit(record)
        else:
            emit(_table(spec, name, plans[:args.top], lb, elapsed, profile.name, args))
    if args.plot:
        _plot(args, targets[0][1], profile)
    if args.net and not args.json:
        emit(_net_summary(summary))
    return 0


def _ratio(words, bound):
    return f"{words / bound:.2f}" if bound > 0 else "n/a"


def _table(spec, name, plans, lb, elapsed, profile_name, args):
    head = f"{name + ': ' if name else ''}{spec} {spec.dtype}, P={args.ranks}, pass {args.pass_}, profile " \
           f"{profile_name}" + (f", memory <= {args.memory}" if args.memory else "")
    lines = [head, f"lower bounds (words/rank): any algorithm {lb['alg']:.0f}, any grid {lb['grid']:.0f}; "
             f"planned in {elapsed * 1e3:.0f} ms",
             f"{'#':>3} {'grid pN,pH,pW,pK,pC':>20} {'algo':>5} {'words':>11} {'msgs':>6} {'memory':>11} "
             f"{'time ms':>9} {'/LB grid':>8} {'/LB alg':>8}"]
    for i, p in enumerate(plans, 1):
        lines.append(f"{i:>3} {str(p.dims):>20} {p.algorithm:>5} {p.words:>11} {p.msgs:>6} "
                     f"{human_bytes(p.peak_bytes):>11} {p.time * 1e3:>9.3f} {_ratio(p.words, lb['grid']):>8} "
                     f"{_ratio(p.words, lb['alg']):>8}")
    lines.append(f"chosen: {plans[0]}")
    return "\n".join(lines)


def _net_summary(records):
    total = sum(r["time_s"] * r["count"] for r in records)
    worst = max((r["ratio_grid"] or 0) for r in records)
    return (f"network: {len(records)} distinct layers, predicted {total * 1e3:.2f} ms per {records[0]['pass']} "
            f"(layer counts included); worst words / grid lower bound {worst:.3f}")


def _plot(args, spec, profile):
    from .. import planner
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("cnnmm plan: --plot needs matplotlib (pip install 'cnnmm[plot]'); no plot written")
        return
    sweep = planner.replication_sweep(spec, args.ranks, args.pass_, profile)
    cs = [c for c, _ in sweep]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(cs, [p.words for _, p in sweep], "o-", label="words per rank (best grid for c)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("replication factor c = pC")
    ax.set_ylabel("words per rank")
    ax2 = ax.twinx()
    ax2.plot(cs, [p.peak_bytes / 2**20 for _, p in sweep], "s--", color="tab:red", label="peak memory (MiB)")
    ax2.set_ylabel("peak memory per rank (MiB)")
    ax.set_title(f"{spec}\nP={args.ranks}, {args.pass_}", fontsize=8)
    fig.legend(loc="upper center", fontsize=8, bbox_to_anchor=(0.5, 0.9))
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    say(f"cnnmm plan: wrote {args.plot}")
