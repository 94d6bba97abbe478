"""claspe.data.dataset: load_dataset / DatasetInfo and every validation error with its message."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from claspe.data import load_dataset, parse_labels, write_image
from claspe.data.dataset import foreground_ids

SHAPE = (4, 6, 5)
SP = (2.0, 1.0, 1.0)
LABELS = {"background": 0, "a": 1, "b": 2}


def make_raw(root, *, n=3, channels=1, labels=None, shape=SHAPE, spacing=SP, num_training=None, extra=None,
             ending=".nii.gz"):
    """A tiny but real nnU-Net raw dataset (SimpleITK NIfTI files)."""
    root.mkdir(parents=True, exist_ok=True)
    labels = dict(LABELS if labels is None else labels)
    for i in range(n):
        case = f"c{i:02d}"
        for ch in range(channels):
            write_image(root / "imagesTr" / f"{case}_{ch:04d}{ending}", np.full(shape, i + ch, np.float32), spacing=spacing)
        lab = np.zeros(shape, np.uint8)
        lab[0, 0, : i + 1] = 1
        lab[-1, -1, -1] = 2
        write_image(root / "labelsTr" / f"{case}{ending}", lab, spacing=spacing)
    dj = {
        "channel_names": {str(c): f"ch{c}" for c in range(channels)},
        "labels": labels,
        "numTraining": n if num_training is None else num_training,
        "file_ending": ending,
    }
    dj.update(extra or {})
    (root / "dataset.json").write_text(json.dumps(dj))
    return root


def set_json(root, **changes):
    dj = json.loads((root / "dataset.json").read_text())
    for k, v in changes.items():
        if v is None:
            dj.pop(k, None)
        else:
            dj[k] = v
    (root / "dataset.json").write_text(json.dumps(dj))


def test_load_good_dataset(tmp_path):
    root = make_raw(tmp_path / "Dataset001_T", n=3, channels=2)
    info = load_dataset(root, check="deep")
    assert info.name == "Dataset001_T" and info.root == root.absolute()
    assert info.case_ids == ("c00", "c01", "c02")
    assert info.labels == LABELS and info.foreground == (1, 2) and info.ignore_label is None
    assert info.channel_names == ("ch0", "ch1") and info.num_channels == 2
    assert info.image_paths["c01"] == (root / "imagesTr" / "c01_0000.nii.gz", root / "imagesTr" / "c01_0001.nii.gz")
    assert info.label_paths["c01"] == root / "labelsTr" / "c01.nii.gz"
    assert info.shape("c01") == SHAPE and info.spacing("c01") == pytest.approx(SP)
    img, lab = info.read_case("c02")
    assert img.shape == (2, *SHAPE) and img[1].max() == 3 and lab[0, 0].sum() == 3
    assert info.image_file_name("c01") == "c01.nii.gz"
    assert info.case_from_file("c01.nii.gz") == "c01" == info.case_from_file("c01_0001.nii.gz")
    with pytest.raises(ValueError, match="names no case"):
        info.case_from_file("zz.nii.gz")
    with pytest.raises(ValueError, match="unknown case 'zz'"):
        info.shape("zz")
    assert info.warnings == ()


def test_hidden_files_and_tmp_folder_ignored(tmp_path):
    root = make_raw(tmp_path / "D")
    (root / "imagesTr" / ".claspe-tmp").mkdir()
    (root / "imagesTr" / ".claspe-tmp" / "x_0000.nii.gz").write_bytes(b"partial")
    (root / "imagesTr" / ".hidden_0000.nii.gz").write_bytes(b"partial")
    (root / "imagesTr" / "notes.txt").write_text("ignored: other ending")
    assert load_dataset(root, check="deep").case_ids == ("c00", "c01", "c02")


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"labels": {"background": 0}, "numTraining": 1, "file_ending": ".nii.gz"}), r"missing required key\(s\) \['channel_names'\]"),
    ],
)
def test_malformed_dataset_json_file(tmp_path, content, match):
    root = make_raw(tmp_path / "D")
    (root / "dataset.json").write_text(content)
    with pytest.raises(ValueError, match=match) as ei:
        load_dataset(root)
    assert "dataset.json" in str(ei.value)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"labels": ["background", "a"]}, "'labels' must be a mapping"),
        ({"labels": {"a": 1, "b": 2, "c": 0}}, "no 'background'"),
        ({"labels": {"background": 1, "a": 0, "b": 2}}, "'background' must be 0"),
        ({"labels": {"background": 0, "a": 1, "b": 1}}, "'a' and 'b' have the same value 1"),
        ({"labels": {"background": 0, "a": 1, "b": "2"}}, "label 'b' has value '2'"),
        ({"labels": {"background": 0, "a": 1, "b": True}}, "label 'b' has value True"),
        ({"labels": {"background": 0, "a": 1, "b": 3}}, r"consecutive.*missing \[2\]"),
        ({"labels": {"background": 0, "a": 1, "b": 2, "ignore": 1}}, "same value"),
        ({"labels": {"background": 0, "ignore": 1, "a": 2}}, "'ignore' \\(1\\) must be the highest"),
        ({"labels": {"background": 0, "a": 1, "b": -1}}, "negative"),
        ({"labels": {}}, "empty"),
        ({"channel_names": {}}, "channel_names"),
        ({"channel_names": {"1": "CT"}}, "channel_names' keys must be 0..0"),
        ({"channel_names": {"x": "CT"}}, "channel indices"),
        ({"file_ending": "nii.gz"}, "file_ending"),
        ({"numTraining": -1}, "numTraining"),
        ({"numTraining": "3"}, "numTraining"),
    ],
)
def test_bad_dataset_json_values(tmp_path, changes, match):
    root = make_raw(tmp_path / "D")
    set_json(root, **changes)
    with pytest.raises(ValueError, match=match) as ei:
        load_dataset(root)
    assert str(root / "dataset.json") in str(ei.value)


def test_missing_things_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder .*nowhere"):
        load_dataset(tmp_path / "nowhere")
    root = make_raw(tmp_path / "D", n=2, channels=2)
    (root / "dataset.json").rename(root / "x.json")
    with pytest.raises(FileNotFoundError, match="dataset.json not found"):
        load_dataset(root)
    (root / "x.json").rename(root / "dataset.json")
    (root / "imagesTr" / "c01_0001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"c01_0001\.nii\.gz not found: case 'c01' lacks channel 1 \(ch1\)"):
        load_dataset(root)
    root2 = make_raw(tmp_path / "E", n=2)
    (root2 / "labelsTr" / "c00.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"labelsTr/c00\.nii\.gz"):
        load_dataset(root2)
    root3 = make_raw(tmp_path / "F", n=2)
    for f in (root3 / "labelsTr").iterdir():
        f.unlink()
    (root3 / "labelsTr").rmdir()
    with pytest.raises(FileNotFoundError, match="labelsTr not found"):
        load_dataset(root3)


def test_bad_image_file_names(tmp_path):
    root = make_raw(tmp_path / "D", n=2)
    (root / "imagesTr" / "c00_0000.nii.gz").rename(root / "imagesTr" / "c00.nii.gz")
    with pytest.raises(ValueError, match=r"c00\.nii\.gz: image file names must be <case>_XXXX"):
        load_dataset(root)
    root = make_raw(tmp_path / "E", n=2)
    write_image(root / "imagesTr" / "c00_0001.nii.gz", np.zeros(SHAPE, np.float32), spacing=SP)
    with pytest.raises(ValueError, match="channel index 1 but dataset.json channel_names has 1"):
        load_dataset(root)


def test_num_training_mismatch_error_or_warning(tmp_path, caplog):
    root = make_raw(tmp_path / "D", n=3, num_training=5)
    with pytest.raises(ValueError, match="numTraining is 5 but 3 training case"):
        load_dataset(root)
    with caplog.at_level(logging.WARNING):
        info = load_dataset(root, strict=False)
    assert info.num_cases == 3
    assert any("numTraining is 5" in w for w in info.warnings)
    assert "numTraining is 5" in caplog.text


def test_orphan_label_is_a_warning(tmp_path):
    root = make_raw(tmp_path / "D", n=2)
    write_image(root / "labelsTr" / "lonely.nii.gz", np.zeros(SHAPE, np.uint8), spacing=SP)
    info = load_dataset(root)
    assert "lonely" in info.warnings[0] and info.case_ids == ("c00", "c01")


def test_shape_mismatch(tmp_path):
    root = make_raw(tmp_path / "D", n=2)
    write_image(root / "labelsTr" / "c01.nii.gz", np.zeros((4, 6, 6), np.uint8), spacing=SP)
    info = load_dataset(root)  # structure is fine
    with pytest.raises(ValueError, match=r"shape mismatch in case c01: image .*c01_0000\.nii\.gz has shape \(4, 6, 5\), label .*c01\.nii\.gz has \(4, 6, 6\)"):
        info.validate()
    with pytest.raises(ValueError, match="shape mismatch"):
        load_dataset(root, check="headers")


def test_spacing_mismatch_and_tolerance(tmp_path):
    root = make_raw(tmp_path / "D", n=2)
    lab = np.zeros(SHAPE, np.uint8)
    write_image(root / "labelsTr" / "c00.nii.gz", lab, spacing=(2.0 + 1e-6, 1.0, 1.0))  # float32 noise: fine
    load_dataset(root, check="headers")
    write_image(root / "labelsTr" / "c00.nii.gz", lab, spacing=(2.1, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"spacing mismatch in case c00: image .*c00_0000\.nii\.gz has spacing \(2\.0, 1\.0, 1\.0\)"):
        load_dataset(root, check="headers")


def test_channel_mismatch_within_case(tmp_path):
    root = make_raw(tmp_path / "D", n=2, channels=2)
    write_image(root / "imagesTr" / "c00_0001.nii.gz", np.zeros((4, 6, 4), np.float32), spacing=SP)
    with pytest.raises(ValueError, match=r"c00_0001\.nii\.gz has shape \(4, 6, 4\)"):
        load_dataset(root, check="headers")


def test_label_values_not_in_dataset_json(tmp_path):
    root = make_raw(tmp_path / "D", n=2)
    lab = np.zeros(SHAPE, np.uint8)
    lab[1, 1, 1] = 5
    lab[2, 2, 2] = 3
    write_image(root / "labelsTr" / "c01.nii.gz", lab, spacing=SP)
    info = load_dataset(root, check="headers")  # headers cannot see voxel values
    with pytest.raises(ValueError, match=r"c01\.nii\.gz contains label values \[3, 5\] that are not in dataset.json labels \[0, 1, 2\]"):
        info.validate(deep=True)


def test_non_integer_and_nan_values(tmp_path):
    # .nrrd: ITK's NIfTI reader turns NaN into 0 (so nnU-Net never sees NaN in NIfTI), NRRD keeps it
    root = make_raw(tmp_path / "D", n=2, ending=".nrrd")
    load_dataset(root, check="deep")
    write_image(root / "labelsTr" / "c00.nrrd", np.full(SHAPE, 0.5, np.float32), spacing=SP)
    img = np.zeros(SHAPE, np.float32)
    img[0, 0, 0] = np.nan
    write_image(root / "imagesTr" / "c01_0000.nrrd", img, spacing=SP)
    with pytest.raises(ValueError, match="2 problem") as ei:
        load_dataset(root, check="deep")
    msg = str(ei.value)
    assert "c00.nrrd contains non-integer label values" in msg
    assert "c01_0000.nrrd contains NaN or infinite values (1 voxels)" in msg


def test_corrupt_and_truncated_nifti(tmp_path):
    root = make_raw(tmp_path / "D", n=3, shape=(8, 16, 16))
    (root / "labelsTr" / "c00.nii.gz").write_bytes(b"garbage" * 50)
    good = (root / "imagesTr" / "c01_0000.nii.gz").read_bytes()
    (root / "imagesTr" / "c01_0000.nii.gz").write_bytes(good[: len(good) - 40])
    info = load_dataset(root)
    with pytest.raises(ValueError) as ei:
        info.validate()
    assert "c00.nii.gz is not a readable image" in str(ei.value)
    assert "c01" not in str(ei.value)  # the truncated file's header is intact ...
    with pytest.raises(ValueError) as ei:
        info.validate(deep=True)
    assert "c01_0000.nii.gz is corrupt or truncated" in str(ei.value)  # ... its data is not


def test_non_3d_and_vector_images(tmp_path):
    root = make_raw(tmp_path / "D", n=2)
    write_image(root / "imagesTr" / "c00_0000.nii.gz", np.zeros((2, *SHAPE), np.float32), spacing=(1.0, *SP))
    with pytest.raises(ValueError, match=r"c00_0000\.nii\.gz is 4D"):
        load_dataset(root, check="headers")


def test_ignore_and_region_labels(tmp_path):
    root = make_raw(tmp_path / "D", n=2, labels={"background": 0, "a": 1, "b": 2, "ignore": 3})
    lab = np.full(SHAPE, 3, np.uint8)
    lab[0] = 1
    write_image(root / "labelsTr" / "c00.nii.gz", lab, spacing=SP)
    info = load_dataset(root, check="deep")
    assert info.ignore_label == 3 and info.foreground == (1, 2)
    regions = {"background": 0, "whole": [1, 2], "core": [2]}
    assert foreground_ids(parse_labels(regions)) == (2, 2)
    root2 = make_raw(tmp_path / "E", n=2, labels=regions, extra={"regions_class_order": [1, 2]})
    info2 = load_dataset(root2, check="deep")
    assert info2.has_regions and info2.labels["whole"] == (1, 2) and info2.foreground == (2, 2)


def test_val_subset_and_explicit_dataset_key(tmp_path):
    root = make_raw(tmp_path / "D", n=3)
    (root / "imagesVal").mkdir()
    (root / "labelsVal").mkdir()
    for f in ("imagesTr/c02_0000.nii.gz", "labelsTr/c02.nii.gz"):
        (root / f).rename(root / f.replace("Tr", "Val"))
    with pytest.raises(ValueError, match="numTraining is 3 but 2"):
        load_dataset(root)
    assert load_dataset(root, subset="Val", check="deep").case_ids == ("c02",)
    set_json(root, numTraining=2)
    assert load_dataset(root).case_ids == ("c00", "c01")

    explicit = {"x1": {"images": ["imagesTr/c00_0000.nii.gz"], "label": "labelsTr/c00.nii.gz"},
                "x0": {"images": ["imagesVal/c02_0000.nii.gz"], "label": "labelsVal/c02.nii.gz"}}
    set_json(root, dataset=explicit)
    info = load_dataset(root, check="deep")
    assert info.case_ids == ("x0", "x1") and info.label_paths["x0"] == root / "labelsVal" / "c02.nii.gz"
    explicit["x1"]["label"] = "labelsTr/nope.nii.gz"
    set_json(root, dataset=explicit)
    with pytest.raises(FileNotFoundError, match=r"nope\.nii\.gz"):
        load_dataset(root)


def test_bad_check_argument(tmp_path):
    with pytest.raises(ValueError, match="check must be"):
        load_dataset(make_raw(tmp_path / "D"), check="all")


def test_many_problems_are_listed_with_a_count(tmp_path):
    root = make_raw(tmp_path / "D", n=25, shape=(2, 2, 2))
    for i in range(25):
        write_image(root / "labelsTr" / f"c{i:02d}.nii.gz", np.zeros((2, 2, 3), np.uint8), spacing=SP)
    with pytest.raises(ValueError, match=r"has 25 problem\(s\)(.|\n)*and 5 more"):
        load_dataset(root, check="headers")


def test_wrong_file_ending_and_empty_dataset(tmp_path):
    root = make_raw(tmp_path / "D", n=2)
    set_json(root, file_ending=".nii")
    with pytest.raises(ValueError, match=r"no file ends with file_ending '\.nii' .*c00_0000\.nii\.gz"):
        load_dataset(root)
    empty = tmp_path / "E"
    (empty / "imagesTr").mkdir(parents=True)
    (empty / "labelsTr").mkdir()
    (empty / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, "numTraining": 0, "file_ending": ".nii.gz"}))
    with pytest.raises(ValueError, match="has no training cases"):
        load_dataset(empty)


def test_dataset_info_pickles(tmp_path):
    import pickle

    info = load_dataset(make_raw(tmp_path / "D", n=2))
    again = pickle.loads(pickle.dumps(info))
    assert again == info and again.shape("c01") == SHAPE
