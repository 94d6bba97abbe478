"""Protocol building blocks without nnU-Net: splits, CV, oracle, loop files, state, lock, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from claspe.protocol.config import SCHEMA_VERSION, ExperimentConfig
from claspe.protocol.loops import existing_loops, loop_path, read_loop, write_loop
from claspe.protocol.oracle import annotate, box_mask, partial_label
from claspe.protocol.splits import check_cv_coverage, cv_splits, heldout_split
from claspe.protocol.state import ExperimentLock, State
from claspe.types import Patch

# --- held-out split ------------------------------------------------------------------------------------


def test_heldout_split_sorted_seeded_and_order_independent():
    cases = [f"c{i:02d}" for i in range(12)]
    tr1, va1 = heldout_split(cases, test_size=0.25, seed=7)
    tr2, va2 = heldout_split(list(reversed(cases)), test_size=0.25, seed=7)
    assert (tr1, va1) == (tr2, va2)
    assert len(va1) == 3 and len(tr1) == 9
    assert sorted(tr1 + va1) == cases and not set(tr1) & set(va1)
    assert tr1 == sorted(tr1) and va1 == sorted(va1)
    assert heldout_split(cases, test_size=0.25, seed=8) != (tr1, va1)


def test_heldout_split_keeps_patients_together():
    cases = [f"p{p}_frame{f}" for p in range(8) for f in range(2)]
    tr, va = heldout_split(cases, test_size=0.25, seed=1, level_separator="_")
    assert len(va) == 4  # ceil(0.25 * 8) = 2 patients x 2 frames
    pat = lambda c: c.split("_")[0]  # noqa: E731
    assert not {pat(c) for c in tr} & {pat(c) for c in va}


@pytest.mark.parametrize("n,test_size", [(2, 0.25), (3, 0.5), (0, 0.25)])
def test_heldout_split_too_few_cases(n, test_size):
    with pytest.raises(ValueError, match="too few cases"):
        heldout_split([f"c{i}" for i in range(n)], test_size=test_size)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1])
def test_heldout_split_bad_test_size(bad):
    with pytest.raises(ValueError, match="test_size"):
        heldout_split(["a", "b", "c", "d"], test_size=bad)


# --- class-aware CV ------------------------------------------------------------------------------------


def test_cv_splits_every_training_set_has_every_class():
    rng = np.random.default_rng(0)
    cc = {f"c{i:02d}": [1] for i in range(14)}
    rare = rng.choice(14, 2, replace=False)
    for i in rare:
        cc[f"c{i:02d}"] = [1, 3]
    for i in rng.choice(14, 4, replace=False):
        cc[f"c{i:02d}"] = sorted(set(cc[f"c{i:02d}"]) | {2})
    splits = cv_splits(cc, folds=5, seed=12345)
    assert len(splits) == 5
    vals = [c for s in splits for c in s["val"]]
    assert sorted(vals) == sorted(cc)  # each case validated exactly once
    for s in splits:
        assert set(s["train"]) | set(s["val"]) == set(cc) and not set(s["train"]) & set(s["val"])
    assert check_cv_coverage(splits, cc) == {}
    sizes = [len(s["val"]) for s in splits]
    assert max(sizes) - min(sizes) <= 1
    assert cv_splits(cc, folds=5, seed=12345) == splits  # deterministic


def test_cv_splits_single_fold_and_too_few(caplog):
    cc = {"a": [1], "b": [1, 2], "c": [1]}
    assert cv_splits(cc, folds=1) == [{"train": ["a", "b", "c"], "val": ["a", "b", "c"]}]
    with pytest.raises(ValueError, match="too few annotated cases"):
        cv_splits(cc, folds=5)
    with caplog.at_level("WARNING"):
        cv_splits(cc, folds=2)
    assert "class 2 is annotated in only 1 image" in caplog.text


# --- oracle ---------------------------------------------------------------------------------------------


def test_oracle_writes_ground_truth_in_boxes_and_ignore_elsewhere(tmp_path):
    rng = np.random.default_rng(1)
    gt = {"a.nii.gz": rng.integers(0, 3, (6, 8, 8)).astype(np.uint8),
          "b.nii.gz": rng.integers(0, 3, (5, 7, 9)).astype(np.uint8),
          "c.nii.gz": np.ones((4, 4, 4), np.uint8)}
    patches = [Patch("a.nii.gz", (0, 0, 0), (2, 3, 3)), Patch("a.nii.gz", (4, 5, 5), (2, 3, 3)),
               Patch("b.nii.gz", (3, 4, 6), (4, 4, 4))]  # sticks out of b: clipped
    written = {}
    stats = annotate(patches, ground_truth=gt, out_dir=tmp_path, ignore_label=3,
                     write=lambda p, a, f: written.__setitem__(f, a.copy()))
    assert sorted(written) == ["a.nii.gz", "b.nii.gz"]  # no box in c: no label file
    for f, lab in written.items():
        m = box_mask(gt[f].shape, [p for p in patches if p.file == f])
        assert np.array_equal(lab[m], gt[f][m])
        assert np.all(lab[~m] == 3)
        assert np.array_equal(lab, partial_label(gt[f], [p for p in patches if p.file == f], 3))
    assert stats["cases"]["a.nii.gz"]["annotated_voxels"] == 36
    assert stats["cases"]["b.nii.gz"]["annotated_voxels"] == 2 * 3 * 3
    exp_fg = sum(int(np.count_nonzero(gt[f][box_mask(gt[f].shape, [p for p in patches if p.file == f])]))
                 for f in written)
    assert stats["annotated_fg_voxels"] == exp_fg
    assert stats["annotated_voxels"] == 36 + 18


# --- loop files -----------------------------------------------------------------------------------------


def test_loop_file_roundtrip_nnactive_format(tmp_path):
    ps = [Patch("x.nii.gz", (1, 2, 3), (2, 2, 2)), Patch("y.nii.gz", (0, 0, 0), (4, 4, 4))]
    write_loop(tmp_path, 3, ps, strategy="clasp_pe")
    doc = json.loads(loop_path(tmp_path, 3).read_text())
    assert doc["patches"][0] == {"file": "x.nii.gz", "coords": [1, 2, 3], "size": [2, 2, 2]}
    assert read_loop(loop_path(tmp_path, 3), known_files=["x.nii.gz", "y.nii.gz"],
                     shape_of=lambda f: (6, 6, 6)) == ps
    assert existing_loops(tmp_path) == [3]


@pytest.mark.parametrize("entry,match", [
    ({"file": "zzz.nii.gz", "coords": [0, 0, 0], "size": [1, 1, 1]}, "unknown case"),
    ({"file": "x.nii.gz", "coords": [0, 0, 3], "size": [2, 2, 2]}, "outside the image"),
    ({"file": "../x.nii.gz", "coords": [0, 0, 0], "size": [1, 1, 1]}, "outside the dataset"),
    ({"file": "/etc/x.nii.gz", "coords": [0, 0, 0], "size": [1, 1, 1]}, "outside the dataset"),
    ({"file": "sub/x.nii.gz", "coords": [0, 0, 0], "size": [1, 1, 1]}, "outside the dataset"),
    ({"file": "x.nii.gz", "coords": [0, 0, -1], "size": [1, 1, 1]}, "coords must be >= 0"),
    ({"file": "x.nii.gz", "coords": [0, 0]}, "lacks the key 'size'"),
])
def test_loop_file_errors(tmp_path, entry, match):
    p = tmp_path / "loop_000.json"
    p.write_text(json.dumps({"patches": [entry]}))
    with pytest.raises(ValueError, match=match):
        read_loop(p, known_files=["x.nii.gz"], shape_of=lambda f: (4, 4, 4))


def test_loop_file_malformed(tmp_path):
    p = tmp_path / "loop_000.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_loop(p)
    p.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="patches"):
        read_loop(p)
    with pytest.raises(FileNotFoundError):
        read_loop(tmp_path / "loop_009.json")


# --- state and lock -------------------------------------------------------------------------------------


def test_state_roundtrip_and_schema(tmp_path):
    s = State(tmp_path)
    assert not s.done("setup")
    s.mark("setup", pool_files=3)
    s2 = State(tmp_path)
    assert s2.done("setup") and s2.get("setup")["pool_files"] == 3
    assert json.loads((tmp_path / "state.json").read_text())["schema_version"] == SCHEMA_VERSION
    assert not list(tmp_path.glob(".claspe-tmp*"))  # atomic write left nothing behind
    (tmp_path / "state.json").write_text(json.dumps({"schema_version": 99, "steps": {}}))
    with pytest.raises(ValueError, match="schema_version"):
        State(tmp_path)
    (tmp_path / "state.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        State(tmp_path)


def test_lock_is_exclusive(tmp_path):
    with ExperimentLock(tmp_path):
        with pytest.raises(RuntimeError, match="another process"):
            with ExperimentLock(tmp_path):
                pass
    with ExperimentLock(tmp_path):  # released
        pass


def test_config_mismatch_is_refused(tmp_path):
    from claspe.data.io import write_json
    from claspe.protocol.experiment import check_config_matches

    cfg = ExperimentConfig(dataset="D", strategy="clasp_pe", query_size=4, patch_size=4)
    write_json(tmp_path / "experiment.json", cfg.to_json())
    check_config_matches(tmp_path, cfg)
    with pytest.raises(ValueError, match="other settings"):
        check_config_matches(tmp_path, ExperimentConfig(dataset="D", strategy="clasp_pe", query_size=4,
                                                        patch_size=4, device="cuda"))


# --- CLI ------------------------------------------------------------------------------------------------


def test_cli_registers_protocol_commands_without_heavy_imports():
    code = ("import sys; from claspe.cli import build_parser; p = build_parser(); "
            "acts = [a for a in p._actions if a.dest == 'command'][0]; "
            "print(sorted(acts.choices)); print('nnunetv2' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    for c in ("prepare", "plan", "run", "evaluate", "demo"):
        assert f"'{c}'" in out[0]
    assert "True" not in out[1].split()[0]  # nnunetv2 not imported by building the parser


def test_cli_run_needs_dataset_and_strategy(tmp_path, capsys):
    from claspe.cli import main

    assert main(["run", "--data-root", str(tmp_path)]) == 2
    assert "--dataset and --strategy" in capsys.readouterr().err


# --- demo outputs ---------------------------------------------------------------------------------------


def test_demo_table_and_budget_curve(tmp_path):
    from claspe.data.io import write_json
    from claspe.protocol.config import result_path
    from claspe.protocol.demo import budget_curve_png, format_table, results_table

    exps = []
    for strat, dice in (("clasp_pe", [0.2, 0.4]), ("random_fg66", [0.1, None])):
        cfg = ExperimentConfig(dataset="D", strategy=strat, query_size=4, patch_size=4, query_steps=2)
        e = tmp_path / cfg.name
        write_json(e / "experiment.json", cfg.to_json())
        for k, d in enumerate(dice):
            write_json(result_path(e, k), {"loop": k, "n_patches": 4 * (k + 1), "annotated_voxels": 64 * (k + 1),
                                           "annotated_fg_voxels": 10, "pool_fg_voxels": 100, "fg_fraction": 0.1,
                                           "dice_per_class": {"1": d, "2": d}, "mean_dice": d, "per_case": {}})
        exps.append(e)
    rows = results_table(exps)
    assert [(r["strategy"], r["loop"], r["n_patches"]) for r in rows] == [
        ("clasp_pe", 0, 4), ("clasp_pe", 1, 8), ("random_fg66", 0, 4), ("random_fg66", 1, 8)]
    table = format_table(rows)
    lines = table.splitlines()
    assert "meanDice" in lines[0] and "dice_2" in lines[0] and len(lines) == 6
    assert "0.400" in lines[3] and "nan" in lines[5]
    png = budget_curve_png(rows, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_public_api_is_lazy():
    code = ("import sys, claspe.protocol as p; light = 'SimpleITK' not in sys.modules and 'torch' not in sys.modules; "
            "from claspe.protocol import run_experiment, is_finished, prepare_dataset; "
            "print(light, run_experiment.__module__, is_finished.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "claspe.protocol.experiment", "claspe.protocol.config"]
