"""The presets table: every strategy of the benchmark as one row of parts, plus the reference's
registered names as aliases."""

from __future__ import annotations

from claspe.strategies.parts import NoiseSchedule, Scorer, Selector, Stratifier
from claspe.strategies.random_baselines import AREAS_FG33, AREAS_FG66, AREAS_RANDOM, RandomStrategy
from claspe.strategies.uncertainty import UncertaintyStrategy

_PE, _CPE, _BALD, _EE = (Scorer(kind=k) for k in ("pe", "class_pe", "bald", "expected_entropy"))
_NONE = NoiseSchedule()
_EXP = NoiseSchedule(kind="exponential", start=1.0, end=100.0)
_SMOOTH = NoiseSchedule(kind="sigmoid", start=1.0, end=100.0, temperature=2.0)
_SHARP = NoiseSchedule(kind="sigmoid", start=1.0, end=100.0, temperature=0.5)
_G = Stratifier()
_S66, _S33 = Stratifier(fg_share=0.66), Stratifier(fg_share=0.33)


def _const(beta: float) -> NoiseSchedule:
    return NoiseSchedule(kind="constant", beta=beta)


def _u(name, desc, scorer, noise=_NONE, strat=_G, selector=None):
    return UncertaintyStrategy(name=name, description=desc, scorer=scorer, noise=noise, stratifier=strat,
                               selector=selector or Selector())


# name -> (strategy, reference aliases).  One row per strategy.
_TABLE = [
    (RandomStrategy(name="random", description="Random: uniform boxes, round robin over the images",
                    areas=AREAS_RANDOM), ("random",)),
    (RandomStrategy(name="random_fg33", description="Random 33% FG: 2/3 uniform, 1/3 centred on a class or its "
                    "border (needs labels)", areas=AREAS_FG33), ("random-label2",)),
    (RandomStrategy(name="random_fg66", description="Random 66% FG: 1/3 uniform, 1/3 class-centred, 1/3 "
                    "border-centred (needs labels)", areas=AREAS_FG66), ("random-label",)),
    (_u("pred_entropy", "Predictive entropy (PE) of the fold mean, box mean, top-k", _PE), ("pred_entropy",)),
    (_u("bald", "BALD (mutual information over the fold models), box mean, top-k", _BALD), ("mutual_information",)),
    (_u("exp_entropy", "Expected entropy (mean fold entropy), box mean, top-k", _EE), ("exp_entropy",)),
    (_u("power_pe", "PowerPE: log PE box mean + Gumbel(0, 1/beta), beta=1", _PE, _const(1.0)), ("power_pe",)),
    (_u("power_bald", "PowerBALD: log BALD box mean + Gumbel(0, 1/beta), beta=1", _BALD, _const(1.0)),
     ("power_bald",)),
    (_u("power_bald_b5", "PowerBALD with beta=5", _BALD, _const(5.0)), ("power_bald_b5",)),
    (_u("power_bald_b10", "PowerBALD with beta=10", _BALD, _const(10.0)), ("power_bald_b10",)),
    (_u("power_bald_b20", "PowerBALD with beta=20", _BALD, _const(20.0)), ("power_bald_b20",)),
    (_u("power_bald_b40", "PowerBALD with beta=40", _BALD, _const(40.0)), ("power_bald_b40",)),
    (_u("softrank_bald", "SoftrankBALD: 2n BALD candidates per image, rank r scored -log r + Gumbel(0,1)", _BALD,
        selector=Selector(final="softrank", candidate_factor=2)), ("softrank_bald",)),
    (_u("cla_pe33", "Cla PE 33%: class-stratified PE*p_k per class (33% of the query) + PE, no noise", _CPE,
        strat=_S33), ("class_pe33",)),
    (_u("cla_pe66", "Cla PE 66%: class-stratified PE*p_k per class (66% of the query) + PE, no noise", _CPE,
        strat=_S66), ("class_pe66",)),
    (_u("clap_pe", "ClaP PE: Cla PE 66% with power noise, constant beta=1", _CPE, _const(1.0), _S66),
     ("class_power_pe66",)),
    (_u("clasp_pe", "ClaSP PE: Cla PE 66% with power noise, beta 1->100 exponential over the loops", _CPE, _EXP,
        _S66), ("class_power_pe66_exp", "clasp_pe66_exp")),
    (_u("clasp_pe33_exp", "ClaSP PE with 33% foreground share (schedule ablation)", _CPE, _EXP, _S33),
     ("class_power_pe33_exp",)),
    (_u("clasp_pe66_smooth_sigmoid", "ClaSP PE 66%, sigmoid beta schedule T=2 (ablation)", _CPE, _SMOOTH, _S66),
     ("class_power_pe66_smooth_sigmoid",)),
    (_u("clasp_pe33_smooth_sigmoid", "ClaSP PE 33%, sigmoid beta schedule T=2 (ablation)", _CPE, _SMOOTH, _S33),
     ("class_power_pe33_smooth_sigmoid",)),
    (_u("clasp_pe66_sharp_sigmoid", "ClaSP PE 66%, sigmoid beta schedule T=0.5 (ablation)", _CPE, _SHARP, _S66),
     ("class_power_pe66_sharp_sigmoid",)),
    (_u("clasp_pe33_sharp_sigmoid", "ClaSP PE 33%, sigmoid beta schedule T=0.5 (ablation)", _CPE, _SHARP, _S33),
     ("class_power_pe33_sharp_sigmoid",)),
]

PRESETS: dict[str, UncertaintyStrategy | RandomStrategy] = {s.name: s for s, _ in _TABLE}
ALIASES: dict[str, str] = {a: s.name for s, aliases in _TABLE for a in aliases if a != s.name}

_NOT_QUERY = {
    "random-label2-all-classes": "it is the starting budget: use claspe.strategies.starting_budget(...)",
    "random-label-all-classes": "starting-budget variant not in the benchmark; use starting_budget(...)",
    "random-all-classes": "starting-budget variant not in the benchmark; use starting_budget(...)",
    "precomputed-queries": "it replays another run's loop files; copy those loop_XXX.json files instead",
    "kmeans_bald": "not part of the benchmark tables and not implemented",
    "expected_dice": "not part of the benchmark tables and not implemented",
}


def resolve(name: str) -> str:
    """Canonical preset name of ``name`` (a preset or a reference alias)."""
    if not isinstance(name, str):
        raise ValueError(f"strategy name must be a string, got {name!r}")
    if name in PRESETS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    valid = ", ".join(PRESETS)
    aliases = ", ".join(f"{a} ({c})" for a, c in ALIASES.items())
    if name in _NOT_QUERY:
        raise ValueError(f"{name!r} is not a query strategy here: {_NOT_QUERY[name]}. Valid names: {valid}")
    raise ValueError(f"unknown strategy {name!r}. Valid names: {valid}. Reference aliases: {aliases}")


def get_strategy(name: str) -> UncertaintyStrategy | RandomStrategy:
    """The preset ``name`` (see :func:`list_strategies`; the reference's registered names are aliases)."""
    return PRESETS[resolve(name)]


def list_strategies(*, aliases: bool = False, descriptions: bool = False) -> list[str] | list[tuple[str, str]]:
    """The preset names in table order (each one accepted by :func:`get_strategy`); with
    ``aliases=True`` also the reference's names.  With ``descriptions=True`` the entries are
    ``(name, one-line description)`` pairs instead, aliases described as ``"alias of <preset>"``."""
    out = [(s.name, s.description) for s, _ in _TABLE]
    if aliases:
        out += [(a, f"alias of {c}") for a, c in ALIASES.items()]
    return out if descriptions else [name for name, _ in out]
