#!/usr/bin/env bash
# One-shot GPU check (issue 4) for a machine with an NVIDIA GPU and NO network, e.g. the lent
# nvidia-h200 device machine: builds claspe._C with its CUDA part in place for the local GPU's arch,
# prints the build info, runs tests/test_cuda_gpu.py (`gpu` marker) and the GPU benchmark, and keeps
# every log under $OUT (default ./gpu_out).  Nothing is installed and nothing is downloaded.
#
# Run from the device tool (no `carry` needed; ~3-6 minutes of a warm H200, most of it the build):
#     bash benchmarks/gpu_session.sh            (with timeout_s=570)
#
# What the machine must have (all of it is in the device image 'cuda', per .library/device/KINDS.md:
# python3 3.12 with torch 2.11+cu130, CuPy, numpy, pybind11, setuptools, pytest; nvcc 13.0; driver 580):
#   - nvcc (CUDA_HOME, PATH or /usr/local/cuda) and a host g++; the driver must support the toolkit
#     (cudart is linked statically: a 13.0 build needs a >= 580 driver);
#   - $PYTHON (default python3) with numpy, pybind11, setuptools >= 77 (pyproject.toml's SPDX license
#     string) and the Python headers (Python.h), to build; pytest to test; torch with CUDA for the
#     tests (tests/test_cuda_gpu.py creates its GPU arrays with torch; CuPy is used too when present)
#     and for the benchmark.
# Without torch the script still builds, prints the build info and runs a CuPy-only check of the
# engine against the CPU engine if CuPy is there (the pytest suite and the benchmark then say
# "torch is not installed" and are skipped).  A missing build prerequisite stops it before the build
# with the list of what is missing.  A venv from the development machine cannot be carried instead:
# the tool carries 64 MiB at most, torch alone is ~2 GB.
#
# The build is `setup.py build_ext --inplace` (no pip, so no index is ever contacted and the machine's
# site-packages are not touched); the repository root is put on PYTHONPATH for the tests and the
# benchmark.  A rerun on the still-warm machine reuses the objects (nvcc stamps + setuptools mtimes).
#
# Time: each phase has a limit so the whole run ends inside one device call (BUDGET seconds, default
# 540): build <= 300 s, tests <= 180 s, the benchmark gets what is left.  Benchmark cases run in the
# order kits, amos, big, each row printed when done; the PyTorch baseline of the big case (a 64^3
# conv3d on 16 x 512x512x400 maps, possibly a minute) runs only with BIG_TORCH=1.
#
# Environment: PYTHON, OUT, BUDGET, CLASPE_CUDA_ARCHS (default: the GPU's compute capability),
# BENCH_ARGS (replaces the default benchmark plan, e.g. "--cases kits --repeat 5"), BIG_TORCH=1.
# Exit status: the tests' (1 when the preflight or the build fails; the CuPy check's without torch).
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
OUT=${OUT:-$PWD/gpu_out}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-540}
mkdir -p "$OUT"
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

echo "== machine"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (see $OUT/nvidia-smi.txt)"
head -15 "$OUT/nvidia-smi.txt"
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
export CLASPE_CUDA=1 CLASPE_CUDA_ARCHS=${CLASPE_CUDA_ARCHS:-${ARCH:-90}} OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

echo "== preflight ($PY)"
"$PY" - <<'EOF' 2>&1 | tee "$OUT/preflight.txt"
import importlib, os, shutil, sys, sysconfig
print("python", sys.version.split()[0], sys.executable)
missing = []
for name in ("numpy", "pybind11", "setuptools", "pytest", "torch", "cupy"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name:<11}{getattr(mod, '__version__', '?')}")
    except Exception as exc:  # noqa: BLE001
        print(f"  {name:<11}MISSING ({type(exc).__name__}: {exc})")
        if name in ("numpy", "pybind11", "setuptools"):
            missing.append(name)
try:
    import setuptools
    if int(setuptools.__version__.split(".")[0]) < 77:
        missing.append(f"setuptools>=77 (have {setuptools.__version__})")
except Exception:  # noqa: BLE001
    pass
inc = sysconfig.get_paths()["include"]
if not os.path.isfile(os.path.join(inc, "Python.h")):
    missing.append(f"Python.h (looked in {inc})")
nvcc = next((p for p in (os.path.join(os.environ.get("CUDA_HOME", "/nonexistent"), "bin", "nvcc"),
                         shutil.which("nvcc") or "", "/usr/local/cuda/bin/nvcc") if p and os.path.isfile(p)), None)
print("  nvcc      ", nvcc or "MISSING")
if nvcc is None:
    missing.append("nvcc")
if shutil.which(os.environ.get("CXX", "g++")) is None:
    missing.append("g++")
try:
    import torch
    print("  torch.cuda", torch.cuda.is_available(), torch.version.cuda,
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception:  # noqa: BLE001
    pass
if missing:
    print("PREFLIGHT FAILED: missing " + ", ".join(missing))
    sys.exit(1)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "cannot build here (see above); nothing else was run"; exit 1; }

echo "== build (archs $CLASPE_CUDA_ARCHS, limit 300 s)"
start=$(date +%s)
if ! timeout 300 "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "build failed or timed out after $(( $(date +%s) - start )) s"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"; grep "claspe build" "$OUT/build.log" || true
"$PY" -c 'import json; from claspe.cli import info_dict; print(json.dumps(info_dict(), indent=1))' \
  2>&1 | tee "$OUT/info.txt"

HAVE_TORCH=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
if [ "$HAVE_TORCH" != 1 ]; then
  echo "== no CUDA torch: CuPy-only check (tests and benchmark need torch)"
  timeout 120 "$PY" - <<'EOF' 2>&1 | tee "$OUT/cupy_check.txt"
import numpy as np
from claspe import ops, reference as R
try:
    import cupy
except ImportError:
    raise SystemExit("neither torch with CUDA nor CuPy: no GPU arrays can be made here")
rng = np.random.default_rng(0)
p = [R.softmax((rng.normal(size=(3, 40, 36, 33)) * 3).astype(np.float32)) for _ in range(3)]
box = ops.fold_box_scores([cupy.asarray(f) for f in p], score="class_pe", classes=[1], patch=8, stride=(3, 4, 5))
want = ops.fold_box_scores(p, score="class_pe", classes=[1], patch=8, stride=(3, 4, 5), backend="cpu")
assert np.array_equal(cupy.asnumpy(box), want), "box scores differ"
s = cupy.asnumpy(box)
noised = ops.power_noise(cupy.asarray(s), 0.3, seed=5, key=-1)
assert np.array_equal(cupy.asnumpy(noised), ops.power_noise(s, 0.3, seed=5, key=-1, backend="cpu")), "noise"
n = cupy.asnumpy(noised)
kw = dict(patch=8, stride=(3, 4, 5), volume_shape=(40, 36, 33), quotas=[3, 4])
for (a, b), (c, d) in zip(ops.select_patches(cupy.asarray(n), **kw), ops.select_patches(n, backend="cpu", **kw)):
    assert np.array_equal(a, c) and np.array_equal(b, d), "selections differ"
print("CuPy check passed: box scores, noise and selections equal to the CPU engine")
EOF
  rc=${PIPESTATUS[0]}
  echo "cupy check rc=$rc; total $(( $(date +%s) - T0 )) s"
  exit "$rc"
fi

lim=$(( $(left) < 180 ? $(left) : 180 ))
echo "== tests (pytest -m gpu, limit $lim s)"
if [ "$lim" -lt 20 ]; then echo "no time left for the tests"; exit 1; fi
timeout "$lim" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_cuda_gpu.py > "$OUT/tests_gpu.txt" 2>&1
test_rc=$?
echo "tests rc=$test_rc after $(( $(date +%s) - T0 )) s"; tail -25 "$OUT/tests_gpu.txt"

lim=$(( $(left) - 5 ))
echo "== benchmark (limit $lim s)"
if [ "$lim" -lt 30 ]; then echo "no time left for the benchmark"; exit "$test_rc"; fi
if [ -n "${BENCH_ARGS:-}" ]; then
  # shellcheck disable=SC2086
  timeout "$lim" "$PY" benchmarks/gpu.py $BENCH_ARGS 2>&1 | tee "$OUT/bench.txt"
else
  big_torch=--skip-torch; [ "${BIG_TORCH:-0}" = 1 ] && big_torch=
  timeout "$lim" bash -c "\"$PY\" benchmarks/gpu.py --cases kits amos; \"$PY\" benchmarks/gpu.py --cases big $big_torch" \
    2>&1 | tee "$OUT/bench.txt"
fi
echo "bench rc=${PIPESTATUS[0]}; total $(( $(date +%s) - T0 )) s"
exit "$test_rc"
