"""``claspe grid``: run an experiment grid locally or on SLURM."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

EPILOG = """\
grid file (YAML or TOML):
  data_root: prepared              # prepared datasets: <data_root>/<dataset>/
  output: runs                     # grid folder (or --out)
  defaults:  {n_patch_per_image: 20}          # datasets/regimes may change these
  overrides: {trainer: nnActiveTrainer_200epochs, folds: 5, query_steps: 5, device: cuda}
  datasets:                        # a name, or {name, data_root, label_regimes, <settings>}
    - {name: Dataset004_Hippocampus, patch_size: [20, 20, 20]}
  label_regimes: {low: {query_size: 20}, medium: {query_size: 40}}
  strategies: [random, pred_entropy, clasp_pe]
  seeds: [12345, 12346]

precedence: ExperimentConfig defaults < `defaults` < dataset = label regime (a key set by both must
agree) < `overrides` (no dataset or regime may set an overridden key).

Finished experiments are skipped, partial ones resumed; failed tasks are listed with their log files
and retried by running the same command again. Exit status: 0 when every experiment is finished,
1 when some failed, 2 for bad input or SLURM not reachable.

examples:
  claspe grid grid.yaml --list                       # what would run, what is finished (exit 1: data not ready)
  claspe grid grid.yaml --max-parallel 2             # local processes
  claspe grid grid.yaml --executor slurm --partition gpu --time 2-00:00:00 --mem 64 \\
      --container claspe.sif --max-parallel 20       # SLURM array, one GPU per task, in Apptainer
"""


def _minutes(text: str) -> int:
    """SLURM-style time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS -> whole minutes."""
    t = text.strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", t)
    if not m:
        raise argparse.ArgumentTypeError(f"time {text!r}: use minutes or [D-]HH:MM[:SS]")
    d, a, b, c = m.groups()
    if d is None and b is None:
        return int(a)  # minutes
    if d is None and c is None:  # MM:SS
        return max(1, int(a) + (int(b) > 0))
    days = int(d or 0)
    h, mi, s = int(a), int(b or 0), int(c or 0)
    return max(1, days * 1440 + h * 60 + mi + (s > 0))


def _gpus(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus {text!r}: use comma-separated GPU indices, e.g. 0,1") from None


def register(sub) -> None:
    p = sub.add_parser(
        "grid", help="run an experiment grid (datasets x regimes x strategies x seeds) locally or on SLURM",
        description="Expand a grid file into experiments (named from their settings), skip finished ones, "
                    "resume unfinished ones, run them with submitit (local processes or a SLURM array, one "
                    "GPU per task, optionally inside an Apptainer image), then write the report of the grid "
                    "folder.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path, help="grid file (.yaml, .yml or .toml)")
    p.add_argument("--out", type=Path, help="grid folder (default: the spec's `output`, else ./<spec name>)")
    p.add_argument("--data-root", type=Path, help="prepared datasets folder (replaces the spec's top-level data_root)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: parallel processes here (default); slurm: one array task per experiment")
    p.add_argument("--max-parallel", type=int, default=None,
                   help="tasks running at once (local default 1, or the number of --gpus; slurm: array throttle)")
    p.add_argument("--list", action="store_true", help="list the experiments and their status, run nothing")
    p.add_argument("--no-report", action="store_true", help="do not write the report after the tasks")
    g = p.add_argument_group("local executor")
    g.add_argument("--gpus", type=_gpus, default=(), help="GPU indices for local tasks, one per running task "
                                                          "(e.g. 0,1: two tasks at once, each sees one GPU)")
    s = p.add_argument_group("slurm executor")
    s.add_argument("--partition", help="SLURM partition (checked with sinfo)")
    s.add_argument("--time", type=_minutes, default=48 * 60,
                   help="time limit per task: minutes or [D-]HH:MM[:SS] (default 2-00:00:00); a task that "
                        "times out is requeued and resumes")
    s.add_argument("--mem", type=float, default=None, help="memory per task in GB")
    s.add_argument("--gpus-per-task", type=int, default=1, help="GPUs per task via --gres=gpu:N (default 1; 0: none)")
    s.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per task")
    s.add_argument("--container", type=Path, default=None,
                   help="Apptainer image: each task runs `apptainer exec --nv IMAGE python3 ...`")
    s.add_argument("--bind", action="append", default=[], metavar="SRC[:DST]",
                   help="extra Apptainer bind (repeatable); the grid folder and data must be visible inside")
    s.add_argument("--container-python", default="python3", help="python inside the image (default python3)")
    s.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="shell line run before each task in the sbatch script (repeatable), e.g. 'module load cuda'")
    s.add_argument("--job-name", default=None, help="SLURM job name (default claspe-<grid name>)")
    s.add_argument("--poll", type=float, default=10.0, help="seconds between squeue polls (default 10)")
    s.add_argument("--no-wait", action="store_true",
                   help="submit and return; run the same command later to wait for the jobs and collect")
    p.set_defaults(func=_cmd_grid)


def _print_list(root, rows, problems) -> None:
    print(f"grid folder: {root}")
    w = max((len(e.name) for e, _ in rows), default=10)
    for e, st in rows:
        print(f"  {e.name:<{w}}  {st}")
    counts = {k: sum(1 for _, s in rows if s == k) for k in ("finished", "partial", "new")}
    print(f"{len(rows)} experiments: {counts['finished']} finished, {counts['partial']} partial, {counts['new']} new")
    for p in problems:
        print(f"not ready: {p}")


def _cmd_grid(args: argparse.Namespace) -> int:
    from claspe.cluster.driver import plan, resolve, run_grid
    from claspe.cluster.runner import LocalOptions, SlurmOptions, SlurmUnavailableError

    if args.list:
        root, rows, problems = plan(args.spec, out=args.out, data_root=args.data_root)
        _print_list(root, rows, problems)
        return 1 if problems else 0
    spec, _ = resolve(args.spec, out=args.out, data_root=args.data_root)
    local = LocalOptions(max_parallel=args.max_parallel or max(1, len(args.gpus)), gpus=tuple(args.gpus))
    slurm = SlurmOptions(partition=args.partition, time_min=args.time, mem_gb=args.mem,
                         gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task,
                         max_parallel=args.max_parallel, container=args.container, binds=tuple(args.bind),
                         container_python=args.container_python, setup=tuple(args.setup),
                         job_name=args.job_name or f"claspe-{spec.name}", poll_s=args.poll,
                         wait=not args.no_wait)
    try:
        res = run_grid(spec, out=args.out, data_root=args.data_root, executor=args.executor, local=local,
                       slurm=slurm, report=not args.no_report)
    except SlurmUnavailableError as exc:
        print(f"claspe grid: error: {exc}", file=sys.stderr)
        return 2
    outs = res.outcomes
    counts = {k: sum(1 for o in outs.values() if o.status == k)
              for k in ("finished", "skipped", "failed", "submitted")}
    print(f"grid folder: {res.grid_root}")
    print(f"{len(res.entries)} experiments: {counts['finished']} ran and finished, {counts['skipped']} already "
          f"finished, {counts['failed']} failed" + (f", {counts['submitted']} submitted" if counts["submitted"] else ""))
    for o in outs.values():
        if o.status == "submitted":
            print(f"  submitted {o.name}: job {o.job_id}, log {o.stdout}")
    if counts["submitted"]:
        print("jobs keep running; run the same command again to wait for them, collect and report")
        return 0
    for o in res.failed:
        print(f"FAILED {o.name} (job {o.job_id}): {o.error}\n    stdout: {o.stdout}\n    stderr: {o.stderr}")
    if res.failed:
        print("run the same command again to retry the failed experiments (finished ones are skipped)")
    if res.report is not None:
        print(f"report: {res.report}")
    if res.report_error:
        print(f"report failed: {res.report_error}", file=sys.stderr)
    return 0 if res.ok else 1
