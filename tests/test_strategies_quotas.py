"""Class-balanced quotas per image (METHOD.md 1.6) and per query (1.7), checked on the worked
examples of METHOD.md and on real queries."""

from __future__ import annotations

from collections import Counter

import pytest
from strategies_data import check_valid, make_probs, one_engine_thread, shapes_of  # noqa: F401 (autouse fixture)

from claspe.strategies import Randomness, Stratifier, get_strategy

S66, S33 = Stratifier(fg_share=0.66), Stratifier(fg_share=0.33)


# METHOD.md 1.6 item 4: (dataset, n_patch_per_image, K) -> (per class, plain)
@pytest.mark.parametrize(
    "n,K,per_class,plain",
    [
        (20, 2, 4, 6),  # Hippocampus
        (20, 3, 3, 6),  # ACDC / KiTS
        (20, 15, 1, 6),  # AMOS
        (800, 16, 31, 272),  # WORD
        (150, 2, 33, 50),  # LiTS (150*(1-0.66) = 50.99.. -> 50)
        (100, 1, 33, 34),  # MAMA-MIA
        (50, 42, 1, 17),  # ToothFairy2
    ],
)
def test_per_image_quotas_method_examples(n, K, per_class, plain):
    keys = [*range(1, K + 1), -1]
    q = S66.per_image_quotas(n, keys)
    assert q[-1] == plain
    assert {q[k] for k in range(1, K + 1)} == {per_class}


def test_per_image_quotas_floor_at_one_and_global():
    assert S33.per_image_quotas(2, [1, 2, 3, -1]) == {1: 1, 2: 1, 3: 1, -1: 1}
    assert Stratifier().per_image_quotas(17, [-1]) == {-1: 17}


# METHOD.md 1.7: (query size, K) -> (fg total, per class, remainder, plain)
METHOD_17 = [
    (20, 2, 13, 6, 1, 7), (40, 2, 26, 13, 0, 14), (60, 2, 39, 19, 1, 21),  # Hippocampus
    (30, 3, 19, 6, 1, 11), (60, 3, 39, 13, 0, 21), (90, 3, 59, 19, 2, 31),  # ACDC
    (40, 3, 26, 8, 2, 14), (200, 3, 132, 44, 0, 68), (500, 3, 330, 110, 0, 170),  # KiTS
    (40, 15, 26, 1, 11, 14), (200, 15, 132, 8, 12, 68), (500, 15, 330, 22, 0, 170),  # AMOS
    (800, 16, 528, 33, 0, 272), (150, 2, 99, 49, 1, 51), (100, 1, 66, 66, 0, 34),  # WORD, LiTS, MAMA-MIA
    (2100, 42, 1386, 33, 0, 714),  # ToothFairy2
]


@pytest.mark.parametrize("qs,K,fg,per,rem,plain", METHOD_17)
@pytest.mark.parametrize("mode", ["philox", "nnactive"])
def test_global_quotas_method_examples(qs, K, fg, per, rem, plain, mode):
    classes = list(range(1, K + 1))
    q = S66.global_quotas(qs, classes, Randomness(mode=mode, seed=12345, loop=1))
    assert q[-1] == plain
    assert sum(q[c] for c in classes) == fg
    counts = Counter(q[c] for c in classes)
    assert counts[per + 1] == rem and counts[per] == K - rem
    assert sum(q.values()) == qs


def test_remainder_goes_to_random_classes():
    classes = list(range(1, 6))
    winners = set()
    for seed in range(40):
        q = S66.global_quotas(14, classes, Randomness(mode="philox", seed=seed, loop=0))  # 9 = 5*1 + 4
        winners.add(tuple(c for c in classes if q[c] == 2))
    assert len(winners) > 1  # different seeds give the extra box to different classes


def _key_of(patch, cands):
    hits = [k for k, items in cands.by_key.items() if any(t[3] == patch for t in items)]
    assert len(hits) == 1, (patch, hits)
    return hits[0]


@pytest.mark.parametrize("K,qs,share", [(1, 9, 0.66), (2, 20, 0.66), (3, 30, 0.66), (5, 17, 0.66), (3, 25, 0.33),
                                        (4, 11, 0.33)])
def test_query_follows_class_quotas(K, qs, share):
    """A real query: per key, the number of boxes equals the METHOD 1.7 quota (same Philox shuffle)."""
    name = "clasp_pe" if share == 0.66 else "clasp_pe33_exp"
    s = get_strategy(name)
    probs = make_probs(K * 11 + qs, n_images=5, classes=K + 1, shape=(16, 15, 12))
    kw = dict(query_size=qs, patch_size=(4, 4, 4), stride=2, n_patch_per_image=20, loop=2, num_loops=5, seed=21)
    out = s.query(probs, rng="philox", **kw)
    check_valid(out, query_size=qs, shapes=shapes_of(probs), patch_size=(4, 4, 4))
    cands = s.candidates(probs, **kw)
    got = Counter(_key_of(p, cands) for p in out)
    want = s.stratifier.global_quotas(qs, list(range(1, K + 1)), Randomness(mode="philox", seed=21, loop=2))
    assert dict(got) == {k: v for k, v in want.items() if v}
    n_cls = int(qs * share)
    assert got[-1] == qs - n_cls
    # per image and key: at most the per-image quota
    per_image = s.stratifier.per_image_quotas(20, [*range(1, K + 1), -1])
    for k, items in cands.by_key.items():
        for img, n in Counter(t[1] for t in items).items():
            assert n <= per_image[k], (k, img, n)
    # within a key the selected boxes are that key's best candidates
    for k in got:
        best = [t[3] for t in cands.sorted_key(k)[: got[k]]]
        assert [p for p in out if _key_of(p, cands) == k] == best


def test_explicit_classes_subset_and_order():
    probs = make_probs(5, n_images=4, classes=5)
    s = get_strategy("cla_pe66")
    out = s.query(probs, query_size=10, patch_size=3, stride=2, n_patch_per_image=8, classes=[3, 1], seed=1)
    cands = s.candidates(probs, query_size=10, patch_size=3, stride=2, n_patch_per_image=8, classes=[3, 1], seed=1)
    assert set(cands.by_key) == {3, 1, -1}
    keys = [_key_of(p, cands) for p in out]
    # output order: classes in the given order, then the plain part
    assert keys == sorted(keys, key=[3, 1, -1].index)
    assert Counter(keys) == Counter({3: 3, 1: 3, -1: 4})
