# jobs/site.sh - everything site-specific about cnnmm's batch jobs, and nothing else.
#
# Every job sources this file (or the one CNNMM_SITE names) after pinning threads. It must
# define cnnmm_launch, which runs its arguments as one MPI rank per SLURM task. Copy it, edit
# the copy for your cluster, and submit with CNNMM_SITE=/path/to/copy in the environment.
# shellcheck shell=bash

# --- 1. modules (uncomment and adapt; load the MPI that mpi4py was built against)
# module purge
# module load gcc openmpi python

# --- 2. Python environment: the README's install makes .venv in the checkout
cnnmm_venv=${CNNMM_VENV:-$CNNMM_JOBS_DIR/../.venv}
if [[ -r $cnnmm_venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  source "$cnnmm_venv/bin/activate"
elif [[ -n ${CNNMM_VENV:-} ]]; then
  echo "cnnmm: CNNMM_VENV=$CNNMM_VENV has no bin/activate" >&2
  exit 2
fi

# --- 3. launcher
case ${CNNMM_LAUNCHER:-srun} in
  srun)
    # Direct launch; the PyPI mpich wheel needs PMI-2 (it rejects PMIx). Sites whose MPI
    # speaks PMIx use CNNMM_SRUN_MPI=pmix; `srun --mpi=list` shows what is available.
    # --kill-on-bad-exit: a rank that dies (even inside MPI_Init) ends the step, instead of
    # leaving the others waiting for it until the job's time limit.
    cnnmm_launch() { srun --kill-on-bad-exit=1 --mpi="${CNNMM_SRUN_MPI:-pmi2}" "$@"; }
    ;;
  mpiexec)
    # MPICH's Hydra (and Open MPI's mpirun) start one proxy per node through srun, and that
    # proxy forks all of the node's ranks. A --cpus-per-task limit on the proxy's step would
    # squeeze those ranks onto one task's CPUs, so SRUN_CPUS_PER_TASK is dropped for it.
    cnnmm_launch() { env -u SRUN_CPUS_PER_TASK mpiexec -n "${SLURM_NTASKS:-1}" "$@"; }
    ;;
  *)
    echo "cnnmm: CNNMM_LAUNCHER=$CNNMM_LAUNCHER: use srun or mpiexec, or write your own site file" >&2
    exit 2
    ;;
esac
