"""``state.json`` of an experiment: which steps are finished (schema-versioned, atomic writes),
and an exclusive lock so two processes never run the same experiment at once."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from claspe.data.io import write_json
from claspe.protocol.config import SCHEMA_VERSION


class State:
    """Finished steps of one experiment folder.

    ``steps`` maps a step name (``setup``, ``loop_000``, ``annotate_001``, ``train_001_fold0`` ...)
    to ``{"finished_at": <unix time>, ...step info}``. A step is recorded only after its outputs are
    in place (each written atomically), so after a crash at any point a re-run redoes exactly the
    steps that are not recorded; every step's outputs are deterministic, so redoing one is safe.
    """

    def __init__(self, exp_dir: str | os.PathLike) -> None:
        self.path = Path(exp_dir) / "state.json"
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{self.path} is not valid JSON: {exc}") from exc
            version = data.get("schema_version")
            if version != SCHEMA_VERSION:
                raise ValueError(f"{self.path} has schema_version {version!r}; this claspe writes {SCHEMA_VERSION}")
            self.data = data
        else:
            self.data = {"schema_version": SCHEMA_VERSION, "steps": {}}

    @property
    def steps(self) -> dict:
        return self.data["steps"]

    def done(self, step: str) -> bool:
        return step in self.steps

    def get(self, step: str) -> dict | None:
        return self.steps.get(step)

    def mark(self, step: str, **info) -> None:
        self.steps[step] = {"finished_at": time.time(), **info}
        write_json(self.path, self.data)


class ExperimentLock:
    """``fcntl.flock`` on ``<exp>/.lock`` (released by the OS when the process dies, SIGKILL too)."""

    def __init__(self, exp_dir: str | os.PathLike) -> None:
        self.path = Path(exp_dir) / ".lock"
        self._fh = None

    def __enter__(self) -> ExperimentLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the lifetime of the run
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RuntimeError(f"experiment {self.path.parent} is being run by another process") from None
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
