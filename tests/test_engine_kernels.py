"""The compiled CPU engine (claspe._C through claspe.ops, backend="cpu") against the NumPy reference
(backend="numpy"): bit-identical maps, noise and selections on random inputs and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from claspe import _ext, ops
from claspe import reference as R

pytestmark = pytest.mark.skipif(not _ext.HAS_EXT, reason="claspe._C is not built")

HYP = settings(derandomize=True, max_examples=50, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def probs(rng, shape, *, dtype=np.float32, sharp=3.0):
    """Random probabilities [C, ...] (some near-one-hot voxels and exact zeros)."""
    a = rng.random(shape, dtype=np.float32) ** sharp
    a[a < 0.01] = 0.0
    a[0] += 1e-3
    a /= a.sum(0, keepdims=True)
    return a.astype(dtype)


def assert_same(a, b):
    """Bit-identical (treating -0.0 == 0.0 and NaN == NaN positions)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def both(fn):
    return fn("cpu"), fn("numpy")


SCORES = [("pe", None), ("class_pe", [1]), ("class_pe", [2, 1]), ("bald", None), ("expected_entropy", None)]


# ---- shared building blocks ---------------------------------------------------------------------


def test_half_to_float_exhaustive():
    bits = np.arange(2**16, dtype=np.uint16)
    got = ops._C().half_to_float_portable(bits)
    want = bits.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_build_has_openmp_and_f16c_info():
    info = _ext.build_info()
    assert info["extension"] and "-ffp-contract=off" in info["cxx_flags"]
    assert "f16c" in info


def test_portable_math_through_score_maps():
    # entropy of a 2-class distribution exercises logf_portable on ~all float32 exponents
    rng = np.random.default_rng(3)
    p1 = np.exp(rng.uniform(-85, 0, 4096)).astype(np.float32).reshape(1, 16, 16, 16)
    p1 = np.concatenate([1 - p1, p1]).astype(np.float32)
    p1[:, 0, 0, :2] = np.array([[1, 0], [0, 1]], np.float32)  # exact 0 * log 0
    cpu, ref = both(lambda be: ops.score_maps(p1, "class_pe", [1], backend=be))
    assert_same(cpu, ref)


# ---- fold accumulation and score maps -----------------------------------------------------------


@HYP
@given(
    c=st.integers(2, 6), x=st.integers(1, 9), y=st.integers(1, 9), z=st.integers(1, 40),
    m=st.integers(1, 4), logits=st.booleans(), half=st.booleans(), seed=st.integers(0, 2**31),
)
def test_accumulator_and_maps_match_reference(c, x, y, z, m, logits, half, seed):
    rng = np.random.default_rng(seed)
    dtype = np.float16 if half else np.float32
    if logits:
        folds = [(rng.standard_normal((c, x, y, z)) * 6).astype(dtype) for _ in range(m)]
    else:
        folds = [probs(rng, (c, x, y, z), dtype=dtype) for _ in range(m)]
    accs = {}
    for be in ("cpu", "numpy"):
        acc = ops.FoldAccumulator(track_fold_entropy=True, backend=be)
        for f in folds:
            acc.add(f, logits=logits)
        accs[be] = acc
    assert accs["cpu"].backend == "cpu" and accs["numpy"].backend == "numpy"
    assert_same(accs["cpu"].fold_sum, accs["numpy"].fold_sum)
    assert_same(accs["cpu"].mean(), accs["numpy"].mean())
    assert_same(accs["cpu"].mean_fold_entropy(), accs["numpy"].mean_fold_entropy())
    for score, cls in SCORES:
        cls = [k for k in cls if k < c] if cls else cls
        if cls == []:
            continue
        assert_same(accs["cpu"].score_maps(score, cls), accs["numpy"].score_maps(score, cls))


def test_reference_accumulator_is_the_spec():
    """ops (both backends) equals the plain reference FoldAccumulator + score_maps."""
    rng = np.random.default_rng(5)
    folds = [(rng.standard_normal((4, 6, 7, 8)) * 3).astype(np.float32) for _ in range(3)]
    ref = R.FoldAccumulator(track_fold_entropy=True)
    acc = ops.FoldAccumulator(track_fold_entropy=True, backend="cpu")
    for f in folds:
        ref.add(f, logits=True)
        acc.add(f, logits=True)
    assert_same(acc.fold_sum, ref.sum)
    assert_same(acc.score_maps("bald"), R.score_maps(ref.mean(), "bald", None, ref.mean_fold_entropy()))


def test_bald_non_negative_and_zero_for_identical_folds():
    rng = np.random.default_rng(1)
    f = probs(rng, (3, 8, 8, 8))
    acc = ops.FoldAccumulator(track_fold_entropy=True, backend="cpu")
    for _ in range(3):
        acc.add(f)
    bald = acc.score_maps("bald")
    assert np.all(bald >= 0) and np.max(bald) < 1e-6
    acc.add(probs(rng, (3, 8, 8, 8)))
    assert np.all(acc.score_maps("bald") >= 0) and acc.score_maps("bald").max() > 0.01


def test_many_classes_and_one_foreground_class():
    rng = np.random.default_rng(2)
    for c, cls in ((42, list(range(1, 42))), (2, [1])):
        folds = [probs(rng, (c, 5, 6, 7)) for _ in range(2)]
        cpu, ref = both(lambda be, folds=folds, cls=cls: ops.fold_box_scores(
            folds, score="class_pe", classes=cls, patch=(3, 2, 4), stride=(1, 2, 3), backend=be))
        assert cpu.shape == (len(cls) + 1, 3, 3, 2)
        assert_same(cpu, ref)


# ---- box mean --------------------------------------------------------------------------------------


@HYP
@given(
    k=st.integers(1, 3), x=st.integers(1, 12), y=st.integers(1, 12), z=st.integers(1, 30),
    patch=st.tuples(st.integers(1, 16), st.integers(1, 16), st.integers(1, 35)),
    stride=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 9)), seed=st.integers(0, 2**31),
)
def test_box_mean_matches_reference(k, x, y, z, patch, stride, seed):
    maps = np.random.default_rng(seed).random((k, x, y, z), dtype=np.float32)
    cpu, ref = both(lambda be: ops.box_mean(maps, patch, stride, backend=be))
    assert cpu.shape == (k, *ops.grid_shape((x, y, z), patch, stride))
    assert_same(cpu, ref)


def test_box_mean_edge_cases():
    rng = np.random.default_rng(4)
    maps = rng.random((2, 9, 10, 11), dtype=np.float32)
    # patch larger than the volume on every axis -> one candidate, the global mean
    out = ops.box_mean(maps, (50, 50, 50), 3, backend="cpu")
    assert out.shape == (2, 1, 1, 1)
    np.testing.assert_allclose(out[:, 0, 0, 0], maps.astype(np.float64).mean(axis=(1, 2, 3)), rtol=1e-6)
    # stride not dividing the extent, 3-d input, float16 input, non-contiguous input
    for a in (maps[0], maps.astype(np.float16), maps[:, ::2, 1:, ::-1], np.moveaxis(maps.copy(order="F"), 0, 0)):
        cpu, ref = both(lambda be, a=a: ops.box_mean(a, (4, 3, 5), (3, 4, 2), backend=be))
        assert_same(cpu, ref)


def test_box_mean_equals_torch_conv3d():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    maps = rng.random((2, 20, 18, 23), dtype=np.float32)
    patch, stride = (5, 4, 7), (3, 2, 4)
    got = ops.box_mean(maps, patch, stride, backend="cpu")
    w = torch.ones((1, 1, *patch), dtype=torch.float64) / float(np.prod(patch))
    want = torch.nn.functional.conv3d(torch.from_numpy(maps.astype(np.float64))[:, None], w, stride=stride)[:, 0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=0)
    assert np.max(np.abs(got - want.numpy()) / want.numpy()) < 1e-6


# ---- fused multi-fold path -------------------------------------------------------------------------


@HYP
@given(
    c=st.integers(2, 5), x=st.integers(1, 10), y=st.integers(1, 10), z=st.integers(1, 25),
    m=st.integers(1, 3), logits=st.booleans(), half=st.booleans(), score=st.sampled_from(range(len(SCORES))),
    patch=st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 30)),
    stride=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6)), seed=st.integers(0, 2**31),
)
def test_fused_fold_box_scores_equal_two_step(c, x, y, z, m, logits, half, score, patch, stride, seed):
    rng = np.random.default_rng(seed)
    dtype = np.float16 if half else np.float32
    if logits:
        folds = [(rng.standard_normal((c, x, y, z)) * 5).astype(dtype) for _ in range(m)]
    else:
        folds = [probs(rng, (c, x, y, z), dtype=dtype) for _ in range(m)]
    name, cls = SCORES[score]
    cls = [k for k in cls if k < c] if cls else None
    acc = ops.FoldAccumulator(track_fold_entropy=True, backend="numpy")
    for f in folds:
        acc.add(f, logits=logits)
    want = R.box_mean(acc.score_maps(name, cls), patch, stride)
    got = ops.fold_box_scores(folds, score=name, classes=cls, patch=patch, stride=stride, logits=logits,
                              backend="cpu")
    assert_same(got, want)
    acc_cpu = ops.FoldAccumulator(track_fold_entropy=True, backend="cpu")
    for f in folds:
        acc_cpu.add(f, logits=logits)
    assert_same(acc_cpu.box_scores(name, cls, patch=patch, stride=stride), want)


def test_fused_memory_mapped_blocks_and_stacked_input(tmp_path):
    rng = np.random.default_rng(7)
    folds = [probs(rng, (3, 13, 9, 10), dtype=np.float16) for _ in range(3)]
    paths = []
    for i, f in enumerate(folds):
        paths.append(tmp_path / f"fold{i}.npy")
        np.save(paths[-1], f)
    want = ops.fold_box_scores(folds, score="class_pe", classes=[1, 2], patch=(4, 4, 4), stride=2, backend="numpy")
    for ppb in (1, 4, None):
        got = ops.fold_box_scores(paths, score="class_pe", classes=[1, 2], patch=(4, 4, 4), stride=2,
                                  planes_per_block=ppb)
        assert_same(got, want)
    stacked = np.stack(folds)
    assert_same(ops.fold_box_scores(stacked, score="class_pe", classes=[1, 2], patch=(4, 4, 4), stride=2), want)
    # non-contiguous views of a bigger array
    big = np.stack([np.pad(f, ((0, 0), (1, 2), (0, 0), (3, 0))) for f in folds]).transpose(0, 1, 2, 3, 4)
    views = [b[:, 1:-2, :, 3:] for b in big]
    assert_same(ops.fold_box_scores(views, score="class_pe", classes=[1, 2], patch=(4, 4, 4), stride=2), want)


# ---- power noise -------------------------------------------------------------------------------------


@HYP
@given(n=st.integers(1, 3000), beta=st.floats(0.01, 100), seed=st.integers(0, 2**64 - 1),
       loop=st.integers(0, 2**32 - 1), image=st.integers(0, 2**32 - 1), key=st.integers(-(2**31), 2**31 - 1))
def test_power_noise_matches_reference(n, beta, seed, loop, image, key):
    rng = np.random.default_rng(n)
    s = rng.random(n).astype(np.float32) ** 4
    s[::7] = 0.0
    cpu, ref = both(lambda be: ops.power_noise(s, beta, seed=seed, loop=loop, image=image, key=key, backend=be))
    assert_same(cpu, ref)
    assert np.all(np.isneginf(cpu[::7]))


def test_power_noise_shapes_and_given_noise():
    rng = np.random.default_rng(8)
    s = rng.random((3, 4, 5, 6), dtype=np.float32)
    cpu, ref = both(lambda be: ops.power_noise(s, 2.0, seed=9, loop=1, image=2, key=-1, backend=be))
    assert_same(cpu, ref)
    assert_same(cpu.ravel(), ops.power_noise(s.ravel(), 2.0, seed=9, loop=1, image=2, key=-1, backend="cpu"))
    g = rng.gumbel(0, 0.5, s.shape)
    cpu, ref = both(lambda be: ops.power_noise(s, noise=g, backend=be))
    assert_same(cpu, ref)
    np.testing.assert_allclose(cpu, np.log(s.astype(np.float64)) + g, rtol=1e-6)


# ---- selection -------------------------------------------------------------------------------------------


@HYP
@given(
    vol=st.tuples(st.integers(1, 30), st.integers(1, 30), st.integers(1, 30)),
    patch=st.tuples(st.integers(1, 35), st.integers(1, 35), st.integers(1, 35)),
    stride=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    quotas=st.lists(st.integers(0, 8), min_size=1, max_size=4),
    n_blocked=st.integers(0, 3), seed=st.integers(0, 2**31),
)
def test_selection_matches_reference(vol, patch, stride, quotas, n_blocked, seed):
    rng = np.random.default_rng(seed)
    grid = ops.grid_shape(vol, patch, stride)
    scores = np.round(rng.random((len(quotas), *grid)), 1).astype(np.float32)  # many ties
    scores[scores < 0.15] = -np.inf
    scores[scores > 0.85] = 0.0
    blocked = [(tuple(int(v) for v in rng.integers(-5, 30, 3)), tuple(int(v) for v in rng.integers(1, 20, 3)))
               for _ in range(n_blocked)]
    cpu, ref = both(lambda be: ops.select_patches(scores, patch=patch, stride=stride, volume_shape=vol,
                                                  quotas=quotas, blocked=blocked, backend=be))
    assert len(cpu) == len(ref) == len(quotas)
    for (s1, v1), (s2, v2) in zip(cpu, ref):
        assert s1.dtype == np.int64 and v1.dtype == np.float32
        assert_same(s1, s2)
        assert_same(v1, v2)


def test_selection_inf_last_ties_by_index_and_runs_out():
    # all-zero box scores -> log gives -inf everywhere except one finite candidate
    scores = np.full((1, 10, 1, 1), -np.inf, np.float32)
    scores[0, 7] = -3.0
    (starts, vals), = ops.select_patches(scores, patch=(1, 1, 1), stride=1, volume_shape=(10, 1, 1), quotas=[4],
                                         backend="cpu")
    assert starts[:, 0].tolist() == [7, 0, 1, 2] and vals[0] == -3.0 and np.all(np.isneginf(vals[1:]))
    # ties: lower flat index first; -0.0 == 0.0
    scores = np.array([0.0, -0.0, 1.0, 1.0, 0.0], np.float32).reshape(1, 5, 1, 1)
    (starts, _), = ops.select_patches(scores, patch=1, stride=1, volume_shape=(5, 1, 1), quotas=[5], backend="cpu")
    assert starts[:, 0].tolist() == [2, 3, 0, 1, 4]
    # overlapping candidates: fewer than the quota, no hang
    scores = np.random.default_rng(0).random((2, 9, 9, 9), dtype=np.float32)
    cpu, ref = both(lambda be: ops.select_patches(scores, patch=8, stride=1, volume_shape=(16, 16, 16),
                                                  quotas=[100, 100], backend=be))
    assert 1 <= len(cpu[0][0]) + len(cpu[1][0]) <= 8  # at most 8 disjoint 8^3 boxes fit in 16^3
    for (s1, v1), (s2, v2) in zip(cpu, ref):
        assert_same(s1, s2)
        assert_same(v1, v2)


def test_selection_annotated_boxes_cover_everything():
    scores = np.random.default_rng(1).random((3, 20, 20, 20), dtype=np.float32)
    blocked = [((0, 0, 0), (10, 40, 40)), ((10, 0, 0), (30, 40, 40))]
    for be in ("cpu", "numpy"):
        sel = ops.select_patches(scores, patch=5, stride=1, volume_shape=(24, 24, 24), quotas=[3, 0, 5],
                                 blocked=blocked, backend=be)
        assert [len(s) for s, _ in sel] == [0, 0, 0]


def test_selection_large_grid_partial_ranking():
    """A 60^3 stride-1 grid (216000 candidates) with many blocked positions."""
    rng = np.random.default_rng(2)
    scores = rng.random((2, 60, 60, 60), dtype=np.float32)
    blocked = [((0, 0, 0), (40, 70, 70))]
    cpu, ref = both(lambda be: ops.select_patches(scores, patch=(6, 6, 6), stride=1, volume_shape=(65, 65, 65),
                                                  quotas=[30, 30], blocked=blocked, backend=be))
    for (s1, v1), (s2, v2) in zip(cpu, ref):
        assert_same(s1, s2)
        assert_same(v1, v2)
    assert all(s[:, 0].min() >= 40 for s, _ in cpu)


# ---- threads ------------------------------------------------------------------------------------------------


def test_one_and_two_threads_identical():
    # sizes above the engine's serial threshold (2**20 reads per kernel, 2**16 noise elements), so
    # the 2-thread runs really run in parallel
    rng = np.random.default_rng(9)
    shape = (4, 80, 80, 64)
    folds = [(rng.standard_normal(shape) * 4).astype(np.float32) for _ in range(3)]
    patch, stride = (7, 6, 5), (2, 1, 1)
    outs = []
    for n in (1, 2):
        with ops.threads(n):
            assert ops.get_num_threads() == n
            acc = ops.FoldAccumulator(track_fold_entropy=True, backend="cpu")
            for f in folds:
                acc.add(f, logits=True)
            fused = ops.fold_box_scores(folds, score="bald", patch=patch, stride=stride, logits=True)
            maps = acc.score_maps("class_pe", [1, 3])
            box = ops.box_mean(maps, patch, stride)
            assert box[0].size >= 2**16
            noise = ops.power_noise(box, 3.0, seed=1, loop=2, image=3, key=1)
            sel = ops.select_patches(noise, patch=patch, stride=stride, volume_shape=shape[1:], quotas=[4, 4, 4])
            outs.append([acc.fold_sum, fused, maps, box, noise] + [a for s in sel for a in s])
    for a, b in zip(*outs):
        assert_same(a, b)
