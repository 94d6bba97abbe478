#!/usr/bin/env bash
# `nox -s slurm`: a real single-node SLURM for the `slurm`-marked tests, stopped again on exit.
#
#   tests/slurm/run.sh PYTHON [pytest args...]
#
# Installs Debian's slurm-wlm + munge when missing (needs root), starts munged/slurmctld/slurmd in a
# temporary folder (tests/slurm/cluster.sh), runs `PYTHON -m pytest -m slurm tests/test_cluster_slurm.py`
# with SLURM_CONF pointing at it, and stops the daemons it started by their PIDs (trap on EXIT).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${1:?usage: tests/slurm/run.sh PYTHON [pytest args...]}
shift
t0=$(date +%s)
bash "$here/cluster.sh" install
D=$(mktemp -d /tmp/claspe-slurm.XXXXXX)
cleanup() {
    bash "$here/cluster.sh" stop "$D" || true
    rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
bash "$here/cluster.sh" start "$D"
export SLURM_CONF="$D/slurm.conf" CLASPE_REQUIRE_SLURM=1
t1=$(date +%s)
"$py" -m pytest -m slurm tests/test_cluster_slurm.py -v -s --timeout=1200 -p no:cacheprovider "$@"
t2=$(date +%s)
echo "slurm session: install+start $((t1 - t0)) s, tests $((t2 - t1)) s"
