"""``claspe prepare`` (and the CLI) reject broken datasets with clear errors, before any nnU-Net work."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from claspe.data import make_synthetic_dataset, read_image, write_image
from claspe.protocol.prepare import load_prepared, prepare_dataset


@pytest.fixture(scope="module")
def raw_template(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("raw"), n_cases=6, seed=3, shape=(10, 16, 16))


@pytest.fixture
def raw(raw_template, tmp_path):
    dst = tmp_path / raw_template.name
    shutil.copytree(raw_template, dst)
    return dst


def _relabel(path, fn):
    img = read_image(path)
    arr, spacing = fn(img.array, img.spacing)
    write_image(path, arr, spacing=spacing)


def _malformed_json(raw):
    (raw / "dataset.json").write_text('{"labels": {"background": 0,')


def _missing_json(raw):
    (raw / "dataset.json").unlink()


def _shape_mismatch(raw):
    _relabel(raw / "labelsTr" / "synth_001.nii.gz", lambda a, s: (a[:, :-2], s))


def _spacing_mismatch(raw):
    _relabel(raw / "labelsTr" / "synth_002.nii.gz", lambda a, s: (a, (s[0] * 2, s[1], s[2])))


def _bad_label_value(raw):
    def f(a, s):
        a = a.copy()
        a[0, 0, 0] = 9
        return a, s

    _relabel(raw / "labelsTr" / "synth_003.nii.gz", f)


def _corrupt_nifti(raw):
    p = raw / "imagesTr" / "synth_004_0000.nii.gz"
    data = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(data[: len(data) // 2]))


def _garbage_nifti(raw):
    (raw / "labelsTr" / "synth_000.nii.gz").write_bytes(b"this is not an image")


@pytest.mark.parametrize("break_it,exc,match", [
    (_malformed_json, ValueError, "dataset.json"),
    (_missing_json, FileNotFoundError, "dataset.json"),
    (_shape_mismatch, ValueError, "synth_001"),
    (_spacing_mismatch, ValueError, "synth_002"),
    (_bad_label_value, ValueError, "synth_003"),
    (_corrupt_nifti, ValueError, "synth_004"),
    (_garbage_nifti, ValueError, "synth_000"),
])
def test_prepare_rejects_broken_datasets(raw, tmp_path, break_it, exc, match):
    break_it(raw)
    with pytest.raises(exc, match=match):
        prepare_dataset(raw, tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / raw.name).exists()


def test_prepare_too_few_cases(tmp_path):
    raw = make_synthetic_dataset(tmp_path / "raw", n_cases=2, seed=0, shape=(8, 12, 12))
    with pytest.raises(ValueError, match="too few cases"):
        prepare_dataset(raw, tmp_path / "data", progress=False)


def test_shape_mismatch_message_names_the_shapes(raw, tmp_path):
    _shape_mismatch(raw)
    with pytest.raises(ValueError) as ei:
        prepare_dataset(raw, tmp_path / "data", progress=False)
    assert "shape" in str(ei.value).lower()


def test_cli_prepare_reports_error(raw, tmp_path, capsys):
    from claspe.cli import main

    _bad_label_value(raw)
    assert main(["prepare", str(raw), "--data-root", str(tmp_path / "d"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "claspe prepare: error" in err and "synth_003" in err


def test_cli_names_the_broken_json_file(raw, tmp_path, capsys):
    from claspe.cli import main

    _malformed_json(raw)
    assert main(["prepare", str(raw), "--data-root", str(tmp_path / "d"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{raw / 'dataset.json'} is not valid JSON" in err
    cfg = tmp_path / "cfg.json"
    cfg.write_text("{")
    assert main(["run", "--config", str(cfg), "--data-root", str(tmp_path / "d")]) == 2
    assert f"{cfg} is not valid JSON" in capsys.readouterr().err


def test_load_prepared_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="claspe prepare"):
        load_prepared(tmp_path, "nothing")
    d = tmp_path / "half"
    d.mkdir()
    (d / "prepare.json").write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_prepared(tmp_path, "half")



def test_cli_prepare_imports_msd_task_folders(raw_template, tmp_path, capsys):
    """An MSD task folder is converted (claspe.data.import_msd) before preparing; the 2-case task is then
    refused by the held-out split, which shows the import ran without paying for nnU-Net planning."""
    from claspe.cli import main

    task = tmp_path / "Task42_Synth"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    training = []
    for case in ("synth_000", "synth_001"):
        shutil.copyfile(raw_template / "imagesTr" / f"{case}_0000.nii.gz", task / "imagesTr" / f"{case}.nii.gz")
        shutil.copyfile(raw_template / "labelsTr" / f"{case}.nii.gz", task / "labelsTr" / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    (task / "dataset.json").write_text(json.dumps({
        "name": "Synth", "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "organ", "2": "lesion", "3": "vessel"},
        "numTraining": 2, "training": training, "test": []}))
    data = tmp_path / "data"
    assert main(["prepare", str(task), "--data-root", str(data), "--dataset-id", "42", "--no-progress"]) == 2
    assert "too few cases" in capsys.readouterr().err
    imported = data / ".raw" / "Dataset042_Synth"
    assert sorted(p.name for p in (imported / "imagesTr").glob("*.nii.gz")) == [
        "synth_000_0000.nii.gz", "synth_001_0000.nii.gz"]
    assert main(["prepare", str(task), "--data-root", str(data), "--no-progress"]) == 2
    assert "dataset_id" in capsys.readouterr().err
