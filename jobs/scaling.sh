#!/usr/bin/env bash
# jobs/scaling.sh - submit a scaling study: one layer.sbatch job per point, all writing into
# one study directory, for `python -m cnnmm report`.
#
#   jobs/scaling.sh strong|weak [sbatch options...]
#
#   strong  the same layer at every point
#   weak    the layer's batch N grows with the rank count P: N = N(CNNMM_LAYER) x P, so every
#           rank keeps the same work
#
# Points: every node count in CNNMM_NODES times every tasks-per-node count in
# CNNMM_TASKS_PER_NODE; P = nodes x tasks per node. Each is its own sbatch submission, named
# <mode>-<nodes>n-<tasks>t, so small points do not hold a large allocation idle.
#
#   CNNMM_NODES="1 2 4 8" CNNMM_LAYER=N=64,C=256,K=256,H=14,W=14,R=3,S=3,pad=1 \
#     jobs/scaling.sh strong -p batch -A myproject --time=00:20:00
#
# Settings (environment):
#   CNNMM_NODES           node counts ["1 2 4 8"]
#   CNNMM_TASKS_PER_NODE  tasks per node, one or more ["4"]
#   CNNMM_LAYER           the layer (weak: at P=1) [N=8,C=128,K=128,H=28,W=28,R=3,S=3,pad=1]
#   CNNMM_STUDY_DIR       where everything goes [$CNNMM_RESULTS/<mode>-<date-time>, with
#                         CNNMM_RESULTS defaulting to ./results]
#   the layer.sbatch settings (CNNMM_ALGO, CNNMM_PASS, CNNMM_PROFILE, ...) reach every job;
#   sbatch options come after the mode (they override layer.sbatch's #SBATCH lines; keep
#   sbatch's default --export=ALL, which carries these settings to the jobs)
# Prints "<job id> <job name>" per submitted job on stdout.
set -euo pipefail

usage() { echo "usage: $0 strong|weak [sbatch options...]" >&2; exit 2; }
mode=${1:-}
[[ $mode == strong || $mode == weak ]] || usage
shift

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${CNNMM_NODES:=1 2 4 8}" "${CNNMM_TASKS_PER_NODE:=4}"
: "${CNNMM_LAYER:=N=8,C=128,K=128,H=28,W=28,R=3,S=3,stride=1,pad=1,dilation=1}"
study=${CNNMM_STUDY_DIR:-${CNNMM_RESULTS:-$PWD/results}/$mode-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$study"
study=$(cd "$study" && pwd)

IFS=, read -r -a fields <<<"$CNNMM_LAYER"
n0=
for field in "${fields[@]}"; do [[ $field == N=* ]] && n0=${field#N=}; done
[[ $n0 =~ ^[1-9][0-9]*$ ]] || { echo "$0: CNNMM_LAYER=$CNNMM_LAYER has no N=<positive integer>" >&2; exit 2; }

for nodes in $CNNMM_NODES; do
  for tasks in $CNNMM_TASKS_PER_NODE; do
    [[ $nodes =~ ^[1-9][0-9]*$ && $tasks =~ ^[1-9][0-9]*$ ]] ||
      { echo "$0: node and task counts must be positive integers, not '$nodes' x '$tasks'" >&2; exit 2; }
    layer=$CNNMM_LAYER
    if [[ $mode == weak ]]; then
      scaled=()
      for field in "${fields[@]}"; do
        [[ $field == N=* ]] && field=N=$((n0 * nodes * tasks))
        scaled+=("$field")
      done
      layer=$(IFS=,; echo "${scaled[*]}")
    fi
    name=$mode-${nodes}n-${tasks}t
    # the settings go to the job through sbatch's environment; logs sit next to the results
    id=$(CNNMM_LAYER=$layer CNNMM_RESULTS=$study CNNMM_STUDY_KIND=$mode CNNMM_JOBS_DIR=$here \
      sbatch --parsable --job-name="$name" --nodes="$nodes" --ntasks-per-node="$tasks" \
      --output="$study/%x-%j.out" "$@" "$here/layer.sbatch")
    echo "${id%%;*} $name"
  done
done
echo "cnnmm: $mode scaling study in $study; when its jobs end: python -m cnnmm report '$study'" >&2
