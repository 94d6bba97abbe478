"""claspe.data.colin27: real-anatomy cases from Debian's mricron-data (Colin27 T1 + AAL).

The builder tests need the package (`apt-get install -y mricron-data`, done by `.ci/run`); they are
skipped with that reason when it is absent. The error and label-merging tests run everywhere.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from claspe.data import colin27, load_dataset, read_image
from claspe.data.colin27 import make_colin27_dataset, merged_label_lut

needs_mricron = pytest.mark.skipif(
    not colin27.available(), reason="Debian package mricron-data not installed (apt-get install -y mricron-data)"
)


def test_missing_templates_name_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ch2\.nii\.gz not found: install Debian's mricron-data package \(apt-get install -y mricron-data\)"):
        make_colin27_dataset(tmp_path / "raw", templates=tmp_path)
    assert not colin27.available(tmp_path)


def test_label_merging_rules():
    names = {"Hippocampus_L": 37, "Hippocampus_R": 38, "Cerebelum_3_L": 95, "Vermis_3": 110, "Pallidum_L": 75}
    lut = merged_label_lut(names, colin27.DEFAULT_CLASSES)
    assert lut[95] == lut[110] == 1 and lut[37] == lut[38] == 2 and lut[75] == 3
    assert int((lut > 0).sum()) == 5
    with pytest.raises(ValueError, match="matches no AAL region"):
        merged_label_lut(names, {"x": "^Thalamus"})
    with pytest.raises(ValueError, match="already belong to another class"):
        merged_label_lut(names, {"a": "Hippo", "b": "Hippocampus_L"})


@pytest.fixture(scope="module")
def colin(tmp_path_factory):
    if not colin27.available():
        pytest.skip("Debian package mricron-data not installed (apt-get install -y mricron-data)")
    return make_colin27_dataset(tmp_path_factory.mktemp("raw"), n_cases=3, seed=5)


@needs_mricron
def test_colin27_dataset_is_valid_real_anatomy(colin):
    info = load_dataset(colin, check="deep")
    assert info.name == "Dataset991_Colin27"
    assert info.labels == {"background": 0, "cerebellum": 1, "hippocampus": 2, "pallidum": 3}
    assert info.channel_names == ("T1",) and info.num_cases == 3
    tot = np.zeros(4)
    for c in info.case_ids:
        img, lab = info.read_case(c)
        assert lab.shape == (32, 64, 64) and info.spacing(c) == pytest.approx((3.0, 2.0, 2.0))
        counts = np.bincount(lab.ravel(), minlength=4)
        assert (counts[1:] > 0).all(), f"{c}: every class present"
        tot += counts
        # labels sit on brain tissue, not on air (template grey matter ~80/255 -> ~230..390 after the
        # random gamma; air ~0)
        air = np.percentile(img[0], 5)
        for k in (1, 2, 3):
            assert img[0][lab == k].mean() > max(150, air + 120)
        # the two pallida / hippocampi are lateral, the cerebellum spans the midline
        assert np.ptp(np.argwhere(lab == 3)[:, 2]) > 10
    assert tot[1] > 8 * tot[2] and tot[2] > 2 * tot[3]  # very different sizes
    dj = json.loads((colin / "dataset.json").read_text())
    assert dj["claspe_class_voxels"]["colin_000"]["pallidum"] == int((info.read_label("colin_000") == 3).sum())
    # cases are different warps/crops of the same subject
    a, b = info.read_label("colin_000"), info.read_label("colin_001")
    assert not np.array_equal(a, b)
    # the template's direction cosines are kept (MNI, LPS in ITK terms)
    assert read_image(info.label_paths["colin_000"]).direction == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))


@needs_mricron
def test_colin27_deterministic_and_idempotent(colin, tmp_path):
    p1 = make_colin27_dataset(tmp_path, n_cases=1, seed=5)
    ref = load_dataset(colin)
    one = load_dataset(p1)
    assert np.array_equal(one.read_label("colin_000"), ref.read_label("colin_000"))
    assert np.array_equal(read_image(one.image_paths["colin_000"][0]).array,
                          read_image(ref.image_paths["colin_000"][0]).array)
    assert make_colin27_dataset(tmp_path, n_cases=1, seed=5) == p1
    with pytest.raises(FileExistsError):
        make_colin27_dataset(tmp_path, n_cases=1, seed=6)


@needs_mricron
def test_colin27_custom_classes_and_grid(tmp_path):
    p = make_colin27_dataset(
        tmp_path, n_cases=2, seed=1, shape=(12, 24, 24), spacing=(6.0, 5.0, 5.0),
        classes={"thalamus": r"^Thalamus_[LR]$", "cerebellum": r"^Cerebelum_"}, dataset_name="Dataset993_Small",
        elastic_mm=0.0,
    )
    info = load_dataset(p, check="deep")
    assert info.labels == {"background": 0, "thalamus": 1, "cerebellum": 2}
    assert info.shape("colin_001") == (12, 24, 24)
    with pytest.raises(ValueError, match="background"):
        make_colin27_dataset(tmp_path, classes={"background": "x"})
    with pytest.raises(ValueError, match="shape"):
        make_colin27_dataset(tmp_path, shape=(4, 4, 4))
