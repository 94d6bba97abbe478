"""CUDA part of the ``claspe._C`` build (used by ``setup.py``).

``configure_cuda(ext, build_ext)`` decides from the environment whether the CUDA sources
(``csrc/cuda/*.cu`` compiled by nvcc, ``csrc/cuda/*.cpp`` compiled with the rest of the module) are
built into the same extension module, and returns the ``cmdclass`` mapping for ``setup()``.

Environment:
  CLASPE_CUDA        ``auto`` (default): build the CUDA part when nvcc is found, else a CPU-only build
                     with a log line; ``1``: require it (a clear error without nvcc); ``0``: never.
  CLASPE_CUDA_ARCHS  semicolon (or comma) separated compute capabilities, default ``80;86;89;90``.
                     SASS is generated for each, plus PTX for the highest (forward compatibility).
  CUDA_HOME / CUDA_PATH  toolkit root; otherwise nvcc is looked up on PATH.
  CLASPE_NVCC_FLAGS  extra nvcc flags (appended).

cudart is linked statically (``libcudart_static.a`` + ``-ldl -lrt -lpthread``), so the module needs no
CUDA runtime library at run time, only a driver when a GPU is used; without a driver or GPU the module
imports fine and reports ``cuda_device_count == 0``.

All device code is compiled with ``--fmad=false`` so that it reproduces the arithmetic of
``claspe/reference.py`` bit for bit (see its docstring).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import time
from glob import glob
from pathlib import Path

ROOT = Path(__file__).parent.resolve()
DEFAULT_ARCHS = "80;86;89;90"
log = logging.getLogger("claspe.build_cuda")


def _say(msg: str) -> None:
    # setuptools swallows logging configuration; print to stderr so pip -v and CI logs show it
    import sys

    print(f"[claspe build] {msg}", file=sys.stderr, flush=True)


def cuda_mode(env: dict | None = None) -> str:
    """``auto`` | ``0`` | ``1`` from ``CLASPE_CUDA`` (``off``/``on``/``false``/``true`` accepted)."""
    env = os.environ if env is None else env
    raw = env.get("CLASPE_CUDA", "auto").strip().lower()
    aliases = {"auto": "auto", "": "auto", "0": "0", "off": "0", "false": "0", "no": "0",
               "1": "1", "on": "1", "true": "1", "yes": "1"}
    if raw not in aliases:
        raise ValueError(f"CLASPE_CUDA must be auto, 0 or 1, got {raw!r}")
    return aliases[raw]


def parse_archs(value: str | None) -> list[str]:
    """``"80;86;89;90"`` -> ``["80", "86", "89", "90"]`` (also accepts ``8.0``, ``sm_80``, commas)."""
    value = DEFAULT_ARCHS if value is None or not value.strip() else value
    out: list[str] = []
    for tok in re.split(r"[;,\s]+", value.strip()):
        if not tok:
            continue
        t = tok.lower().removeprefix("sm_").removeprefix("compute_").replace(".", "")
        if not re.fullmatch(r"\d{2,3}[a-z]?", t):
            raise ValueError(f"CLASPE_CUDA_ARCHS entry {tok!r} is not a compute capability like 80 or 8.6")
        if t not in out:
            out.append(t)
    if not out:
        raise ValueError(f"CLASPE_CUDA_ARCHS={value!r} names no architecture")
    return out


def gencode_flags(archs: list[str]) -> list[str]:
    """SASS for every arch, PTX for the highest one."""
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    top = max(archs, key=lambda a: int(re.sub(r"\D", "", a)))
    flags += ["-gencode", f"arch=compute_{top},code=compute_{top}"]
    return flags


def find_nvcc(env: dict | None = None) -> str | None:
    """nvcc from CUDA_HOME/CUDA_PATH, else PATH, else /usr/local/cuda; None when absent."""
    env = os.environ if env is None else env
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = env.get(var)
        if home:
            cand = Path(home) / "bin" / "nvcc"
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
    found = shutil.which("nvcc", path=env.get("PATH"))
    if found:
        return found
    cand = Path("/usr/local/cuda/bin/nvcc")
    if cand.is_file() and os.access(cand, os.X_OK):
        return str(cand)
    return None


def cuda_home(nvcc: str, env: dict | None = None) -> Path:
    """Toolkit root of ``nvcc`` (it may be a wrapper script, so ask nvcc itself for TOP)."""
    env = os.environ if env is None else env
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(var) and (Path(env[var]) / "include" / "cuda_runtime.h").is_file():
            return Path(env[var]).resolve()
    root = Path(nvcc).resolve().parent.parent
    if (root / "include" / "cuda_runtime.h").is_file():
        return root
    try:  # `nvcc --dryrun` prints `#$ TOP=/usr/local/cuda-13.0/bin/..`
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
        m = re.search(r"TOP=(\S+)", out.stdout + out.stderr)
        if m and (Path(m.group(1)) / "include" / "cuda_runtime.h").is_file():
            return Path(m.group(1)).resolve()
    except (OSError, subprocess.SubprocessError):
        pass
    if Path("/usr/local/cuda/include/cuda_runtime.h").is_file():
        return Path("/usr/local/cuda").resolve()
    raise RuntimeError(f"cannot find the CUDA toolkit root of {nvcc}; set CUDA_HOME")


def _lib_dir(home: Path) -> Path:
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
        if (home / sub / "libcudart_static.a").is_file():
            return home / sub
    raise RuntimeError(f"libcudart_static.a not found under {home} (lib64, lib, targets/*/lib)")


def nvcc_flags(archs: list[str], env: dict | None = None) -> list[str]:
    env = os.environ if env is None else env
    debug = env.get("CLASPE_DEBUG") == "1"
    flags = ["-std=c++17", "-Xcompiler", "-fPIC", "--fmad=false", "-Xcompiler", "-ffp-contract=off",
             "-I", str(ROOT / "csrc"),
             "-DCLASPE_WITH_CUDA=1", "--expt-relaxed-constexpr", "-Xcudafe", "--diag_suppress=177"]
    flags += ["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]
    flags += gencode_flags(archs)
    flags += shlex.split(env.get("CLASPE_NVCC_FLAGS", ""))
    return flags


def _newest_header_mtime() -> float:
    heads = glob(str(ROOT / "csrc" / "common" / "*.h")) + glob(str(ROOT / "csrc" / "cuda" / "*.h")) \
        + glob(str(ROOT / "csrc" / "cuda" / "*.cuh"))
    return max((os.path.getmtime(h) for h in heads), default=0.0)


def compile_cuda(nvcc: str, sources: list[str], out_dir: Path, archs: list[str], *, force: bool = False) -> list[str]:
    """Compile each .cu to an object in ``out_dir`` (skipped when up to date); returns the objects."""
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = nvcc_flags(archs)
    stamp = out_dir / "nvcc_flags.txt"
    flag_line = " ".join([nvcc] + flags)
    if not stamp.is_file() or stamp.read_text() != flag_line:
        force = True
    newest_head = _newest_header_mtime()
    objs = []
    threads = str(max(1, min(len(archs) + 1, os.cpu_count() or 1)))
    t_all = time.perf_counter()
    for src in sources:
        obj = out_dir / (Path(src).stem + ".o")
        objs.append(str(obj))
        if not force and obj.is_file() and obj.stat().st_mtime >= max(os.path.getmtime(src), newest_head):
            continue
        cmd = [nvcc, *flags, "--threads", threads, "-c", src, "-o", str(obj)]
        _say("nvcc " + Path(src).name + " (" + ";".join(archs) + ")")
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT)
        if res.returncode != 0:
            raise RuntimeError(f"nvcc failed on {src} (exit {res.returncode}): {shlex.join(cmd)}")
        _say(f"  {Path(src).name}: {time.perf_counter() - t0:.1f} s")
    stamp.write_text(flag_line)
    _say(f"CUDA part compiled in {time.perf_counter() - t_all:.1f} s")
    return objs


def configure_cuda(ext, build_ext_cls) -> dict:
    """Wire the CUDA part into ``ext`` (a setuptools Extension) and return ``cmdclass``."""
    mode = cuda_mode()
    if mode == "0":
        _say("CLASPE_CUDA=0: CPU-only build")
        return {"build_ext": build_ext_cls}
    nvcc = find_nvcc()
    if nvcc is None:
        if mode == "1":
            raise RuntimeError(
                "CLASPE_CUDA=1 but nvcc was not found (looked in $CUDA_HOME/bin, $CUDA_PATH/bin, PATH, "
                "/usr/local/cuda/bin). Install the CUDA toolkit or set CUDA_HOME, or build with CLASPE_CUDA=0."
            )
        _say("nvcc not found: CPU-only build (set CLASPE_CUDA=1 to require the CUDA part)")
        return {"build_ext": build_ext_cls}
    cu_sources = sorted(glob(str(ROOT / "csrc" / "cuda" / "*.cu")))
    cpp_sources = sorted(glob("csrc/cuda/*.cpp", root_dir=ROOT))
    if not cu_sources:
        if mode == "1":
            raise RuntimeError("CLASPE_CUDA=1 but csrc/cuda/ has no .cu sources")
        _say("no csrc/cuda/*.cu sources: CPU-only build")
        return {"build_ext": build_ext_cls}
    archs = parse_archs(os.environ.get("CLASPE_CUDA_ARCHS"))
    home = cuda_home(nvcc)
    libdir = _lib_dir(home)
    _say(f"CUDA part: nvcc {nvcc} (toolkit {home}), archs {';'.join(archs)}")

    ext.sources = list(ext.sources) + [s for s in cpp_sources if s not in ext.sources]
    ext.include_dirs = list(ext.include_dirs) + [str(home / "include")]
    ext.define_macros = list(ext.define_macros) + [
        ("CLASPE_WITH_CUDA", "1"),
        ("CLASPE_CUDA_ARCHS", '"' + ";".join(archs) + '"'),
    ]
    ext.library_dirs = list(ext.library_dirs) + [str(libdir)]
    ext.libraries = list(ext.libraries) + ["cudart_static", "dl", "rt", "pthread"]

    class BuildExtCuda(build_ext_cls):
        """build_ext that first compiles csrc/cuda/*.cu with nvcc into the build temp folder."""

        def build_extensions(self):
            out_dir = Path(self.build_temp).resolve() / "cuda"
            objs = compile_cuda(nvcc, cu_sources, out_dir, archs, force=bool(self.force))
            for e in self.extensions:
                if e is ext or e.name == ext.name:
                    e.extra_objects = list(e.extra_objects or []) + [o for o in objs if o not in (e.extra_objects or [])]
                    e.depends = list(e.depends or []) + [o for o in objs if o not in (e.depends or [])]
            super().build_extensions()

    return {"build_ext": BuildExtCuda}
