"""claspe.ops boundary: bad input raises ValueError (or FileNotFoundError) naming the problem, on
the compiled CPU backend and on the NumPy backend alike; a failed add leaves the accumulator unchanged."""

from __future__ import annotations

import re

import numpy as np
import pytest

from claspe import _ext, ops

BACKENDS = ["numpy", pytest.param("cpu", marks=pytest.mark.skipif(not _ext.HAS_EXT, reason="no claspe._C"))]


def probs(shape=(3, 4, 5, 6), dtype=np.float32, seed=0):
    a = np.random.default_rng(seed).random(shape, dtype=np.float32) + 0.05
    return (a / a.sum(0, keepdims=True)).astype(dtype)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.mark.parametrize(
    ("mutate", "logits", "match"),
    [
        (lambda p: p.__setitem__((1, 0, 0, 0), np.nan), False, "NaN or Inf"),
        (lambda p: p.__setitem__((0, 3, 4, 5), np.inf), False, "NaN or Inf"),
        (lambda p: p.__setitem__((2, 1, 1, 1), -np.inf), True, "NaN or Inf"),
        (lambda p: p.__setitem__((2, 1, 1, 1), np.nan), True, "NaN or Inf"),
        (lambda p: p.__iadd__(1.0), False, "outside \\[0, 1\\]"),
        (lambda p: p.__imul__(0.9), False, "do not sum to 1"),
        (lambda p: p.__isub__(p.mean() * 2), False, "outside \\[0, 1\\]"),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_bad_folds_rejected_and_accumulator_unchanged(backend, mutate, logits, match, dtype):
    good = probs(dtype=dtype)
    acc = ops.FoldAccumulator(track_fold_entropy=True, backend=backend)
    acc.add(good, logits=logits)
    before = (acc.fold_sum.copy(), acc.mean_fold_entropy().copy(), acc.n_folds)
    bad = probs(dtype=np.float32, seed=1)
    mutate(bad)
    bad = bad.astype(dtype)
    with pytest.raises(ValueError, match=match):
        acc.add(bad, logits=logits)
    np.testing.assert_array_equal(acc.fold_sum, before[0])
    np.testing.assert_array_equal(acc.mean_fold_entropy(), before[1])
    assert acc.n_folds == before[2]
    with pytest.raises(ValueError, match="fold 1") as err:  # names the bad fold
        ops.fold_box_scores([good, bad], patch=2, logits=logits, backend=backend)
    assert re.search(match, str(err.value))
    # a failing first fold leaves an empty accumulator
    fresh = ops.FoldAccumulator(backend=backend)
    with pytest.raises(ValueError, match=match):
        fresh.add(bad, logits=logits)
    assert fresh.n_folds == 0
    with pytest.raises(ValueError, match="no fold"):
        fresh.mean()


def test_small_deviation_within_tolerance_is_accepted(backend):
    p = probs()
    p[0] += 5e-4  # sum 1.0005 < 1 + 1e-3
    acc = ops.FoldAccumulator(backend=backend)
    acc.add(p)
    assert acc.n_folds == 1
    p16 = probs(dtype=np.float16)
    acc16 = ops.FoldAccumulator(backend=backend)
    acc16.add(p16)  # float16 rounding (~1e-3) is within the float16 tolerance 5e-3


def test_fold_shape_class_and_ndim_mismatch(backend):
    acc = ops.FoldAccumulator(backend=backend)
    acc.add(probs())
    with pytest.raises(ValueError, match="4 classes, earlier folds had 3"):
        acc.add(probs((4, 4, 5, 6)))
    with pytest.raises(ValueError, match="differs from earlier folds"):
        acc.add(probs((3, 4, 5, 7)))
    with pytest.raises(ValueError, match="must have 4 dimensions"):
        acc.add(probs()[0])
    with pytest.raises(ValueError, match="float32 or float16"):
        acc.add(probs().astype(np.float64))
    with pytest.raises(ValueError, match="float32 or float16"):
        acc.add(np.ones((3, 4, 5, 6), np.int32))
    with pytest.raises(ValueError, match="fold 1 has 4 classes"):
        ops.fold_box_scores([probs(), probs((4, 4, 5, 6))], patch=2, backend=backend)
    with pytest.raises(ValueError, match="fold 1 shape"):
        ops.fold_box_scores([probs(), probs((3, 4, 5, 7))], patch=2, backend=backend)
    with pytest.raises(ValueError, match="dtype"):
        ops.fold_box_scores([probs(), probs(dtype=np.float16)], patch=2, backend=backend)
    with pytest.raises(ValueError, match="M, C, X, Y, Z"):
        ops.fold_box_scores(np.stack([probs()])[0], patch=2, backend=backend)
    with pytest.raises(ValueError, match="empty"):
        ops.fold_box_scores([], patch=2, backend=backend)


def test_score_arguments(backend):
    acc = ops.FoldAccumulator(backend=backend)
    acc.add(probs())
    with pytest.raises(ValueError, match="unknown score"):
        acc.score_maps("entropy")
    with pytest.raises(ValueError, match="non-empty list of classes"):
        acc.score_maps("class_pe")
    with pytest.raises(ValueError, match=r"classes \[3\] are not channels"):
        acc.score_maps("class_pe", [1, 3])
    with pytest.raises(ValueError, match="track_fold_entropy"):
        acc.score_maps("bald")
    with pytest.raises(ValueError, match="mean_fold_entropy"):
        ops.score_maps(probs(), "expected_entropy", backend=backend)
    with pytest.raises(ValueError, match="spatial shape"):
        ops.score_maps(probs(), "bald", mean_fold_entropy=np.zeros((4, 5, 5), np.float32), backend=backend)
    with pytest.raises(ValueError, match="do not sum to 1"):
        ops.score_maps(probs() * 0.5, "pe", backend=backend)


@pytest.mark.parametrize("bad", [0, -1, (2, 0, 2), (1, 2), "x", "222", (2.5, 2, 2), (True, 2, 2), 2.5])
def test_non_positive_or_malformed_patch_and_stride(backend, bad):
    maps = np.ones((2, 6, 6, 6), np.float32)
    with pytest.raises(ValueError, match="patch"):
        ops.box_mean(maps, bad, 1, backend=backend)
    with pytest.raises(ValueError, match="stride"):
        ops.box_mean(maps, 2, bad, backend=backend)
    with pytest.raises(ValueError, match="patch"):
        ops.fold_box_scores([probs()], patch=bad, backend=backend)
    with pytest.raises(ValueError, match="stride"):
        ops.select_patches(maps, patch=2, stride=bad, volume_shape=(7, 7, 7), quotas=[1, 1], backend=backend)


def test_box_mean_input(backend):
    with pytest.raises(ValueError, match="NaN or Inf"):
        ops.box_mean(np.full((2, 3, 3, 3), np.nan, np.float32), 2, backend=backend)
    with pytest.raises(ValueError, match="dimensions"):
        ops.box_mean(np.ones((3, 3), np.float32), 2, backend=backend)
    with pytest.raises(ValueError, match="float32 or float16"):
        ops.box_mean(np.ones((3, 3, 3)), 2, backend=backend)
    with pytest.raises(ValueError, match="empty"):
        ops.box_mean(np.ones((0, 3, 3, 3), np.float32), 2, backend=backend)


@pytest.mark.parametrize("beta", [0, -1.0, None, float("inf"), float("nan")])
def test_beta_must_be_positive(backend, beta):
    with pytest.raises(ValueError, match="beta"):
        ops.power_noise(np.ones(5, np.float32), beta, seed=1, backend=backend)


def test_noise_arguments(backend):
    s = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match=">= 0"):
        ops.power_noise(-s, 1.0, backend=backend)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ops.power_noise(s * np.nan, 1.0, backend=backend)
    with pytest.raises(ValueError, match="seed"):
        ops.power_noise(s, 1.0, seed=-1, backend=backend)
    with pytest.raises(ValueError, match="seed"):
        ops.power_noise(s, 1.0, seed=2**64, backend=backend)
    with pytest.raises(ValueError, match="key"):
        ops.power_noise(s, 1.0, key=2**31, backend=backend)
    with pytest.raises(ValueError, match="loop"):
        ops.power_noise(s, 1.0, loop=-1, backend=backend)
    with pytest.raises(ValueError, match="noise shape"):
        ops.power_noise(s, noise=np.zeros(16), backend=backend)
    with pytest.raises(ValueError, match="noise contains"):
        ops.power_noise(s, noise=np.full((4, 4), np.inf), backend=backend)


def test_selection_arguments(backend):
    s = np.zeros((2, 3, 3, 3), np.float32)
    kw = dict(patch=2, stride=1, volume_shape=(4, 4, 4), backend=backend)
    with pytest.raises(ValueError, match="does not match volume"):
        ops.select_patches(s, quotas=[1, 1], **{**kw, "volume_shape": (5, 4, 4)})
    with pytest.raises(ValueError, match="1 quotas for 2 keys"):
        ops.select_patches(s, quotas=[1], **kw)
    with pytest.raises(ValueError, match=">= 0"):
        ops.select_patches(s, quotas=[1, -1], **kw)
    with pytest.raises(ValueError, match="NaN or \\+Inf"):
        ops.select_patches(s + np.inf, quotas=[1, 1], **kw)
    with pytest.raises(ValueError, match="blocked"):
        ops.select_patches(s, quotas=[1, 1], blocked=[(1, 2, 3)], **kw)
    with pytest.raises(ValueError, match="blocked size"):
        ops.select_patches(s, quotas=[1, 1], blocked=[((0, 0, 0), (0, 1, 1))], **kw)


def test_fold_files(tmp_path, backend):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        ops.fold_box_scores([tmp_path / "missing.npy"], patch=2, backend=backend)
    txt = tmp_path / "fold.txt"
    txt.write_text("x")
    with pytest.raises(ValueError, match="not a .npy"):
        ops.fold_box_scores([txt], patch=2, backend=backend)
    f64 = tmp_path / "f64.npy"
    np.save(f64, probs().astype(np.float64))
    with pytest.raises(ValueError, match="float32 or float16"):
        ops.fold_box_scores([f64], patch=2, backend=backend)
    good = tmp_path / "good.npy"
    np.save(good, probs())
    out = ops.fold_box_scores([good, str(good)], patch=2, backend=backend)
    assert out.shape == (1, 3, 4, 5)
    with pytest.raises(ValueError, match="not one path"):
        ops.fold_box_scores(str(good), patch=2, backend=backend)


def test_backend_names():
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.FoldAccumulator(backend="gpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.box_mean(np.ones((2, 2, 2), np.float32), 1, backend="tpu")
    with pytest.raises(ValueError, match="threads"):
        ops.set_num_threads(0)


def test_argument_types_give_value_errors(backend):
    """Inputs that used to escape as TypeError (or be truncated): a string beta, a string noise
    array, ``blocked=None``, fractional quotas; one class id as an int is a list of one."""
    s = np.ones((2, 3, 3, 3), np.float32)
    for beta in ("a", True, None):
        with pytest.raises(ValueError, match="beta must be a finite number > 0"):
            ops.power_noise(s, beta, backend=backend)
    with pytest.raises(ValueError, match="noise must be a real-valued array"):
        ops.power_noise(s[0, 0, 0], noise=["a", "b", "c"], backend=backend)
    kw = dict(patch=2, stride=1, volume_shape=(4, 4, 4), backend=backend)
    assert [len(st) for st, _ in ops.select_patches(s, quotas=[1, 1], blocked=None, **kw)] == [1, 1]
    with pytest.raises(ValueError, match="quotas must be integers"):
        ops.select_patches(s, quotas=[1.5, 1], **kw)
    acc = ops.FoldAccumulator(backend=backend)
    acc.add(probs())
    np.testing.assert_array_equal(acc.score_maps("class_pe", 1), acc.score_maps("class_pe", [1]))
    with pytest.raises(ValueError, match="needs a non-empty list of classes"):
        acc.score_maps("class_pe", "x" * 0)
