"""Presets table, aliases, every preset's query contract, beta schedules."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from strategies_data import check_valid, labels_from_probs, make_probs, one_engine_thread, shapes_of  # noqa: F401 (autouse fixture)

from claspe import Patch
from claspe.strategies import (
    ALIASES,
    PRESETS,
    NoiseSchedule,
    exponential_schedule,
    get_strategy,
    list_strategies,
    sigmoid_schedule,
)
from claspe.strategies.presets import resolve

REQUIRED = [
    "random", "random_fg33", "random_fg66", "pred_entropy", "bald", "power_pe", "power_bald", "power_bald_b5",
    "power_bald_b10", "power_bald_b20", "power_bald_b40", "softrank_bald", "cla_pe33", "cla_pe66", "clap_pe",
    "clasp_pe", "exp_entropy", "clasp_pe33_exp", "clasp_pe66_smooth_sigmoid", "clasp_pe33_smooth_sigmoid",
    "clasp_pe66_sharp_sigmoid", "clasp_pe33_sharp_sigmoid",
]

REFERENCE_NAMES = {
    "random": "random", "random-label2": "random_fg33", "random-label": "random_fg66",
    "pred_entropy": "pred_entropy", "mutual_information": "bald", "power_pe": "power_pe",
    "power_bald": "power_bald", "power_bald_b5": "power_bald_b5", "power_bald_b10": "power_bald_b10",
    "power_bald_b20": "power_bald_b20", "power_bald_b40": "power_bald_b40", "softrank_bald": "softrank_bald",
    "exp_entropy": "exp_entropy", "class_pe33": "cla_pe33", "class_pe66": "cla_pe66",
    "class_power_pe66": "clap_pe", "class_power_pe66_exp": "clasp_pe", "class_power_pe33_exp": "clasp_pe33_exp",
    "class_power_pe66_smooth_sigmoid": "clasp_pe66_smooth_sigmoid",
    "class_power_pe33_smooth_sigmoid": "clasp_pe33_smooth_sigmoid",
    "class_power_pe66_sharp_sigmoid": "clasp_pe66_sharp_sigmoid",
    "class_power_pe33_sharp_sigmoid": "clasp_pe33_sharp_sigmoid",
}


def test_list_strategies_names_are_accepted_by_get_strategy():
    names = list_strategies()
    assert names == [n for n, _ in list_strategies(descriptions=True)]
    assert all(isinstance(n, str) for n in names)
    assert set(REQUIRED) <= set(names)
    for name in list_strategies(aliases=True):
        assert get_strategy(name) is PRESETS[resolve(name)], name


def test_list_strategies_has_every_preset_with_one_line_description():
    listed = dict(list_strategies(descriptions=True))
    assert set(REQUIRED) <= set(listed)
    assert set(listed) == set(PRESETS)
    for name, desc in listed.items():
        assert desc and "\n" not in desc, name
    with_aliases = dict(list_strategies(aliases=True, descriptions=True))
    for alias, canon in ALIASES.items():
        assert with_aliases[alias] == f"alias of {canon}"


@pytest.mark.parametrize("ref,canon", sorted(REFERENCE_NAMES.items()))
def test_reference_names_are_aliases(ref, canon):
    assert get_strategy(ref) is get_strategy(canon)
    assert get_strategy(ref).name == canon


def test_presets_are_rows_of_parts():
    s = get_strategy("clasp_pe")
    assert (s.scorer.kind, s.noise.kind, s.stratifier.fg_share, s.selector.final) == (
        "class_pe", "exponential", 0.66, "top")
    assert get_strategy("clap_pe").noise == NoiseSchedule(kind="constant", beta=1.0)
    assert get_strategy("cla_pe33").stratifier.fg_share == 0.33 and not get_strategy("cla_pe33").noise.noisy
    assert get_strategy("softrank_bald").selector.candidate_factor == 2
    assert [get_strategy(f"power_bald_b{b}").noise.beta for b in (5, 10, 20, 40)] == [5, 10, 20, 40]
    assert get_strategy("clasp_pe66_smooth_sigmoid").noise.temperature == 2.0
    assert get_strategy("clasp_pe33_sharp_sigmoid").noise.temperature == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.noise = NoiseSchedule()


PROBS = make_probs(7, n_images=4, folds=3, classes=4)
LABELS = labels_from_probs(PROBS)
IDS = sorted(PROBS)
ANNOTATED = [Patch(file=IDS[0], coords=(2, 2, 2), size=(6, 6, 6)), Patch(file=IDS[2], coords=(0, 0, 0), size=(5, 12, 4))]


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("rng", ["philox", "nnactive"])
def test_every_preset_exact_size_no_overlap(name, rng):
    strategy = get_strategy(name)
    for qs, patch, stride in ((13, (4, 4, 4), 2), (6, (3, 5, 20), (1, 2, 3))):
        out = strategy.query(PROBS, query_size=qs, patch_size=patch, stride=stride, n_patch_per_image=6, loop=1,
                             num_loops=5, seed=3, annotated=ANNOTATED, rng=rng, labels=LABELS)
        check_valid(out, query_size=qs, shapes=shapes_of(PROBS), patch_size=patch, annotated=ANNOTATED)
        assert {p.file for p in out} <= set(IDS)


def test_exponential_schedule_values():
    np.testing.assert_allclose(exponential_schedule(5), [1, 3.16227766, 10, 31.6227766, 100], rtol=1e-8)
    s = get_strategy("clasp_pe").noise
    betas = [s.beta_at(loop, 5) for loop in range(4)]  # the loops that query
    np.testing.assert_allclose(betas, [1.0, 3.162, 10.0, 31.62], rtol=1e-3)
    assert exponential_schedule(1).tolist() == [1.0]
    np.testing.assert_allclose(exponential_schedule(3), [1, 10, 100])


def test_sigmoid_schedule_values():
    np.testing.assert_allclose(sigmoid_schedule(5, temperature=2.0), [1, 15.7655, 50.5, 85.2345, 100], atol=1e-3)
    np.testing.assert_allclose(sigmoid_schedule(5, temperature=0.5), [1, 1.2442, 50.5, 99.7558, 100], atol=1e-3)
    v = get_strategy("clasp_pe33_smooth_sigmoid").noise.values(5)
    np.testing.assert_allclose(v, sigmoid_schedule(5, temperature=2.0))
    assert sigmoid_schedule(1).tolist() == [1.0]
    with pytest.raises(ValueError, match="temperature"):
        sigmoid_schedule(5, temperature=0)


def test_constant_and_no_noise_schedules():
    assert get_strategy("power_bald_b20").noise.values(5).tolist() == [20.0] * 5
    assert get_strategy("pred_entropy").noise.beta_at(2, 5) is None
    with pytest.raises(ValueError, match="num_loops"):
        exponential_schedule(0)
    with pytest.raises(ValueError, match="beta"):
        NoiseSchedule(kind="constant", beta=0.0)


def test_schedule_parts_reject_out_of_range_loops_and_betas():
    """beta_at(loop >= num_loops) was an IndexError and loop=-1 silently gave the last beta; a zero or
    negative start/end made a ZeroDivisionError or NaN betas; no class made a ZeroDivisionError."""
    noise = get_strategy("clasp_pe").noise
    assert noise.beta_at(4, 5) == pytest.approx(100.0)
    for loop in (5, -1, 1.5):
        with pytest.raises(ValueError, match="loop must be an integer in 0..num_loops-1"):
            noise.beta_at(loop, 5)
    for kw in (dict(kind="exponential", start=0.0), dict(kind="exponential", start=-1.0),
               dict(kind="sigmoid", end=float("nan"))):
        with pytest.raises(ValueError, match=r"\(a beta\) must be finite and > 0"):
            NoiseSchedule(**kw)
    with pytest.raises(ValueError, match="at least one foreground class"):
        get_strategy("clasp_pe").stratifier.global_quotas(10, [], None)


def test_patch_larger_than_image_is_clipped():
    probs = make_probs(1, n_images=2, shape=(6, 9, 5))
    out = get_strategy("clasp_pe").query(probs, query_size=3, patch_size=(8, 3, 3), stride=1, n_patch_per_image=4,
                                         loop=0, num_loops=5, seed=1)
    check_valid(out, query_size=3, shapes=shapes_of(probs), patch_size=(8, 3, 3))
    assert all(p.size[0] == probs[p.file].shape[2] for p in out)


def test_int_and_triple_arguments_are_equivalent():
    s = get_strategy("power_pe")
    a = s.query(PROBS, query_size=5, patch_size=4, stride=2, loop=0, num_loops=5, seed=9)
    b = s.query(PROBS, query_size=5, patch_size=(4, 4, 4), stride=(2, 2, 2), loop=0, num_loops=5, seed=9)
    assert a == b
