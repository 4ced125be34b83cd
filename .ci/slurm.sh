#!/usr/bin/env bash
# A real SLURM cluster on this one machine for the launch tests: munge, slurmctld and two slurmd
# "nodes" (node1, node2) on 127.0.0.1, no systemd. Needs root (Debian's packages, daemons as root).
#
#   .ci/slurm.sh install   apt-get the Debian packages when missing (munge slurmctld slurmd slurm-client)
#   .ci/slurm.sh start     install if needed, then start the daemons; reuses running ones (idempotent)
#   .ci/slurm.sh stop      stop what `start` started (by pid file), leave nothing behind
#   .ci/slurm.sh status    sinfo, or exit 1 when the cluster is not up
#   .ci/slurm.sh conf      print the path of slurm.conf (export SLURM_CONF=$(.ci/slurm.sh conf))
#
# State lives in $SHARDPLAN_SLURM_DIR (default: shardplan-slurm under $TMPDIR). Kept short because
# slurmd puts unix sockets in its spool directory (108-byte path limit).
# Checked with Debian 12's Slurm 22.05: sacct needs slurmdbd, which this cluster does not run.
set -euo pipefail

DIR="${SHARDPLAN_SLURM_DIR:-${TMPDIR:-/tmp}/shardplan-slurm}"
CONF="$DIR/slurm.conf"
CTLD_PORT="${SHARDPLAN_SLURM_PORT:-16817}"
NODES=(node1 node2)
MUNGE_PID=/run/munge/munged.pid

say() { echo "slurm.sh: $*" >&2; }

alive() {  # alive PIDFILE: the pid in it names a running process
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sinfo >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    [[ $(id -u) == 0 ]] || { say "installing SLURM needs root (apt-get)"; exit 3; }
    say "installing munge slurmctld slurmd slurm-client (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq munge slurmctld slurmd slurm-client >/dev/null
}

write_conf() {
    local host
    host=$(hostname)
    local ncpu
    ncpu=$(nproc)
    # ProctrackType=linuxproc and TaskPlugin=none: no cgroups needed (containers, CI runners).
    # The controller's address is given (127.0.0.1), so the host name need not resolve.
    # CPUs per fake node = the real core count: each node may use the whole machine.
    cat > "$CONF.tmp" <<CONF
ClusterName=shardplantest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerType=sched/backfill
MpiDefault=none
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=node[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=$((CTLD_PORT + 184))-$((CTLD_PORT + 185)) CPUs=$ncpu State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    if alive "$MUNGE_PID"; then return 0; fi
    # A munged that is not ours (started by the package's postinst, or its pid file gone) holds the socket:
    # use it rather than fail on its lock.
    if pgrep -x munged >/dev/null; then return 0; fi
    mkdir -p /run/munge && chown munge:munge /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
        chown munge:munge /etc/munge/munge.key && chmod 600 /etc/munge/munge.key
    fi
    # As root munged refuses to start (its log file belongs to munge): run it as munge.
    runuser -u munge -- munged
    touch "$DIR/started-munge"
}

wait_idle() {  # until both nodes are idle, or fail after 60 s with the daemons' logs
    local _
    for _ in $(seq 1 120); do
        if [[ $(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l) -ge ${#NODES[@]} ]]; then
            return 0
        fi
        sleep 0.5
    done
    say "nodes did not become idle within 60 s:"
    sinfo -N >&2 || true
    tail -n 20 "$DIR"/log/*.log >&2 || true
    return 1
}

start() {
    install
    mkdir -p "$DIR/state" "$DIR/log" "$DIR/spool"
    # A running cluster keeps its configuration; a stopped one gets this script's current one.
    alive "$DIR/slurmctld.pid" && [[ -f "$CONF" ]] || write_conf
    export SLURM_CONF="$CONF"
    start_munge
    if ! alive "$DIR/slurmctld.pid"; then
        slurmctld -f "$CONF" || { say "slurmctld failed:"; tail -n 20 "$DIR/log/slurmctld.log" >&2; exit 1; }
    fi
    local n
    for n in "${NODES[@]}"; do
        if ! alive "$DIR/slurmd-$n.pid"; then
            slurmd -f "$CONF" -N "$n" || { say "slurmd $n failed:"; tail -n 20 "$DIR/log/slurmd-$n.log" >&2; exit 1; }
        fi
    done
    wait_idle
    say "up: export SLURM_CONF=$CONF"
}

stop_pidfile() {  # stop_pidfile FILE NAME: TERM, wait up to 10 s, then KILL
    local file=$1 name=$2 pid _
    alive "$file" || { rm -f "$file"; return 0; }
    pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name ($pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

stop() {
    [[ -d "$DIR" ]] || return 0
    if [[ -f "$CONF" ]]; then
        # Jobs first, so that no task outlives its slurmd.
        SLURM_CONF="$CONF" scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    fi
    local n
    for n in "${NODES[@]}"; do stop_pidfile "$DIR/slurmd-$n.pid" "slurmd $n"; done
    stop_pidfile "$DIR/slurmctld.pid" slurmctld
    if [[ -f "$DIR/started-munge" ]]; then
        stop_pidfile "$MUNGE_PID" munged
        rm -f "$DIR/started-munge"
    fi
    # Job state would resurrect old jobs on the next start; the spool holds their stale sockets.
    rm -rf "$DIR/state" "$DIR/spool"
}

status() {
    alive "$DIR/slurmctld.pid" || { say "not running (no live slurmctld in $DIR)"; return 1; }
    SLURM_CONF="$CONF" sinfo
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    conf) echo "$CONF" ;;
    *) echo "usage: $0 install|start|stop|status|conf" >&2; exit 64 ;;
esac
