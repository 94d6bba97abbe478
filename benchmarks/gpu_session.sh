#!/usr/bin/env bash
# One-shot GPU check for a machine with an NVIDIA GPU (e.g. a lent device machine): builds claspe._C
# with its CUDA part for the local GPU's arch, prints `claspe info`, runs the `gpu` tests and the GPU
# benchmark, and keeps every log under $OUT (default ./gpu_out).
#
#   PYTHON=/path/to/python (default python3; needs numpy, pybind11, setuptools, pytest, hypothesis and a
#   CUDA build of torch)   BENCH_ARGS="--cases kits amos big" (default: all cases)   TEST_TIMEOUT=900
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (see $OUT/nvidia-smi.txt)"
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
export CLASPE_CUDA=1 CLASPE_CUDA_ARCHS=${CLASPE_CUDA_ARCHS:-${ARCH:-90}} OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
echo "== build (archs $CLASPE_CUDA_ARCHS)"
start=$(date +%s)
if ! "$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "build failed"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"; grep "claspe build" "$OUT/build.log" || true
"$PY" -m claspe info | tee "$OUT/info.txt"
echo "== tests (pytest -m gpu)"
timeout "${TEST_TIMEOUT:-900}" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_cuda_gpu.py \
  > "$OUT/tests_gpu.txt" 2>&1
echo "tests rc=$?"; tail -15 "$OUT/tests_gpu.txt"
echo "== benchmark"
# shellcheck disable=SC2086
"$PY" benchmarks/gpu.py ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.txt"
echo "bench rc=${PIPESTATUS[0]}"
