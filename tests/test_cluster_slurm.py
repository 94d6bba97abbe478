"""`claspe grid --executor slurm` on a real SLURM (run by `nox -s slurm`, see tests/slurm/run.sh).

A synthetic dataset is prepared by the grid driver; the grid (tiny trainer, 1 fold, 2 loops) has two
strategies and one label regime that fails at run time. One running task is killed with `scancel`
while it queries (after its loop-0 evaluation); the failures are reported with their log files, the
report is written, and a rerun skips the finished experiment, resumes the killed one to the end and
retries the failing ones (submitted with --no-wait, then collected without submitting twice). Every
task gets one of the two (fake) GPUs through `--gres=gpu:1`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from claspe.protocol.config import is_finished

pytestmark = [pytest.mark.slurm, pytest.mark.nnunet]

SPEC = """\
name: slurmgrid
output: out
overrides: {trainer: nnActiveTrainer_tiny, folds: 1, query_steps: 2, n_patch_per_image: null}
datasets:
  - name: Dataset994_GridSlurm
    synthetic: {n_cases: 8, shape: [16, 24, 24], seed: 0}
    patch_size: [8, 8, 8]
label_regimes:
  ok: {query_size: 6}
  broken: {query_size: 6, starting_budget_size: 3}   # fails at run time: fewer than 2 boxes x 3 classes
strategies: [random, clasp_pe]
seeds: [12345]
"""


@pytest.fixture(scope="module", autouse=True)
def _slurm_up():
    ok = shutil.which("sinfo") is not None and subprocess.run(
        ["sinfo", "--noheader"], capture_output=True, timeout=30).returncode == 0
    if not ok:
        msg = "no SLURM cluster reachable (start one with tests/slurm/cluster.sh, or run `nox -s slurm`)"
        if os.environ.get("CLASPE_REQUIRE_SLURM"):
            pytest.fail(msg)
        pytest.skip(msg)


def _grid(spec: Path, *extra: str, env: dict | None = None, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "claspe", "grid", str(spec), "--executor", "slurm", "--poll", "1", "--time", "30",
           *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, **kw)


def _attempts(grid: Path, name: str) -> list[dict]:
    return json.loads((grid / "_grid" / "tasks" / f"{name}.json").read_text())["attempts"]


def _names(grid: Path) -> dict[str, str]:
    out = {}
    for p in grid.glob("*/experiment.json"):
        c = json.loads(p.read_text())
        out[f"{c['strategy']}/{c['label_regime']}"] = p.parent.name
    return out


def _wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"claspe grid ended before {what}:\n{proc.stdout.read()}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_slurm_grid_kill_resume_fail_retry(tmp_path):
    spec = tmp_path / "grid.yaml"
    spec.write_text(SPEC)
    grid = tmp_path / "out"
    pause = tmp_path / "pause"
    t0 = time.time()

    # run 1: the first experiment that queries with model predictions pauses there (test hook of
    # claspe.protocol.experiment) so that it can be killed at a known point, after its loop-0 results
    proc = _grid(spec, env={"CLASPE_TEST_PAUSE": f"predict:{pause}"})
    marker = pause / "predict"
    _wait_for(marker.is_file, 600, "a task to reach the query of loop 0", proc)
    pid = int(marker.read_text())
    victim = _wait_for(lambda: next((n for n in _names(grid).values() if (grid / "_grid" / "tasks" / f"{n}.json")
                                     .is_file() and _attempts(grid, n)[-1]["pid"] == pid), None), 30,
                       "the paused task's record")
    assert (grid / victim / "results" / "loop_000.json").is_file()
    job_id = json.loads((grid / "_grid" / "jobs.json").read_text())[victim]["job_id"]
    subprocess.run(["scancel", job_id], check=True)
    out1, _ = proc.communicate(timeout=600)
    t_run1 = time.time() - t0
    assert proc.returncode == 1, out1

    names = _names(grid)
    assert victim == names["clasp_pe/ok"]
    done = names["random/ok"]
    broken = [names["random/broken"], names["clasp_pe/broken"]]
    assert is_finished(grid / done) and not is_finished(grid / victim)
    assert f"FAILED {victim} (job {job_id}): job ended in state CANCELLED without a result" in out1
    for n in broken:
        line = next(ln for ln in out1.splitlines() if ln.startswith(f"FAILED {n}"))
        assert "ValueError: starting budget size=3 is smaller than 2 boxes x 3 classes" in line
        i = out1.splitlines().index(line)
        stderr = Path(out1.splitlines()[i + 2].split("stderr: ")[1])
        assert "starting budget size=3" in stderr.read_text()
    assert "1 ran and finished, 0 already finished, 3 failed" in out1
    assert (grid / "report" / "report.html").is_file(), out1  # aggregation over what finished
    # each task ran as a SLURM array task with one of the two GPUs
    for n in [done, victim, *broken]:
        env = _attempts(grid, n)[0]["env"]
        assert env["SUBMITIT_EXECUTOR"] == "slurm" and env["SLURM_ARRAY_JOB_ID"] == job_id.split("_")[0]
        assert env["CUDA_VISIBLE_DEVICES"] in ("0", "1")

    # run 2: the killed experiment resumes (loop 0 is not trained again) and finishes; the finished
    # one is skipped; the failing ones are retried. Submitted with --no-wait, then collected by the
    # same command without --no-wait, which must not submit the queued experiments a second time.
    t1 = time.time()
    proc = _grid(spec, "--no-wait")
    out2a, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out2a
    assert "3 submitted" in out2a and "run the same command again to wait" in out2a
    jobs2 = json.loads((grid / "_grid" / "jobs.json").read_text())
    assert jobs2[victim]["job_id"] != job_id and not jobs2[victim]["collected"]
    proc = _grid(spec)
    out2, _ = proc.communicate(timeout=600)
    t_run2 = time.time() - t1
    assert proc.returncode == 1, out2
    assert "collecting it instead of submitting again" in out2
    assert "1 ran and finished, 1 already finished, 2 failed" in out2
    jobs3 = json.loads((grid / "_grid" / "jobs.json").read_text())
    assert {n: j["job_id"] for n, j in jobs3.items()} == {n: j["job_id"] for n, j in jobs2.items()}
    assert all(jobs3[n]["collected"] for n in [victim, *broken])
    assert is_finished(grid / victim)
    assert [a["status"] for a in _attempts(grid, victim)] == ["running", "finished"]  # killed, then done
    assert "resuming" in (grid / victim / "log.txt").read_text()
    assert len(_attempts(grid, done)) == 1
    for n in broken:
        assert [a["status"] for a in _attempts(grid, n)] == ["failed", "failed"]
    assert (grid / "report" / "report.html").is_file()
    # nothing of this grid is left in the queue
    q = subprocess.run(["squeue", "--noheader", "--name=claspe-slurmgrid"], capture_output=True, text=True)
    assert q.stdout.strip() == ""
    print(f"slurm grid: run 1 (prepare + 4 tasks + kill) {t_run1:.0f} s, run 2 (resume + retries) {t_run2:.0f} s")
