"""PPM, rankings, Friedman/Nemenyi and leave-one-seed-out: hand values and properties."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from claspe import metrics


def _p_by_hand(d):
    d = np.asarray(d, float)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    return 2 * stats.t.sf(abs(t), d.size - 1)


# ---------------------------------------------------------------- PPM
def test_ppm_constructed_table_with_known_significance():
    base = np.array([[0.50, 0.60, 0.70, 0.75, 0.80],
                     [0.52, 0.58, 0.71, 0.74, 0.82],
                     [0.49, 0.61, 0.69, 0.77, 0.79],
                     [0.51, 0.59, 0.72, 0.76, 0.81]])
    clear = np.array([0.10, 0.11, 0.09, 0.10])
    weak = np.array([0.05, 0.02, 0.08, 0.03])
    noise = np.array([0.10, -0.10, 0.10, -0.10])  # mean 0
    a = base + clear[:, None]          # A - B = clear (step 2: clear + weak)
    b = base.copy()
    b[:, 2] -= weak
    c = base + noise[:, None]          # C - B = noise (step 2: noise + weak), A - C = clear - noise
    # significance of each paired difference, by hand (t = mean / (sd/√n), df = 3)
    assert _p_by_hand(clear) < 1e-3 and _p_by_hand(clear + weak) < 1e-3
    assert _p_by_hand(clear - noise) > 0.1 and _p_by_hand(noise + weak) > 0.1
    methods, m = metrics.penalty_matrix({"A": a, "B": b, "C": c})
    assert methods == ["A", "B", "C"]
    expected = np.zeros((3, 3))
    expected[0, 1] = 1.0  # A beats B at 5 of 5 steps; nothing else is significant
    np.testing.assert_allclose(m, expected)
    _, mh = metrics.penalty_matrix({"A": a, "B": b, "C": c}, correction="holm")
    np.testing.assert_allclose(mh, expected)  # p < 1e-3 · 15 tests < 0.05: survives Holm
    # B loses: the reference's "Mean" row (column sums / (n-1)) shows it
    np.testing.assert_allclose(metrics.ppm_mean_row(m), [0, 0.5, 0])


def test_ppm_plain_vs_holm_on_single_weak_step():
    base = np.tile(np.linspace(0.5, 0.9, 5), (4, 1))
    weak = np.array([0.05, 0.02, 0.08, 0.03])
    b = base.copy()
    b[:, 3] -= weak
    _, plain = metrics.penalty_matrix({"X": base, "Y": b})
    _, holm = metrics.penalty_matrix({"X": base, "Y": b}, correction="holm")
    assert plain[0, 1] == pytest.approx(0.2) and plain[1, 0] == 0
    # Holm over 5 p-values: the weak one (p≈0.04) is multiplied by 1 (others are NaN: zero diffs)
    _, tests = metrics.pairwise_tests({"X": base, "Y": b}, correction="holm")
    assert sum(math.isfinite(t.p) for t in tests) == 1
    assert holm[0, 1] == pytest.approx(0.2)
    # add a clear step (p << 0.01) and a null step (p = 1): the weak p is now the 2nd largest of 3,
    # Holm multiplies it by 2 -> ≈ 0.084 > 0.05; plain still counts it
    b[:, 0] -= np.array([0.10, 0.11, 0.09, 0.10])
    b[:, 4] -= np.array([0.05, -0.05, 0.05, -0.05])
    _, holm2 = metrics.penalty_matrix({"X": base, "Y": b}, correction="holm")
    assert holm2[0, 1] == pytest.approx(0.2)  # only the clear step survives
    _, plain2 = metrics.penalty_matrix({"X": base, "Y": b})
    assert plain2[0, 1] == pytest.approx(0.4)


def test_ppm_pairs_by_row_and_truncates_and_skips_single_seed():
    a = np.array([[0.6, 0.7], [0.61, 0.71], [0.59, 0.69], [0.9, 0.9]])
    b = a[:3] - np.array([[0.1], [0.11], [0.09]])
    _, m = metrics.penalty_matrix({"a": a, "b": b})  # truncated to 3 pairs
    assert m[0, 1] == 1.0
    _, m1 = metrics.penalty_matrix({"a": a, "b": b[:1]})  # one paired seed: not tested
    assert not m1.any()


def test_ppm_nan_drops_only_its_own_pair():
    """A NaN (missing run) of one seed must not shift the other seeds' pairing: seeds 0, 2, 3 of
    both methods stay paired (before, a's seeds 0, 2, 3 were paired with b's seeds 0, 1, 2)."""
    base = np.array([0.50, 0.80, 0.60, 0.70])[:, None] * np.ones((1, 3))
    b = base - np.array([0.05, 0.051, 0.049, 0.050])[:, None]
    a = base.copy()
    a[1, :] = np.nan
    _, m = metrics.penalty_matrix({"a": a, "b": b})
    assert m[0, 1] == pytest.approx(1.0) and m[1, 0] == 0.0  # a beats b by ~0.05 at every step
    methods, tests = metrics.pairwise_tests({"a": a, "b": b})
    assert [t.n for t in tests] == [3, 3, 3]
    assert all(t.mean_diff == pytest.approx(0.05, abs=1e-3) for t in tests)


def test_ppm_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.penalty_matrix({"a": np.zeros((4, 5))})
    with pytest.raises(ValueError, match="budget steps"):
        metrics.penalty_matrix({"a": np.zeros((4, 5)), "b": np.zeros((4, 4))})
    with pytest.raises(ValueError, match="correction"):
        metrics.penalty_matrix({"a": np.zeros((4, 5)), "b": np.zeros((4, 5))}, correction="bonf")


@given(arrays(np.float64, (3, 4, 5), elements=st.floats(0, 1)), st.sampled_from([None, "holm"]))
@settings(max_examples=25, deadline=None)
def test_ppm_antisymmetry_and_permutation(data, corr):
    res = {"p": data[0], "q": data[1], "r": data[2]}
    methods, m = metrics.penalty_matrix(res, correction=corr)
    assert np.all(np.diag(m) == 0)
    assert np.all(m + m.T <= 1 + 1e-12)
    _, tests = metrics.pairwise_tests(res, correction=corr)
    for t in tests:  # per step at most one direction can be counted
        assert not (t.significant and t.mean_diff == 0)
    rev = {"r": data[2], "q": data[1], "p": data[0]}
    methods2, m2 = metrics.penalty_matrix(rev, correction=corr)
    perm = [methods2.index(x) for x in methods]
    np.testing.assert_allclose(m2[np.ix_(perm, perm)], m)


def test_aggregate_ppm_and_mean_row():
    m1 = (["a", "b"], np.array([[0, 1.0], [0, 0]]))
    m2 = (["a", "b", "c"], np.array([[0, 0.4, 0], [0.2, 0, 0], [0, 0, 0]]))
    methods, tot, cnt = metrics.aggregate_ppm([m1, m2])
    assert methods == ["a", "b", "c"]
    assert tot[0, 1] == pytest.approx(1.4) and tot[1, 0] == pytest.approx(0.2)
    assert cnt[0, 1] == 2 and cnt[0, 2] == 1
    np.testing.assert_allclose(metrics.ppm_mean_row(tot), tot.sum(axis=0) / 2)


def test_aggregate_ppm_and_mean_row_check_shapes():
    """A matrix that does not fit its method list, or a bare matrix, was an IndexError; a non-square
    matrix gave a mean row silently."""
    with pytest.raises(ValueError, match=r"matrix shape \(2, 2\) does not fit 3 methods"):
        metrics.aggregate_ppm([(["a", "b", "c"], np.zeros((2, 2)))])
    with pytest.raises(ValueError, match=r"must be a \(methods, matrix\) pair"):
        metrics.aggregate_ppm([np.zeros((3, 3))])
    with pytest.raises(ValueError, match="square"):
        metrics.ppm_mean_row(np.zeros((3, 2)))


# ---------------------------------------------------------------- rankings
def _table():
    return pd.DataFrame({"A": [0.9, 0.8, 0.7], "B": [0.8, 0.7, 0.6], "C": [0.7, 0.6, 0.5]},
                        index=["s1", "s2", "s3"])


def test_rank_ties_min_and_mean_ranks():
    t = pd.DataFrame({"A": [0.9, 0.5], "B": [0.9, 0.6], "C": [0.1, 0.7]}, index=["s1", "s2"])
    r = metrics.rank_table(t)
    assert r.loc["s1"].tolist() == [1, 1, 3]  # tie -> minimum rank
    assert r.loc["s2"].tolist() == [3, 2, 1]
    mr = metrics.mean_ranks(t).set_index("method")
    assert mr.loc["A", "mean_rank"] == 2.0 and mr.loc["A", "std_rank"] == pytest.approx(math.sqrt(2))


def test_ranks_of_a_plain_array_and_of_no_setting():
    """A 2-D array is a settings × methods table (was AttributeError: no .isna); a table without
    settings is a ValueError (was IndexError)."""
    a = np.array([[0.9, 0.9, 0.1], [0.5, 0.6, 0.7]])
    assert metrics.rank_table(a).to_numpy().tolist() == [[1, 1, 3], [3, 2, 1]]
    assert metrics.mean_ranks(a).set_index("method")["mean_rank"].to_dict() == {0: 2.0, 1: 1.5, 2: 2.0}
    with pytest.raises(ValueError, match="at least one setting"):
        metrics.mean_ranks(pd.DataFrame({"A": [], "B": []}))
    with pytest.raises(ValueError, match="2-D"):
        metrics.rank_table(np.zeros(3))


@given(arrays(np.float64, (4, 6), elements=st.floats(0, 1), unique=True))
@settings(max_examples=40, deadline=None)
def test_ranks_sum_property(vals):
    t = pd.DataFrame(vals, columns=list("abcdef"))
    r = metrics.rank_table(t)
    assert np.all(r.sum(axis=1) == 6 * 7 / 2)


def test_friedman_hand_value_and_nemenyi_formula():
    res = metrics.friedman_nemenyi(_table())
    # every setting ranks A<B<C -> rank sums 3, 6, 9: χ² = 12/(n k (k+1)) Σ R² - 3 n (k+1) = 6
    assert res.statistic == pytest.approx(6.0)
    assert res.pvalue == pytest.approx(math.exp(-3))  # chi2(2) survival = exp(-x/2)
    # Nemenyi: q = |R̄i - R̄j| / sqrt(k(k+1)/(6n)), p = P(studentized range(k, inf) > q·√2)
    k, n = 3, 3
    q = 2.0 / math.sqrt(k * (k + 1) / (6 * n))
    p_ac = stats.studentized_range.sf(q * math.sqrt(2), k, np.inf)
    assert res.nemenyi.loc["A", "C"] == pytest.approx(p_ac, rel=1e-3)
    assert res.nemenyi.loc["A", "C"] < res.nemenyi.loc["A", "B"]
    with pytest.raises(ValueError, match=">= 3 methods"):
        metrics.friedman_nemenyi(_table()[["A", "B"]])


def test_friedman_matches_scipy_on_random_table():
    rng = np.random.default_rng(5)
    t = pd.DataFrame(rng.uniform(size=(8, 4)), columns=list("wxyz"))
    res = metrics.friedman_nemenyi(t)
    ref = stats.friedmanchisquare(*[t[c] for c in t])
    assert res.statistic == pytest.approx(ref.statistic) and res.pvalue == pytest.approx(ref.pvalue)


def test_leave_one_seed_out_stable_and_unstable():
    rows = []
    for s in ("s1", "s2"):
        for seed in range(4):
            rows.append({"setting": s, "method": "A", "seed": seed, "AUBC": 0.8 + 0.01 * seed})
            rows.append({"setting": s, "method": "B", "seed": seed, "AUBC": 0.7})
            # C beats A only because of seed 3
            rows.append({"setting": s, "method": "C", "seed": seed, "AUBC": 0.5 if seed < 3 else 1.9})
    df = pd.DataFrame(rows)
    lo = metrics.leave_one_seed_out(df, "AUBC")
    full = lo[lo.dropped_seed == "none"].set_index("method")
    assert full.loc["C", "mean_rank"] == 1.0
    drop3 = lo[lo.dropped_seed == "3"].set_index("method")
    assert drop3.loc["C", "mean_rank"] == 3.0 and drop3["top"].iloc[0] == "A"
    assert drop3["kendall_tau"].iloc[0] < 1
    assert set(lo.dropped_seed) == {"none", "0", "1", "2", "3"}
