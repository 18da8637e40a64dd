"""``python -m cnnmm calibrate``: measure this machine's time-model constants into a profile.

Under ``mpiexec -n P``: for every communicator size p from 2 to P the ranks split into groups
of p and time each collective the algorithms use (broadcast, allgather, reduce-scatter,
reduce, point-to-point exchange) at several sizes; a least-squares fit of
``T = alpha + beta * bytes`` (bytes as :mod:`cnnmm.cost` attributes them to a call) gives one
``[alpha, beta]`` per operation and p. Then every rank times the node kernels on representative
ResNet-50 tiles per pass and dtype (GFLOP/s), all ranks computing at once as in a run, and a
minimal kernel call (the per-call overhead).
Only rank 0 writes the profile (JSON) to ``--output`` or stdout; progress goes to stderr.
"""

from __future__ import annotations

import json
import platform
import time

from ..cli import emit, say

NAME = ("calibrate",)
HELP = "measure alpha/beta per collective and communicator size and the kernel rates; write a profile"

#: Message sizes (float64 words) per call; --quick keeps the first three.
SIZES = (8, 1024, 16384, 131072, 524288)
#: Tiles (batch 2) the kernel rates are measured on: ResNet-50 shapes.
TILES = ("N=2,C=64,K=64,H=56,W=56,R=3,S=3,pad=1", "N=2,C=256,K=256,H=14,W=14,R=3,S=3,pad=1",
         "N=2,C=512,K=128,H=28,W=28,R=1,S=1", "N=2,C=512,K=512,H=7,W=7,R=3,S=3,pad=1")


def add_arguments(p):
    p.add_argument("--output", default=None, metavar="FILE", help="write the profile here (default: stdout)")
    p.add_argument("--name", default=None, help="profile name (default: the host name and rank count)")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (seconds, for tests)")
    p.add_argument("--repeat", type=int, default=7, help="timed repetitions per point (median)")


def _time(comm, func, repeat):
    """Median over repetitions of the slowest rank's time of ``func``."""
    import numpy as np
    from mpi4py import MPI
    func()  # warm-up
    times = []
    for _ in range(repeat):
        comm.Barrier()
        t0 = MPI.Wtime()
        func()
        times.append(comm.allreduce(MPI.Wtime() - t0, op=MPI.MAX))
    return float(np.median(times))


def _collectives(group, words, dtype):
    """``{op: (callable, bytes the model attributes to one call)}`` on ``group``."""
    import numpy as np
    from mpi4py import MPI
    p, item = group.Get_size(), np.dtype(dtype).itemsize
    own = max(1, words // p)
    send, full, out = np.ones(words, dtype), np.ones(own * p, dtype), np.empty(own * p, dtype)
    part = np.empty(own, dtype)
    peer = group.Get_rank() ^ 1 if (group.Get_rank() ^ 1) < p else group.Get_rank()   # odd p: last pairs itself
    ops = {
        "bcast": (lambda: group.Bcast(send, root=0), words * item),
        "allgather": (lambda: group.Allgather(full[:own], out), (p - 1) * own * item),
        "reduce_scatter": (lambda: group.Reduce_scatter_block(full, part, op=MPI.SUM), (p - 1) * own * item),
        "reduce": (lambda: group.Reduce(send, out[:0] if group.Get_rank() else np.empty(words, dtype), root=0),
                   words * item),
    }
    recv = np.empty(words, dtype)
    ops["p2p"] = (lambda: MPI.Request.Waitall([group.Irecv(recv, source=peer), group.Isend(send, dest=peer)]),
                  words * item)
    return ops


def _fit(points):
    """``T = alpha + beta * bytes``: alpha is the smallest message's time (a regression
    intercept is at the mercy of noise in the large sizes), beta the least-squares slope of the
    rest above it."""
    import numpy as np
    points = sorted(points)
    alpha = max(points[0][1], 1e-7)
    x = np.array([b for b, _ in points[1:]], float)
    y = np.array([t - alpha for _, t in points[1:]], float)
    beta = float(np.dot(x, y) / np.dot(x, x)) if len(x) and np.dot(x, x) > 0 else 0.0
    return [float(alpha), max(beta, 1e-12)]


def _kernel_rates(comm, repeat):
    """Kernel GFLOP/s per rank with every rank computing at once (ranks share cores and memory
    bandwidth as they do in a run), the slowest rank's time counting."""
    import numpy as np
    from mpi4py import MPI

    from .. import kernels
    from ..spec import ConvSpec
    rates = {}
    for dtype in ("float32", "float64"):
        rates[dtype] = {}
        kernels.warmup([dtype])
        for pass_ in ("fwd", "bwd-data", "bwd-weight"):
            samples = []
            for text in TILES:
                spec = ConvSpec.parse(text, dtype=dtype)
                rng = np.random.default_rng(0)
                x = rng.standard_normal(spec.input_shape).astype(dtype)
                w = rng.standard_normal(spec.weight_shape).astype(dtype)
                dy = rng.standard_normal(spec.output_shape).astype(dtype)
                pad = (spec.pad[0], spec.pad[0], spec.pad[1], spec.pad[1])
                call = {"fwd": lambda: kernels.conv2d_forward(x, w, spec.stride, pad, spec.dilation),
                        "bwd-data": lambda: kernels.conv2d_backward_data(dy, w, (spec.H, spec.W), spec.stride, pad,
                                                                         spec.dilation),
                        "bwd-weight": lambda: kernels.conv2d_backward_weight(x, dy, (spec.R, spec.S), spec.stride,
                                                                             pad, spec.dilation)}[pass_]
                samples.append(spec.flops / _time(comm, call, repeat) / 1e9)
            rates[dtype][pass_] = float(np.exp(np.mean(np.log(samples))))   # geometric mean over tiles
            say(f"cnnmm calibrate: kernels {dtype} {pass_}: {rates[dtype][pass_]:.1f} GFLOP/s")
    x, w = np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1))
    kernels.conv2d_forward(x, w)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        kernels.conv2d_forward(x, w)
        times.append(time.perf_counter() - t0)
    return rates, comm.allreduce(float(np.median(times)), op=MPI.MAX)


def main(args):
    from mpi4py import MPI

    from ..errors import CnnmmError

    comm = MPI.COMM_WORLD
    if args.repeat < 1:
        raise CnnmmError(f"--repeat {args.repeat}: must be at least 1")
    repeat = 3 if args.quick else args.repeat
    sizes = SIZES[:3] if args.quick else SIZES
    ops = {op: {} for op in ("bcast", "allgather", "reduce_scatter", "reduce", "p2p")}
    for p in range(2, comm.size + 1):
        color = comm.rank // p if comm.rank < (comm.size // p) * p else MPI.UNDEFINED
        group = comm.Split(color if color != MPI.UNDEFINED else MPI.UNDEFINED, comm.rank)
        points = {op: [] for op in ops}
        for words in sizes:
            # every rank runs the same sequence (idle ranks time an empty barrier) so they stay in step
            names = sorted(_collectives(group, words, "float64")) if group != MPI.COMM_NULL else []
            names = comm.bcast(names, root=0)
            for op in names:
                if group != MPI.COMM_NULL:
                    func, nbytes = _collectives(group, words, "float64")[op]
                    points[op].append((nbytes, _time(group, func, repeat)))
                comm.Barrier()
        if group != MPI.COMM_NULL:
            group.Free()
        for op, pts in points.items():
            if comm.rank == 0 and pts:
                ops[op][str(p)] = _fit(pts)
        say(f"cnnmm calibrate: collectives on {p} ranks done")
    if comm.size == 1:  # nothing to measure: keep the placeholder's shape so the profile loads
        for op in ops:
            ops[op]["2"] = [2e-5, 4e-10]
    rates, overhead = _kernel_rates(comm, repeat)
    if comm.rank == 0:
        profile = {"name": args.name or f"{platform.node()}-{comm.size}ranks",
                   "description": f"measured by python -m cnnmm calibrate on {comm.size} ranks",
                   "source": f"calibrate ({'quick' if args.quick else 'full'}), "
                             f"{MPI.Get_library_version().splitlines()[0]}",
                   "ops": ops, "gflops": rates, "call_overhead_s": overhead}
        text = json.dumps(profile, indent=1)
        if args.output:
            with open(args.output, "w") as f:
                f.write(text + "\n")
            say(f"cnnmm calibrate: wrote {args.output}")
        else:
            emit(text)
    return 0
