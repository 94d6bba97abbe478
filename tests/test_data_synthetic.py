"""claspe.data.synthetic: determinism, class presence and imbalance, nnU-Net format, idempotence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from claspe.data import load_dataset, make_synthetic_dataset, read_image
from claspe.data.synthetic import LABELS


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    return make_synthetic_dataset(root, n_cases=12, seed=3)


def _labels(info):
    return {c: info.read_label(c) for c in info.case_ids}


def test_layout_and_dataset_json(synth):
    assert synth.name == "Dataset990_ClaspSynthetic"
    dj = json.loads((synth / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "organ": 1, "lesion": 2, "vessel": 3}
    assert dj["channel_names"] == {"0": "T1"}
    assert dj["numTraining"] == 12
    assert dj["file_ending"] == ".nii.gz"
    info = load_dataset(synth, check="deep")
    assert info.case_ids == tuple(f"synth_{i:03d}" for i in range(12))
    assert info.foreground == (1, 2, 3)
    for c in info.case_ids:
        assert info.image_paths[c] == (synth / "imagesTr" / f"{c}_0000.nii.gz",)
        assert info.label_paths[c] == synth / "labelsTr" / f"{c}.nii.gz"
        assert info.shape(c) == (32, 48, 48)
        assert info.spacing(c) == pytest.approx((2.5, 1.0, 1.0))
    # no temp leftovers
    assert not any(p.name.startswith(".") for p in synth.rglob("*"))


def test_class_presence_and_imbalance(synth):
    info = load_dataset(synth)
    labs = _labels(info)
    present = {k: sum(int((lab == k).any()) for lab in labs.values()) for k in (1, 2, 3)}
    assert present[1] == 12 and present[3] == 12
    assert present[2] == 12 - 3  # floor(12 * 0.25) cases without a lesion
    tot = {k: sum(int((lab == k).sum()) for lab in labs.values()) for k in (1, 2, 3)}
    n_vox = sum(lab.size for lab in labs.values())
    assert 0.04 < tot[1] / n_vox < 0.15  # large organ
    assert tot[1] > 20 * tot[2] and tot[1] > 20 * tot[3]  # strong imbalance
    # recorded counts match the files
    dj = json.loads((synth / "dataset.json").read_text())
    for c, lab in labs.items():
        for name, v in LABELS.items():
            assert dj["claspe_class_voxels"][c][name] == int((lab == v).sum())
    # vessel is thin: in every axis-0 slice it covers few voxels
    for lab in labs.values():
        per_slice = (lab == 3).sum(axis=(1, 2))
        assert per_slice.max() <= 16
        assert (per_slice > 0).sum() >= 0.3 * lab.shape[0]


def test_images_vary_and_contain_noise_and_bias(synth):
    info = load_dataset(synth)
    a = read_image(info.image_paths["synth_000"][0]).array
    b = read_image(info.image_paths["synth_001"][0]).array
    assert a.dtype == np.int16
    assert not np.array_equal(a, b)
    lab = info.read_label("synth_000")
    organ = a[lab == 1].astype(float)
    # noise + bias: organ intensities spread, but organ is brighter than the body background on average
    assert organ.std() > 20
    body_bg = a[(lab == 0) & (a > 200)].astype(float)
    assert organ.mean() > body_bg.mean() + 80


def test_deterministic_per_seed(tmp_path, synth):
    p1 = make_synthetic_dataset(tmp_path / "a", n_cases=12, seed=3)
    info0, info1 = load_dataset(synth), load_dataset(p1)
    for c in info0.case_ids:
        assert np.array_equal(read_image(info0.image_paths[c][0]).array, read_image(info1.image_paths[c][0]).array)
        assert np.array_equal(info0.read_label(c), info1.read_label(c))
    p2 = make_synthetic_dataset(tmp_path / "b", n_cases=3, seed=4, dataset_name="Dataset991_Other")
    other = load_dataset(p2)
    assert not np.array_equal(other.read_label("synth_000"), info0.read_label("synth_000"))


def test_case_independent_of_n_cases(tmp_path):
    small = load_dataset(make_synthetic_dataset(tmp_path / "s", n_cases=2, seed=7, lesion_absent_fraction=0.0))
    big = load_dataset(make_synthetic_dataset(tmp_path / "b", n_cases=5, seed=7, lesion_absent_fraction=0.0))
    for c in small.case_ids:
        assert np.array_equal(small.read_label(c), big.read_label(c))


def test_options_channels_shape_spacing_jitter(tmp_path):
    p = make_synthetic_dataset(
        tmp_path, n_cases=4, seed=1, shape=(12, 40, 36), spacing=(3.0, 0.8, 0.9), n_channels=2,
        shape_jitter=0.2, dataset_name="Dataset992_Two",
    )
    info = load_dataset(p, check="deep")
    assert info.channel_names == ("T1", "T2")
    shapes = {info.shape(c) for c in info.case_ids}
    assert len(shapes) > 1
    for c in info.case_ids:
        assert len(info.image_paths[c]) == 2
        img, lab = info.read_case(c)
        assert img.shape == (2, *lab.shape) == (2, *info.shape(c))
        assert info.spacing(c) == pytest.approx((3.0, 0.8, 0.9))
        assert set(np.unique(lab)) == {0, 1, 2, 3}  # 4 cases: lesion kept in all
        # channel 1 has a bright lesion, channel 0 a dark one
        assert img[1][lab == 2].mean() > img[1][lab == 1].mean()
        assert img[0][lab == 2].mean() < img[0][lab == 1].mean()


def test_idempotent_and_overwrite(tmp_path):
    p = make_synthetic_dataset(tmp_path, n_cases=2, seed=0)
    mtime = (p / "dataset.json").stat().st_mtime_ns
    assert make_synthetic_dataset(tmp_path, n_cases=2, seed=0) == p
    assert (p / "dataset.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_dataset(tmp_path, n_cases=3, seed=0)
    make_synthetic_dataset(tmp_path, n_cases=3, seed=0, overwrite=True)
    assert load_dataset(p).num_cases == 3
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"n_cases": 1}, "n_cases"),
        ({"shape": (4, 48, 48)}, "shape"),
        ({"shape": (32, 48)}, "shape"),
        ({"spacing": (0, 1, 1)}, "spacing"),
        ({"dataset_name": "Synthetic"}, "Dataset123_Name"),
        ({"n_channels": 3}, "n_channels"),
        ({"lesion_absent_fraction": 1.0}, "lesion_absent_fraction"),
    ],
)
def test_bad_arguments(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_dataset(tmp_path, **kw)


@pytest.mark.nnunet
def test_nnunet_own_integrity_checks_accept_the_dataset(synth, tmp_path):
    """nnU-Net v2's per-case checks (the ones verify_dataset_integrity runs in a pool) pass, for one
    and two channels."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import check_cases, verify_labels
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    two = make_synthetic_dataset(tmp_path, n_cases=2, seed=0, n_channels=2, shape_jitter=0.1)
    for root in (synth, two):
        info = load_dataset(root)
        for c in info.case_ids:
            imgs = [str(p) for p in info.image_paths[c]]
            assert check_cases(imgs, str(info.label_paths[c]), info.num_channels, SimpleITKIO)
            assert verify_labels(str(info.label_paths[c]), SimpleITKIO, [0, 1, 2, 3])
