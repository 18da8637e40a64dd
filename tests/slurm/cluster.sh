#!/usr/bin/env bash
# cluster.sh - a private, throw-away one-node SLURM on 127.0.0.1 for cnnmm's test suite.
#
#   cluster.sh check       can we run a cluster here?  exit 0: yes; 10: yes, after
#                          installing the packages (root + apt-get); 11: no (not root, or
#                          packages missing and not installable; the reason is on stdout)
#   cluster.sh up DIR      install the packages if missing (root + apt-get only), write a
#                          config under DIR, start munged, slurmctld and slurmd detached
#                          from our stdio, wait for the node to be idle, and print
#                          "SLURM_CONF=DIR/etc/slurm.conf" as the last line of stdout
#   cluster.sh down DIR    cancel the cluster's jobs, then stop the daemons it started
#   cluster.sh status DIR  daemons, node and queue
#
# Settings (environment):
#   CNNMM_SLURM_CPUS     CPUs the node declares [4]; more than the machine has is allowed
#                        (slurmd is told to trust the config), which lets a 2-core machine
#                        schedule 4-rank jobs while still queueing the rest
#   CNNMM_SLURM_PORTS    "SLURMCTLD_PORT SLURMD_PORT" [17817 17818]; the test fixture passes
#                        free ports so two test runs on one machine do not collide
#   CNNMM_SLURM_PARTITIONS  partition names, the first is the default [debug]
#   CNNMM_SLURM_INSTALL  0 = never call apt-get [1]
#   CNNMM_SLURM_WAIT     seconds to wait for each daemon / the idle node [60]
#   CNNMM_SLURM_FIRST_JOB_ID  the first job ID [changes every second, see FirstJobId]
#
# Written for Debian 12 (Slurm 22.05, munge 0.5) and root, without systemd. Nothing outside
# DIR is written except by apt-get. Keep DIR short: munge's socket path must fit in 108 bytes.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
COMMANDS=(slurmctld slurmd sbatch scontrol squeue sinfo scancel munged)
CPUS=${CNNMM_SLURM_CPUS:-4}
read -r CTLD_PORT SLURMD_PORT <<<"${CNNMM_SLURM_PORTS:-17817 17818}"
PARTITIONS=${CNNMM_SLURM_PARTITIONS:-debug}
WAIT=${CNNMM_SLURM_WAIT:-60}
# a fresh range of 1000 job IDs per second of the clock, below SLURM's MaxJobId
FIRST_JOB_ID=${CNNMM_SLURM_FIRST_JOB_ID:-$(( $(date +%s) % 60000 * 1000 + 1000 ))}
NODE=${HOSTNAME%%.*}   # the short host name, as slurmd calls the node
# the daemons live in sbin, which a non-login root shell may not have on its PATH
PATH=$PATH:/usr/sbin:/sbin

note() { printf 'cluster.sh: %s\n' "$*" >&2; }
fail() { note "error: $*"; exit 1; }

missing_commands() {
  local c out=()
  for c in "${COMMANDS[@]}"; do command -v "$c" >/dev/null 2>&1 || out+=("$c"); done
  echo "${out[*]}"
}

check() {
  local missing
  # the daemons run as root (SlurmUser=root), so even an installed SLURM needs root here
  [[ $(id -u) == 0 ]] || { echo "not root (uid $(id -u)): the test cluster runs slurmd and munged as root"; return 11; }
  missing=$(missing_commands)
  [[ -z $missing ]] && { echo "SLURM and munge are installed"; return 0; }
  if command -v apt-get >/dev/null && [[ ${CNNMM_SLURM_INSTALL:-1} != 0 ]]; then
    echo "missing $missing; will apt-get install ${PACKAGES[*]}"; return 10
  fi
  local why=()
  command -v apt-get >/dev/null || why+=("no apt-get")
  [[ ${CNNMM_SLURM_INSTALL:-1} != 0 ]] || why+=("CNNMM_SLURM_INSTALL=0")
  echo "missing $missing and cannot install ${PACKAGES[*]}: ${why[*]}"
  return 11
}

install() {
  local rc=0
  check >/dev/null || rc=$?
  case $rc in
    0) return 0 ;;
    10) note "installing ${PACKAGES[*]} with apt-get (about 30 s)"
        # the packages' own service start-up is harmless: it uses other sockets and ports
        DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
          "${PACKAGES[@]}" </dev/null >&2 ;;
    *) fail "$(check)" ;;
  esac
  [[ -z $(missing_commands) ]] || fail "still missing after install: $(missing_commands)"
}

# The daemons are recorded as DIR/run/NAME.pid; a recorded PID counts only while it still
# belongs to a process of that name, so a recycled PID is never signalled.
alive() {
  local pidfile=$DIR/run/$1.pid pid
  [[ -s $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]]
}

write_config() {
  mkdir -p "$DIR"/{etc,run,log,state,spool/"$NODE"}
  # munged insists that everyone may traverse its socket's directory, but the key stays private
  mkdir -p "$DIR/munge/secret"
  chmod 755 "$DIR" "$DIR/munge"
  chmod 700 "$DIR/munge/secret"
  if [[ ! -s $DIR/munge/secret/key ]]; then
    head -c 1024 /dev/urandom >"$DIR/munge/secret/key"
  fi
  chmod 600 "$DIR/munge/secret/key"
  : >"$DIR/etc/plugstack.conf"   # an empty one, so a system-wide plugstack is not read
  {
    echo "# written by cnnmm tests/slurm/cluster.sh; everything lives under $DIR"
    echo "ClusterName=cnnmmtest"
    echo "SlurmctldHost=$NODE(127.0.0.1)"
    echo "SlurmctldPort=$CTLD_PORT"
    echo "SlurmdPort=$SLURMD_PORT"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$DIR/munge/sock"
    echo "StateSaveLocation=$DIR/state"
    echo "SlurmdSpoolDir=$DIR/spool/%n"
    echo "SlurmctldPidFile=$DIR/run/slurmctld.pidfile"
    echo "SlurmdPidFile=$DIR/run/slurmd.pidfile"
    echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
    echo "SlurmdLogFile=$DIR/log/slurmd.log"
    echo "PlugStackConfig=$DIR/etc/plugstack.conf"
    # no cgroups, no accounting daemon: plain process tracking is enough for tests
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobCompType=jobcomp/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core"
    # PMI-2 is what the PyPI MPICH wheel speaks under srun (it rejects PMIx)
    echo "MpiDefault=pmi2"
    # trust the declared CPUs even where the machine has fewer
    echo "SlurmdParameters=config_overrides"
    # a request the node can never satisfy must fail at sbatch, not pend forever
    echo "EnforcePartLimits=ALL"
    # Job IDs that differ from run to run. slurmctld -c restarts them at 1, and MPICH names
    # its shared-memory segments after the PMI job ("<job>.<step>"): a segment left in
    # /dev/shm by a killed rank of an earlier run would be reattached by the next run's job
    # with the same ID, whose MPI_Init then fails on the stale contents.
    echo "FirstJobId=$FIRST_JOB_ID"
    echo "MailProg=/bin/true"
    echo "ReturnToService=2"
    echo "KillWait=5"
    # finished jobs stay visible to scontrol for an hour: tests read their state after the fact
    echo "MinJobAge=3600"
    echo "InactiveLimit=0"
    echo "Waittime=0"
    echo "SlurmdTimeout=300"
    echo "NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$(mem_mb) State=UNKNOWN"
    local p default=YES
    for p in $PARTITIONS; do
      echo "PartitionName=$p Nodes=$NODE Default=$default MaxTime=INFINITE State=UP"
      default=NO
    done
  } >"$DIR/etc/slurm.conf"
}

mem_mb() { awk '/^MemTotal:/ { printf "%d\n", $2 / 1024 * 0.8 }' /proc/meminfo; }

# Daemons run in the foreground of their own session, with stdio on log files: a daemon that
# inherited our stdout would keep a caller's pipe open and its read would never end.
launch() {
  local name=$1; shift
  setsid "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 &
  echo $! >"$DIR/run/$name.pid"
}

running() {   # a live process, not a zombie waiting to be reaped
  [[ -r /proc/$1/stat ]] && [[ $(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

poll() {   # poll SECONDS COMMAND...: retry until it succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

ctld_up() { scontrol ping | grep -q 'is UP'; }
node_idle() { [[ $(sinfo -h -N -n "$NODE" -o %t) == idle ]]; }

diagnose() {
  local f
  for f in "$DIR"/log/*; do note "--- $f"; tail -n 15 "$f" >&2 || true; done
}

up() {
  install
  export SLURM_CONF=$DIR/etc/slurm.conf
  if alive munged && alive slurmctld && alive slurmd && node_idle; then
    echo "SLURM_CONF=$SLURM_CONF"; return 0
  fi
  down quiet
  write_config
  launch munged munged -F --key-file="$DIR/munge/secret/key" --socket="$DIR/munge/sock" \
    --pid-file="$DIR/run/munged.pidfile" --seed-file="$DIR/munge/seed" --log-file="$DIR/log/munged.log"
  poll "$WAIT" munge -n -S "$DIR/munge/sock" || { diagnose; down; fail "munged did not start"; }
  # -c: start with no saved jobs, so job IDs and state are this run's only
  launch slurmctld slurmctld -D -c -f "$SLURM_CONF"
  poll "$WAIT" ctld_up || { diagnose; down; fail "slurmctld did not answer"; }
  launch slurmd slurmd -D -N "$NODE" -f "$SLURM_CONF"
  poll "$WAIT" node_idle || { sinfo -N -l >&2 || true; diagnose; down; fail "node $NODE not idle after ${WAIT}s"; }
  note "node $NODE idle with $CPUS CPUs (machine has $(nproc)); ports $CTLD_PORT/$SLURMD_PORT"
  echo "SLURM_CONF=$SLURM_CONF"
}

down() {
  export SLURM_CONF=$DIR/etc/slurm.conf
  local name pid pids=() jobs
  # jobs first: their slurmstepd and tasks would otherwise outlive slurmd
  if alive slurmctld; then
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [[ -n $jobs ]]; then
      # shellcheck disable=SC2086 # one job ID per word
      scancel $jobs 2>/dev/null || true
      poll 20 test -z "$(squeue -h -o %A 2>/dev/null)" || true
    fi
  fi
  for name in slurmd slurmctld munged; do
    if alive "$name"; then
      pid=$(<"$DIR/run/$name.pid")
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      [[ ${1:-} == quiet ]] || note "stopping $name (pid $pid)"
    fi
    rm -f "$DIR/run/$name.pid"
  done
  for pid in "${pids[@]}"; do
    poll 10 eval "! running $pid" || kill -KILL "$pid" 2>/dev/null || true
  done
}

status() {
  export SLURM_CONF=$DIR/etc/slurm.conf
  local name
  for name in munged slurmctld slurmd; do
    if alive "$name"; then echo "$name running (pid $(<"$DIR/run/$name.pid"))"; else echo "$name not running"; fi
  done
  sinfo -N -l 2>&1 || true
  squeue 2>&1 || true
}

cmd=${1:-}
case $cmd in
  check) check ;;
  up|down|status)
    [[ -n ${2:-} ]] || fail "usage: $0 $cmd DIR"
    mkdir -p "$2"
    DIR=$(cd "$2" && pwd)
    "$cmd" ;;
  *) echo "usage: $0 check | up DIR | down DIR | status DIR" >&2; exit 2 ;;
esac
