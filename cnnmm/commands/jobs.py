"""``python -m cnnmm jobs``: render a SLURM batch script from ``jobs/``, and optionally submit it.

``--submit`` always goes through ``sbatch``, also inside an existing allocation (where
``SLURM_JOB_ID`` is set). LBANN's launcher instead runs the script in the current allocation,
but that silently ignores the nodes, tasks and time this command was asked for. To use an
allocation you already hold, write the script with ``-o FILE`` and run ``bash FILE`` in it:
the ``#SBATCH`` lines are then comments and the allocation's own ``SLURM_*`` values apply.
"""

from __future__ import annotations

import os
import sys

from ..cli import emit, say

NAME = ("jobs",)
HELP = "write a SLURM batch script (layer, net, calibrate or sweep job) and optionally submit it"


def add_arguments(p):
    from ..slurm import KINDS, SETTINGS
    p.add_argument("kind", choices=KINDS, help="the job: jobs/<kind>.sbatch")
    res = p.add_argument_group("resources (the #SBATCH header)")
    res.add_argument("-N", "--nodes", default="1", help="nodes (default: %(default)s)")
    res.add_argument("--ntasks-per-node", default="4", help="MPI ranks per node (default: %(default)s)")
    res.add_argument("-c", "--cpus-per-task", default="1",
                     help="cores per rank; every thread pool is sized to it (default: %(default)s)")
    res.add_argument("-t", "--time", default="00:30:00",
                     help="time limit: MM, HH:MM:SS or D-HH:MM:SS (default: %(default)s)")
    res.add_argument("-p", "--partition", default=None, help="partition (default: the cluster's)")
    res.add_argument("-A", "--account", default=None, help="account to charge (default: yours)")
    res.add_argument("-J", "--job-name", default=None, help="job name (default: cnnmm-KIND)")
    res.add_argument("--log", default=None,
                     help="sbatch --output pattern (default: %%x-%%j.out, arrays %%x-%%A_%%a.out)")
    res.add_argument("--array", default=None, help="sweep: array indices (default: one task per parameters line)")
    res.add_argument("--exclusive", action="store_true", help="whole nodes only (benchmarks)")
    job = p.add_argument_group("job settings (exported as CNNMM_* variables)")
    for s in SETTINGS:
        job.add_argument(f"--{s.option}", dest=f"set_{s.option}", default=None, metavar=s.option.upper(),
                         help=f"{s.help} [{s.var}; {', '.join(s.kinds) if len(s.kinds) < 4 else 'all jobs'}]")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="write the script to FILE (default: stdout)")
    p.add_argument("--submit", action="store_true",
                   help="submit with sbatch and print the job ID (even inside an allocation)")
    p.add_argument("--jobs-dir", default=None, help="cnnmm's jobs/ folder (default: the checkout's)")


def main(args):
    from .. import slurm
    from ..errors import CnnmmError

    settings = {s.option: getattr(args, f"set_{s.option}") for s in slurm.SETTINGS}
    resources = slurm.Resources(nodes=args.nodes, ntasks_per_node=args.ntasks_per_node,
                                cpus_per_task=args.cpus_per_task, time=args.time, partition=args.partition,
                                account=args.account, job_name=args.job_name, log=args.log, array=args.array,
                                exclusive=args.exclusive)
    try:
        script = slurm.render(args.kind, resources, settings, slurm.find_jobs_dir(args.jobs_dir))
    except CnnmmError as exc:
        print(f"cnnmm: error: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.output:
        with open(args.output, "w") as f:
            f.write(script)
        os.chmod(args.output, 0o755)
        say(f"cnnmm: wrote {args.output}")
    elif not args.submit:
        emit(script.rstrip("\n"))
    if args.submit:
        try:
            job_id = slurm.submit(script, path=args.output)
        except slurm.JobError as exc:
            print(f"cnnmm: error: {exc}", file=sys.stderr, flush=True)
            return 1
        emit(job_id)
        say(f"cnnmm: submitted job {job_id}")
    return 0
