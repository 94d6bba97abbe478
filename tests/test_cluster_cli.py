"""`claspe grid` command line: --list, clear errors (SLURM not reachable, container missing), the
sbatch script it would submit, time parsing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from claspe.cli import main
from claspe.cluster.cli import _minutes

SPEC = """\
data_root: data
output: out
overrides: {trainer: nnActiveTrainer_tiny, folds: 1, query_steps: 2}
datasets: [{name: Dataset001_A, patch_size: 8}]
label_regimes: {low: {query_size: 6}}
strategies: [random, pred_entropy]
seeds: [1]
"""


@pytest.fixture
def spec(tmp_path) -> Path:
    (tmp_path / "data" / "Dataset001_A").mkdir(parents=True)
    (tmp_path / "data" / "Dataset001_A" / "prepare.json").write_text("{}")
    p = tmp_path / "g.yaml"
    p.write_text(SPEC)
    return p


def _path_without_slurm(tmp_path: Path, tools: dict[str, str] | None = None) -> str:
    """A PATH with only the given fake tools (name -> script body) ahead of a folder without SLURM."""
    b = tmp_path / "bin"
    b.mkdir(exist_ok=True)
    for name, body in (tools or {}).items():
        f = b / name
        f.write_text("#!/bin/sh\n" + body + "\n")
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return str(b)


def test_list_shows_status(spec, capsys):
    assert main(["grid", str(spec), "--list"]) == 0
    out = capsys.readouterr().out
    assert "Dataset001_A__low__random__patch8x8x8" in out and "new" in out
    assert "2 experiments: 0 finished, 0 partial, 2 new" in out
    assert not (spec.parent / "out").exists()  # --list creates nothing


def test_list_names_datasets_that_are_not_ready(spec, capsys):
    spec.write_text(SPEC.replace("datasets: [{name: Dataset001_A, patch_size: 8}]",
                                 "datasets: [{name: Dataset001_A, patch_size: 8}, {name: Dataset002_B, patch_size: 8}]"))
    assert main(["grid", str(spec), "--list"]) == 1
    out = capsys.readouterr().out
    assert "4 experiments: 0 finished, 0 partial, 4 new" in out
    assert "not ready: unknown dataset 'Dataset002_B'" in out and "Dataset001_A'" not in out.split("not ready")[1]


def test_bad_spec_is_a_clear_error(spec, capsys):
    spec.write_text(SPEC.replace("strategies: [random, pred_entropy]", "strategies: [random, pred_entropi]"))
    assert main(["grid", str(spec), "--list"]) == 2
    assert "unknown strategy 'pred_entropi'" in capsys.readouterr().err


def test_slurm_not_reachable_names_the_command(spec, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", _path_without_slurm(tmp_path))
    assert main(["grid", str(spec), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "SLURM not reachable: `sinfo --noheader --format=%P` failed: sinfo is not on PATH" in err
    assert not (spec.parent / "out").exists()


def test_slurm_controller_down_shows_the_output(spec, tmp_path, monkeypatch, capsys):
    # stand-in for sinfo on a login node whose controller does not answer (SLURM's own message)
    monkeypatch.setenv("PATH", _path_without_slurm(tmp_path, {
        "sinfo": "echo 'slurm_load_partitions: Unable to contact slurm controller (connect failure)' >&2; exit 1"}))
    assert main(["grid", str(spec), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "`sinfo --noheader --format=%P` exited with 1: slurm_load_partitions: Unable to contact" in err


def test_container_missing(spec, tmp_path, capsys):
    assert main(["grid", str(spec), "--executor", "slurm", "--container", str(tmp_path / "claspe.sif")]) == 2
    assert f"container image {tmp_path / 'claspe.sif'} not found" in capsys.readouterr().err


def test_sbatch_script_wraps_tasks_in_apptainer_with_one_gpu(tmp_path, monkeypatch):
    # submitit only checks that `srun` exists when building an executor; nothing is submitted here
    monkeypatch.setenv("PATH", _path_without_slurm(tmp_path, {"srun": "exit 1"}) + os.pathsep + os.environ["PATH"])
    from submitit.slurm.slurm import _make_sbatch_string

    from claspe.cluster.runner import SlurmOptions, slurm_executor

    sif = tmp_path / "claspe.sif"
    sif.write_bytes(b"not a real image")
    opts = SlurmOptions(partition="gpu", time_min=90, mem_gb=16, cpus_per_task=4, max_parallel=3, container=sif,
                        binds=("/data:/data",), setup=("module load cuda",), job_name="claspe-g")
    ex = slurm_executor(tmp_path / "run", opts)
    text = _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder, map_count=5, **ex.parameters)
    for line in ("#SBATCH --gres=gpu:1", "#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --mem=16384M",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --array=0-4%3", "#SBATCH --job-name=claspe-g",
                 "module load cuda"):
        assert line in text, line
    assert f"apptainer exec --nv --bind /data:/data {sif} python3 -u -m submitit.core._submit" in text
    ex0 = slurm_executor(tmp_path / "run0", SlurmOptions(gpus_per_task=0))
    assert "gres" not in ex0.parameters and "apptainer" not in ex0._submitit_command_str


@pytest.mark.parametrize("text, minutes", [("90", 90), ("01:30:00", 90), ("1-00:00:00", 1440), ("2-12", 3600),
                                           ("10:30", 11), ("00:00:30", 1)])
def test_time_formats(text, minutes):
    assert _minutes(text) == minutes


def test_time_format_error():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="minutes or"):
        _minutes("two days")
