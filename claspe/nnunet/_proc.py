"""Child processes that die with their parent (Linux ``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def run_child(args: Sequence[str], *, env: Mapping[str, str], log_file: str | os.PathLike | None = None,
              what: str = "child process") -> None:
    """Runs ``python -m ...`` style ``args`` with ``env`` (merged over a copy of ``os.environ``).

    The child is killed when this process dies (SIGKILL included), so a killed experiment leaves no
    orphan writing into its folder. Output goes to ``log_file`` (appended) when given.
    Raises RuntimeError with the tail of the output when the child fails.
    """
    full_env = dict(os.environ)
    full_env.update({k: str(v) for k, v in env.items()})
    cmd = [sys.executable, *args]
    log.debug("running %s: %s", what, " ".join(cmd))
    out = subprocess.run(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    if log_file is not None:
        with open(log_file, "a") as fh:
            fh.write(out.stdout)
    if out.returncode != 0:
        tail = "\n".join(out.stdout.strip().splitlines()[-25:])
        raise RuntimeError(f"{what} failed (exit code {out.returncode}):\n{tail}")


def nnunet_env(*, raw: str | Path, preprocessed: str | Path, results: str | Path, n_proc: int = 1) -> dict:
    """The environment a nnU-Net child process gets: its three folders and the process counts."""
    return {
        "nnUNet_raw": str(raw),
        "nnUNet_preprocessed": str(preprocessed),
        "nnUNet_results": str(results),
        "nnUNet_n_proc_DA": str(int(n_proc)),
        "nnUNet_def_n_proc": str(max(1, int(n_proc))),
        "nnUNet_compile": "f",
    }
