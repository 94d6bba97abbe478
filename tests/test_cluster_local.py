"""`claspe grid` with the local executor, for real: a synthetic dataset prepared by the grid driver,
nnU-Net's tiny trainer (1 fold, 2 loops), two strategies, parallel processes through submitit,
one label regime that fails at run time; then a rerun retries only the failed experiments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claspe.cli import main
from claspe.protocol.config import is_finished

pytestmark = pytest.mark.nnunet

SPEC = """\
name: localgrid
output: out
overrides: {trainer: nnActiveTrainer_tiny, folds: 1, query_steps: 2, n_patch_per_image: null}
datasets:
  - name: Dataset993_GridLocal
    synthetic: {n_cases: 8, shape: [16, 24, 24], seed: 0}
    patch_size: [8, 8, 8]
label_regimes:
  ok: {query_size: 6}
  broken: {query_size: 6, starting_budget_size: 3}   # fails at run time: fewer than 2 boxes x 3 classes
strategies: [random, pred_entropy]
seeds: [12345]
"""


def _attempts(grid: Path, name: str) -> list[dict]:
    return json.loads((grid / "_grid" / "tasks" / f"{name}.json").read_text())["attempts"]


def test_local_grid_runs_reports_and_retries_only_failures(tmp_path, capsys):
    spec = tmp_path / "grid.yaml"
    spec.write_text(SPEC)
    grid = tmp_path / "out"

    # --gpus 0,1: two tasks at a time, each with its own CUDA_VISIBLE_DEVICES (the runs use the CPU)
    rc = main(["grid", str(spec), "--gpus", "0,1"])
    out = capsys.readouterr().out
    assert rc == 1, out  # two experiments fail
    names = {json.loads(Path(p).read_text())["strategy"] + "/" + json.loads(Path(p).read_text())["label_regime"]:
             Path(p).parent.name for p in map(str, grid.glob("*/experiment.json"))}
    ok = [names["random/ok"], names["pred_entropy/ok"]]
    broken = [n for k, n in names.items() if k.endswith("/broken")]
    assert len(broken) == 2
    for n in ok:
        assert is_finished(grid / n)
        assert (grid / n / "results" / "loop_001.json").is_file()
        assert [a["status"] for a in _attempts(grid, n)] == ["finished"]
        assert _attempts(grid, n)[0]["env"]["CUDA_VISIBLE_DEVICES"] in ("0", "1")
    # failures are reported with their log files, which exist and hold the trace
    for n in broken:
        assert not is_finished(grid / n)
        line = next(ln for ln in out.splitlines() if ln.startswith(f"FAILED {n}"))
        assert "ValueError: starting budget size=3 is smaller than 2 boxes x 3 classes" in line
        i = out.splitlines().index(line)
        stderr = Path(out.splitlines()[i + 2].split("stderr: ")[1])
        assert "starting budget size=3" in stderr.read_text()
        assert (grid / "_grid" / "runs") in stderr.parents
    assert "2 ran and finished, 0 already finished, 2 failed" in out
    # the grid's report covers the finished experiments
    assert (grid / "report" / "report.html").is_file()
    last = json.loads((grid / "_grid" / "last_run.json").read_text())
    assert sorted(o["status"] for o in last["outcomes"]) == ["failed", "failed", "finished", "finished"]

    # rerun: finished experiments are skipped, the failed ones are retried (and fail again)
    rc = main(["grid", str(spec), "--max-parallel", "2", "--no-report"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "0 ran and finished, 2 already finished, 2 failed" in out
    for n in ok:
        assert len(_attempts(grid, n)) == 1
    for n in broken:
        assert [a["status"] for a in _attempts(grid, n)] == ["failed", "failed"]

    assert main(["grid", str(spec), "--list"]) == 0
    assert "4 experiments: 2 finished, 2 partial, 0 new" in capsys.readouterr().out
