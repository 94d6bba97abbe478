"""Hand-computed checks of claspe.metrics (Dice, AUBC, Final Dice, FG-Eff, mean table)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from claspe import metrics


# ---------------------------------------------------------------- Dice
def test_dice_per_class_hand_values():
    pred = np.array([0, 1, 1, 2, 0, 0])
    ref = np.array([0, 1, 2, 2, 2, 0])
    d = metrics.dice_per_class(pred, ref, [1, 2, 3])
    assert d[1] == pytest.approx(2 * 1 / (2 * 1 + 1 + 0))  # tp=1, fp=1, fn=0
    assert d[2] == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))  # tp=1, fp=0, fn=2
    assert math.isnan(d[3])  # absent in both -> NaN (nnU-Net)


def test_dice_ignore_label_excluded_and_3d():
    ref = np.zeros((4, 4, 4), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[:2] = 1
    pred[:2] = 1
    pred[3, 0, 0] = 1  # false positive inside ignore region
    ref[3] = 9  # ignore label
    assert metrics.dice_per_class(pred, ref, [1])[1] == pytest.approx(2 * 32 / (64 + 1))
    assert metrics.dice_per_class(pred, ref, [1], ignore_label=9)[1] == 1.0


def test_dice_bad_input():
    with pytest.raises(ValueError, match="shape"):
        metrics.dice_per_class(np.zeros(3, int), np.zeros(4, int), [1])
    with pytest.raises(ValueError, match="integer"):
        metrics.dice_per_class(np.full(3, 0.5), np.zeros(3), [1])
    with pytest.raises(ValueError, match="empty"):
        metrics.dice_per_class(np.zeros(3, int), np.zeros(3, int), [])


def test_mean_foreground_dice_nanmean_then_mean():
    per_case = {"a": {"1": 0.5, "2": float("nan")}, "b": {1: 1.0, 2: 0.8}}
    assert metrics.class_means(per_case) == pytest.approx({"1": 0.75, "2": 0.8})
    assert metrics.mean_foreground_dice(per_case) == pytest.approx((0.75 + 0.8) / 2)
    # a class absent everywhere makes the foreground mean NaN, as in nnU-Net
    assert math.isnan(metrics.mean_foreground_dice([{"1": 0.5, "2": float("nan")}]))


# ---------------------------------------------------------------- AUBC / Final Dice
def test_aubc_known_curves():
    assert metrics.aubc([0.7] * 5) == pytest.approx(0.7)
    # (y0/2 + y1 + y2 + y3 + y4/2) / 4 for 5 equally spaced steps
    y = [0.2, 0.4, 0.6, 0.8, 1.0]
    assert metrics.aubc(y) == pytest.approx((0.1 + 0.4 + 0.6 + 0.8 + 0.5) / 4)
    assert metrics.aubc(y, budgets=[40, 80, 120, 160, 200]) == pytest.approx(0.6)
    # uneven budgets: x = [0, 1/3, 1]; area = 1/2·1/3·1 + 2/3·1 = 5/6
    assert metrics.aubc([0.0, 1.0, 1.0], budgets=[0, 1, 3]) == pytest.approx(5 / 6)


@pytest.mark.parametrize("values,budgets,msg", [
    ([0.5], None, "at least 2"),
    ([0.5, float("nan"), 0.6], None, "NaN"),
    ([0.5, 0.6], [10, 10], "distinct"),
    ([0.5, 0.6], [10, float("nan")], "finite"),
    (["a", "b"], None, "numbers"),
    ([0.5, 0.6], [10, 20, 30], "shape"),
    ([[0.5, 0.6]], None, "1-D"),
])
def test_aubc_rejects_bad_input(values, budgets, msg):
    with pytest.raises(ValueError, match=msg):
        metrics.aubc(values, budgets)


@given(st.lists(st.floats(0, 1), min_size=2, max_size=12), st.floats(0.1, 10))
@settings(max_examples=60, deadline=None)
def test_aubc_bounded_and_scale_invariant_in_budgets(y, scale):
    a = metrics.aubc(y)
    assert min(y) - 1e-12 <= a <= max(y) + 1e-12
    b = np.arange(len(y)) * scale + 7
    assert metrics.aubc(y, b) == pytest.approx(a)


def test_aubc_sorts_steps_by_budget_and_takes_a_mapping():
    """METHOD.md §5 sorts a run's loops by budget: budgets given out of order are sorted with their
    values (was a ValueError), and ``{budget: value}`` is the same curve (was a TypeError)."""
    y, b = [0.2, 0.4, 0.6, 0.8, 1.0], [40, 80, 120, 160, 200]
    perm = [3, 0, 4, 2, 1]
    expected = (0.1 + 0.4 + 0.6 + 0.8 + 0.5) / 4
    assert metrics.aubc([y[i] for i in perm], budgets=[b[i] for i in perm]) == pytest.approx(expected)
    assert metrics.aubc({b[i]: y[i] for i in perm}) == pytest.approx(expected)
    assert metrics.aubc({0: 0.0, 3: 1.0, 1: 1.0}) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="not both"):
        metrics.aubc({1: 0.5, 2: 0.6}, budgets=[1, 2])


def test_dice_single_label_and_no_scored_class():
    """A single label value is one label (was a TypeError); cases with no scored class are an
    error (was NaN with numpy RuntimeWarnings)."""
    pred, ref = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2])
    assert metrics.dice_per_class(pred, ref, 2) == metrics.dice_per_class(pred, ref, [2])
    with pytest.raises(ValueError, match="labels must be"):
        metrics.dice_per_class(pred, ref, "1")
    with pytest.raises(ValueError, match="no scored class"):
        metrics.mean_foreground_dice({"a": {}, "b": {}})


def test_class_means_null_is_unscored_and_text_is_an_error():
    """A JSON null Dice was a TypeError; it counts like NaN (class absent in that case)."""
    per_case = {"a": {1: None, 2: 0.5}, "b": {1: 0.4, 2: 0.7}}
    assert metrics.class_means(per_case) == pytest.approx({"1": 0.4, "2": 0.6})
    with pytest.raises(ValueError, match="class '1' must be numbers"):
        metrics.mean_foreground_dice({"a": {1: "x"}})


def test_final_dice():
    assert metrics.final_dice([0.1, 0.3, 0.25]) == 0.25
    with pytest.raises(ValueError):
        metrics.final_dice([0.1, float("nan")])


# ---------------------------------------------------------------- FG-Eff
def _curve(gamma, c=0.86, a=0.5, x0=0.02, n_seeds=4, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    xs = np.linspace(x0, 0.5, 5)
    x = np.concatenate([xs + (0 if k == 0 else rng.uniform(0, 0.01, 5) * (xs > x0)) for k in range(n_seeds)])
    y = c - a * np.exp(-gamma * (x - x0)) + rng.normal(0, noise, x.size) * (x > x0)
    return x, y


@pytest.mark.parametrize("gamma", [0.5, 4.0, 25.0])
def test_fg_eff_recovers_known_gamma_exactly(gamma):
    x, y = _curve(gamma)
    res = metrics.foreground_efficiency(x, y, 0.86)
    g, se = res  # unpacks as (gamma, stderr)
    assert g == pytest.approx(gamma, rel=1e-6)
    assert se < 1e-6 and res.a == pytest.approx(0.5) and res.x0 == pytest.approx(0.02)


def test_fg_eff_noisy_within_standard_errors_and_se_is_sqrt_variance():
    x, y = _curve(6.0, noise=0.01, seed=3)
    res = metrics.foreground_efficiency(x, y, 0.86)
    assert abs(res.gamma - 6.0) < 4 * res.stderr
    assert res.stderr == pytest.approx(math.sqrt(res.variance))
    assert res.variance < res.stderr  # SE > variance when SE < 1: not the reference's pcov[0, 0] "std"
    assert not res.c_fitted


def test_fg_eff_explicit_setting_x0_and_a_and_free_c():
    x, y = _curve(3.0)
    res = metrics.foreground_efficiency(x, y, 0.86, x0=0.02, a=0.5)
    assert res.gamma == pytest.approx(3.0, rel=1e-6)
    free = metrics.foreground_efficiency(x, y, None)
    assert free.c_fitted and free.c == pytest.approx(0.86, abs=1e-4) and free.gamma == pytest.approx(3.0, rel=1e-3)
    np.testing.assert_allclose(res.curve(x), y, atol=1e-9)


def test_fg_eff_bad_input():
    with pytest.raises(ValueError, match="values"):
        metrics.foreground_efficiency([0.1, 0.2], [0.5], 0.9)
    with pytest.raises(ValueError, match="NaN"):
        metrics.foreground_efficiency([0.1, np.nan], [0.5, 0.6], 0.9)
    with pytest.raises(ValueError, match="x0"):
        metrics.foreground_efficiency([0.1, 0.2], [0.5, 0.6], 0.9, x0=0.05)


def test_fg_eff_without_points_beyond_x0_is_an_error():
    """Only starting-budget points (all at x0): the model is c - a for every gamma, so there is no
    gamma to report (was a meaningless gamma=0.001 with variance inf)."""
    with pytest.raises(ValueError, match="not identifiable"):
        metrics.foreground_efficiency([0.1, 0.1, 0.1], [0.5, 0.6, 0.55], 0.9)
    with pytest.raises(ValueError, match="must be numbers"):
        metrics.foreground_efficiency(["a", "b"], [0.5, 0.6], 0.9)


def test_fg_eff_rejects_percent_next_to_fraction():
    """c = 86 (percent, as the paper's tables) with Dice in [0, 1] fitted a meaningless gamma ~0.015
    silently; the same curve on one scale gives the same gamma."""
    x, y = _curve(8.0)
    with pytest.raises(ValueError, match="different scales"):
        metrics.foreground_efficiency(x, y, 86.0)
    with pytest.raises(ValueError, match="different scales"):
        metrics.foreground_efficiency(x, y * 100, 0.86)
    assert metrics.foreground_efficiency(x, y * 100, 86.0).gamma == pytest.approx(8.0, rel=1e-6)
    # free c in percent: was capped at 1 -> c pinned to the largest Dice and a wrong gamma
    free_pct = metrics.foreground_efficiency(x, y * 100, None)
    free = metrics.foreground_efficiency(x, y, None)
    assert free_pct.c == pytest.approx(100 * free.c, rel=1e-4)
    assert free_pct.gamma == pytest.approx(free.gamma, rel=1e-3)


# ---------------------------------------------------------------- mean table
def test_mean_table_standard_error_matches_reference_formula():
    rng = np.random.default_rng(1)
    rows = []
    for s in ("s1", "s2", "s3"):
        for m, off in (("A", 0.1), ("B", 0.0)):
            for seed in range(4):
                rows.append({"setting": s, "method": m, "seed": seed, "AUBC": off + rng.normal(0.6, 0.02)})
    df = pd.DataFrame(rows)
    t = metrics.mean_table(df, ["AUBC"]).set_index("method")
    for m in ("A", "B"):
        g = df[df.method == m]
        var = [np.var(g[g.setting == s].AUBC, ddof=1) for s in ("s1", "s2", "s3")]
        se_ref = math.sqrt(sum(var)) / (2 * 3)  # METHOD §5: sqrt(Σ var_s)/(2·N), 4 seeds
        assert t.loc[m, "AUBC_SE"] == pytest.approx(se_ref)
        assert t.loc[m, "AUBC_CI"] == pytest.approx(1.96 * se_ref)
        assert t.loc[m, "AUBC_mean"] == pytest.approx(np.mean([g[g.setting == s].AUBC.mean() for s in ("s1", "s2", "s3")]))
    # general n: 9 seeds -> sqrt(Σ var / 9) / N
    assert metrics.standard_error([0.09, 0.09], 9) == pytest.approx(math.sqrt(0.02) / 2)


def test_fg_eff_result_access_and_c_alias():
    x, y = _curve(2.0)
    res = metrics.foreground_efficiency(x, y, c=0.86)
    assert res["gamma"] == res.gamma == res[0] and res["stderr"] == res[1] and res["variance"] == res.variance
    with pytest.raises(KeyError):
        res["nope"]
    with pytest.raises(ValueError, match="disagree"):
        metrics.foreground_efficiency(x, y, 0.9, c=0.86)


def test_dice_labels_from_dataset_json_mapping():
    pred = np.array([0, 1, 2, 3])
    ref = np.array([0, 1, 2, 2])
    d = metrics.dice_per_class(pred, ref, {"background": 0, "a": 1, "b": 2, "ignore": 3})
    assert set(d) == {1, 2} and d[1] == 1.0 and d[2] == pytest.approx(2 / 3)


def test_fg_eff_free_c_is_bounded_for_nearly_linear_curves():
    x = np.array([0.01, 0.03, 0.05, 0.01, 0.03, 0.05])
    y = np.array([0.35, 0.38, 0.41, 0.35, 0.381, 0.409])
    res = metrics.foreground_efficiency(x, y, None)
    assert res.c_fitted and max(y) <= res.c <= 1.0 and res.gamma > 0
    np.testing.assert_allclose(res.curve(x), y, atol=2e-3)
