"""`claspe query` on nnU-Net-style probability folders, writing loop_XXX.json and NIfTI masks."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from strategies_data import make_probs, one_engine_thread  # noqa: F401 (autouse fixture)

from claspe.cli import main
from claspe.data import io as dio
from claspe.strategies import get_strategy
from claspe.strategies.cli import find_probability_files

PROBS = make_probs(17, n_images=3, folds=3, classes=3, shape=(12, 11, 10), prefix="case_")
CASES = sorted(k.replace(".nii.gz", "") for k in PROBS)
SPACING = (2.0, 1.0, 0.75)
ORIGIN = (10.0, -5.0, 3.0)


def _write_folds_layout(root):
    """nnU-Net's `nnUNetv2_predict -f F --save_probabilities -o root/fold_F` output."""
    for f in range(3):
        d = root / f"fold_{f}"
        d.mkdir(parents=True)
        for c in CASES:
            p = PROBS[c + ".nii.gz"][f]
            np.savez_compressed(d / f"{c}.npz", probabilities=p)
            (d / f"{c}.pkl").write_bytes(pickle.dumps({"spacing": SPACING}))  # ignored
            dio.write_image(d / f"{c}.nii.gz", np.argmax(p, 0).astype(np.uint8))  # ignored
    return root


def _write_labels(root):
    root.mkdir(parents=True)
    for c in CASES:
        lab = np.argmax(PROBS[c + ".nii.gz"].mean(0), 0).astype(np.uint8)
        dio.write_image(root / f"{c}.nii.gz", lab, spacing=SPACING, origin=ORIGIN)
    return root


ARGS = ["-s", "clasp_pe", "-q", "7", "-p", "4", "4", "3", "--stride", "2", "--n-patch-per-image", "8",
        "--loop", "1", "--seed", "3"]


def test_query_folds_layout_json_and_masks(tmp_path, capsys):
    probs_dir = _write_folds_layout(tmp_path / "probs")
    labels_dir = _write_labels(tmp_path / "labels")
    out = tmp_path / "out"
    assert main(["query", str(probs_dir), *ARGS, "--labels", str(labels_dir), "-o", str(out)]) == 0
    data = json.loads((out / "loop_002.json").read_text())
    expect = get_strategy("clasp_pe").query(PROBS, query_size=7, patch_size=(4, 4, 3), stride=2,
                                            n_patch_per_image=8, loop=1, num_loops=5, seed=3)
    assert data == {"patches": [p.to_json() for p in expect]}
    for c in CASES:
        img = dio.read_image(out / "masks" / f"{c}.nii.gz")
        mine = [p for p in expect if p.file == c + ".nii.gz"]
        assert img.array.dtype == np.uint8 and img.array.shape == PROBS[c + ".nii.gz"].shape[2:]
        assert int(img.array.sum()) == sum(int(np.prod(p.size)) for p in mine)
        for p in mine:
            sl = tuple(slice(s, s + z) for s, z in zip(p.coords, p.size))
            assert img.array[sl].all()
        np.testing.assert_allclose(img.spacing, SPACING)
        np.testing.assert_allclose(img.origin, ORIGIN)
    assert "7 patches" in capsys.readouterr().out


def test_layouts_give_the_same_query(tmp_path):
    folds = _write_folds_layout(tmp_path / "folds")
    cases = tmp_path / "cases"
    flat = tmp_path / "flat"
    flat.mkdir()
    for c in CASES:
        (cases / c).mkdir(parents=True)
        for f in range(3):
            np.save(cases / c / f"fold_{f}.npy", PROBS[c + ".nii.gz"][f])
        np.savez_compressed(flat / f"{c}.npz", probabilities=PROBS[c + ".nii.gz"])
    assert find_probability_files(folds)[0] == "folds"
    assert find_probability_files(cases)[0] == "cases"
    assert find_probability_files(flat)[0] == "flat"
    results = []
    for src in (folds, cases, flat):
        out = tmp_path / ("out_" + src.name)
        assert main(["query", str(src), *ARGS, "-o", str(out), "--no-masks"]) == 0
        results.append(json.loads((out / "loop_002.json").read_text()))
        assert not (out / "masks").exists()
    assert results[0] == results[1] == results[2]


def test_annotated_loop_files_and_random_baseline(tmp_path):
    probs_dir = _write_folds_layout(tmp_path / "probs")
    labels_dir = _write_labels(tmp_path / "labels")
    out = tmp_path / "out"
    ann = {"patches": [{"file": CASES[0] + ".nii.gz", "coords": [0, 0, 0], "size": [12, 11, 10]}]}
    (tmp_path / "loop_000.json").write_text(json.dumps(ann))
    assert main(["query", str(probs_dir), *ARGS, "--annotated", str(tmp_path / "loop_000.json"), "-o", str(out)]) == 0
    files = {p["file"] for p in json.loads((out / "loop_002.json").read_text())["patches"]}
    assert CASES[0] + ".nii.gz" not in files  # the whole image is annotated
    out2 = tmp_path / "out2"
    assert main(["query", "-s", "random-label", "-q", "5", "-p", "3", "--labels", str(labels_dir), "-o", str(out2),
                 "--json-name", "rnd.json"]) == 0
    patches = json.loads((out2 / "rnd.json").read_text())["patches"]
    assert len(patches) == 5
    assert len(list((out2 / "masks").iterdir())) == len(CASES)


def test_query_cli_errors(tmp_path, capsys):
    assert main(["query", str(tmp_path / "nope"), *ARGS]) == 2
    assert "not found" in capsys.readouterr().err
    probs_dir = _write_folds_layout(tmp_path / "probs")
    (probs_dir / "fold_2" / f"{CASES[1]}.npz").unlink()
    assert main(["query", str(probs_dir), *ARGS, "-o", str(tmp_path / "o")]) == 2
    assert f"lacks the probabilities of 1 case(s): ['{CASES[1]}']" in capsys.readouterr().err
    assert main(["query", "-s", "random_fg66", "-q", "3", "-p", "3"]) == 2
    assert "needs --labels" in capsys.readouterr().err
    assert main(["query", str(probs_dir), "-s", "nope", "-q", "3", "-p", "3"]) == 2
    assert "Valid names" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["query", str(empty), *ARGS]) == 2
    assert "no probability files" in capsys.readouterr().err


def test_query_cli_rejects_ambiguous_input(tmp_path, capsys):
    """Two --patch-size/--stride values (was: the first used on every axis), a flat folder holding
    CASE.npy and CASE.npz (was: one silently chosen), malformed annotated entries (was TypeError),
    --output naming a file (was FileExistsError)."""
    probs_dir = _write_folds_layout(tmp_path / "probs")
    base = ["query", str(probs_dir), "-q", "3", "--no-masks", "-o", str(tmp_path / "o")]
    assert main([*base, "-p", "4", "4"]) == 2
    assert "--patch-size takes 1 value (same on every axis) or 3 values, got 2" in capsys.readouterr().err
    assert main([*base, "-p", "4", "--stride", "1", "2"]) == 2
    assert "--stride takes 1 value" in capsys.readouterr().err
    flat = tmp_path / "flat"
    flat.mkdir()
    np.save(flat / f"{CASES[0]}.npy", PROBS[CASES[0] + ".nii.gz"])
    np.savez(flat / f"{CASES[0]}.npz", probabilities=PROBS[CASES[0] + ".nii.gz"])
    assert main(["query", str(flat), "-q", "1", "-p", "4", "--no-masks", "-o", str(tmp_path / "o")]) == 2
    assert "has both a .npz and a .npy file" in capsys.readouterr().err
    for doc, msg in (([1, 2], "patch entries must be claspe.Patch"),
                     ({"patches": [{"file": CASES[0] + ".nii.gz", "coords": [0, 0], "size": [1, 1, 1]}]},
                      "Patch.coords must have 3 entries")):
        ann = tmp_path / "ann.json"
        ann.write_text(json.dumps(doc))
        assert main([*base, "-p", "4", "--annotated", str(ann)]) == 2
        err = capsys.readouterr().err
        assert str(ann) in err and msg in err
    (tmp_path / "afile").write_text("")
    assert main(["query", str(probs_dir), "-q", "3", "-p", "4", "-o", str(tmp_path / "afile")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_query_help_and_list(capsys):
    with pytest.raises(SystemExit) as e:
        main(["query", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--strategy", "--query-size", "--patch-size", "--stride", "--n-patch-per-image", "--loop",
                "--num-loops", "--seed", "--rng", "--classes", "--annotated", "--labels", "--images", "--suffix",
                "--output", "--json-name", "--no-masks", "--list", "fold_0/CASE.npz", "loop_XXX.json"):
        assert opt in text, opt
    assert main(["query", "--list", "--list-aliases"]) == 0
    listed = capsys.readouterr().out
    assert "clasp_pe" in listed and "class_power_pe66_exp" in listed


def test_mask_geometry_from_images_folder(tmp_path):
    probs_dir = _write_folds_layout(tmp_path / "probs")
    images = tmp_path / "imagesTr"
    images.mkdir()
    for c in CASES:
        dio.write_image(images / f"{c}_0000.nii.gz", PROBS[c + ".nii.gz"][0, 1], spacing=(1.5, 0.5, 0.5),
                        origin=(1.0, 2.0, 3.0))
    out = tmp_path / "out"
    assert main(["query", str(probs_dir), *ARGS, "--images", str(images), "--rng", "nnactive", "-o", str(out)]) == 0
    img = dio.read_image(out / "masks" / f"{CASES[0]}.nii.gz")
    np.testing.assert_allclose(img.spacing, (1.5, 0.5, 0.5))
    np.testing.assert_allclose(img.origin, (1.0, 2.0, 3.0))
    expect = get_strategy("clasp_pe").query(PROBS, query_size=7, patch_size=(4, 4, 3), stride=2,
                                            n_patch_per_image=8, loop=1, num_loops=5, seed=3, rng="nnactive")
    assert json.loads((out / "loop_002.json").read_text())["patches"] == [p.to_json() for p in expect]
