"""Consistency of the container files (no Docker engine needed; default suite).

container/Dockerfile, container/claspe.def and the lock files must agree: the same default base
image, the same lock file, the same build steps (container/install.sh phases), the same torch pin,
and every package of every lock pinned with hashes.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
C = ROOT / "container"


def _helpers():
    spec = importlib.util.spec_from_file_location("claspe_container_helpers", C / "ci_helpers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


H = _helpers()


# ---------------------------------------------------------------------------------------------
# parsers
# ---------------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    assert not cur, "unterminated continuation at the end of the Dockerfile"
    return out


def def_sections(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(header keywords, {section name: body}) of an Apptainer definition file."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        if raw.startswith("%"):
            current = raw[1:].split()[0]
            if current in sections:
                raise ValueError(f"section %{current} twice")
            sections[current] = []
        elif current is None:
            line = raw.strip()
            if line and not line.startswith("#"):
                key, sep, value = line.partition(":")
                if not sep:
                    raise ValueError(f"bad header line {line!r}")
                header[key.strip()] = value.strip()
        else:
            sections[current].append(raw)
    return header, {k: "\n".join(v) for k, v in sections.items()}


def def_arguments(body: str) -> dict[str, str]:
    out = {}
    for line in body.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"bad %arguments line {line!r}"
            out[key.strip()] = value.strip()
    return out


def docker_args(instrs) -> dict[str, str]:
    out = {}
    for ins, rest in instrs:
        if ins == "ARG":
            key, _, value = rest.partition("=")
            out[key] = value
    return out


def install_phases(text: str) -> list[str]:
    return re.findall(r"/opt/claspe/install\.sh (system|deps|claspe|user)\b", text)


@pytest.fixture(scope="module")
def dockerfile():
    return dockerfile_instructions((C / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def deffile():
    return def_sections((C / "claspe.def").read_text())


@pytest.fixture(scope="module")
def locks():
    return {name: H.parse_lock((C / name).read_text()) for name in ("requirements.lock", "requirements-cpu.lock")}


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------


def test_dockerfile_base_lock_user_entrypoint(dockerfile):
    args = docker_args(dockerfile)
    base = args["BASE_IMAGE"]
    # an official CUDA development image with cuDNN, pinned by an exact x.y.z tag
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-devel-ubuntu\d\d\.\d\d", base), base
    assert dockerfile[0] == ("ARG", f"BASE_IMAGE={base}"), "BASE_IMAGE must be declared before FROM"
    assert ("FROM", "${BASE_IMAGE}") in dockerfile
    assert args["LOCK"] == "requirements.lock"
    assert ("COPY", "container/${LOCK} /opt/claspe/requirements.lock") in dockerfile
    users = [rest for ins, rest in dockerfile if ins == "USER"]
    assert users == ["10001:10001"], "the image must end as the non-root user claspe (uid 10001)"
    assert "--uid 10001 --user-group" in (C / "install.sh").read_text()
    assert ("ENTRYPOINT", '["claspe"]') in dockerfile
    assert [rest for ins, rest in dockerfile if ins == "WORKDIR"] == ["/results"]
    assert ("VOLUME", '["/data", "/results"]') in dockerfile
    # the last instructions: nothing runs as root after USER
    idx = [i for i, (ins, _) in enumerate(dockerfile) if ins == "USER"][0]
    assert all(ins in ("ENTRYPOINT", "CMD") for ins, _ in dockerfile[idx + 1:])


def test_dockerfile_has_no_syntax_line_and_no_baked_secrets():
    text = (C / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M), "a # syntax= line would need a registry"
    instrs = dockerfile_instructions(text)
    for ins, rest in instrs:
        if ins in ("COPY", "ADD"):
            assert "ca-certificates" not in rest and "pip.conf" not in rest and "secrets" not in rest, rest
        if ins == "ENV":
            assert "PIP_CERT" not in rest and "PIP_INDEX_URL" not in rest and "PIP_CONFIG_FILE" not in rest, rest
    deps = [rest for ins, rest in instrs if ins == "RUN" and "install.sh deps" in rest]
    assert len(deps) == 1
    assert "--mount=type=secret,id=pip_cert" in deps[0] and "--mount=type=secret,id=pip_conf" in deps[0]


def test_install_script_requires_hashes_and_checks():
    text = (C / "install.sh").read_text()
    assert "--require-hashes" in text and "--no-deps" in text and "-m pip check" in text
    assert "--no-index" in text and "--no-build-isolation" in text  # claspe builds without network
    assert "/run/secrets/pip_cert" in text and "/run/secrets/pip_conf" in text


def test_dockerignore_keeps_host_builds_out():
    lines = [x.strip() for x in (C / "Dockerfile.dockerignore").read_text().splitlines()]
    assert lines[lines.index("*")] == "*"  # whitelist
    assert "**/*.so" in lines  # never the host's compiled claspe._C
    # every file the Dockerfile copies from the context is whitelisted
    for ins, rest in dockerfile_instructions((C / "Dockerfile").read_text()):
        if ins == "COPY":
            for src in shlex.split(rest)[:-1]:
                src = src.replace("${LOCK}", "requirements.lock")
                assert f"!{src}" in lines, f"{src} is copied but excluded from the build context"


# ---------------------------------------------------------------------------------------------
# Apptainer definition
# ---------------------------------------------------------------------------------------------


def test_def_parses_with_required_sections(deffile):
    header, sections = deffile
    assert header["Bootstrap"] == "docker"
    assert header["From"] == "{{ BASE_IMAGE }}"
    for name in ("arguments", "files", "environment", "post", "runscript", "test", "labels", "help"):
        assert name in sections, f"%{name} missing"
    run = [x.strip() for x in sections["runscript"].splitlines() if x.strip()]
    assert run == ['exec claspe "$@"']
    test = [x.strip() for x in sections["test"].splitlines() if x.strip()]
    assert test == ["claspe info"]


def test_def_and_dockerfile_agree(dockerfile, deffile):
    header, sections = deffile
    dargs = docker_args(dockerfile)
    aargs = def_arguments(sections["arguments"])
    for key in ("BASE_IMAGE", "LOCK", "CLASPE_CPU_FLAGS", "CLASPE_CUDA_ARCHS"):
        assert aargs[key] == dargs[key], f"{key}: .def {aargs[key]!r} != Dockerfile {dargs[key]!r}"
    assert "container/{{ LOCK }} /opt/claspe/requirements.lock" in sections["files"]
    # the same build steps, in the same order (Apptainer runs as the caller: no user phase)
    docker_phases = install_phases((C / "Dockerfile").read_text())
    assert docker_phases == ["system", "user", "deps", "claspe"]
    assert install_phases(sections["post"]) == [p for p in docker_phases if p != "user"]
    # the same sources
    copied = {s for ins, rest in dockerfile if ins == "COPY" for s in shlex.split(rest)[:-1]}
    files = {line.replace("{{ LOCK }}", "${LOCK}").split()[0] for line in sections["files"].splitlines()
             if line.strip()}
    assert copied == files
    # the same run-time environment
    env_docker = " ".join(rest for ins, rest in dockerfile if ins == "ENV")
    for var in re.findall(r"export (\w+)=", sections["environment"]):
        assert f"{var}=" in env_docker, f"{var} set in the .def but not in the Dockerfile"


# ---------------------------------------------------------------------------------------------
# lock files
# ---------------------------------------------------------------------------------------------


def test_every_lock_line_is_pinned_and_hashed(locks):
    for name, pins in locks.items():
        assert len(pins) > 50, name
        for pkg, (_version, hashes) in pins.items():
            assert hashes and all(len(h) == 64 for h in hashes), f"{name}: {pkg}"
        # also reject anything that is neither a requirement, a hash, nor a comment
        for line in (C / name).read_text().splitlines():
            s = line.strip()
            assert not s or s.startswith(("#", "--hash=sha256:")) or H.REQ_RE.match(s), f"{name}: {line!r}"


def test_parse_lock_rejects_unhashed_and_unpinned():
    with pytest.raises(ValueError, match="no --hash"):
        H.parse_lock("numpy==2.4.6\n")
    with pytest.raises(ValueError, match="exact ==pin"):
        H.parse_lock("numpy>=2 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(ValueError, match="twice"):
        one = "numpy==2.4.6 \\\n    --hash=sha256:" + "0" * 64 + "\n"
        H.parse_lock(one + one)
    assert H.parse_lock("Foo_Bar==1.0 --hash=sha256:" + "a" * 64) == {"foo-bar": ("1.0", ["a" * 64])}


def test_torch_pins_agree_everywhere(locks):
    gpu, cpu = locks["requirements.lock"], locks["requirements-cpu.lock"]
    assert gpu["torch"][0] == "2.13.0"
    assert cpu["torch"][0] == "2.13.0+cpu"
    constraints = {H.normalize(n): v for n, v in (line.split("==") for line in
                   (ROOT / "constraints.txt").read_text().split() if "==" in line)}
    assert constraints["torch"] == "2.13.0"
    noxfile = (ROOT / "noxfile.py").read_text()
    assert 'TORCH = "torch==2.13.0"' in noxfile
    req_in = (C / "requirements.in").read_text()
    assert re.search(r"^torch==2\.13\.0$", req_in, re.M)
    # the CUDA build of torch 2.13.0 on PyPI is CUDA 13.0: the CUDA wheels and the base image agree
    assert gpu["cuda-toolkit"][0].startswith("13.0.")
    base = docker_args(dockerfile_instructions((C / "Dockerfile").read_text()))["BASE_IMAGE"]
    assert base.startswith("nvidia/cuda:13.0."), base
    assert not any(n.startswith(("nvidia-", "cuda-")) or n == "triton" for n in cpu), "CUDA wheels in the CPU lock"


def test_locks_agree_with_each_other_and_the_project_pins(locks):
    gpu, cpu = locks["requirements.lock"], locks["requirements-cpu.lock"]
    constraints = {H.normalize(n): v for n, v in (line.split("==") for line in
                   (ROOT / "constraints.txt").read_text().split() if "==" in line)}
    for name in set(gpu) & set(cpu) - {"torch"}:
        assert gpu[name] == cpu[name], f"{name}: {gpu[name][0]} vs {cpu[name][0]}"
    assert set(cpu) - {"torch"} <= set(gpu)
    for lock in (gpu, cpu):
        for name, (version, _) in lock.items():
            if name in constraints and name != "torch":
                assert version == constraints[name], f"{name}: lock {version} != constraints.txt {constraints[name]}"


def test_locks_cover_the_project_dependencies(locks):
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = meta["project"]["dependencies"] + meta["build-system"]["requires"]
    names = {H.normalize(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in deps}
    req_in = {H.normalize(re.split(r"[<>=!~;\[ ]", x, maxsplit=1)[0]) for x in
              (C / "requirements.in").read_text().splitlines() if x.strip() and not x.startswith(("#", "-"))}
    assert names <= req_in, f"missing from container/requirements.in: {sorted(names - req_in)}"
    for name, lock in locks.items():
        assert names <= set(lock), f"{name} lacks {sorted(names - set(lock))}"
    # build requirements pinned exactly as in pyproject's [build-system]
    for req in meta["build-system"]["requires"]:
        pkg, version = req.split("==")
        assert locks["requirements.lock"][H.normalize(pkg)][0] == version


# ---------------------------------------------------------------------------------------------
# ci_helpers (the parts that run on the CI host)
# ---------------------------------------------------------------------------------------------


def test_pip_conf_keeps_only_remote_index_settings():
    cfg = {"global.index-url": "https://mirror.example/simple",
           "global.extra-index-url": "file:///opt/pypi/simple https://extra.example/simple",
           "global.cert": "/etc/ssl/certs/ca-certificates.crt", "global.find-links": "/opt/wheels"}
    text = H.pip_conf_text(cfg, {})
    assert text.splitlines() == ["[global]", "index-url = https://mirror.example/simple",
                                 "extra-index-url = https://extra.example/simple"]
    # the environment wins over the configuration, like in pip
    text = H.pip_conf_text(cfg, {"PIP_INDEX_URL": "https://env.example/simple"})
    assert "index-url = https://env.example/simple" in text
    assert H.pip_conf_text({}, {}) == "[global]\n"


def test_stage_wheels_checks_hashes(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"not really a wheel")
    digest = H.sha256(wheel)
    lock = tmp_path / "r.lock"
    lock.write_text(f"torch==2.13.0+cpu \\\n    --hash=sha256:{digest}\nsix==1.17.0 --hash=sha256:{'1' * 64}\n")
    dest = tmp_path / "dest"
    staged = H.stage_wheels(lock, dest, [wheels])
    assert [p.name for p in staged] == [wheel.name]  # six comes from the index
    assert (dest / wheel.name).read_bytes() == wheel.read_bytes()
    lock.write_text(f"torch==2.13.0+cpu --hash=sha256:{'0' * 64}\n")
    with pytest.raises(FileNotFoundError, match="other hashes"):
        H.stage_wheels(lock, tmp_path / "dest2", [wheels])
    with pytest.raises(FileNotFoundError, match="no such wheel"):
        H.stage_wheels(lock, tmp_path / "dest3", [tmp_path])
