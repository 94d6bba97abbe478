"""Builds the compiled query engine ``claspe._C`` (pybind11, C++17, OpenMP).

Environment:
  CLASPE_CPU_FLAGS   extra C++ flags; default "-march=x86-64-v3" on x86_64 hosts with AVX2, else "".
                     Floating-point contraction is always off (-ffp-contract=off): the kernels are
                     bit-identical to the NumPy reference and the CUDA engine (claspe/reference.py).
  CLASPE_CUDA        auto (default: build the CUDA part when nvcc is found) | 0 (never) | 1 (require)
  CLASPE_CUDA_ARCHS  semicolon list of compute capabilities, default "80;86;89;90"
  CLASPE_DEBUG=1     -O0 -g, for debugging
"""

from __future__ import annotations

import os
import platform
import sys
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ROOT = Path(__file__).parent.resolve()
sys.path.insert(0, str(ROOT))


def _cpu_flags() -> list[str]:
    env = os.environ.get("CLASPE_CPU_FLAGS")
    if env is not None:
        return env.split()
    if platform.machine() in ("x86_64", "AMD64"):
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
        if " avx2 " in cpuinfo and " fma " in cpuinfo and " bmi2 " in cpuinfo:
            return ["-march=x86-64-v3"]
    return []


def _cxx_flags() -> list[str]:
    debug = os.environ.get("CLASPE_DEBUG") == "1"
    flags = ["-O0", "-g"] if debug else ["-O3"]
    # -fno-trapping-math does not change any value (no reassociation, signed zeros kept); it lets gcc
    # if-convert and vectorise the branch-free portable log/exp of csrc/common (results are still
    # bit-identical to claspe/reference.py, which tests check).
    flags += ["-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wextra"]
    return flags + _cpu_flags()


sources = sorted(glob("csrc/cpu/*.cpp")) + ["csrc/bindings.cpp"]
cxx_flags = _cxx_flags()
define_macros = [("CLASPE_CXX_FLAGS", '"' + " ".join(cxx_flags) + '"')]

ext = Pybind11Extension(
    "claspe._C",
    sources,
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=cxx_flags,
    extra_link_args=["-fopenmp"],
    define_macros=define_macros,
)

# ---- CUDA slot: csrc/cuda/*.cu compiled by nvcc and linked into the same module -------------
try:
    from build_cuda import configure_cuda  # type: ignore  # provided with the CUDA sources
except ImportError:  # no CUDA build support in this tree
    configure_cuda = None

cmdclass = {"build_ext": build_ext}
if configure_cuda is not None:
    cmdclass = configure_cuda(ext, build_ext)

setup(ext_modules=[ext], cmdclass=cmdclass)
