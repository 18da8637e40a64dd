"""SLURM batch scripts from the templates in ``jobs/``: validated values, rendering, submission.

A rendered script is the template's body under a new ``#SBATCH`` header, with the job's
settings exported as ``CNNMM_*`` variables that the body reads. Values reach the script in two
ways, each with its own rule:

* ``#SBATCH`` lines are parsed by sbatch, not by a shell, so quoting cannot make an arbitrary
  value safe there: each header value must match a strict pattern (a name, a number, a time)
  or it is rejected.
* ``export`` lines are shell: every value is validated for what it means (a layer must parse,
  an algorithm must exist) and then quoted with :func:`shlex.quote`, so a path with spaces or
  ``$`` stays one literal word.

No value may contain a control character: a newline would end a comment or a header line and
start a command.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from .errors import CnnmmError

__all__ = ["JobError", "KINDS", "SETTINGS", "Resources", "find_jobs_dir", "render", "submit",
           "check_time", "count_params"]

#: Kinds of batch job: ``jobs/<kind>.sbatch``.
KINDS = ("layer", "net", "calibrate", "sweep")


class JobError(CnnmmError):
    """A value that cannot go into a batch script, or a script that cannot be submitted."""


# --- values for #SBATCH lines ---------------------------------------------------------------
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.+-]*"
_PATTERNS = {
    "job name": re.compile(_NAME),
    "partition": re.compile(rf"{_NAME}(,{_NAME})*"),
    "account": re.compile(_NAME),
    # sbatch's filename patterns (%x, %j, %A, %a, ...) are allowed, blanks and quotes are not
    "log": re.compile(r"[A-Za-z0-9_./%+-]+"),
    "array": re.compile(r"\d+(-\d+(:\d+)?)?(,\d+(-\d+(:\d+)?)?)*(%\d+)?"),
}
_ALLOWED = {
    "job name": "use letters, digits and _ . + - (not first)",
    "partition": "use names of letters, digits and _ . + -, separated by commas",
    "account": "use letters, digits and _ . + - (not first)",
    "log": "use letters, digits, sbatch's %-patterns and _ . + - /",
    "array": "use index ranges such as 0-9, 1,3,5, 0-15:4 or 0-99%10",
}
# MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
_TIME = re.compile(r"(?:(\d+)-(\d{1,2})(?::(\d{1,2})(?::(\d{1,2}))?)?|(\d+)(?::(\d{1,2})(?::(\d{1,2}))?)?)")


def _no_controls(what, value):
    text = str(value)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise JobError(f"{what} {text!r}: control characters (newlines, tabs, ...) are not allowed")
    return text


def _header_value(what, value):
    text = _no_controls(what, value)
    if not _PATTERNS[what].fullmatch(text):
        raise JobError(f"{what} {text!r}: not allowed in an #SBATCH line, which sbatch reads without a shell; "
                       f"{_ALLOWED[what]}")
    return text


def check_time(value):
    """A SLURM time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``).

    Returns the text unchanged; raises :class:`JobError` when it is not one of those forms,
    when minutes or seconds exceed 59 (hours when a day count is given: 23), or when it is zero.
    """
    text = _no_controls("time", value)
    match = _TIME.fullmatch(text)
    if not match:
        raise JobError(f"time {text!r}: use MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    days, hours, d_min, d_sec, first, second, third = match.groups()
    if days is not None:
        bounded = [(hours, 23), (d_min, 59), (d_sec, 59)]
    elif third is not None:  # HH:MM:SS
        bounded = [(second, 59), (third, 59)]
    else:  # MM or MM:SS
        bounded = [(second, 59)]
    for part, top in bounded:
        if part is not None and int(part) > top:
            raise JobError(f"time {text!r}: {part} is out of range (at most {top})")
    if all(int(g) == 0 for g in match.groups() if g is not None):
        raise JobError(f"time {text!r}: must be more than zero")
    return text


def _positive(what):
    def check(value):
        text = _no_controls(what, value)
        if not re.fullmatch(r"[1-9][0-9]*", text):
            raise JobError(f"{what} {text!r}: must be a positive integer")
        return text
    return check


@dataclass
class Resources:
    """The ``#SBATCH`` header: what the job asks SLURM for."""

    nodes: int = 1
    ntasks_per_node: int = 4
    cpus_per_task: int = 1
    time: str = "00:30:00"
    partition: Optional[str] = None
    account: Optional[str] = None
    job_name: Optional[str] = None
    log: Optional[str] = None
    array: Optional[str] = None
    exclusive: bool = False

    def lines(self, kind):
        """The header lines, every value validated (raises :class:`JobError`)."""
        out = [
            f"--job-name={_header_value('job name', self.job_name or f'cnnmm-{kind}')}",
            f"--nodes={_positive('nodes')(self.nodes)}",
            f"--ntasks-per-node={_positive('tasks per node')(self.ntasks_per_node)}",
            f"--cpus-per-task={_positive('CPUs per task')(self.cpus_per_task)}",
            f"--time={check_time(self.time)}",
            f"--output={_header_value('log', self.log or ('%x-%A_%a.out' if self.array else '%x-%j.out'))}",
        ]
        if self.array is not None:
            out.insert(1, f"--array={_header_value('array', self.array)}")
        if self.partition is not None:
            out.append(f"--partition={_header_value('partition', self.partition)}")
        if self.account is not None:
            out.append(f"--account={_header_value('account', self.account)}")
        if self.exclusive:
            out.append("--exclusive")
        return ["#SBATCH " + line for line in out]


# --- values for export lines ---------------------------------------------------------------
def _layer(value):
    from .spec import ConvSpec
    text = _no_controls("layer", value)
    ConvSpec.parse(text)  # raises LayerError with the reason
    return text


def _choice(what, choices):
    def check(value):
        text = _no_controls(what, value)
        options = choices() if callable(choices) else choices
        if text not in options:
            raise JobError(f"{what} {text!r}: choose one of {', '.join(options)}")
        return text
    return check


def _grid(value):
    text = _no_controls("grid", value)
    if not re.fullmatch(r"\d+(,\d+){4}", text):
        raise JobError(f"grid {text!r}: give pN,pH,pW,pK,pC as five integers")
    return text


def _path(what):
    def check(value):
        text = _no_controls(what, value)
        if not text:
            raise JobError(f"{what}: empty path")
        return text
    return check


def _algorithms():
    from .algorithms import NAMES
    return NAMES


def _nets():
    from .nets import NETS
    return tuple(NETS)


class Setting(NamedTuple):
    """An option of ``cnnmm jobs`` that becomes ``export VAR=value`` in the script."""

    option: str
    var: str
    kinds: tuple
    check: Callable[[str], str]
    help: str


_ALL = KINDS
#: Settings in the order they are exported.
SETTINGS = (
    Setting("layer", "CNNMM_LAYER", ("layer", "calibrate"), _layer, "layer, as for `cnnmm run --layer`"),
    Setting("net", "CNNMM_NET", ("net",), _choice("net", _nets), "network: resnet50 or vgg16"),
    Setting("batch", "CNNMM_BATCH", ("net",), _positive("batch"), "batch size of the network's layers"),
    Setting("algo", "CNNMM_ALGO", ("layer", "net"), _choice("algorithm", _algorithms), "algorithm or strategy"),
    Setting("grid", "CNNMM_GRID", ("layer",), _grid, "pN,pH,pW,pK,pC (default: the planner's)"),
    Setting("profile", "CNNMM_PROFILE", ("layer", "net"), _path("profile"),
            "machine profile (file or built-in name) for the planner"),
    Setting("pass", "CNNMM_PASS", ("layer", "net"), _choice("pass", ("fwd", "bwd-data", "bwd-weight", "train")),
            "pass: fwd, bwd-data, bwd-weight or train"),
    Setting("dtype", "CNNMM_DTYPE", ("layer", "net"), _choice("dtype", ("float32", "float64")),
            "float32 or float64"),
    Setting("repeat", "CNNMM_REPEAT", ("layer", "net", "sweep"), _positive("repeat"), "timed repetitions"),
    Setting("params", "CNNMM_PARAMS", ("sweep",), _path("params"),
            "parameters file, one `cnnmm run` configuration per line"),
    Setting("quick", "CNNMM_QUICK", ("calibrate",), _choice("quick", ("0", "1")), "1: a short calibration"),
    Setting("results", "CNNMM_RESULTS", _ALL, _path("results"),
            "parent directory of the job's result directory (default: results/ in the submit directory)"),
    Setting("site", "CNNMM_SITE", _ALL, _path("site"), "site file to source (default: jobs/site.sh)"),
    Setting("launcher", "CNNMM_LAUNCHER", _ALL, _choice("launcher", ("srun", "mpiexec")),
            "launcher of the default site file: srun or mpiexec"),
)


# --- templates -----------------------------------------------------------------------------
def find_jobs_dir(explicit=None):
    """The ``jobs/`` folder: ``explicit``, else ``$CNNMM_JOBS_DIR``, else the checkout's, else ``./jobs``."""
    candidates = [explicit] if explicit else [
        os.environ.get("CNNMM_JOBS_DIR"), Path(__file__).resolve().parent.parent / "jobs", Path.cwd() / "jobs"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "common.sh").is_file():
            return Path(candidate).resolve()
    raise JobError("cannot find cnnmm's jobs/ folder (with common.sh): pass --jobs-dir or set CNNMM_JOBS_DIR")


def _body(template):
    """The template without its shebang and ``#SBATCH`` lines (active or commented out)."""
    lines = template.read_text().splitlines()
    keep = [line for line in lines if not line.startswith(("#!", "#SBATCH", "##SBATCH"))]
    while keep and not keep[0].strip("# "):
        keep.pop(0)
    return keep


def count_params(path):
    """Configurations in a sweep's parameters file (lines that are neither blank nor comments)."""
    with open(path) as f:
        return sum(1 for line in f if line.strip() and not line.lstrip().startswith("#"))


def render(kind, resources, settings, jobs_dir):
    """The batch script for ``kind`` as text.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    resources : Resources
        The ``#SBATCH`` header.
    settings : dict
        Option name (as in :data:`SETTINGS`) -> value; ``None`` values are left out.
    jobs_dir : path-like
        The ``jobs/`` folder: the template is read from it and the script points at it.

    Raises
    ------
    JobError
        For a value that is malformed, unsafe, or does not apply to ``kind``.
    """
    if kind not in KINDS:
        raise JobError(f"job kind {kind!r}: choose one of {', '.join(KINDS)}")
    jobs_dir = Path(jobs_dir).resolve()
    known = {s.option: s for s in SETTINGS}
    exports = [f"export CNNMM_JOBS_DIR={shlex.quote(_path('jobs dir')(str(jobs_dir)))}"]
    for option, value in settings.items():
        if value is None:
            continue
        if option not in known:
            raise JobError(f"unknown setting {option!r}")
        setting = known[option]
        if kind not in setting.kinds:
            raise JobError(f"--{option} does not apply to {kind} jobs (it does to: {', '.join(setting.kinds)})")
        exports.append(f"export {setting.var}={shlex.quote(setting.check(value))}")
    if kind == "sweep" and resources.array is None:
        params = settings.get("params") or jobs_dir / "params" / "sweep.txt"
        try:
            count = count_params(params)
        except OSError as exc:
            raise JobError(f"cannot read the parameters file to size the array ({exc}); give --array") from None
        if count == 0:
            raise JobError(f"parameters file {params} has no configuration lines")
        resources.array = f"0-{count - 1}"
    if kind != "sweep" and resources.array is not None:
        raise JobError(f"--array applies to sweep jobs only, not {kind}")
    header = resources.lines(kind)
    return "\n".join(["#!/bin/bash", *header,
                      f"# Rendered by `python -m cnnmm jobs {kind}` from jobs/{kind}.sbatch; values are",
                      "# validated, and the exports below are quoted for the shell.",
                      *exports, *_body(jobs_dir / f"{kind}.sbatch")]) + "\n"


def submit(script, path=None, timeout=120):
    """Hand a script to ``sbatch --parsable``; returns the job ID.

    The script is read from ``path`` when given (so SLURM records that file), else passed on
    standard input. Raises :class:`JobError` when sbatch is missing or refuses the job.
    """
    if shutil.which("sbatch") is None:
        raise JobError("sbatch not found: submit from a SLURM login node (write the script with -o FILE "
                       "and copy it there)")
    cmd = ["sbatch", "--parsable"] + ([str(path)] if path else [])
    try:
        done = subprocess.run(cmd, input=None if path else script, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise JobError(f"sbatch did not answer in {timeout} s") from None
    if done.returncode != 0:
        raise JobError(f"sbatch refused the job (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]
