"""Helpers for tests: layers that stress the block arithmetic, and collective assertions."""

import numpy as np

from cnnmm.grid import GridDims, factorizations

#: Layers chosen to break block arithmetic: odd and prime sizes, stride, dilation, asymmetric
#: padding, 1x1, 7x7/2, N and C smaller than typical grid extents, a receptive field wholly in
#: the padding, and blocks narrower than the halo.
LAYERS = [
    "N=3,C=7,K=5,H=11,W=9,R=3,S=3,pad=1",
    "N=1,C=2,K=3,H=5,W=4,R=3,S=2,stride=2,pad=1x0",
    "N=2,C=5,K=4,H=9,W=10,R=3,S=3,dilation=2,pad=2",
    "N=2,C=3,K=2,H=8,W=8,R=1,S=1,stride=2",
    "N=1,C=1,K=1,H=3,W=3,R=3,S=3",
    "N=2,C=3,K=6,H=13,W=13,R=7,S=7,stride=2,pad=3",
    "N=1,C=4,K=3,H=2,W=7,R=1,S=3,pad=3",
    "N=5,C=1,K=7,H=6,W=5,R=2,S=3,stride=3x1,pad=0x1,dilation=1x2",
    "N=1,C=13,K=11,H=4,W=4,R=3,S=3,pad=1",
]


def all_grids(nranks, algorithm):
    """Every grid of ``nranks`` the algorithm accepts."""
    from cnnmm.algorithms import get
    from cnnmm.errors import GridError
    out = []
    for t in factorizations(nranks):
        try:
            get(algorithm).check_grid(GridDims(*t))
        except GridError:
            continue
        out.append(GridDims(*t))
    return out


def rel_err(got, ref):
    """max |got - ref| / max |ref| (plain max error when ref is all zero)."""
    err = float(np.max(np.abs(np.asarray(got, dtype=np.float64) - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return err / scale if scale > 0 else err


def assert_all(comm, ok, message):
    """Collective assertion: fails on every rank if it fails on any, naming the failing ranks."""
    flags = comm.allgather(bool(ok))
    bad = [r for r, f in enumerate(flags) if not f]
    messages = comm.allgather(None if ok else message)
    assert not bad, f"failed on ranks {bad}: " + "; ".join(m for m in messages if m)


def random_arrays(spec, seed):
    """Same global input and weights on every rank (drawn from ``seed``)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.input_shape).astype(spec.dtype)
    w = rng.standard_normal(spec.weight_shape).astype(spec.dtype)
    return x, w


def mpiexec(nranks, args, timeout=600, env=None, cwd=None):
    """Run ``args`` (a list, after the launcher) on ``nranks`` ranks; returns CompletedProcess.

    The launcher is ``$MPIEXEC`` when set (e.g. ``"mpiexec --oversubscribe"`` for Open MPI,
    ``"srun"``), else the ``mpiexec`` next to this Python, else the one on PATH. Raises
    ``subprocess.TimeoutExpired`` after killing the whole launch when ``timeout`` passes.
    """
    import os
    import shlex
    import shutil
    import signal
    import subprocess
    import sys

    launcher = os.environ.get("MPIEXEC")
    if launcher:
        cmd = shlex.split(launcher)
    else:
        local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        cmd = [local if os.path.exists(local) else shutil.which("mpiexec") or "mpiexec"]
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.Popen(cmd + ["-n", str(nranks)] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(proc.args, timeout, out, err) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
