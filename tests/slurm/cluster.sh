#!/usr/bin/env bash
# A real single-node SLURM (Debian's slurm-wlm + munge) for `nox -s slurm`, in one folder.
#
#   tests/slurm/cluster.sh install          apt-get install slurm-wlm munge (needs root), if missing
#   tests/slurm/cluster.sh start DIR        write DIR/slurm.conf + gres.conf, start munged (as the
#                                           munge user), slurmctld and slurmd; wait until the node is idle
#   tests/slurm/cluster.sh stop DIR         stop the daemons started by `start DIR`, by their PIDs
#
# Clients use it with `export SLURM_CONF=DIR/slurm.conf`. Fake GPUs: `Gres=gpu:2` backed by placeholder
# character devices made with mknod under DIR/dev, so `--gres=gpu:1` tasks get CUDA_VISIBLE_DEVICES
# (there is no GPU behind them). No slurmdbd: `sacct` does not work (claspe grid polls squeue).
set -euo pipefail

cmd=${1:?usage: cluster.sh install|start DIR|stop DIR}

case "$cmd" in
install)
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        echo "slurm-wlm and munge already installed"; exit 0
    fi
    if [ "$(id -u)" != 0 ]; then echo "cluster.sh install needs root (apt-get)" >&2; exit 1; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    ;;
start)
    D=$(realpath -m "${2:?cluster.sh start DIR}")
    if [ "$(id -u)" != 0 ]; then echo "cluster.sh start needs root (SlurmUser=root, mknod)" >&2; exit 1; fi
    mkdir -p "$D"/{state,spool,dev,log}
    host=$(hostname -s)
    # munge: its own key, socket and state under DIR/munge, owned by the munge user
    M="$D/munge"
    mkdir -p "$M"
    chmod 0755 "$D"
    if [ ! -f "$M/munge.key" ]; then
        dd if=/dev/urandom of="$M/munge.key" bs=1 count=1024 status=none
    fi
    chown -R munge:munge "$M"
    chmod 0700 "$M"
    chmod 0400 "$M/munge.key"
    # the socket's folder must be reachable by the clients (root here) and not world-writable
    chmod 0711 "$M"
    runuser -u munge -- /usr/sbin/munged --key-file="$M/munge.key" --socket="$M/munge.socket" \
        --pid-file="$M/munged.pid" --log-file="$M/munged.log" --seed-file="$M/munged.seed" --force
    for _ in $(seq 50); do [ -S "$M/munge.socket" ] && break; sleep 0.1; done
    [ -S "$M/munge.socket" ] || { echo "munged did not start" >&2; cat "$M/munged.log" >&2; exit 1; }
    # fake GPUs: placeholder device nodes (major 195 like nvidia, nothing behind them)
    for i in 0 1; do [ -e "$D/dev/nvidia$i" ] || mknod "$D/dev/nvidia$i" c 195 "$i"; done
    nodeline=$(slurmd -C | head -1)
    cat >"$D/slurm.conf" <<EOF
ClusterName=claspe-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$M/munge.socket
SlurmctldPort=6917
SlurmdPort=6918
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=3
MinJobAge=600
SlurmdTimeout=60
InactiveLimit=0
$nodeline Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    cat >"$D/gres.conf" <<EOF
NodeName=$host Name=gpu File=$D/dev/nvidia[0-1]
EOF
    export SLURM_CONF="$D/slurm.conf"
    slurmctld -c -f "$D/slurm.conf"   # -c: clean start (no state from an earlier run)
    slurmd -f "$D/slurm.conf"
    for _ in $(seq 120); do
        state=$(sinfo --noheader --format=%t 2>/dev/null || true)
        [ "$state" = "idle" ] && break
        sleep 0.5
    done
    if [ "$state" != "idle" ]; then
        echo "SLURM node did not become idle (state: '$state')" >&2
        tail -n 30 "$D/log/slurmctld.log" "$D/log/slurmd.log" >&2 || true
        exit 1
    fi
    echo "SLURM up: SLURM_CONF=$D/slurm.conf ($(sinfo --noheader --format='%P %D %c %G %t'))"
    ;;
stop)
    D=$(realpath -m "${2:?cluster.sh stop DIR}")
    for f in "$D/slurmd.pid" "$D/slurmctld.pid" "$D/munge/munged.pid"; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" || true
        fi
        rm -f "$f"
    done
    echo "SLURM stopped ($D)"
    ;;
*)
    echo "usage: cluster.sh install|start DIR|stop DIR" >&2; exit 2 ;;
esac
