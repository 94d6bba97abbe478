"""Seeded fold training (real nnU-Net v2, tiny trainer, CPU, no augmentation workers): the same seed
gives bit-identical weights, a resumed fold ends identical to an uninterrupted one, another seed gives
other weights; the protocol seeds each fold from (experiment seed, loop, fold)."""

from __future__ import annotations

import copy
import json
import types

import numpy as np
import pytest
from test_nnunet_trainers import DATASET_JSON, PLANS

pytestmark = pytest.mark.nnunet

TINY = "nnActiveTrainer_tiny"
IGNORE = DATASET_JSON["labels"]["ignore"]


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """3 synthetic cases, labels partial (ground truth in a box, ignore elsewhere), nnU-Net-preprocessed."""
    from claspe.data import make_synthetic_dataset, read_image, write_image
    from claspe.nnunet.plan import preprocess_cases

    root = tmp_path_factory.mktemp("seeding")
    raw = make_synthetic_dataset(root / "raw", n_cases=3, seed=0, shape=(16, 32, 32))
    labels = root / "partial"
    labels.mkdir()
    cases = sorted(p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").glob("*.nii.gz"))
    for case in cases:
        img = read_image(raw / "labelsTr" / f"{case}.nii.gz")
        part = np.full_like(img.array, IGNORE)
        part[2:12, 4:28, 4:28] = img.array[2:12, 4:28, 4:28]
        write_image(labels / f"{case}.nii.gz", part, spacing=img.spacing, origin=img.origin, direction=img.direction)
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["3d_fullres"]["patch_size"] = [16, 32, 32]
    pre = root / "pre"
    preprocess_cases(cases, images_dir=raw / "imagesTr", labels_dir=labels, out_dir=pre, plans=plans,
                     dataset_json=DATASET_JSON)
    (pre / "dataset_fingerprint.json").write_text("{}")
    (pre / "splits_final.json").write_text(json.dumps([{"train": cases, "val": cases}]))
    return pre, plans


def _train(preprocessed, out, seed, **kw):
    import torch

    from claspe.nnunet.trainers import train_fold

    pre, plans = preprocessed
    final = train_fold(TINY, plans=plans, dataset_json=DATASET_JSON, configuration="3d_fullres", fold=0,
                       preprocessed_dir=pre, output_dir=out, seed=seed, **kw)
    return torch.load(final, map_location="cpu", weights_only=False)["network_weights"]


def _equal(a, b) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_resume_identical_other_seed_differs(preprocessed, tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identity is promised for a fixed torch thread count
    try:
        _check_seeding(preprocessed, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _check_seeding(preprocessed, tmp_path):
    import torch

    a = _train(preprocessed, tmp_path / "a", (7, 0, 0))
    np.random.seed(123)  # global RNG states left behind by anything else do not matter
    torch.manual_seed(123)
    b = _train(preprocessed, tmp_path / "b", (7, 0, 0))
    assert _equal(a, b)

    class Stop(Exception):
        pass

    def stop_after_first_epoch(epoch):
        if epoch == 0:
            raise Stop

    with pytest.raises(Stop):
        _train(preprocessed, tmp_path / "c", (7, 0, 0), epoch_hook=stop_after_first_epoch)
    assert (tmp_path / "c" / "fold_0" / "checkpoint_latest.pth").is_file()
    assert not (tmp_path / "c" / "fold_0" / "checkpoint_final.pth").exists()
    c = _train(preprocessed, tmp_path / "c", (7, 0, 0))  # resumes at epoch 1
    assert _equal(a, c)

    d = _train(preprocessed, tmp_path / "d", (7, 0, 1))  # another fold of the same loop: another seed
    assert not _equal(a, d)


@pytest.mark.parametrize("bad", ["7", (), (1, "x"), 1.5, (True,)])
def test_bad_seed_is_a_clear_error(tmp_path, bad):
    from claspe.nnunet.trainers import create_trainer

    with pytest.raises(ValueError, match="seed must be an int"):
        create_trainer(TINY, plans=copy.deepcopy(PLANS), dataset_json=DATASET_JSON, configuration="3d_fullres",
                       fold=0, preprocessed_dir=tmp_path / "pre", output_dir=tmp_path / "out", seed=bad)
    assert not (tmp_path / "out").exists()


def test_derive_seed_is_stable_and_distinct():
    from claspe.nnunet.trainers import derive_seed

    s = derive_seed((12345, 0, 0), 1, 0)
    assert s == derive_seed((12345, 0, 0), 1, 0) and 0 <= s < 2**32
    seeds = {derive_seed((12345, k, f), 1, e) for k in range(3) for f in range(3) for e in range(3)}
    assert len(seeds) == 27


def test_experiment_seeds_each_fold_from_seed_loop_fold(tmp_path, monkeypatch):
    """The protocol's train step hands (experiment seed, loop, fold) to train_fold."""
    import claspe.nnunet.trainers as trainers
    from claspe.protocol.config import ExperimentConfig
    from claspe.protocol.experiment import _Run
    from claspe.protocol.state import State

    calls = []
    monkeypatch.setattr(trainers, "train_fold", lambda name, **kw: calls.append(kw))
    cfg = ExperimentConfig(dataset="Dataset999_x", strategy="random", query_size=4, patch_size=4, seed=99,
                           trainer=TINY, folds=2)
    run = types.SimpleNamespace(cfg=cfg, state=State(tmp_path), progress=False, plans=lambda: {},
                                dataset_json=lambda: {}, model_dir=lambda k: tmp_path / "m", pre_dir=lambda k: tmp_path)
    for k in range(2):
        for f in range(2):
            _Run.train(run, k, f)
    assert [c["seed"] for c in calls] == [(99, 0, 0), (99, 0, 1), (99, 1, 0), (99, 1, 1)]
