"""Helpers of container/ci_build.sh (stdlib only; also imported by tests/test_container_*.py).

Sub-commands (``python3 container/ci_helpers.py COMMAND ...``):

``pip-conf OUT``
    Writes a pip configuration with only the package-index settings of the calling environment
    (``index-url``, ``extra-index-url``, ``trusted-host`` from ``pip config list`` and ``PIP_*``
    variables); ``file://`` and local-path indexes are dropped (they do not exist in the build).
    It is passed to the image build as the BuildKit secret ``pip_conf``: used by the pip step,
    never stored in the image.
``pip-cert``
    Prints the CA bundle pip uses here (``PIP_CERT``, pip's ``cert`` setting, else the system
    bundle), passed as the BuildKit secret ``pip_cert``.
``stage-wheels LOCK DEST``
    Finds the local wheels that LOCK pins by local version (``torch==2.13.0+cpu``) in pip's
    find-links directories (``PIP_FIND_LINKS``, pip's ``find-links`` setting, /opt/wheels),
    checks each file's sha256 against LOCK and links/copies it into DEST.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REQ_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
HASH_RE = re.compile(r"--hash=sha256:([0-9a-f]{64})")


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """``{normalized name: (version, [sha256, ...])}`` of a hashed requirements file.

    Raises ValueError for a requirement without ``==`` pin or without a hash, and for duplicates.
    """
    out: dict[str, tuple[str, list[str]]] = {}
    # join continuation lines into one logical line per requirement
    logical: list[str] = []
    cur = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            if cur:
                logical.append(cur)
                cur = ""
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
        else:
            logical.append(cur + line)
            cur = ""
    if cur:
        logical.append(cur)
    for entry in logical:
        if entry.startswith("-"):
            if entry.startswith("--hash"):
                raise ValueError(f"hash without a requirement: {entry[:60]!r}")
            continue  # options such as --index-url
        m = REQ_RE.match(entry)
        if not m:
            raise ValueError(f"not an exact ==pin: {entry[:80]!r}")
        name = normalize(m.group(1))
        hashes = HASH_RE.findall(entry)
        if not hashes:
            raise ValueError(f"{name}=={m.group(2)} has no --hash")
        if name in out:
            raise ValueError(f"{name} is pinned twice")
        out[name] = (m.group(2), hashes)
    return out


def normalize(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip_config() -> dict[str, str]:
    """``pip config list`` as ``{key: value}`` (keys like ``global.index-url``), env included."""
    try:
        res = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                             text=True, check=False, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    cfg: dict[str, str] = {}
    for line in res.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            cfg[key.strip()] = value.strip().strip("'\"")
    return cfg


def _setting(cfg: dict[str, str], name: str, env: dict[str, str]) -> str:
    envname = "PIP_" + name.upper().replace("-", "_")
    if env.get(envname):
        return env[envname]
    for section in (":env:", "install", "global"):
        if f"{section}.{name}" in cfg:
            return cfg[f"{section}.{name}"]
    return ""


def _remote(urls: str) -> list[str]:
    return [u for u in urls.split() if u.startswith(("http://", "https://"))]


def pip_conf_text(cfg: dict[str, str], env: dict[str, str]) -> str:
    """The index part of pip's configuration as an ini text (see module docstring)."""
    lines = ["[global]"]
    index = _remote(_setting(cfg, "index-url", env))
    if index:
        lines.append(f"index-url = {index[0]}")
    extra = _remote(_setting(cfg, "extra-index-url", env))
    if extra:
        lines.append("extra-index-url = " + " ".join(extra))
    trusted = _setting(cfg, "trusted-host", env).split()
    if trusted:
        lines.append("trusted-host = " + " ".join(trusted))
    return "\n".join(lines) + "\n"


def pip_cert(cfg: dict[str, str], env: dict[str, str]) -> str:
    for cand in (_setting(cfg, "cert", env), env.get("SSL_CERT_FILE", ""), "/etc/ssl/certs/ca-certificates.crt"):
        if cand and Path(cand).is_file():
            return cand
    return ""


def find_links_dirs(cfg: dict[str, str], env: dict[str, str]) -> list[Path]:
    dirs: list[Path] = []
    for item in (_setting(cfg, "find-links", env).split() + ["/opt/wheels"]):
        item = item.removeprefix("file://")
        p = Path(item)
        if p.is_dir() and p not in dirs:
            dirs.append(p)
    return dirs


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stage_wheels(lock: Path, dest: Path, dirs: list[Path]) -> list[Path]:
    """Links/copies the wheels of LOCK's local-version pins (``+cpu``) into DEST, hash-checked."""
    pins = parse_lock(lock.read_text())
    dest.mkdir(parents=True, exist_ok=True)
    staged: list[Path] = []
    for name, (version, hashes) in sorted(pins.items()):
        if "+" not in version:
            continue  # an index package: pip downloads it
        prefix = f"{name.replace('-', '_')}-{version}-"
        found = [w for d in dirs for w in sorted(d.glob("*.whl")) if w.name.lower().startswith(prefix.lower())]
        good = [w for w in found if sha256(w) in hashes]
        if not good:
            where = ", ".join(str(d) for d in dirs) or "(no find-links directory)"
            detail = f"found {[w.name for w in found]} with other hashes" if found else "no such wheel"
            raise FileNotFoundError(f"{name}=={version} from {lock.name}: {detail} in {where}; "
                                    "set PIP_FIND_LINKS to the directory holding it, or regenerate the lock "
                                    "with container/lock.sh")
        target = dest / good[0].name
        if not target.exists() or sha256(target) != sha256(good[0]):
            target.unlink(missing_ok=True)
            try:
                os.link(good[0], target)
            except OSError:
                shutil.copy2(good[0], target)
        staged.append(target)
    return staged


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    env = dict(os.environ)
    cfg = _pip_config()
    cmd = argv[0]
    if cmd == "pip-conf" and len(argv) == 2:
        Path(argv[1]).write_text(pip_conf_text(cfg, env))
        return 0
    if cmd == "pip-cert" and len(argv) == 1:
        print(pip_cert(cfg, env))
        return 0
    if cmd == "stage-wheels" and len(argv) == 3:
        for w in stage_wheels(Path(argv[1]), Path(argv[2]), find_links_dirs(cfg, env)):
            print(w)
        return 0
    print(f"ci_helpers.py: bad arguments {argv!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
