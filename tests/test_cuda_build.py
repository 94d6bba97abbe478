"""Build of the CUDA part (build_cuda.py) and the module's CUDA face on machines without a GPU.

These run in the default (CPU) suite.  The checks of the built module apply when nvcc exists on this
machine (then the default `CLASPE_CUDA=auto` build must have compiled and linked the CUDA part).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from claspe import _ext, ops

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_cuda", ROOT / "build_cuda.py")
build_cuda = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_cuda)

NVCC = build_cuda.find_nvcc()
needs_cuda_build = pytest.mark.skipif(
    NVCC is None or os.environ.get("CLASPE_CUDA", "auto") == "0",
    reason="nvcc not found (or CLASPE_CUDA=0): the module is built CPU-only",
)


# ---- build_cuda.py: settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expect",
    [
        (None, ["80", "86", "89", "90"]),
        ("", ["80", "86", "89", "90"]),
        ("80;86;89;90", ["80", "86", "89", "90"]),
        ("8.0, 9.0", ["80", "90"]),
        ("sm_86;86", ["86"]),
        ("90a", ["90a"]),
    ],
)
def test_parse_archs(value, expect):
    assert build_cuda.parse_archs(value) == expect


@pytest.mark.parametrize("value", ["eighty", "8", "80;x"])
def test_parse_archs_rejects(value):
    with pytest.raises(ValueError, match="CLASPE_CUDA_ARCHS"):
        build_cuda.parse_archs(value)


def test_gencode_has_sass_per_arch_and_ptx_for_highest():
    flags = build_cuda.gencode_flags(["80", "86", "89", "90"])
    codes = [flags[i + 1] for i in range(0, len(flags), 2)]
    assert codes == [
        "arch=compute_80,code=sm_80",
        "arch=compute_86,code=sm_86",
        "arch=compute_89,code=sm_89",
        "arch=compute_90,code=sm_90",
        "arch=compute_90,code=compute_90",
    ]


def test_nvcc_flags_keep_the_arithmetic_contract():
    flags = build_cuda.nvcc_flags(["80"], env={})
    assert "--fmad=false" in flags and "-std=c++17" in flags and "-O3" in flags
    assert "-DCLASPE_WITH_CUDA=1" in flags
    assert flags[flags.index("-Xcompiler") + 1] == "-fPIC"


@pytest.mark.parametrize("raw, mode", [("auto", "auto"), ("", "auto"), ("0", "0"), ("off", "0"), ("1", "1"), ("ON", "1")])
def test_cuda_mode(raw, mode):
    assert build_cuda.cuda_mode({"CLASPE_CUDA": raw}) == mode


def test_cuda_mode_rejects_garbage():
    with pytest.raises(ValueError, match="CLASPE_CUDA must be auto, 0 or 1"):
        build_cuda.cuda_mode({"CLASPE_CUDA": "maybe"})


def test_find_nvcc_prefers_cuda_home(tmp_path):
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert build_cuda.find_nvcc({"CUDA_HOME": str(tmp_path), "PATH": ""}) == str(fake)


def test_find_nvcc_none_without_toolkit(tmp_path):
    env = {"PATH": str(tmp_path)}
    found = build_cuda.find_nvcc(env)
    # /usr/local/cuda/bin/nvcc is the last resort; without it there is nothing
    assert found is None or found == "/usr/local/cuda/bin/nvcc"


class _Ext:  # the attributes configure_cuda touches on a setuptools Extension
    def __init__(self):
        self.name = "claspe._C"
        self.sources = ["csrc/bindings.cpp"]
        self.include_dirs, self.define_macros, self.library_dirs, self.libraries = ["csrc"], [], [], []
        self.extra_objects, self.depends = [], []


class _BuildExt:
    pass


def _no_nvcc(monkeypatch):
    monkeypatch.setattr(build_cuda, "find_nvcc", lambda env=None: None)


def test_require_cuda_without_nvcc_fails_clearly(monkeypatch):
    _no_nvcc(monkeypatch)
    monkeypatch.setenv("CLASPE_CUDA", "1")
    with pytest.raises(RuntimeError, match="CLASPE_CUDA=1 but nvcc was not found"):
        build_cuda.configure_cuda(_Ext(), _BuildExt)


def test_auto_without_nvcc_builds_cpu_only(monkeypatch, capsys):
    _no_nvcc(monkeypatch)
    monkeypatch.setenv("CLASPE_CUDA", "auto")
    ext = _Ext()
    cmd = build_cuda.configure_cuda(ext, _BuildExt)
    assert cmd == {"build_ext": _BuildExt}
    assert ext.define_macros == [] and ext.libraries == []
    assert "nvcc not found: CPU-only build" in capsys.readouterr().err


def test_cuda_off_builds_cpu_only(monkeypatch):
    monkeypatch.setenv("CLASPE_CUDA", "0")
    ext = _Ext()
    assert build_cuda.configure_cuda(ext, _BuildExt) == {"build_ext": _BuildExt}
    assert ext.sources == ["csrc/bindings.cpp"]


@needs_cuda_build
def test_configure_wires_static_cudart_and_defines(monkeypatch):
    monkeypatch.setenv("CLASPE_CUDA", "1")
    monkeypatch.setenv("CLASPE_CUDA_ARCHS", "80;90")
    ext = _Ext()
    cmd = build_cuda.configure_cuda(ext, _BuildExt)
    assert issubclass(cmd["build_ext"], _BuildExt)
    assert ("CLASPE_WITH_CUDA", "1") in ext.define_macros
    assert ("CLASPE_CUDA_ARCHS", '"80;90"') in ext.define_macros
    assert ext.libraries[:4] == ["cudart_static", "dl", "rt", "pthread"]
    assert "csrc/cuda/bindings_cuda.cpp" in ext.sources
    assert any((Path(d) / "libcudart_static.a").is_file() for d in ext.library_dirs)


# ---- the built module ------------------------------------------------------------------------


@needs_cuda_build
def test_module_reports_cuda_part():
    info = _ext.build_info()
    assert info["cuda_built"] is True and _ext.HAS_CUDA
    assert info["cuda_archs"] == build_cuda.parse_archs(os.environ.get("CLASPE_CUDA_ARCHS"))
    assert isinstance(info["cuda_device_count"], int) and info["cuda_device_count"] >= 0
    assert info["cuda_runtime_version"].split(".")[0].isdigit()


@needs_cuda_build
def test_module_links_cudart_statically():
    so = Path(_ext._C.__file__)
    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("ldd not available")
    out = subprocess.run([ldd, str(so)], capture_output=True, text=True, check=True).stdout
    assert "libcudart" not in out, out


@needs_cuda_build
def test_info_without_gpu_shows_archs_and_zero_devices():
    n, why = _ext._C.cuda_device_count()
    if n > 0:
        pytest.skip(f"a GPU is usable here ({n} devices)")
    assert why  # the reason (no driver / no device) is reported, not raised
    out = subprocess.run([sys.executable, "-m", "claspe", "info", "--json"], capture_output=True, text=True,
                         check=True, timeout=120)
    d = json.loads(out.stdout)
    assert d["cuda_built"] is True
    assert d["cuda_archs"] == build_cuda.parse_archs(os.environ.get("CLASPE_CUDA_ARCHS"))
    assert d["cuda_devices"] == 0
    text = subprocess.run([sys.executable, "-m", "claspe", "info"], capture_output=True, text=True, check=True,
                          timeout=120).stdout
    assert "cuda_archs" in text and "90" in text


@needs_cuda_build
def test_backend_cuda_with_host_arrays_is_a_clear_error():
    with pytest.raises(ValueError, match="backend 'cuda' needs GPU arrays"):
        ops.box_mean(np.zeros((4, 4, 4), np.float32), 2, backend="cuda")


def test_gpu_benchmark_exits_clearly_without_gpu():
    """benchmarks/gpu.py on a machine without a usable GPU: status 2 and a one-line reason."""
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    reason = bench.gpu_unavailable_reason()
    if reason is None:
        pytest.skip("a GPU is usable here: the benchmark would run")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--small"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2
    assert "nothing to measure" in out.stderr and reason in out.stderr
    assert out.stdout == ""


def test_gpu_benchmark_pipelines_run_on_cpu_tensors():
    """The benchmark's two pipelines, on CPU tensors and a tiny case: both pick the 20 boxes of the quotas."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    case = dict(bench.SMALL["kits"], shape=(48, 40, 32), patch=(8, 8, 8), stride=(4, 4, 4))
    folds = bench.make_folds(case, device="cpu")
    assert len(folds) == case["M"] and tuple(folds[0].shape) == (case["C"], *case["shape"])
    ref = bench.torch_pipeline(folds, case)
    ours = bench.claspe_pipeline([f.numpy() for f in folds], case)
    assert len(ref) == 20 == sum(len(v) for _, v in ours)
    assert [len(v) for _, v in ours] == bench._quotas(case["C"])
    assert bench.d2d_copy(folds)[0].equal(folds[0])
