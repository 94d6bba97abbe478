#!/usr/bin/env bash
# CI check of the container (`nox -s container`): builds the CPU image on a machine that has no
# registry and no running Docker engine, then runs it with no network as the non-root user.
#
#  1. installs Debian's docker.io and debootstrap when missing (root + apt only)
#  2. starts its own dockerd (data root in the cache, socket/exec root in a temp dir, no bridge,
#     no iptables) and stops it by PID on exit
#  3. builds a local base image: debootstrap --variant=minbase bookworm + python3/venv/dev,
#     build-essential, ca-certificates, then `docker import` (the rootfs tarball is cached)
#  4. docker build --network=host -f container/Dockerfile with BASE_IMAGE=<local base>,
#     LOCK=requirements-cpu.lock; the CPU torch wheel comes from pip's local find-links directory
#     (hash-checked, staged in container/wheels/); the index's CA bundle and pip configuration are
#     BuildKit secrets (never in the image)
#  5. docker run --network=none (as the image's non-root user): `claspe info`, a query-engine smoke
#     test (compiled engine == NumPy reference), `claspe demo` with /results mounted (DEMO_ARGS,
#     default empty: the full default demo; `--demo-args "--loops 2 --strategies clasp_pe"` runs a
#     ~3x shorter one: one query with the engine and a retraining)
#  6. optional: pytest -m container against the running engine (--pytest PYTHON), docker save (--save TAR)
#
# Usage: container/ci_build.sh [--pytest PYTHON] [--save TAR] [--no-demo] [--demo-args "ARGS"]
# Environment: CLASPE_CONTAINER_CACHE (default ~/.cache/claspe-container: debootstrap tarball and the
# engine's layer store, so a second run reuses them), CLASPE_IMAGE (default claspe:ci),
# DEBIAN_MIRROR (default http://deb.debian.org/debian), CLASPE_DEMO_ARGS (like --demo-args).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CLASPE_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/claspe-container}
IMAGE=${CLASPE_IMAGE:-claspe:ci}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_PKGS=python3,python3-venv,python3-dev,build-essential,ca-certificates
LOCK=requirements-cpu.lock
PYTEST_PY="" SAVE="" DEMO=1
DEMO_ARGS=${CLASPE_DEMO_ARGS-}
DEMO_AT="demo skipped"

while (($#)); do
    case "$1" in
        --pytest) PYTEST_PY=${2:?--pytest needs a python}; shift 2 ;;
        --save) SAVE=${2:?--save needs a path}; shift 2 ;;
        --no-demo) DEMO=0; shift ;;
        --demo-args) DEMO_ARGS=${2?--demo-args needs a value}; shift 2 ;;
        -h|--help) sed -n "2,23p" "$0"; exit 0 ;;
        *) echo "ci_build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

T0=$SECONDS
log() { printf '[ci_build %4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- 1. tools -------------------------------------------------------------------------------
DOCKER=/usr/bin/docker  # Debian's client: has BuildKit built in (no buildx plugin needed)
if ! [[ -x /usr/sbin/dockerd && -x $DOCKER ]] || ! command -v debootstrap >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing docker.io and debootstrap (Debian)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
    else
        die "needs Debian's docker.io (/usr/bin/docker, /usr/sbin/dockerd) and debootstrap (install them, or run as root)"
    fi
fi
[[ $(id -u) == 0 ]] || die "must run as root (dockerd, debootstrap)"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 1800 9 || die "another ci_build.sh holds $CACHE/.lock"

# ---- 2. the engine --------------------------------------------------------------------------
RUN_DIR=$(mktemp -d /tmp/claspe-ci.XXXXXX)  # short: the socket path must stay < 108 bytes
DOCKERD_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$DOCKERD_PID" ]] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        log "stopping dockerd (pid $DOCKERD_PID)"
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then kill -KILL "$DOCKERD_PID" 2>/dev/null || true; fi
    fi
    if ((rc != 0)) && [[ -f "$RUN_DIR/dockerd.log" ]]; then
        log "dockerd log (last 20 lines):"; tail -n 20 "$RUN_DIR/dockerd.log" >&2 || true
    fi
    if [[ -f "$RUN_DIR/build.log" ]]; then cp "$RUN_DIR/build.log" "$CACHE/last-build.log" 2>/dev/null || true; fi
    rm -rf "$RUN_DIR/exec" "$RUN_DIR/rootfs" 2>/dev/null || true
    rm -rf "$RUN_DIR" 2>/dev/null || true
    log "done (exit $rc)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export DOCKER_HOST="unix://$RUN_DIR/docker.sock"
export DOCKER_BUILDKIT=1
/usr/sbin/dockerd --data-root "$CACHE/docker" --exec-root "$RUN_DIR/exec" --pidfile "$RUN_DIR/dockerd.pid" \
    -H "$DOCKER_HOST" --bridge=none --iptables=false --ip-masq=false >"$RUN_DIR/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 120); do
    $DOCKER version >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || die "dockerd exited: $(tail -n 5 "$RUN_DIR/dockerd.log")"
    sleep 0.5
done
$DOCKER version >/dev/null || die "dockerd did not come up"
log "load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores; dockerd pid $DOCKERD_PID, $($DOCKER version --format 'server {{.Server.Version}}, client {{.Client.Version}}')"

# ---- 3. local base image --------------------------------------------------------------------
key=$(printf '%s|%s|%s|minbase' "$SUITE" "$BASE_PKGS" "$MIRROR" | sha256sum | cut -c1-12)
BASE="claspe-ci-base:$SUITE-$key"
TARBALL="$CACHE/base-$SUITE-$key.tar"
if ! $DOCKER image inspect "$BASE" >/dev/null 2>&1; then
    if [[ ! -s "$TARBALL" ]]; then
        log "debootstrap $SUITE (minbase + $BASE_PKGS) from $MIRROR"
        debootstrap --variant=minbase --include="$BASE_PKGS" "$SUITE" "$RUN_DIR/rootfs" "$MIRROR" \
            >"$RUN_DIR/debootstrap.log" 2>&1 || { tail -n 20 "$RUN_DIR/debootstrap.log" >&2; die "debootstrap failed"; }
        rm -rf "$RUN_DIR/rootfs/var/cache/apt/archives/"*.deb "$RUN_DIR/rootfs/var/lib/apt/lists/"*
        tar -C "$RUN_DIR/rootfs" --numeric-owner -cf "$TARBALL.tmp" .
        mv "$TARBALL.tmp" "$TARBALL"
        rm -rf "$RUN_DIR/rootfs"
    fi
    log "docker import $TARBALL -> $BASE"
    $DOCKER import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$TARBALL" "$BASE" >/dev/null
fi
log "base image $BASE ($($DOCKER run --rm --network=none "$BASE" python3 --version))"
T_BASE=$((SECONDS - T0))

# ---- 4. the image ---------------------------------------------------------------------------
HELP="python3 $ROOT/container/ci_helpers.py"
$HELP pip-conf "$RUN_DIR/pip.conf"
CERT=$($HELP pip-cert)
secrets=(--secret "id=pip_conf,src=$RUN_DIR/pip.conf")
[[ -n "$CERT" ]] && secrets+=(--secret "id=pip_cert,src=$CERT")
log "pip secrets: conf $(grep -c = "$RUN_DIR/pip.conf" || true) setting(s), cert ${CERT:-none}"
$HELP stage-wheels "$ROOT/container/$LOCK" "$ROOT/container/wheels" | sed 's/^/    staged /' >&2
cpu_flags=-march=x86-64-v3
grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo && grep -qw bmi2 /proc/cpuinfo || cpu_flags=""

log "docker build $IMAGE"
$DOCKER build --network=host --progress=plain -f "$ROOT/container/Dockerfile" \
    --build-arg "BASE_IMAGE=$BASE" --build-arg "LOCK=$LOCK" --build-arg "CLASPE_CPU_FLAGS=$cpu_flags" \
    "${secrets[@]}" -t "$IMAGE" "$ROOT" >"$RUN_DIR/build.log" 2>&1 \
    || { tail -n 60 "$RUN_DIR/build.log" >&2; die "docker build failed"; }
grep -E '^#[0-9]+ (DONE|CACHED)|install.sh' "$RUN_DIR/build.log" | tail -n 25 >&2 || true
T_BUILD=$((SECONDS - T0))
size=$($DOCKER image inspect -f '{{.Size}}' "$IMAGE")
log "built $IMAGE: $((size / 1000000)) MB, user $($DOCKER image inspect -f '{{.Config.User}}' "$IMAGE")"

# ---- 5. run it: no network, the image's (non-root) user ------------------------------------
run() { $DOCKER run --rm --network=none "$@"; }
uid=$(run --entrypoint id "$IMAGE" -u)
[[ "$uid" != 0 ]] || die "the image runs as root"
log "runs as uid $uid"
run "$IMAGE" info
run "$IMAGE" info --json >"$RUN_DIR/info.json"
python3 - "$RUN_DIR/info.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["extension_built"], f"extension not built: {d.get('extension_error')}"
assert not d["cuda_built"], "the CPU image has a CUDA build"
assert d["torch"].startswith("2.13.0"), d["torch"]
EOF
run -i --entrypoint python "$IMAGE" - <"$ROOT/container/smoke_query.py"
if ((DEMO)); then
    if run "$IMAGE" demo --help >/dev/null 2>&1; then
        mkdir -p "$RUN_DIR/results"
        chown "$uid" "$RUN_DIR/results"
        log "claspe demo $DEMO_ARGS (no network, /results mounted)"
        # shellcheck disable=SC2086  # DEMO_ARGS is a list of words
        run -v "$RUN_DIR/results:/results" -e OMP_NUM_THREADS=2 "$IMAGE" demo --no-progress $DEMO_ARGS
        DEMO_AT="demo done at $((SECONDS - T0))s"
        n=$(find "$RUN_DIR/results" -type f | wc -l)
        ((n > 0)) || die "claspe demo wrote nothing under /results"
        find "$RUN_DIR/results" -name '*.png' | grep -q . || die "claspe demo wrote no budget-curve PNG"
        log "claspe demo wrote $n files: $(cd "$RUN_DIR/results" && find . -maxdepth 2 -name '*.png' -o -maxdepth 3 -name '*.html' | tr '\n' ' ')"
    else
        die "the image has no 'claspe demo' command (use --no-demo to skip it)"
    fi
fi

# ---- 6. optional ----------------------------------------------------------------------------
if [[ -n "$PYTEST_PY" ]]; then
    log "pytest -m container"
    CLASPE_IMAGE="$IMAGE" CLASPE_DOCKER="$DOCKER" CLASPE_BASE_IMAGE="$BASE" \
        "$PYTEST_PY" -m pytest -m container -q "$ROOT"/tests/test_container_*.py -p no:cacheprovider
fi
# keep the cache bounded: old image versions and build cache beyond a few GB
$DOCKER image prune -f >/dev/null || true
$DOCKER builder prune -f --keep-storage 6gb >/dev/null || true
if [[ -n "$SAVE" ]]; then
    log "docker save $IMAGE -> $SAVE"
    $DOCKER save -o "$SAVE" "$IMAGE"
fi
log "OK: $IMAGE built and checked in $((SECONDS - T0)) s (base ready at ${T_BASE}s, image built at ${T_BUILD}s," \
    "$DEMO_AT; load average now $(cut -d' ' -f1-3 /proc/loadavg))"
