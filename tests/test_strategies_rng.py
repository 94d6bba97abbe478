"""Randomness of the strategies: determinism, seed sensitivity, thread-count / fold-streaming /
split invariance, the distribution of power noising (chi-square), and the nnActive-compatible
numpy stream checked against an independent brute-force implementation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from strategies_data import make_probs, one_engine_thread  # noqa: F401 (autouse fixture)

from claspe import Patch
from claspe.strategies import (
    PRESETS,
    Candidates,
    NoiseSchedule,
    Scorer,
    UncertaintyStrategy,
    get_strategy,
)

NOISY = sorted(n for n, s in PRESETS.items() if getattr(s, "noise", None) is not None and s.noise.noisy)
NOISY += ["softrank_bald", "random", "random_fg33", "random_fg66"]
PROBS = make_probs(11, n_images=4, folds=3, classes=4, shape=(16, 14, 12))
LABELS = {k: np.argmax(v.mean(0), 0) for k, v in PROBS.items()}
KW = dict(query_size=9, patch_size=(4, 4, 4), stride=2, n_patch_per_image=8, loop=1, num_loops=5)


@pytest.mark.parametrize("name", NOISY)
@pytest.mark.parametrize("rng", ["philox", "nnactive"])
def test_same_seed_same_patches_other_seed_other_patches(name, rng):
    s = get_strategy(name)
    a = s.query(PROBS, seed=5, rng=rng, labels=LABELS, **KW)
    b = s.query(PROBS, seed=5, rng=rng, labels=LABELS, **KW)
    assert a == b
    others = [s.query(PROBS, seed=seed, rng=rng, labels=LABELS, **KW) for seed in (6, 7)]
    assert any(o != a for o in others)


@pytest.mark.parametrize("name", ["pred_entropy", "bald", "exp_entropy"])
def test_noise_free_strategies_ignore_seed(name):
    s = get_strategy(name)
    assert s.query(PROBS, seed=1, **KW) == s.query(PROBS, seed=2, rng="nnactive", **KW)


def test_philox_noise_depends_on_loop_and_mode():
    s = get_strategy("power_bald")
    kw = {k: v for k, v in KW.items() if k != "loop"}
    a = s.query(PROBS, seed=3, loop=1, **kw)
    assert a != s.query(PROBS, seed=3, loop=2, **kw)  # same beta, other loop -> other noise
    assert a != s.query(PROBS, seed=3, loop=1, rng="nnactive", **kw)


_THREAD_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from strategies_data import make_probs
from claspe.strategies import get_strategy
probs = make_probs(3, n_images=3, shape=(22, 19, 17))
res = {}
for name in ["clasp_pe", "power_bald", "pred_entropy", "softrank_bald"]:
    out = get_strategy(name).query(probs, query_size=10, patch_size=5, stride=1, n_patch_per_image=8, loop=1,
                                   num_loops=5, seed=5)
    res[name] = [p.to_json() for p in out]
print(json.dumps(res))
"""


def test_thread_count_invariance():
    tests_dir = str(Path(__file__).parent)
    outs = []
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        r = subprocess.run([sys.executable, "-c", _THREAD_SCRIPT, tests_dir], env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]
    assert all(len(v) == 10 for v in outs[0].values())


class _LazyFolds(Sequence):
    """A lazy per-fold sequence that records which folds were requested."""

    def __init__(self, arr, log):
        self._arr, self._log = arr, log

    def __len__(self):
        return len(self._arr)

    def __getitem__(self, i):
        if i >= len(self._arr):
            raise IndexError(i)
        self._log.append(i)
        return self._arr[i].copy()


class _CountingMap(Mapping):
    def __init__(self, d):
        self._d, self.lookups = d, []

    def __getitem__(self, k):
        self.lookups.append(k)
        return self._d[k]

    def __iter__(self):
        return iter(self._d)

    def __len__(self):
        return len(self._d)


@pytest.mark.parametrize("name", ["clasp_pe", "softrank_bald", "exp_entropy"])
def test_fold_streaming_invariance(name, tmp_path):
    s = get_strategy(name)
    ref = s.query(PROBS, seed=4, **KW)
    variants = {"list": {k: list(v) for k, v in PROBS.items()}}
    npy, npz, npz1, whole = {}, {}, {}, {}
    for k, v in PROBS.items():
        stem = k.replace(".nii.gz", "")
        npy[k], npz[k], npz1[k] = [], [], []
        for f in range(v.shape[0]):
            np.save(tmp_path / f"{stem}_f{f}.npy", v[f])
            np.savez_compressed(tmp_path / f"{stem}_f{f}.npz", probabilities=v[f])  # nnU-Net's layout
            np.savez(tmp_path / f"{stem}_f{f}_other.npz", some_name=v[f])  # a single-array npz
            npy[k].append(str(tmp_path / f"{stem}_f{f}.npy"))
            npz[k].append(tmp_path / f"{stem}_f{f}.npz")
            npz1[k].append(tmp_path / f"{stem}_f{f}_other.npz")
        np.save(tmp_path / f"{stem}_all.npy", v)
        whole[k] = tmp_path / f"{stem}_all.npy"
    variants.update(npy=npy, npz=npz, npz_single=npz1, whole_file=whole)
    for label, probs in variants.items():
        assert s.query(probs, seed=4, **KW) == ref, label
    log: dict[str, list] = {k: [] for k in PROBS}
    lazy = _CountingMap({k: _LazyFolds(v, log[k]) for k, v in PROBS.items()})
    assert s.query(lazy, seed=4, **KW) == ref
    assert sorted(lazy.lookups) == lazy.lookups == sorted(PROBS)  # each image once, sorted id order
    assert all(v == [0, 1, 2] for v in log.values())  # each fold once, in order


def test_torch_tensors_give_the_same_result():
    torch = pytest.importorskip("torch")
    s = get_strategy("clasp_pe")
    assert s.query({k: torch.from_numpy(v) for k, v in PROBS.items()}, seed=4, **KW) == s.query(PROBS, seed=4, **KW)


@pytest.mark.parametrize("name", ["clasp_pe", "power_bald", "softrank_bald", "cla_pe33"])
def test_split_pool_invariance(name):
    """Candidates of two halves of the pool (e.g. two processes) merge into the whole pool's query."""
    s = get_strategy(name)
    ids = sorted(PROBS)
    whole = s.query(PROBS, seed=8, **KW)
    kw = {k: v for k, v in KW.items()}
    parts = [s.candidates({k: PROBS[k] for k in half}, seed=8, **kw) for half in (ids[::2], ids[1::2])]
    merged = Candidates.merge(parts)
    assert s.compose(merged, query_size=KW["query_size"], loop=KW["loop"], seed=8) == whole
    reversed_order = {k: PROBS[k] for k in reversed(ids)}
    assert s.query(reversed_order, seed=8, **KW) == whole
    with pytest.raises(ValueError, match="more than one part"):
        Candidates.merge([parts[0], parts[0]])


# ----------------------------------------------------------------------------------------------
# statistics of power noising
# ----------------------------------------------------------------------------------------------


def _pool_of_identical_lines(p1: np.ndarray, n_images: int) -> dict[str, np.ndarray]:
    """n_images copies of a [1, 2, L, 1, 1] line; voxel i has P(class 1) = p1[i]."""
    line = np.stack([1 - p1, p1]).astype(np.float32)[None, :, :, None, None]
    return {f"img{i:04d}": line for i in range(n_images)}


def _pick_counts(strategy, pool, *, seeds, loop, rng="philox"):
    n = len(pool)
    counts = np.zeros(next(iter(pool.values())).shape[2], np.int64)
    for seed in seeds:
        out = strategy.query(pool, query_size=n, patch_size=1, stride=1, n_patch_per_image=1, loop=loop,
                             num_loops=5, seed=seed, rng=rng)
        assert len({p.file for p in out}) == n  # one pick (each image's first) per image
        for p in out:
            counts[p.coords[0]] += 1
    return counts


_P_STEEP = (0.5, 0.35, 0.25, 0.15, 0.1, 0.06)
_P_MID = (0.5, 0.42, 0.35, 0.3, 0.26, 0.22)
_P_FLAT = (0.5, 0.45, 0.4, 0.37, 0.34, 0.31)


@pytest.mark.parametrize(
    "name,loop,beta,rng,p1",
    [("power_pe", 0, 1.0, "philox", _P_STEEP), ("power_pe", 0, 1.0, "nnactive", _P_STEEP),
     ("sched", 1, 100 ** 0.25, "philox", _P_MID), ("sched", 2, 10.0, "philox", _P_FLAT)],
)
def test_first_pick_follows_score_power_beta(name, loop, beta, rng, p1):
    """Over many images/seeds, the first pick is position i with probability PE_i^beta / sum."""
    if name == "sched":
        strategy = UncertaintyStrategy(name="pe_exp", description="PE with the exponential schedule",
                                       scorer=Scorer(kind="pe"), noise=NoiseSchedule(kind="exponential"))
    else:
        strategy = get_strategy(name)
    p1 = np.asarray(p1)
    pe = -(p1 * np.log(p1) + (1 - p1) * np.log(1 - p1))
    pool = _pool_of_identical_lines(p1, 250)
    counts = _pick_counts(strategy, pool, seeds=range(8), loop=loop, rng=rng)
    n = counts.sum()
    expect = pe**beta / np.sum(pe**beta) * n
    assert expect.min() >= 5
    p_ok = stats.chisquare(counts, expect).pvalue
    assert p_ok > 1e-3, (counts, expect.round(1), p_ok)
    # the test can fail: other exponents are rejected
    for wrong in (0.0, 2 * beta):
        w = pe**wrong / np.sum(pe**wrong) * n
        assert stats.chisquare(counts, w).pvalue < 1e-6, wrong


# ----------------------------------------------------------------------------------------------
# the nnActive-compatible stream, checked against an independent implementation
# ----------------------------------------------------------------------------------------------


def _overlap(a0, a1, b0, b1):
    return all(x < y + w and y < x + v for x, v, y, w in zip(a0, a1, b0, b1))


def _brute_force(pool, *, score, seed, beta, n, qs, patch, stride, share=None, classes=(), softrank=False,
                 shuffle_first=False, annotated=()):
    """Plain re-implementation of the reference's query with a numpy Generator (float64 math)."""
    gen = np.random.default_rng(seed)
    keys = [*classes, -1] if share is not None else [-1]
    cands = {k: [] for k in keys}
    for img in sorted(pool):
        folds = pool[img].astype(np.float64)
        mean = folds.mean(0)

        def ent(p):
            return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=0)

        pe = ent(mean)
        if score == "pe":
            maps = [pe]
        elif score == "class_pe":
            maps = [pe * mean[c] for c in classes] + [pe]
        else:  # bald
            maps = [np.maximum(pe - np.mean([ent(f) for f in folds], axis=0), 0.0)]
        shape = pe.shape
        pe_size = [min(p, d) for p, d in zip(patch, shape)]
        grid = tuple((d - p) // s + 1 for d, p, s in zip(shape, pe_size, stride))
        order = list(keys)
        if shuffle_first and share is not None:
            gen.shuffle(order)
        ranked = {}
        for k, m in zip(keys, maps):
            box = np.empty(grid)
            for i, j, h in np.ndindex(*grid):
                x, y, z = i * stride[0], j * stride[1], h * stride[2]
                box[i, j, h] = m[x : x + pe_size[0], y : y + pe_size[1], z : z + pe_size[2]].mean()
            if beta is not None:
                with np.errstate(divide="ignore"):
                    box = np.log(box) + gen.gumbel(0.0, 1.0 / beta, size=grid)
            ranked[k] = box
        if share is not None and not shuffle_first:
            gen.shuffle(order)
        taken = [(p.coords, p.size) for p in annotated if p.file == img]
        for k in order:
            if share is None:
                quota = n * (2 if softrank else 1)
            else:
                quota = max(int(n * (1 - share)) if k == -1 else int(n * (share / len(keys))), 1)
            flat = ranked[k].ravel()
            got = 0
            for f in np.argsort(-flat, kind="stable"):
                if got == quota:
                    break
                st = tuple(int(g) * s for g, s in zip(np.unravel_index(f, grid), stride))
                if any(_overlap(st, pe_size, b0, b1) for b0, b1 in taken):
                    continue
                taken.append((st, tuple(pe_size)))
                cands[k].append((flat[f], Patch(file=img, coords=st, size=tuple(pe_size))))
                got += 1
    if softrank:
        allc = sorted(cands[-1], key=lambda t: -t[0])
        soft = -np.log(np.arange(1, len(allc) + 1)) + gen.gumbel(0.0, 1.0, size=len(allc))
        return [allc[i][1] for i in np.argsort(-soft, kind="stable")[:qs]]
    if share is None:
        return [t[1] for t in sorted(cands[-1], key=lambda t: -t[0])[:qs]]
    n_cls = int(qs * share)
    quota = {c: n_cls // len(classes) for c in classes}
    quota[-1] = qs - n_cls
    cl = list(classes)
    gen.shuffle(cl)
    for c in cl[: n_cls % len(classes)]:
        quota[c] += 1
    out = []
    for k in keys:
        out += [t[1] for t in sorted(cands[k], key=lambda t: -t[0])[: quota[k]]]
    return out


NN_POOL = make_probs(23, n_images=3, folds=3, classes=3, shape=(10, 9, 8))
NN_ANN = [Patch(file=sorted(NN_POOL)[1], coords=(0, 0, 0), size=(4, 5, 4))]
NN_KW = dict(patch=(3, 3, 3), stride=(1, 2, 1), n=20, qs=11)


@pytest.mark.parametrize(
    "name,extra",
    [
        ("clasp_pe", dict(score="class_pe", beta=100 ** 0.25, share=0.66, classes=(1, 2))),
        ("clasp_pe33_sharp_sigmoid", dict(score="class_pe", beta=None, share=0.33, classes=(1, 2))),
        ("cla_pe66", dict(score="class_pe", beta=None, share=0.66, classes=(1, 2))),
        ("power_bald", dict(score="bald", beta=1.0)),
        ("power_pe", dict(score="pe", beta=1.0)),
        ("softrank_bald", dict(score="bald", beta=None, softrank=True)),
        ("pred_entropy", dict(score="pe", beta=None)),
    ],
)
def test_nnactive_stream_matches_independent_generator(name, extra):
    seed = 12345 + 1 + 1  # the reference's query seed for loop 1
    s = get_strategy(name)
    extra = dict(extra)
    if name == "clasp_pe33_sharp_sigmoid":
        extra["beta"] = float(s.noise.values(5)[1])
    got = s.query(NN_POOL, query_size=NN_KW["qs"], patch_size=NN_KW["patch"], stride=NN_KW["stride"],
                  n_patch_per_image=NN_KW["n"], loop=1, num_loops=5, seed=seed, rng="nnactive", annotated=NN_ANN)
    want = _brute_force(NN_POOL, seed=seed, annotated=NN_ANN, **NN_KW, **extra)
    assert got == want
    if extra.get("share") is not None and extra.get("beta") is not None:
        # METHOD.md 1.8's order (key shuffle before the Gumbel arrays) is a different stream
        assert _brute_force(NN_POOL, seed=seed, annotated=NN_ANN, shuffle_first=True, **NN_KW, **extra) != got


def test_npy_folds_of_other_float_dtypes_and_bad_shapes(tmp_path):
    s = get_strategy("clasp_pe")
    ref = s.query(PROBS, seed=4, **KW)
    probs64 = {}
    for k, v in PROBS.items():
        probs64[k] = []
        for f in range(v.shape[0]):
            path = tmp_path / f"{k}_{f}.npy"
            np.save(path, v[f].astype(np.float64))  # float64 folds are converted on load
            probs64[k].append(path)
    assert s.query(probs64, seed=4, **KW) == ref
    np.save(tmp_path / "bad.npy", PROBS[sorted(PROBS)[0]][0, 0])
    with pytest.raises(ValueError, match=r"expected \[C, X, Y, Z\]"):
        s.query({"x": [tmp_path / "bad.npy"]}, seed=4, **KW)


def test_engine_thread_setting_does_not_change_results():
    from claspe import ops

    s = get_strategy("clasp_pe")
    with ops.threads(1):
        one = s.query(PROBS, seed=4, **KW)
    with ops.threads(2):
        two = s.query(PROBS, seed=4, **KW)
    assert one == two
