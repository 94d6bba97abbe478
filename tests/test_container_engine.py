"""Checks of the built image against a running Docker engine (marker ``container``).

Run by ``nox -s container`` (container/ci_build.sh --pytest), which builds the CPU image, keeps its
own dockerd running and sets CLASPE_IMAGE (the image), CLASPE_DOCKER (the client),
CLASPE_BASE_IMAGE (the local base the image was built on) and DOCKER_HOST.  Skipped without them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("CLASPE_IMAGE", "")
DOCKER = os.environ.get("CLASPE_DOCKER", "docker")
BASE = os.environ.get("CLASPE_BASE_IMAGE", "")


def _engine_ok() -> bool:
    if not IMAGE:
        return False
    try:
        return subprocess.run([DOCKER, "image", "inspect", IMAGE], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


requires_image = pytest.mark.skipif(not _engine_ok(), reason="needs CLASPE_IMAGE built in a running Docker engine")


def docker_run(*args: str, input: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, "run", "--rm", "--network=none", *args], capture_output=True, text=True,
                          input=input, timeout=timeout)


def _certs(pem: str) -> set[str]:
    return set(re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S))


@requires_image
def test_runs_as_non_root_without_network():
    res = docker_run("--entrypoint", "sh", IMAGE, "-c", "id -u; id -un; cat /sys/class/net/*/operstate 2>/dev/null; "
                     "ls /sys/class/net")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split()
    assert lines[0] == "10001" and lines[1] == "claspe"
    assert set(lines[2:]) <= {"lo", "unknown", "down"}, f"network interfaces besides lo: {lines[2:]}"
    # the installed software is not writable by the run-time user
    res = docker_run("--entrypoint", "sh", IMAGE, "-c", "touch /opt/claspe/venv/x 2>/dev/null && echo writable || echo ro")
    assert res.stdout.strip() == "ro"


@requires_image
def test_info_reports_the_pinned_stack():
    res = docker_run(IMAGE, "info", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["extension_built"], info.get("extension_error")
    assert not info["cuda_built"]  # the CI image: no nvcc in the base
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("claspe_container_helpers_e", ROOT / "container" / "ci_helpers.py")
    helpers = module_from_spec(spec)
    spec.loader.exec_module(helpers)
    lock = helpers.parse_lock((ROOT / "container" / "requirements-cpu.lock").read_text())
    for pkg in ("torch", "numpy", "nnunetv2"):
        assert info[pkg] == lock[pkg][0], f"{pkg}: image {info[pkg]} != lock {lock[pkg][0]}"
    # pip agrees that the environment is consistent and complete
    res = docker_run("--entrypoint", "python", IMAGE, "-m", "pip", "check")
    assert res.returncode == 0, res.stdout + res.stderr


@requires_image
def test_no_build_secret_in_the_image():
    """The index's CA bundle (a proxy CA here) is a build secret: not in the image's trust store."""
    host = Path("/etc/ssl/certs/ca-certificates.crt")
    if not BASE or not host.is_file():
        pytest.skip("needs the local base image and the host's CA bundle")
    read = "cat /etc/ssl/certs/ca-certificates.crt"
    base = docker_run("--entrypoint", "sh", BASE, "-c", read)
    image = docker_run("--entrypoint", "sh", IMAGE, "-c", read)
    assert base.returncode == 0 and image.returncode == 0
    extra = _certs(host.read_text()) - _certs(base.stdout)  # certificates only the host trusts
    if not extra:
        pytest.skip("the host trusts no CA beyond the base image's: nothing that could leak")
    assert not (extra & _certs(image.stdout)), "a host-only CA certificate was baked into the image"
    res = docker_run("--entrypoint", "sh", IMAGE, "-c", "ls /run/secrets 2>/dev/null; env")
    assert "PIP_CERT" not in res.stdout and "pip_conf" not in res.stdout


@requires_image
def test_query_engine_smoke_in_image():
    res = docker_run("-i", "--entrypoint", "python", IMAGE, "-",
                     input=(ROOT / "container" / "smoke_query.py").read_text())
    assert res.returncode == 0, res.stdout + res.stderr
    assert "query smoke OK: extension=True" in res.stdout


@requires_image
def test_runs_read_only_as_any_user():
    """Like a .sif under Apptainer: read-only image, the caller's uid, writable /tmp and /results only."""
    res = docker_run("--read-only", "--tmpfs", "/tmp", "--tmpfs", "/results:uid=4321,gid=4321",
                     "--user", "4321:4321", "-i", "--entrypoint", "sh", IMAGE, "-c",
                     "claspe info --json >/results/info.json && python - && ls /results",
                     input=(ROOT / "container" / "smoke_query.py").read_text())
    assert res.returncode == 0, res.stdout + res.stderr
    assert "query smoke OK" in res.stdout and "info.json" in res.stdout


@requires_image
def test_python3_is_the_venv():
    """`claspe grid --container` runs `apptainer exec IMAGE python3 ...`: python3 must be the venv's."""
    res = docker_run("--entrypoint", "python3", IMAGE, "-c", "import sys, claspe; print(sys.prefix)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "/opt/claspe/venv"


@requires_image
def test_packages_are_byte_compiled():
    """A read-only image (a .sif) cannot cache bytecode: without .pyc files every start recompiles torch."""
    script = ("import importlib.util as u, sys\n"
              "for m in ('torch', 'nnunetv2', 'claspe.cli'):\n"
              "    spec = u.find_spec(m)\n"
              "    pyc = u.cache_from_source(spec.origin)\n"
              "    import os; sys.exit(f'no bytecode for {m}: {pyc}') if not os.path.exists(pyc) else None\n"
              "print('ok')\n")
    res = docker_run("--read-only", "--entrypoint", "python", IMAGE, "-c", script)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr


@requires_image
def test_bad_command_fails_cleanly():
    res = docker_run(IMAGE, "no-such-command")
    assert res.returncode != 0
    assert "invalid choice" in res.stderr


@requires_image
def test_paper_results_ship_in_the_image():
    # `claspe compare` / `claspe paper show` need paper_results/, which lives outside the package
    res = docker_run(IMAGE, "paper", "show")
    assert res.returncode == 0, res.stderr
    assert "paper_results" in res.stdout or "Dataset" in res.stdout, res.stdout[:500]
