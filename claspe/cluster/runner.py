"""Running a grid: one submitit task per unfinished experiment, locally or as a SLURM array.

Grid folder ``<out>/``::

    <experiment name>/          one experiment folder per grid entry (claspe.protocol layout)
    _grid/grid.json             the expanded grid (settings of every entry)
    _grid/last_run.json         outcome of every entry in the last `claspe grid` run
    _grid/jobs.json             SLURM job id and log folder per submitted entry (for reattaching)
    _grid/tasks/<name>.json     one record per attempt: job id, host, CUDA_VISIBLE_DEVICES, times, error
    _grid/runs/<run id>/        submitit's folder of that run: submission script, pickles, stdout/stderr logs
    _grid/lock                  held (flock) while a driver runs, so two drivers never share a grid

Decisions: a finished experiment (``is_finished``) is never submitted again; a partial one is resumed
by ``run_experiment``; a failed task is reported with its submitit log paths and is retried by the next
run of the same grid.  Tasks are ``submitit.helpers.Checkpointable``, so a SLURM time-out or preemption
requeues the same call (which resumes the experiment) up to 3 times.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import submitit

from claspe.cluster.spec import GridEntry, write_json_atomic
from claspe.protocol.config import ExperimentConfig, is_finished

log = logging.getLogger(__name__)

GRID_DIR = "_grid"
ACTIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED")


class SlurmUnavailableError(RuntimeError):
    """SLURM cannot be used from here; the message names the command that failed."""


@dataclass(frozen=True)
class LocalOptions:
    """Local executor: parallel processes on this machine (submitit LocalExecutor)."""

    max_parallel: int = 1
    gpus: tuple[int, ...] = ()  # one GPU index per running task (CUDA_VISIBLE_DEVICES); empty: none set
    timeout_min: float = 7 * 24 * 60
    poll_s: float = 1.0


@dataclass(frozen=True)
class SlurmOptions:
    """SLURM executor: one array task per experiment."""

    partition: str | None = None
    time_min: int = 48 * 60
    mem_gb: float | None = None
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    max_parallel: int | None = None  # array throttle (%N); None: no limit beyond submitit's 256
    container: Path | None = None  # Apptainer image: tasks run in `apptainer exec --nv IMAGE python3`
    container_python: str = "python3"
    binds: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()  # shell lines run before the task in the sbatch script
    job_name: str = "claspe-grid"
    poll_s: float = 10.0
    wait: bool = True


@dataclass
class Outcome:
    """What happened to one grid entry in a run."""

    name: str
    status: str  # finished | failed | skipped | submitted
    job_id: str | None = None
    error: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    seconds: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# ------------------------------------------------------------------------------------ the task


def _record_path(grid_root: Path, name: str) -> Path:
    return grid_root / GRID_DIR / "tasks" / f"{name}.json"


def _append_record(path: Path, attempt: dict) -> None:
    try:
        data = json.loads(path.read_text()) if path.is_file() else {"attempts": []}
    except json.JSONDecodeError:
        data = {"attempts": []}
    attempts = data["attempts"]
    if attempts and attempts[-1].get("attempt_id") == attempt["attempt_id"]:
        attempts[-1] = attempt
    else:
        attempts.append(attempt)
    write_json_atomic(path, data)


class ExperimentTask(submitit.helpers.Checkpointable):
    """The callable each submitit task runs: create or resume one experiment folder.

    On a SLURM time-out/preemption submitit calls ``checkpoint`` and requeues the same call, which
    resumes the experiment where its state says.
    """

    def __call__(self, config: dict, data_root: str, grid_root: str) -> dict:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        cfg = ExperimentConfig.from_json(config)
        root = Path(grid_root)
        env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID",
                                              "SLURM_ARRAY_TASK_ID", "SUBMITIT_EXECUTOR", "APPTAINER_CONTAINER")}
        attempt = {"attempt_id": f"{socket.gethostname()}-{os.getpid()}-{time.time():.3f}",
                   "host": socket.gethostname(), "pid": os.getpid(), "env": env,
                   "start": _dt.datetime.now(_dt.timezone.utc).isoformat(), "status": "running"}
        record = _record_path(root, cfg.name)
        _append_record(record, attempt)
        t0 = time.perf_counter()
        try:
            try:
                from claspe.protocol import run_experiment
            except ImportError:  # the package may not re-export it
                from claspe.protocol.experiment import run_experiment

            path = run_experiment(cfg, data_root=Path(data_root), exp_root=root, progress=False)
            if not is_finished(path):
                raise RuntimeError(f"run_experiment returned but {path} is not finished (missing results/)")
        except BaseException as exc:
            attempt.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                           traceback=traceback.format_exc(), seconds=time.perf_counter() - t0,
                           end=_dt.datetime.now(_dt.timezone.utc).isoformat())
            _append_record(record, attempt)
            raise
        attempt.update(status="finished", seconds=time.perf_counter() - t0,
                       end=_dt.datetime.now(_dt.timezone.utc).isoformat())
        _append_record(record, attempt)
        return {"name": cfg.name, "path": str(path), "seconds": attempt["seconds"], "env": env}


# -------------------------------------------------------------------------------- collecting


def _last_attempt(grid_root: Path, name: str) -> dict:
    p = _record_path(grid_root, name)
    try:
        return json.loads(p.read_text())["attempts"][-1]
    except (OSError, ValueError, KeyError, IndexError):
        return {}


def _short_error(exc: BaseException) -> str:
    """The last line of a submitit failure trace (the exception), or the message's first line."""
    text = str(exc)
    if "----------------------" in text:
        body = text.split("----------------------")[1]
        lines = [ln for ln in body.strip().splitlines() if ln.strip()]
        if lines:
            return lines[-1].strip()
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _collect(job, entry: GridEntry, grid_root: Path, state: str | None = None) -> Outcome:
    out = Outcome(name=entry.name, status="failed", job_id=str(job.job_id),
                  stdout=str(job.paths.stdout), stderr=str(job.paths.stderr))
    if job.paths.result_pickle.exists():
        try:
            res = job.result()
            out.seconds = res.get("seconds") if isinstance(res, dict) else None
            out.status = "finished" if is_finished(grid_root / entry.name) else "failed"
            if out.status == "failed":
                out.error = "task returned but the experiment folder is not finished"
        except Exception as exc:  # submitit re-raises the task's failure with its trace
            rec = _last_attempt(grid_root, entry.name)
            out.error = rec.get("error") if rec.get("status") == "failed" else _short_error(exc)
    else:
        rec = _last_attempt(grid_root, entry.name)
        what = f"job ended in state {state}" if state else "task ended"
        out.error = f"{what} without a result (killed, cancelled or out of memory?)"
        if rec.get("status") == "failed":
            out.error += f"; last error: {rec.get('error')}"
    return out


# -------------------------------------------------------------------------------- local


def run_local(entries: list[GridEntry], grid_root: Path, run_dir: Path, opts: LocalOptions) -> list[Outcome]:
    """Runs the entries as parallel local processes (at most ``max_parallel`` at a time)."""
    if opts.max_parallel < 1:
        raise ValueError(f"--max-parallel must be >= 1, got {opts.max_parallel}")
    if opts.gpus and opts.max_parallel > len(opts.gpus):
        raise ValueError(f"--max-parallel {opts.max_parallel} exceeds the {len(opts.gpus)} GPUs given with --gpus")
    ex = submitit.LocalExecutor(folder=run_dir)
    ex.update_parameters(timeout_min=opts.timeout_min)
    task = ExperimentTask()
    queue = list(entries)
    running: dict = {}  # job -> (entry, gpu)
    free = list(opts.gpus)
    outcomes: list[Outcome] = []
    try:
        from tqdm import tqdm

        with tqdm(total=len(entries), desc="grid (local)", unit="exp", disable=None) as bar:
            while queue or running:
                while queue and len(running) < opts.max_parallel:
                    entry = queue.pop(0)
                    gpu = free.pop(0) if free else None
                    if gpu is not None:
                        ex.update_parameters(gpus_per_node=1, visible_gpus=[gpu])
                    job = ex.submit(task, entry.config.to_json(), str(entry.data_root), str(grid_root))
                    log.info("started %s (pid %s%s)", entry.name, job.job_id,
                             f", GPU {gpu}" if gpu is not None else "")
                    running[job] = (entry, gpu)
                time.sleep(opts.poll_s)
                for job in [j for j in running if j.done()]:
                    entry, gpu = running.pop(job)
                    if gpu is not None:
                        free.append(gpu)
                    o = _collect(job, entry, grid_root)
                    outcomes.append(o)
                    bar.update(1)
                    (log.info if o.status == "finished" else log.warning)("%s: %s%s", entry.name, o.status,
                                                                          f" ({o.error})" if o.error else "")
    except KeyboardInterrupt:
        for job in running:
            job.cancel(check=False)
        raise
    return outcomes


# -------------------------------------------------------------------------------- SLURM


def _run_cmd(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmUnavailableError(f"SLURM not reachable: `{shlex.join(cmd)}` failed: {cmd[0]} is not on PATH "
                                    "(run on a SLURM login node, or use --executor local)") from None
    except subprocess.TimeoutExpired:
        raise SlurmUnavailableError(f"SLURM not reachable: `{shlex.join(cmd)}` did not answer in {timeout:.0f} s "
                                    "(is slurmctld running?)") from None


def check_slurm(partition: str | None = None) -> list[str]:
    """Checks that SLURM answers (``sinfo``) and that the tools submitit needs exist; returns partitions."""
    cmd = ["sinfo", "--noheader", "--format=%P"]
    res = _run_cmd(cmd)
    if res.returncode != 0:
        raise SlurmUnavailableError(f"SLURM not reachable: `{shlex.join(cmd)}` exited with {res.returncode}: "
                                    f"{(res.stderr or res.stdout).strip()}")
    for tool in ("sbatch", "srun", "squeue", "scancel"):
        if shutil.which(tool) is None:
            raise SlurmUnavailableError(f"SLURM tools incomplete: `{tool}` is not on PATH")
    parts = [p.strip().rstrip("*") for p in res.stdout.split() if p.strip()]
    if partition is not None and partition not in parts:
        raise ValueError(f"SLURM partition {partition!r} does not exist; `sinfo` lists: {', '.join(parts) or 'none'}")
    return parts


def squeue_states(job_ids: list[str]) -> dict[str, str] | None:
    """State of every listed job (array tasks expanded) still known to slurmctld; None if squeue failed."""
    base = sorted({j.split("_")[0] for j in job_ids})
    if not base:
        return {}
    cmd = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T", "--jobs=" + ",".join(base)]
    res = _run_cmd(cmd)
    if res.returncode != 0:
        if "Invalid job id" in res.stderr:  # every listed job already purged from slurmctld
            return {}
        log.warning("`%s` failed (%s); retrying at the next poll", shlex.join(cmd), res.stderr.strip())
        return None
    states = {}
    for line in res.stdout.splitlines():
        if "|" in line:
            jid, st = line.strip().split("|", 1)
            states[jid.strip()] = st.strip().split()[0] if st.strip() else "UNKNOWN"
    return states


def slurm_executor(run_dir: Path, opts: SlurmOptions) -> submitit.SlurmExecutor:
    """The submitit SlurmExecutor for a run (container wrapping, gres, partition, time, memory...)."""
    python = None
    if opts.container is not None:
        sif = Path(opts.container).expanduser().resolve()
        if not sif.is_file():
            raise FileNotFoundError(f"container image {sif} not found (--container expects an Apptainer .sif file)")
        if shutil.which("apptainer") is None:
            log.warning("apptainer is not on PATH here; the compute nodes must have it")
        parts = ["apptainer", "exec", "--nv"]
        for b in opts.binds:
            parts += ["--bind", b]
        python = shlex.join(parts + [str(sif), opts.container_python])
    ex = submitit.SlurmExecutor(folder=run_dir, python=python, max_num_timeout=3)
    params: dict = {"time": int(opts.time_min), "job_name": opts.job_name}
    if opts.max_parallel is not None:
        if opts.max_parallel < 1:
            raise ValueError(f"--max-parallel must be >= 1, got {opts.max_parallel}")
        params["array_parallelism"] = int(opts.max_parallel)
    if opts.partition:
        params["partition"] = opts.partition
    if opts.gpus_per_task:
        if opts.gpus_per_task < 0:
            raise ValueError(f"--gpus-per-task must be >= 0, got {opts.gpus_per_task}")
        params["gres"] = f"gpu:{int(opts.gpus_per_task)}"
    if opts.mem_gb is not None:
        if opts.mem_gb <= 0:
            raise ValueError(f"--mem must be > 0 GB, got {opts.mem_gb}")
        params["mem"] = f"{int(opts.mem_gb * 1024)}M"
    if opts.cpus_per_task is not None:
        params["cpus_per_task"] = int(opts.cpus_per_task)
    if opts.setup:
        params["setup"] = list(opts.setup)
    ex.update_parameters(**params)
    return ex


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        log.warning("%s is not valid JSON; ignoring it", path)
        return {}


def run_slurm(entries: list[GridEntry], grid_root: Path, run_dir: Path, opts: SlurmOptions) -> list[Outcome]:
    """Submits the entries as one SLURM array (one task per experiment) and waits for them.

    ``_grid/jobs.json`` keeps each entry's latest job and whether its outcome was collected. A job not
    collected yet (submitted with ``wait=False``, or its driver was interrupted) is not submitted
    again: this run waits for it if it is still queued/running, or collects what it left.
    """
    check_slurm(opts.partition)
    jobs_file = grid_root / GRID_DIR / "jobs.json"
    manifest = _read_manifest(jobs_file)
    pending: dict[str, tuple] = {}
    todo = []
    for e in entries:
        m = manifest.get(e.name)
        if m and not m.get("collected", True):
            job = submitit.SlurmJob(folder=m["folder"], job_id=m["job_id"])
            log.info("%s: job %s was submitted earlier; collecting it instead of submitting again", e.name,
                     m["job_id"])
            pending[job.job_id] = (job, e)
        else:
            todo.append(e)
    if todo:
        ex = slurm_executor(run_dir, opts)
        task = ExperimentTask()
        try:
            with ex.batch():
                jobs = [ex.submit(task, e.config.to_json(), str(e.data_root), str(grid_root)) for e in todo]
        except Exception as exc:  # sbatch refused (bad partition/gres/time...) or not reachable
            raise SlurmUnavailableError(f"submission failed: `sbatch` (script under {run_dir}) said: "
                                        f"{str(exc).strip()}") from None
        for job, e in zip(jobs, todo):
            pending[job.job_id] = (job, e)
            manifest[e.name] = {"job_id": job.job_id, "folder": str(run_dir), "collected": False}
        write_json_atomic(jobs_file, manifest)
        log.info("submitted %d task(s) as SLURM job %s", len(todo), jobs[0].job_id.split("_")[0])
    if not opts.wait:
        return [Outcome(name=e.name, status="submitted", job_id=jid, stdout=str(j.paths.stdout),
                        stderr=str(j.paths.stderr)) for jid, (j, e) in pending.items()]
    outcomes: list[Outcome] = []
    gone: dict[str, int] = {}
    from tqdm import tqdm

    with tqdm(total=len(pending), desc="grid (slurm)", unit="exp", disable=None) as bar:
        while pending:
            time.sleep(opts.poll_s)
            states = squeue_states(list(pending))
            for jid, (job, e) in list(pending.items()):
                st = None if states is None else states.get(jid)
                if job.paths.result_pickle.exists():
                    o = _collect(job, e, grid_root)
                elif states is not None and st not in ACTIVE_STATES:
                    # no longer active and no result yet: allow one more poll for the file to appear
                    gone[jid] = gone.get(jid, 0) + 1
                    if gone[jid] < 2:
                        continue
                    o = _collect(job, e, grid_root, state=st)
                else:
                    continue
                del pending[jid]
                outcomes.append(o)
                manifest[e.name]["collected"] = True
                write_json_atomic(jobs_file, manifest)
                bar.update(1)
                (log.info if o.status == "finished" else log.warning)("%s: %s%s", e.name, o.status,
                                                                      f" ({o.error})" if o.error else "")
    return outcomes
