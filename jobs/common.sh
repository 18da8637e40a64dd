# jobs/common.sh - sourced by every cnnmm batch job; portable, nothing site-specific here.
#
# After sourcing, a job has:
#   threads pinned   OMP/NUMBA/OPENBLAS/MKL_NUM_THREADS = SLURM_CPUS_PER_TASK (1 if unset),
#                    and SRUN_CPUS_PER_TASK exported (srun of Slurm >= 22.05 no longer
#                    inherits --cpus-per-task from sbatch)
#   the site file    $CNNMM_SITE (default: site.sh next to this file), which must define
#                    cnnmm_launch, the MPI launcher: `cnnmm_launch python -m cnnmm ...`
#   CNNMM_OUT        the job's result directory, named after the job:
#                    ${CNNMM_RESULTS:-$SLURM_SUBMIT_DIR/results}/<job name>-<job id>
#                    (one directory for all tasks of a job array)
#   CNNMM_STEM       file stem inside it: "results", or "task-<i>" for array task i
#   CNNMM_PYTHON     the Python to run (default: python, else python3, on the PATH the site
#                    file left)
#   cnnmm_record KIND [KEY=VALUE...]
#                    writes $CNNMM_OUT/$CNNMM_STEM.meta.json: the job kind, SLURM's view of
#                    the allocation, what the ranks see (threads, MPI) and KEY=VALUE pairs;
#                    and saves the batch script SLURM ran as $CNNMM_STEM.sbatch
# shellcheck shell=bash

if [[ -z ${CNNMM_JOBS_DIR:-} ]]; then
  echo "cnnmm: CNNMM_JOBS_DIR is not set (the job script sets it before sourcing common.sh)" >&2
  exit 2
fi

# --- threads: before any Python starts, since BLAS and Numba size their pools on import
cnnmm_threads=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=$cnnmm_threads NUMBA_NUM_THREADS=$cnnmm_threads
export OPENBLAS_NUM_THREADS=$cnnmm_threads MKL_NUM_THREADS=$cnnmm_threads
export SRUN_CPUS_PER_TASK=$cnnmm_threads
export PYTHONUNBUFFERED=1 PYTHONNOUSERSITE=1

# --- site: modules, environment, launcher
CNNMM_SITE=${CNNMM_SITE:-$CNNMM_JOBS_DIR/site.sh}
if [[ ! -r $CNNMM_SITE ]]; then
  echo "cnnmm: site file '$CNNMM_SITE' not found (set CNNMM_SITE)" >&2
  exit 2
fi
# shellcheck source=site.sh
source "$CNNMM_SITE"
if ! declare -F cnnmm_launch >/dev/null; then
  echo "cnnmm: site file '$CNNMM_SITE' does not define cnnmm_launch" >&2
  exit 2
fi
CNNMM_PYTHON=${CNNMM_PYTHON:-$(command -v python || command -v python3 || echo python)}

# --- where results go
cnnmm_job_id=${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local$$}}
CNNMM_OUT=${CNNMM_RESULTS:-${SLURM_SUBMIT_DIR:-$PWD}/results}/${SLURM_JOB_NAME:-cnnmm}-$cnnmm_job_id
if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
  CNNMM_STEM=task-$SLURM_ARRAY_TASK_ID
else
  CNNMM_STEM=results
fi
mkdir -p "$CNNMM_OUT"
export CNNMM_OUT CNNMM_STEM
echo "cnnmm: job ${SLURM_JOB_ID:-(no SLURM job)} on ${SLURM_JOB_NODELIST:-$(hostname)}:" \
  "${SLURM_NTASKS:-?} tasks x $cnnmm_threads threads; results in $CNNMM_OUT" >&2

# Record the allocation as SLURM described it and, through one launch of `cnnmm info`, what
# the ranks actually got (MPI library, rank count, thread pools): a wrong launcher or lost
# pinning shows up here instead of as a slow benchmark.
cnnmm_record() {
  local meta=$CNNMM_OUT/$CNNMM_STEM.meta.json info=$CNNMM_OUT/$CNNMM_STEM.info.json
  cnnmm_launch "$CNNMM_PYTHON" -m cnnmm info --json >"$info"
  CNNMM_LAUNCH_FN=$(declare -f cnnmm_launch) "$CNNMM_PYTHON" - "$meta" "$info" "$@" <<'PY'
import json, os, socket, sys, time
meta, info, kind, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
# the launcher as the site file defined it: the body of cnnmm_launch on one line
body = os.environ.get("CNNMM_LAUNCH_FN", "").splitlines()[2:-1]
launcher = " ".join(" ".join(line.split()) for line in body).rstrip(";")
keys = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_CLUSTER_NAME",
        "SLURM_JOB_PARTITION", "SLURM_JOB_ACCOUNT", "SLURM_JOB_QOS", "SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES",
        "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "SLURM_SUBMIT_DIR")
record = {
    "kind": kind, "study": os.environ.get("CNNMM_STUDY_KIND"),
    "slurm": {k[6:].lower(): os.environ[k] for k in keys if k in os.environ},
    "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                "MKL_NUM_THREADS", "SRUN_CPUS_PER_TASK")},
    "site": os.environ.get("CNNMM_SITE"), "launcher": launcher,
    "host": socket.gethostname(), "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "ranks": json.load(open(info)),
}
record.update(item.split("=", 1) for item in extra)
with open(meta, "w") as f:
    json.dump(record, f, indent=1)
PY
  rm -f "$info"
  # keep the exact script SLURM ran next to its results (best effort)
  if [[ -n ${SLURM_JOB_ID:-} ]] && command -v scontrol >/dev/null; then
    scontrol write batch_script "$SLURM_JOB_ID" "$CNNMM_OUT/$CNNMM_STEM.sbatch" >/dev/null 2>&1 || true
  fi
}
