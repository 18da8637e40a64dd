"""``python -m cnnmm``: sub-commands in a registry, only rank 0 prints.

Each sub-command is a module of :mod:`cnnmm.commands` that defines ``NAME`` (a tuple: the
command, or a command and its sub-command such as ``("bench", "kernels")``), ``HELP``,
``add_arguments(parser)`` and ``main(args) -> exit status``; the registry finds them.

Results go to stdout (a short report, or one JSON object per pass with ``--json``); progress
and errors go to stderr. Any uncaught exception on any rank aborts the whole MPI job, so a
plain ``mpiexec -n P python -m cnnmm ...`` never hangs; input errors found by the collective
checks end every rank with the same one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import traceback


def _without_mpi():
    """True when MPI is not running and not needed to know who prints (plan, report, jobs)."""
    return "mpi4py.MPI" not in sys.modules and not any(v in os.environ for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK"))


def _rank():
    if _without_mpi():
        return 0
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank()


class _Parser(argparse.ArgumentParser):
    """argparse that prints on rank 0 only (every rank parses the same argv and exits alike)."""

    def _print_message(self, message, file=None):
        if message and _rank() == 0:
            super()._print_message(message, file)


def say(*args, **kwargs):
    """Progress line on stderr, rank 0 only."""
    if _rank() == 0:
        print(*args, file=sys.stderr, flush=True, **kwargs)


def human_bytes(n):
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def emit(obj_or_text):
    if _rank() == 0:
        print(obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text), flush=True)


# --- entry point -------------------------------------------------------------------------
#: Command groups whose sub-commands live in several modules: group -> help.
GROUPS = {"bench": "benchmarks that write JSON (kernels, model)"}


def commands():
    """The command modules of :mod:`cnnmm.commands`, sorted by name."""
    from . import commands as package
    found = [importlib.import_module(f"{package.__name__}.{info.name}")
             for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")]
    return sorted(found, key=lambda m: m.NAME)


def build_parser():
    parser = _Parser(prog="python -m cnnmm", description="Distributed conv2d as generalized matmul over MPI. "
                     "With no command, runs the default example (a verified ResNet-50 3x3 layer).")
    sub = parser.add_subparsers(dest="command", metavar="command")
    groups = {}
    for module in commands():
        name = module.NAME
        target, prog = sub, f"python -m cnnmm {name[0]}"
        if len(name) == 2:
            if name[0] not in groups:
                group = sub.add_parser(name[0], help=GROUPS.get(name[0], ""), description=GROUPS.get(name[0], ""),
                                       prog=prog)
                groups[name[0]] = group.add_subparsers(dest="subcommand", metavar="subcommand", required=True)
            target, prog = groups[name[0]], f"{prog} {name[1]}"
        p = target.add_parser(name[-1], help=module.HELP, description=module.HELP, prog=prog)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
    return parser


def _main(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run", "--verify"]
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().error("a command is required")
    return args.func(args)


def main(argv=None):
    """Run the CLI; on an uncaught exception on any rank, abort the MPI job."""
    from .errors import CnnmmError
    try:
        return _main(argv)
    except SystemExit:
        raise
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except CnnmmError as exc:
        if getattr(exc, "collective", False) or _without_mpi():
            # Raised identically on every rank by a collective check: a clean exit everywhere.
            if _rank() == 0:
                print(f"cnnmm: error: {exc}", file=sys.stderr, flush=True)
            return 2
        _abort(exc)
    except BaseException as exc:  # noqa: BLE001 - anything else must not leave ranks waiting
        _abort(exc)


def _abort(exc):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    prefix = f"[rank {comm.Get_rank()}] " if comm.Get_size() > 1 else ""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    sys.stderr.write("".join(prefix + line + "\n" for line in text.rstrip().splitlines()))
    sys.stderr.write(f"{prefix}cnnmm: error: {exc}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    if comm.Get_size() > 1:
        comm.Abort(1)
    sys.exit(1)
