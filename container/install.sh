#!/usr/bin/env bash
# The build steps shared by container/Dockerfile and container/claspe.def (one script, so the two
# images are built the same way).  Phases, run in this order:
#
#   install.sh system            Python 3 (venv, headers) and a C++ compiler, from the base image's
#                                distribution when missing (the CI base already has them)
#   install.sh deps LOCK [WHEELS]
#                                virtual environment $CLASPE_VENV, then every package of LOCK with
#                                `pip install --require-hashes --no-deps` and `pip check`; WHEELS is an
#                                optional directory of local wheels (the CI's CPU torch wheel)
#   install.sh claspe SRC        builds and installs claspe from SRC (no network: --no-index
#                                --no-build-isolation): with CUDA for the default archs when nvcc is
#                                in the base image, CPU-only otherwise; checks the build with `claspe info`
#   install.sh user              the non-root user `claspe` (uid 10001) and the /data, /results volumes
#                                (Docker only: Apptainer runs as the calling user)
#
# Package-index settings are read at build time only and never written into the image:
#   /run/secrets/pip_cert  CA bundle for the index (e.g. a proxy's CA)   -> PIP_CERT
#   /run/secrets/pip_conf  pip configuration (index-url, extra-index-url) -> PIP_CONFIG_FILE
# (Docker: BuildKit secrets of these ids; otherwise the usual PIP_* environment variables apply.)
set -euo pipefail

VENV=${CLASPE_VENV:-/opt/claspe/venv}
log() { printf '[install.sh %s] %s\n' "${PHASE:-}" "$*" >&2; }

have_python() {
    command -v python3 >/dev/null 2>&1 \
        && python3 -c 'import ensurepip, venv, sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null
}

find_nvcc() {
    if command -v nvcc >/dev/null 2>&1; then command -v nvcc; return 0; fi
    for c in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
        if [[ -n "$c" && -x "$c/bin/nvcc" ]]; then echo "$c/bin/nvcc"; return 0; fi
    done
    return 1
}

phase_system() {
    local missing=()
    have_python || missing+=(python3 python3-venv python3-dev)
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    command -v make >/dev/null 2>&1 || missing+=(make)
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
    if ((${#missing[@]})); then
        log "installing from the base image's distribution: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends "${missing[@]}"
        apt-get clean
        rm -rf /var/lib/apt/lists/*
    fi
    have_python || { log "python3 with venv and headers still missing"; exit 1; }
    log "$(python3 --version), $(g++ --version | head -n1)"
}

phase_deps() {
    local lock=${1:?usage: install.sh deps LOCK [WHEELDIR]} wheels=${2:-}
    [[ -f "$lock" ]] || { log "lock file not found: $lock"; exit 1; }
    if [[ -f /run/secrets/pip_cert ]]; then export PIP_CERT=/run/secrets/pip_cert; fi
    if [[ -f /run/secrets/pip_conf ]]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi
    local args=(--disable-pip-version-check --require-hashes --no-deps)
    # a BuildKit cache mount may provide PIP_CACHE_DIR (not part of the image); else no cache
    [[ -n "${PIP_CACHE_DIR:-}" ]] || args+=(--no-cache-dir)
    if [[ -n "$wheels" ]] && compgen -G "$wheels/*.whl" >/dev/null; then
        log "local wheels: $(cd "$wheels" && echo *.whl)"
        args+=(--find-links "$wheels")
    fi
    python3 -m venv "$VENV"
    # The build backend first (hash-checked, from the lock), then everything with
    # --no-build-isolation: the few sdist-only packages are built with it, not with the unpinned,
    # unhashed build requirements that pip's build isolation would download.
    local backend
    backend=$(mktemp)
    python3 - "$lock" "$backend" <<'PY'
import re, sys
entries, cur = [], []
for line in open(sys.argv[1]).read().splitlines():
    if re.match(r"^[A-Za-z0-9]", line):
        cur = [line]
        entries.append(cur)
    elif line.lstrip().startswith("--hash") and cur:
        cur.append(line)
keep = [e for e in entries if re.match(r"^(setuptools|wheel)==", e[0])]
if len(keep) != 2:
    sys.exit("the lock must pin setuptools and wheel (the build backend of sdist-only packages)")
open(sys.argv[2], "w").write("\n".join(line for e in keep for line in e) + "\n")
PY
    "$VENV/bin/python" -m pip install "${args[@]}" -r "$backend"
    rm -f "$backend"
    "$VENV/bin/python" -m pip install "${args[@]}" --no-build-isolation -r "$lock"
    "$VENV/bin/python" -m pip check
    log "installed $("$VENV/bin/python" -m pip list --format=freeze --disable-pip-version-check | wc -l) packages into $VENV"
}

phase_claspe() {
    local src=${1:?usage: install.sh claspe SRC}
    [[ -f "$src/setup.py" ]] || { log "no setup.py in $src"; exit 1; }
    local want_cuda=0 nvcc
    if nvcc=$(find_nvcc); then
        # the image is meant for GPUs: a CPU-only fallback would be a silent failure, so require it
        export CLASPE_CUDA=${CLASPE_CUDA:-1}
        export PATH="$(dirname "$nvcc"):$PATH"
        log "nvcc: $nvcc ($("$nvcc" --version | tail -n1)), CLASPE_CUDA=$CLASPE_CUDA, archs ${CLASPE_CUDA_ARCHS:-default}"
    else
        export CLASPE_CUDA=${CLASPE_CUDA:-0}
        log "no nvcc in the base image: CPU-only build (CLASPE_CUDA=$CLASPE_CUDA)"
    fi
    [[ "$CLASPE_CUDA" == "1" ]] && want_cuda=1
    # build in a scratch copy, so the source tree in the image stays clean
    local work
    work=$(mktemp -d)
    cp -a "$src/." "$work/"
    MAKEFLAGS="-j$(nproc)" "$VENV/bin/python" -m pip install --no-cache-dir --disable-pip-version-check \
        --no-index --no-deps --no-build-isolation "$work"
    rm -rf "$work"
    # checks: the compiled engine imports, and the CUDA part is there exactly when it was asked for
    (cd / && "$VENV/bin/claspe" info)
    (cd / && "$VENV/bin/python" - "$want_cuda" <<'EOF'
import json, subprocess, sys
info = json.loads(subprocess.run(["claspe", "info", "--json"], check=True, capture_output=True, text=True).stdout)
if not info["extension_built"]:
    sys.exit(f"claspe._C did not build or import: {info.get('extension_error')}")
if info["cuda_built"] != bool(int(sys.argv[1])):
    sys.exit(f"cuda_built={info['cuda_built']}, expected {bool(int(sys.argv[1]))}")
EOF
    )
}

phase_user() {
    if ! id claspe >/dev/null 2>&1; then
        useradd --create-home --uid 10001 --user-group --shell /bin/bash claspe
    fi
    mkdir -p /data /results
    chown claspe:claspe /data /results
    log "user $(id claspe)"
}

PHASE=${1:-}
shift || true
case "$PHASE" in
    system) phase_system "$@" ;;
    deps) phase_deps "$@" ;;
    claspe) phase_claspe "$@" ;;
    user) phase_user "$@" ;;
    *) echo "usage: install.sh system | deps LOCK [WHEELDIR] | claspe SRC | user" >&2; exit 2 ;;
esac
