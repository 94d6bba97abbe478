"""Random baselines (METHOD.md 2) and the starting budget random-label2-all-classes (METHOD.md 3.2)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import ndimage
from strategies_data import check_valid, one_engine_thread  # noqa: F401 (autouse fixture)

from claspe import Patch
from claspe.strategies import RandomStrategy, get_strategy, starting_budget


def _blob_labels(n_images=6, shape=(40, 40, 40)):
    lab = np.zeros(shape, np.int16)
    lab[8:20, 8:20, 8:20] = 1  # 12^3
    lab[26:34, 24:32, 6:14] = 2  # 8^3
    return {f"img{i}.nii.gz": lab.copy() for i in range(n_images)}


def _centre(p: Patch):
    return tuple(c + s // 2 for c, s in zip(p.coords, p.size))


def _border(lab):
    out = np.zeros(lab.shape, bool)
    for c in (1, 2):
        m = lab == c
        out |= m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(3, 1))
    return out


def test_random_round_robin_uniform_range():
    labels = _blob_labels(5, shape=(30, 30, 30))
    out = get_strategy("random").query(None, query_size=20, patch_size=5, seed=1, labels=labels)
    check_valid(out, query_size=20, shapes={k: v.shape for k, v in labels.items()}, patch_size=(5, 5, 5))
    assert set(Counter(p.file for p in out).values()) == {4}  # one box per image per pass
    starts = np.array([p.coords for p in out])
    assert starts.min() >= 0 and starts.max() <= 30 - 5 - 1  # the reference's range [0, dim - patch - 1]


def test_random_takes_shapes_from_probabilities_without_labels():
    probs = {"a": np.full((2, 2, 12, 10, 8), 0.5, np.float32), "b": np.full((2, 2, 9, 9, 9), 0.5, np.float32)}
    out = get_strategy("random").query(probs, query_size=6, patch_size=(4, 4, 20), seed=3)
    check_valid(out, query_size=6, shapes={"a": (12, 10, 8), "b": (9, 9, 9)}, patch_size=(4, 4, 20))
    assert {p.size for p in out} == {(4, 4, 8), (4, 4, 9)}


@pytest.mark.parametrize("name,expect_fg,expect_border", [("random", 0.05, 0.02), ("random_fg33", 0.365, 0.265),
                                                          ("random_fg66", 0.68, 0.5)])
def test_boxes_centred_on_foreground_at_the_expected_rate(name, expect_fg, expect_border):
    labels = _blob_labels()
    lab = labels["img0.nii.gz"]
    border = _border(lab)
    s = get_strategy(name)
    centres = []
    for seed in range(5):
        out = s.query(None, query_size=60, patch_size=4, seed=seed, labels=labels)
        check_valid(out, query_size=60, shapes={k: v.shape for k, v in labels.items()}, patch_size=(4, 4, 4))
        centres += [_centre(p) for p in out]
    fg = np.mean([lab[c] > 0 for c in centres])
    on_border = np.mean([border[c] for c in centres])
    assert abs(fg - expect_fg) < 0.1, fg
    assert abs(on_border - expect_border) < 0.1, on_border


def test_classes_restrict_the_centring_class():
    labels = _blob_labels()
    out = get_strategy("random_fg66").query(None, query_size=30, patch_size=4, seed=2, labels=labels, classes=[2])
    lab = labels["img0.nii.gz"]
    hit = Counter(int(lab[_centre(p)]) for p in out)
    assert hit[2] >= 15 and hit[1] <= 3  # class-1 centres only by chance from uniform boxes
    with pytest.raises(ValueError, match="absent"):
        get_strategy("random_fg66").query(None, query_size=3, patch_size=4, seed=2, labels=labels, classes=[7])


def test_centred_boxes_are_clamped_inside_the_image():
    lab = np.zeros((12, 11, 10), np.int16)
    lab[0, 0, 0] = 1
    lab[11, 10, 9] = 2
    labels = {"x": lab}
    s = RandomStrategy(name="fg_only", description="test: seg/border only", areas=("seg", "border"))
    out = s.query(None, query_size=2, patch_size=5, seed=0, labels=labels)
    assert sorted(p.coords for p in out) == [(0, 0, 0), (7, 6, 5)]
    assert all(p.size == (5, 5, 5) for p in out)


def test_full_images_are_dropped_and_others_filled(caplog):
    labels = {k: v[:10, :10, :10] for k, v in _blob_labels(3).items()}
    full = Patch(file="img1.nii.gz", coords=(0, 0, 0), size=(10, 10, 10))
    for name in ("random", "random_fg66", "random_fg33"):
        caplog.clear()
        with caplog.at_level("INFO", logger="claspe.strategies.random_baselines"):
            out = get_strategy(name).query(None, query_size=6, patch_size=4, seed=5, labels=labels,
                                           annotated=[full])
        assert "could not place a box in img1.nii.gz after 600 tries; dropping the image" in caplog.text
        check_valid(out, query_size=6, shapes={k: v.shape for k, v in labels.items()}, patch_size=(4, 4, 4),
                    annotated=[full])
        assert Counter(p.file for p in out) == {"img0.nii.gz": 3, "img2.nii.gz": 3}


def test_query_larger_than_pool_raises():
    labels = {"a": np.zeros((9, 9, 9), np.int16)}  # starts in [0, 4]: at most 8 boxes of 4^3 fit
    with pytest.raises(ValueError, match=r"only \d of 9 boxes could be placed"):
        get_strategy("random").query(None, query_size=9, patch_size=4, seed=0, labels=labels)


def test_label_based_strategies_need_labels():
    probs = {"a": np.full((1, 2, 8, 8, 8), 0.5, np.float32)}
    for name in ("random_fg33", "random_fg66"):
        with pytest.raises(ValueError, match="needs labels"):
            get_strategy(name).query(probs, query_size=2, patch_size=4, seed=0)


def test_random_seeds():
    labels = _blob_labels(4)
    s = get_strategy("random_fg66")
    a = s.query(None, query_size=8, patch_size=4, seed=1, labels=labels)
    assert a == s.query(None, query_size=8, patch_size=4, seed=1, labels=labels)
    assert a != s.query(None, query_size=8, patch_size=4, seed=2, labels=labels)
    assert a != s.query(None, query_size=8, patch_size=4, seed=1, labels=labels, loop=1)  # philox: (seed, loop)
    b = s.query(None, query_size=8, patch_size=4, seed=1, labels=labels, rng="nnactive")
    assert b == s.query(None, query_size=8, patch_size=4, seed=1, labels=labels, loop=3, rng="nnactive")


# ----------------------------------------------------------------------------------------------
# starting budget
# ----------------------------------------------------------------------------------------------


def _budget_labels():
    """class 3 in images 0-1, class 2 in 0-3, class 1 in all six."""
    out = {}
    for i in range(6):
        lab = np.zeros((20, 20, 20), np.int16)
        lab[3:9, 3:9, 3:9] = 1
        if i < 4:
            lab[12:17, 3:8, 10:15] = 2
        if i < 2:
            lab[12:16, 12:16, 12:16] = 3
        out[f"case{i}.nii.gz"] = lab
    return out


def test_starting_budget_rarest_class_first_each_image_once():
    labels = _budget_labels()
    out = starting_budget(labels, size=12, patch_size=4, seed=12345)
    check_valid(out, query_size=12, shapes={k: v.shape for k, v in labels.items()}, patch_size=(4, 4, 4))
    first = out[:6]
    classes = [int(labels[p.file][_centre(p)]) for p in first]
    assert classes == [3, 3, 2, 2, 1, 1]
    assert len({p.file for p in first}) == 6  # each image used once in phase 1
    assert {p.file for p in first[:2]} == {"case0.nii.gz", "case1.nii.gz"}
    assert {p.file for p in first[2:4]} == {"case2.nii.gz", "case3.nii.gz"}
    assert out == starting_budget(labels, size=12, patch_size=4, seed=12345)
    assert out != starting_budget(labels, size=12, patch_size=4, seed=12346)


def test_starting_budget_respects_annotated_and_background_option():
    labels = _budget_labels()
    ann = [Patch(file="case0.nii.gz", coords=(0, 12, 0), size=(20, 8, 10))]
    out = starting_budget(labels, size=10, patch_size=(4, 4, 4), seed=1, annotated=ann, classes=[0, 3])
    check_valid(out, query_size=10, shapes={k: v.shape for k, v in labels.items()}, patch_size=(4, 4, 4),
                annotated=ann)
    assert [int(labels[p.file][_centre(p)]) for p in out[:4]] == [3, 3, 0, 0]  # background may be listed too


def test_starting_budget_errors():
    labels = _budget_labels()
    rare = {k: np.where(v == 3, 0, v) for k, v in labels.items()}
    rare["case5.nii.gz"][15, 15, 15] = 3
    with pytest.raises(ValueError, match="class 3 is present in 1 image"):
        starting_budget(rare, size=12, patch_size=4, seed=0)
    # classes 2 and 3 share the same two images: after class 2 took them, class 3 has none left
    shared = {k: np.where(v == 2, 0, v) for k, v in labels.items()}
    for k in ("case0.nii.gz", "case1.nii.gz"):
        shared[k][12:17, 3:8, 10:15] = 2
    with pytest.raises(ValueError, match="class 3 is present in 0 image"):
        starting_budget(shared, size=12, patch_size=4, seed=0)
    with pytest.raises(ValueError, match="smaller than 2 boxes x 3 classes"):
        starting_budget(labels, size=5, patch_size=4, seed=0)
    with pytest.raises(ValueError, match="absent"):
        starting_budget(labels, size=12, patch_size=4, seed=0, classes=[1, 9])
    with pytest.raises(ValueError, match="not in the pool"):
        starting_budget(labels, size=12, patch_size=4, seed=0, annotated=[Patch(file="zz", coords=(0, 0, 0),
                                                                                size=(1, 1, 1))])
    with pytest.raises(ValueError, match="needs labels"):
        starting_budget(None, size=12, patch_size=4, seed=0)


class _CountingLabels(dict):
    """A lazy label mapping (like the protocol's ground truth): every access returns a fresh copy;
    counts how many of the returned arrays are alive at the same time."""

    def __init__(self, labels):
        super().__init__(labels)
        self.alive = 0
        self.max_alive = 0

    def _dead(self):
        self.alive -= 1

    def __getitem__(self, k):
        import gc
        import weakref

        gc.collect()
        a = np.array(super().__getitem__(k), copy=True)  # owns its memory: views keep it alive
        self.alive += 1
        weakref.finalize(a, self._dead)
        self.max_alive = max(self.max_alive, self.alive)
        return a


def test_label_based_queries_hold_one_pool_label_at_a_time():
    """The random baselines and the starting budget read a lazy label mapping one image at a time
    (a pool's labels need not fit in memory together), with the same result as an in-memory dict."""
    labels = _budget_labels()
    lazy = _CountingLabels(labels)
    assert starting_budget(lazy, size=12, patch_size=4, seed=12345) == starting_budget(labels, size=12, patch_size=4,
                                                                                       seed=12345)
    assert lazy.max_alive <= 2
    for name in ("random_fg66", "random_fg33", "random"):
        lazy = _CountingLabels(labels)
        got = get_strategy(name).query(None, query_size=10, patch_size=4, seed=3, labels=lazy)
        assert got == get_strategy(name).query(None, query_size=10, patch_size=4, seed=3, labels=labels)
        assert lazy.max_alive <= 2, name


def test_bad_label_array_is_named_when_read():
    labels = _budget_labels()
    labels["case3.nii.gz"] = labels["case3.nii.gz"][0]
    with pytest.raises(ValueError, match=r"labels\['case3.nii.gz'\] must be a 3D array"):
        starting_budget(labels, size=12, patch_size=4, seed=1)
    labels = _budget_labels()
    labels["case1.nii.gz"] = labels["case1.nii.gz"] + 0.5
    with pytest.raises(ValueError, match=r"labels\['case1.nii.gz'\] must hold integer class ids"):
        get_strategy("random_fg66").query(None, query_size=4, patch_size=4, seed=1, labels=labels)
