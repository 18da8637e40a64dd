"""``python -m cnnmm report DIR``: result tables and a scaling plot from JSON-lines results.

Reads every ``*.jsonl`` under DIR (what ``cnnmm run --json --output`` and the ``jobs/``
scripts write), with the SLURM metadata of each file from its ``<stem>.meta.json``. Prints one
row per record, then a scaling table per series: the same layer, pass, dtype and algorithm at
two or more rank counts (for a weak-scaling study, the same layer per rank). The plot shows
speedup and efficiency against P and, where records carry the model's ``time_predicted_s``,
predicted against measured time. matplotlib is optional: without it the plot is skipped.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ..cli import emit, say

NAME = ("report",)
HELP = "tables and a PNG scaling plot (speedup, efficiency, predicted vs measured) from JSON-lines results"

#: Tolerance on rel_err per dtype, as ``cnnmm run --verify`` uses.
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def add_arguments(p):
    p.add_argument("dir", help="directory with *.jsonl results (searched recursively)")
    p.add_argument("--plot", default=None, metavar="PNG", help="where to write the plot (default: DIR/scaling.png)")
    p.add_argument("--no-plot", action="store_true", help="tables only")
    p.add_argument("--weak", action="store_true",
                   help="treat every series as weak scaling (set by jobs/scaling.sh weak in the metadata)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 unless every record was verified within tolerance")


# --- loading --------------------------------------------------------------------------------
def load(root):
    """Records under ``root``, each with ``_file`` (path relative to root) and ``_meta`` (or {})."""
    root = Path(root)
    records = []
    for path in sorted(root.rglob("*.jsonl")):
        meta_path = path.with_name(path.name[:-len(".jsonl")] + ".meta.json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if isinstance(record, dict) and "time_s" in record and "P" in record:
                record["_file"], record["_meta"] = str(path.relative_to(root)), meta
                records.append(record)
    return records


def _nodes(record):
    return int(record["_meta"].get("slurm", {}).get("job_num_nodes", 0)) or None


def _job(record):
    slurm = record["_meta"].get("slurm", {})
    job = slurm.get("array_job_id") or slurm.get("job_id")
    if job and slurm.get("array_task_id"):
        job = f"{job}_{slurm['array_task_id']}"
    return job or str(Path(record["_file"]).parent)


def _what(record):
    return record.get("net_layer") or record.get("layer", "?")


def _grid(record):
    grid = record.get("grid") or {}
    return "x".join(str(grid.get(k, "?")) for k in ("pN", "pH", "pW", "pK", "pC"))


# --- scaling --------------------------------------------------------------------------------
def _per_rank(layer, nranks):
    """``layer`` with its batch written per rank (``N=2/rank``), or None if N is not a multiple of P."""
    match = re.search(r"(^|,)N=(\d+)(?=,|$)", layer)
    if not match or int(match.group(2)) % nranks:
        return None
    return layer[:match.start(2)] + f"{int(match.group(2)) // nranks}/rank" + layer[match.end(2):]


def series(records, weak=False):
    """Scaling series: ``[(label, kind, [point, ...])]`` with two or more rank counts each.

    A point is a dict with P, nodes, time_s (the best of the records at that P), speedup and
    ideal (relative to the smallest P), efficiency, and time_predicted_s when known.
    """
    groups = {}
    for r in records:
        kind = "weak" if weak or r["_meta"].get("study") == "weak" else "strong"
        what = _what(r) if kind == "strong" or "net_layer" in r else _per_rank(r.get("layer", ""), r["P"])
        if what is None:
            continue
        # A study from jobs/scaling.sh is one configuration by construction, even when the
        # planner ("auto") picks another algorithm at another P; loose records are told
        # apart by algorithm.
        algo = None if r["_meta"].get("study") else r.get("algo")
        key = (what, r.get("pass"), r.get("dtype"), algo, kind)
        best = groups.setdefault(key, {})
        if r["P"] not in best or r["time_s"] < best[r["P"]]["time_s"]:
            best[r["P"]] = r
    out = []
    for (what, pass_, dtype, algo, kind), by_p in groups.items():
        if len(by_p) < 2:
            continue
        algo = algo or "/".join(dict.fromkeys(by_p[p].get("algo", "?") for p in sorted(by_p)))
        p0 = min(by_p)
        t0 = by_p[p0]["time_s"]
        points = []
        for p in sorted(by_p):
            r = by_p[p]
            ratio = t0 / r["time_s"] if r["time_s"] > 0 else float("nan")
            # strong: the same work on more ranks; weak: more work in proportion, so the
            # speedup is the work done per unit time relative to the base
            speedup = ratio if kind == "strong" else ratio * p / p0
            points.append({"P": p, "nodes": _nodes(r), "time_s": r["time_s"], "speedup": speedup,
                           "ideal": p / p0, "efficiency": speedup * p0 / p,
                           "time_predicted_s": r.get("time_predicted_s")})
        out.append((f"{what} {pass_} {dtype} {algo}", kind, points))
    return sorted(out, key=lambda s: s[0])


# --- text -----------------------------------------------------------------------------------
def _table(headers, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _num(value, spec):
    return "-" if value is None else format(value, spec)


def records_table(records):
    rows = [(_job(r), _nodes(r) or "-", r["P"], r.get("algo", "?"), _grid(r), r.get("pass", "?"), _what(r),
             _num(r["time_s"] * 1e3, ".3f"), _num(r.get("time_predicted_s") and r["time_predicted_s"] * 1e3, ".3f"),
             _num(r.get("gflops"), ".2f"), r.get("words_max", "-"), r.get("words_predicted", "-"),
             _num(r.get("rel_err"), ".1e"), {True: "yes", False: "NO"}.get(r.get("verified"), "-"))
            for r in records]
    return _table(("job", "nodes", "P", "algo", "grid", "pass", "layer", "ms", "model ms", "GFLOP/s", "words",
                   "model words", "rel_err", "verified"), rows)


def series_table(label, kind, points):
    rows = [(p["P"], p["nodes"] or "-", _num(p["time_s"] * 1e3, ".3f"),
             _num(p["time_predicted_s"] and p["time_predicted_s"] * 1e3, ".3f"), _num(p["speedup"], ".2f"),
             _num(p["ideal"], ".0f"), _num(p["efficiency"] * 100, ".0f") + "%") for p in points]
    return f"{kind} scaling: {label}\n" + _table(("P", "nodes", "ms", "model ms", "speedup", "ideal", "efficiency"),
                                                  rows)


def failures(records):
    """Records not verified within tolerance, as ``file: reason`` strings."""
    bad = []
    for r in records:
        tol = TOLERANCE.get(r.get("dtype"), 1e-5)
        if r.get("verified") is not True:
            bad.append(f"{r['_file']}: {_what(r)} {r.get('pass')} not verified")
        elif r.get("rel_err") is None or r["rel_err"] > tol:
            bad.append(f"{r['_file']}: {_what(r)} {r.get('pass')} rel_err {r.get('rel_err')} above {tol:g}")
    return bad


# --- plot -----------------------------------------------------------------------------------
def plot(all_series, records, path):
    """Write the PNG; returns False (and says why) when matplotlib is missing or there is nothing to draw."""
    predicted = [r for r in records if r.get("time_predicted_s")]
    if not all_series and not predicted:
        say("cnnmm: no plot: no series at two or more rank counts and no model predictions")
        return False
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display on a cluster
        import matplotlib.pyplot as plt
    except ImportError:
        say("cnnmm: matplotlib is not installed, so no plot (pip install 'cnnmm[plot]'); the tables are complete")
        return False
    if all_series:
        from matplotlib.ticker import FuncFormatter
        shown = all_series[:10]
        fig, (ax_s, ax_e, ax_t) = plt.subplots(1, 3, figsize=(16, 5.5))
        ps_all = sorted({p["P"] for _, _, pts in shown for p in pts})
        top = max(p["ideal"] for _, _, pts in shown for p in pts)
        ax_s.plot([1, top], [1, top], "k:", label="ideal")
        ax_e.axhline(100, color="k", linestyle=":")
        for label, kind, pts in shown:
            ps = [p["P"] for p in pts]
            line, = ax_s.plot(ps, [p["speedup"] for p in pts], "o-", label=f"{kind}: {label}")
            ax_e.plot(ps, [100 * p["efficiency"] for p in pts], "o-", color=line.get_color())
            ax_t.plot(ps, [p["time_s"] * 1e3 for p in pts], "o-", color=line.get_color())
            model = [(p["P"], p["time_predicted_s"] * 1e3) for p in pts if p["time_predicted_s"]]
            if model:
                ax_t.plot(*zip(*model), "x--", color=line.get_color())
        for ax in (ax_s, ax_e, ax_t):
            ax.set_xscale("log", base=2)
            ax.set_xticks(ps_all, [str(p) for p in ps_all])
            ax.set_xlabel("ranks P")
            ax.grid(True, alpha=0.3)
        ax_s.set_yscale("log", base=2)
        ax_s.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_s.set(ylabel="speedup over the smallest P", title="speedup")
        ax_e.set(ylabel="parallel efficiency (%)", title="efficiency", ylim=(0, 115))
        ax_t.set_yscale("log")
        ax_t.set(ylabel="time per pass (ms)", title="time: measured (o-), model (x--)")
        fig.legend(loc="lower center", ncol=1 if len(shown) > 3 else 2, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.04 * (1 + len(shown) // (1 if len(shown) > 3 else 2)), 1, 1))
    else:
        fig, ax = plt.subplots(figsize=(6, 5))
        measured = [r["time_s"] * 1e3 for r in predicted]
        model = [r["time_predicted_s"] * 1e3 for r in predicted]
        ax.loglog(model, measured, "o")
        if len(predicted) <= 30:  # name the points while they stay legible
            for r, x, y in zip(predicted, model, measured):
                ax.annotate(f"{r.get('algo')} {r.get('pass')} P={r['P']}", (x, y), fontsize=7,
                            xytext=(4, 2), textcoords="offset points")
        lo, hi = min(measured + model), max(measured + model)
        ax.plot([lo, hi], [lo, hi], "k:", label="measured = model")
        ax.set(xlabel="model time (ms)", ylabel="measured time (ms)", title="measured against model, per record")
        ax.legend()
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(args):
    root = Path(args.dir)
    if not root.is_dir():
        print(f"cnnmm: error: {args.dir}: not a directory", file=sys.stderr, flush=True)
        return 2
    try:
        records = load(root)
    except (ValueError, OSError) as exc:
        print(f"cnnmm: error: {exc}", file=sys.stderr, flush=True)
        return 2
    if not records:
        print(f"cnnmm: error: no results (*.jsonl with cnnmm run records) under {args.dir}", file=sys.stderr,
              flush=True)
        return 2
    all_series = series(records, weak=args.weak)
    emit(records_table(records))
    for label, kind, points in all_series:
        emit("\n" + series_table(label, kind, points))
    if not args.no_plot:
        path = Path(args.plot) if args.plot else root / "scaling.png"
        if plot(all_series, records, path):
            say(f"cnnmm: wrote {path}")
    bad = failures(records)
    if bad:
        say(f"cnnmm: {len(bad)} of {len(records)} records not verified within tolerance:\n  " + "\n  ".join(bad[:20]))
    return 1 if args.check and bad else 0
