"""``run_grid``: expand a grid, skip finished experiments, run the rest, report, summarize."""

from __future__ import annotations

import datetime as _dt
import fcntl
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from claspe.cluster.runner import (
    GRID_DIR,
    LocalOptions,
    Outcome,
    SlurmOptions,
    check_slurm,
    run_local,
    run_slurm,
)
from claspe.cluster.spec import (
    GridEntry,
    GridSpec,
    check_datasets,
    dataset_root,
    entries_to_json,
    expand,
    experiment_status,
    is_prepared,
    load_spec,
    optional_module,
    write_json_atomic,
)
from claspe.protocol.config import is_finished

log = logging.getLogger(__name__)


@dataclass
class GridResult:
    """Outcome of one ``run_grid`` call."""

    grid_root: Path
    entries: list[GridEntry]
    outcomes: dict[str, Outcome]
    report: Path | None = None
    report_error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.status == "failed"]

    @property
    def ok(self) -> bool:
        """Every experiment finished (and the report, when asked for, was written)."""
        return all(is_finished(self.grid_root / e.name) for e in self.entries) and self.report_error is None


@contextmanager
def grid_lock(grid_root: Path):
    """An exclusive lock on the grid folder (two drivers must not run the same experiments)."""
    p = grid_root / GRID_DIR / "lock"
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise ValueError(f"another `claspe grid` runs on {grid_root} (lock {p} held by: "
                             f"{fh.read().strip() or 'unknown'})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def resolve(spec: GridSpec | str | Path, *, out: str | Path | None = None,
            data_root: str | Path | None = None) -> tuple[GridSpec, Path]:
    """Loads the spec (if a path) and decides the grid folder: ``out``, else the spec's ``output``,
    else ``./<spec name>``.  ``data_root`` replaces the spec's top-level data root."""
    if not isinstance(spec, GridSpec):
        spec = load_spec(spec)
    if data_root is not None:
        spec = replace(spec, data_root=Path(data_root).expanduser().resolve())
    root = Path(out) if out is not None else spec.output if spec.output is not None else Path(spec.name)
    root = root.expanduser().resolve()
    return replace(spec, output=root), root


def prepare_sources(spec: GridSpec, *, progress: bool = True) -> list[Path]:
    """Prepares every dataset of the spec that has a source (``raw`` or ``synthetic``) and is not
    prepared yet (``claspe.protocol.prepare.prepare_dataset``; synthetic raw data is written to
    ``<grid>/_grid/raw``). Runs here, in the driver, before any task is submitted."""
    done = []
    for ds in spec.datasets:
        root = dataset_root(ds, spec)
        if is_prepared(root, ds.name) or not ds.has_source:
            continue
        from claspe.protocol.prepare import prepare_dataset

        raw = ds.raw
        if ds.synthetic is not None:
            from claspe.data.synthetic import make_synthetic_dataset

            raw = make_synthetic_dataset(spec.output / GRID_DIR / "raw", dataset_name=ds.name, **ds.synthetic)
        log.info("preparing dataset %s from %s into %s", ds.name, raw, root)
        done.append(prepare_dataset(raw, root, name=ds.name, progress=progress, **ds.prepare))
    return done


def plan(spec: GridSpec | str | Path, *, out=None, data_root=None
         ) -> tuple[Path, list[tuple[GridEntry, str]], list[str]]:
    """Every entry with its status (``finished``/``partial``/``new``), without running anything, and
    the problems a run would stop at (datasets neither prepared nor with a source)."""
    spec, root = resolve(spec, out=out, data_root=data_root)
    entries = expand(spec, check_data=False)
    problems = []
    for ds in spec.datasets:
        try:
            check_datasets(replace(spec, datasets=(ds,)))
        except FileNotFoundError as exc:
            problems.append(str(exc))
    return root, [(e, experiment_status(e, root)) for e in entries], problems


def _report(grid_root: Path) -> Path | None:
    report = optional_module("claspe.report", "no report written", log)
    if report is None:
        return None
    return Path(report.write_report(grid_root))


def run_grid(spec: GridSpec | str | Path, *, out: str | Path | None = None, data_root: str | Path | None = None,
             executor: str = "local", local: LocalOptions | None = None, slurm: SlurmOptions | None = None,
             report: bool = True) -> GridResult:
    """Runs every unfinished experiment of a grid and (``report``) writes the report of the grid folder.

    Finished experiments are skipped, partial ones resumed, failed ones reported (with the submitit
    log paths) and retried by the next call.  ``executor``: ``local`` or ``slurm``.
    """
    if executor not in ("local", "slurm"):
        raise ValueError(f"executor must be 'local' or 'slurm', got {executor!r}")
    spec, root = resolve(spec, out=out, data_root=data_root)
    entries = expand(spec)
    statuses = {e.name: experiment_status(e, root) for e in entries}
    if executor == "slurm":  # fail before preparing or creating anything
        slurm = slurm or SlurmOptions()
        if slurm.container is not None and not Path(slurm.container).expanduser().is_file():
            raise FileNotFoundError(f"container image {Path(slurm.container).expanduser().resolve()} not found "
                                    "(--container expects an Apptainer .sif file)")
        check_slurm(slurm.partition)
    root.mkdir(parents=True, exist_ok=True)
    result = GridResult(grid_root=root, entries=entries, outcomes={})
    with grid_lock(root):
        prepare_sources(spec)
        write_json_atomic(root / GRID_DIR / "grid.json", {"name": spec.name, "entries": entries_to_json(entries)})
        todo = [e for e in entries if statuses[e.name] != "finished"]
        for e in entries:
            if statuses[e.name] == "finished":
                result.outcomes[e.name] = Outcome(name=e.name, status="skipped")
        log.info("grid %s: %d experiments, %d finished, %d to resume, %d new", spec.name, len(entries),
                 len(entries) - len(todo), sum(statuses[e.name] == "partial" for e in todo),
                 sum(statuses[e.name] == "new" for e in todo))
        if todo:
            run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
            run_dir = root / GRID_DIR / "runs" / run_id
            run_dir.mkdir(parents=True, exist_ok=True)
            if executor == "local":
                outs = run_local(todo, root, run_dir, local or LocalOptions())
            else:
                outs = run_slurm(todo, root, run_dir, slurm or SlurmOptions())
            for o in outs:
                result.outcomes[o.name] = o
        write_json_atomic(root / GRID_DIR / "last_run.json",
                          {"grid": spec.name, "executor": executor,
                           "outcomes": [result.outcomes[e.name].to_json() for e in entries
                                        if e.name in result.outcomes]})
        submitted = any(o.status == "submitted" for o in result.outcomes.values())
        if report and not submitted and any(is_finished(root / e.name) for e in entries):
            try:
                result.report = _report(root)
            except Exception as exc:  # the tasks' outcome stands; the report's failure is reported
                log.exception("report on %s failed", root)
                result.report_error = f"{type(exc).__name__}: {exc}"
    return result
