"""claspe.data.importers: nnU-Net raw copy/rename/convert and MSD task conversion (4D split), real NIfTI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from claspe.data import load_dataset, read_image, write_image
from claspe.data.importers import import_dataset, import_msd, import_nnunet_raw

DIR3 = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated in-plane
ORIGIN3 = (-10.0, 20.0, 5.0)
SP3 = (3.0, 0.7, 0.6)  # array order
SHAPE = (5, 8, 7)


def _dir4(d3):
    m = np.eye(4)
    m[:3, :3] = np.asarray(d3).reshape(3, 3)
    return tuple(m.ravel())


def make_msd(root, *, n=3, modalities=("MRI",), labels=None, four_d=None, extra_training=(), test=True):
    """A tiny MSD task folder: 3D images for one modality, 4D (m, z, y, x) for several."""
    root.mkdir(parents=True)
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    four_d = len(modalities) > 1 if four_d is None else four_d
    rng = np.random.default_rng(0)
    training, tests = [], []

    def image(path):
        if four_d:
            arr = rng.integers(0, 1000, (len(modalities), *SHAPE)).astype(np.int16)
            arr[:, 0, 0, 0] = np.arange(len(modalities)) * 1000  # marks the modality
            write_image(path, arr, spacing=(1.0, *SP3), origin=(*ORIGIN3, 0.0), direction=_dir4(DIR3))
        else:
            arr = rng.random(SHAPE).astype(np.float32)
            write_image(path, arr, spacing=SP3, origin=ORIGIN3, direction=DIR3)
        return arr

    arrays = {}
    for i in range(n):
        name = f"prostate_{i:02d}.nii.gz"
        arrays[name] = image(root / "imagesTr" / name)
        lab = np.zeros(SHAPE, np.uint8)
        lab[1:3, 2:5, 2:4] = 1
        lab[2, 3, 3] = 2
        write_image(root / "labelsTr" / name, lab, spacing=SP3, origin=ORIGIN3, direction=DIR3)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    if test:
        image(root / "imagesTs" / "prostate_99.nii.gz")
        tests.append("./imagesTs/prostate_99.nii.gz")
    (root / "imagesTr" / "._prostate_00.nii.gz").write_bytes(b"macOS resource fork junk")
    dj = {
        "name": "PROSTATE", "description": "fake", "reference": "none", "licence": "CC-BY-SA 4.0",
        "tensorImageSize": "4D" if four_d else "3D",
        "modality": {str(i): m for i, m in enumerate(modalities)},
        "labels": labels or {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": n, "numTest": len(tests),
        "training": training + list(extra_training), "test": tests,
    }
    (root / "dataset.json").write_text(json.dumps(dj))
    return root, arrays


def test_msd_4d_multimodal_split(tmp_path):
    task, arrays = make_msd(tmp_path / "Task05_Prostate", modalities=("T2", "ADC"))
    out = import_msd(task, tmp_path / "raw", 5, check="deep")
    assert out == tmp_path / "raw" / "Dataset005_Prostate"
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T2", "1": "ADC"}
    assert dj["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert dj["numTraining"] == 3 and dj["file_ending"] == ".nii.gz"
    info = load_dataset(out, check="deep")
    assert info.case_ids == ("prostate_00", "prostate_01", "prostate_02")
    assert info.foreground == (1, 2)
    for case in info.case_ids:
        src = arrays[f"{case}.nii.gz"]
        lab = read_image(info.label_paths[case])
        for c in range(2):
            ch = read_image(info.image_paths[case][c])
            assert ch.array.shape == SHAPE
            assert np.array_equal(ch.array, src[c])
            assert ch.array[0, 0, 0] == c * 1000
            # geometry of the split channel = geometry of the label (3D part of the 4D image)
            assert ch.spacing == pytest.approx(lab.spacing) and ch.spacing == pytest.approx(SP3)
            assert ch.origin == pytest.approx(lab.origin)
            assert ch.direction == pytest.approx(lab.direction)
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["prostate_99_0000.nii.gz", "prostate_99_0001.nii.gz"]
    # what nnU-Net reads: (2, z, y, x) with our spacing
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    data, props = SimpleITKIO().read_images([str(p) for p in info.image_paths["prostate_01"]])
    assert data.shape == (2, *SHAPE) and list(props["spacing"]) == pytest.approx(list(SP3))


def test_msd_3d_single_modality_and_name_from_task(tmp_path):
    task, arrays = make_msd(tmp_path / "Task04_Hippocampus", labels={"0": "bg", "1": "Anterior", "2": "Posterior"})
    out = import_msd(task, tmp_path / "raw", 4, include_test=False)
    assert out.name == "Dataset004_Hippocampus"
    info = load_dataset(out, check="deep")
    assert info.labels == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert info.channel_names == ("MRI",)
    assert np.array_equal(read_image(info.image_paths["prostate_01"][0]).array, arrays["prostate_01.nii.gz"])
    assert not (out / "imagesTs").exists()
    with pytest.raises(FileExistsError, match="overwrite"):
        import_msd(task, tmp_path / "raw", 4)
    import_msd(task, tmp_path / "raw", 4, overwrite=True, dataset_name="Dataset104_Hippo")
    assert (tmp_path / "raw" / "Dataset104_Hippo" / "dataset.json").is_file()
    assert not [p for p in (tmp_path / "raw").iterdir() if p.name.startswith(".")]
    # import_dataset recognises the MSD format
    with pytest.raises(ValueError, match="pass dataset_id"):
        import_dataset(task, tmp_path / "raw2")
    assert import_dataset(task, tmp_path / "raw2", dataset_id=7).name == "Dataset007_Hippocampus"


def _edit(task, **changes):
    dj = json.loads((task / "dataset.json").read_text())
    for k, v in changes.items():
        if v is None:
            dj.pop(k)
        else:
            dj[k] = v
    (task / "dataset.json").write_text(json.dumps(dj))


@pytest.mark.parametrize(
    "changes, exc, match",
    [
        ({"modality": None}, ValueError, r"missing MSD key\(s\) \['modality'\]"),
        ({"labels": {"0": "background", "2": "x"}}, ValueError, "'labels' keys must be 0..1"),
        ({"labels": {"0": "background", "1": "x", "2": "x"}}, ValueError, "'x' is used twice"),
        ({"training": []}, ValueError, "'training' must be a non-empty list"),
        ({"training": [{"image": "./imagesTr/prostate_00.nii.gz"}]}, ValueError, "needs string 'image' and 'label'"),
        ({"training": [{"image": "../evil.nii.gz", "label": "./labelsTr/prostate_00.nii.gz"}]}, ValueError, "outside the task folder"),
        ({"training": [{"image": "./imagesTr/nope.nii.gz", "label": "./labelsTr/prostate_00.nii.gz"}]}, FileNotFoundError, r"nope\.nii\.gz"),
        ({"modality": {"0": "T2", "1": "ADC"}}, ValueError, "is 3D but dataset.json 'modality' lists 2"),
    ],
)
def test_msd_errors(tmp_path, changes, exc, match):
    task, _ = make_msd(tmp_path / "Task04_Hippocampus")
    _edit(task, **changes)
    with pytest.raises(exc, match=match):
        import_msd(task, tmp_path / "raw", 4)
    assert not (tmp_path / "raw" / "Dataset004_Hippocampus").exists()  # nothing half-written


def test_msd_4d_volume_count_mismatch_and_bad_args(tmp_path):
    task, _ = make_msd(tmp_path / "Task05_Prostate", modalities=("T2", "ADC"))
    _edit(task, modality={"0": "T2", "1": "ADC", "2": "DWI"})
    with pytest.raises(ValueError, match="has 2 volumes .* 'modality' lists 3"):
        import_msd(task, tmp_path / "raw", 5)
    with pytest.raises(FileNotFoundError, match="MSD task folder"):
        import_msd(tmp_path / "nowhere", tmp_path / "raw", 5)
    for bad in (0, 1000, "5", True):
        with pytest.raises(ValueError, match="dataset_id"):
            import_msd(task, tmp_path / "raw", bad)
    (task / "dataset.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        import_msd(task, tmp_path / "raw", 5)
    (task / "dataset.json").unlink()
    with pytest.raises(FileNotFoundError, match="dataset.json not found"):
        import_msd(task, tmp_path / "raw", 5)


def _nnunet_src(root, ending=".nii.gz", n=3):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    for i in range(n):
        write_image(root / "imagesTr" / f"k_{i}_0000{ending}", np.full(SHAPE, i, np.float32), spacing=SP3,
                    origin=ORIGIN3, direction=DIR3)
        lab = np.zeros(SHAPE, np.uint8)
        lab[0, 0, 0] = 1
        write_image(root / "labelsTr" / f"k_{i}{ending}", lab, spacing=SP3, origin=ORIGIN3, direction=DIR3)
    write_image(root / "imagesTs" / f"t_0_0000{ending}", np.zeros(SHAPE, np.float32), spacing=SP3)
    dj = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "kidney": 1}, "numTraining": n,
          "file_ending": ending, "name": "Kid"}
    (root / "dataset.json").write_text(json.dumps(dj))
    return root


def test_import_nnunet_raw_copy_and_rename(tmp_path):
    src = _nnunet_src(tmp_path / "Dataset135_Kid")
    out = import_nnunet_raw(src, tmp_path / "raw")
    assert out.name == "Dataset135_Kid"
    a, b = load_dataset(src), load_dataset(out, check="deep")
    assert a.case_ids == b.case_ids and a.labels == b.labels
    for c in a.case_ids:
        assert a.image_paths[c][0].read_bytes() == b.image_paths[c][0].read_bytes()
    assert (out / "imagesTs" / "t_0_0000.nii.gz").is_file()
    out2 = import_nnunet_raw(src, tmp_path / "raw", dataset_id=236)
    assert out2.name == "Dataset236_Kid"
    out3 = import_nnunet_raw(src, tmp_path / "raw", dataset_name="Dataset237_Other", include_test=False)
    assert json.loads((out3 / "dataset.json").read_text())["name"] == "Dataset237_Other"
    assert not (out3 / "imagesTs").exists()
    with pytest.raises(ValueError, match="Dataset123_Name"):
        import_nnunet_raw(src, tmp_path / "raw", dataset_name="kidneys")
    with pytest.raises(ValueError, match="not both"):
        import_nnunet_raw(src, tmp_path / "raw", dataset_name="Dataset238_X", dataset_id=238)
    with pytest.raises(ValueError, match="same folder"):
        import_nnunet_raw(src, tmp_path, overwrite=True)
    assert import_dataset(src, tmp_path / "raw4").name == "Dataset135_Kid"


def test_import_nnunet_raw_converts_format_and_fixes_layout(tmp_path):
    src = _nnunet_src(tmp_path / "Dataset011_Nrrd", ending=".nrrd")
    out = import_nnunet_raw(src, tmp_path / "raw", file_ending=".nii.gz")
    info = load_dataset(out, check="deep")
    assert info.file_ending == ".nii.gz"
    img = read_image(info.image_paths["k_2"][0])
    assert np.all(img.array == 2) and img.spacing == pytest.approx(SP3) and img.direction == pytest.approx(DIR3)
    assert sitk.ReadImage(str(info.label_paths["k_2"])).GetPixelID() == sitk.sitkUInt8
    # explicit "dataset" list + wrong numTraining -> standard layout, correct numTraining
    src2 = _nnunet_src(tmp_path / "Dataset012_Expl")
    dj = json.loads((src2 / "dataset.json").read_text())
    dj["dataset"] = {"caseB": {"images": ["imagesTr/k_0_0000.nii.gz"], "label": "labelsTr/k_0.nii.gz"}}
    (src2 / "dataset.json").write_text(json.dumps(dj))
    with pytest.raises(ValueError, match="numTraining is 3 but 1"):
        import_nnunet_raw(src2, tmp_path / "raw")
    out2 = import_nnunet_raw(src2, tmp_path / "raw", strict=False)
    dj2 = json.loads((out2 / "dataset.json").read_text())
    assert "dataset" not in dj2 and dj2["numTraining"] == 1
    assert load_dataset(out2).case_ids == ("caseB",)
    assert (out2 / "imagesTr" / "caseB_0000.nii.gz").is_file()


def test_import_nnunet_raw_rejects_corrupt_source(tmp_path):
    src = _nnunet_src(tmp_path / "Dataset013_Bad")
    (src / "labelsTr" / "k_1.nii.gz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"k_1\.nii\.gz is not a readable image"):
        import_nnunet_raw(src, tmp_path / "raw")
    assert not (tmp_path / "raw" / "Dataset013_Bad").exists()
    src2 = _nnunet_src(tmp_path / "Dataset014_Trunc", n=2)
    good = (src2 / "imagesTr" / "k_1_0000.nii.gz").read_bytes()
    (src2 / "imagesTr" / "k_1_0000.nii.gz").write_bytes(good[:-30])
    with pytest.raises(ValueError, match=r"k_1_0000\.nii\.gz is corrupt or truncated"):
        import_nnunet_raw(src2, tmp_path / "raw", check="files")  # the copy step still refuses it
    assert not [p for p in (tmp_path / "raw").iterdir()]
