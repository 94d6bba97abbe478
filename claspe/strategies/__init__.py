"""Query strategies of the nnActive benchmark and ClaSP PE, composed from small parts.

Public API::

    from claspe.strategies import get_strategy, list_strategies, starting_budget
    patches = get_strategy("clasp_pe").query(
        probabilities,                 # {image id: [M, C, X, Y, Z] | [fold arrays/paths, ...] | path}
        query_size=40, patch_size=(20, 20, 20), stride=1, n_patch_per_image=20,
        loop=0, num_loops=5, seed=12345,
        annotated=[],                  # Patch list already labelled (nnActive dicts accepted)
        rng="philox",                  # or "nnactive" (then seed = experiment seed + loop + 1)
        labels=None,                   # {image id: int label array} for the label-based random baselines
        classes=None,                  # foreground class ids (default 1..C-1)
    )                                  # -> list[Patch], exactly query_size long, or ValueError

* :func:`get_strategy` / :func:`list_strategies` -- presets table (:mod:`.presets`); the reference's
  registered names (``mutual_information``, ``class_power_pe66_exp``, ``random-label2`` ...) are aliases.
* :func:`starting_budget` -- ``random-label2-all-classes`` (METHOD.md 3.2).
* Parts: :mod:`.parts` (Scorer, BoxMean, NoiseSchedule, Stratifier, Selector, Randomness) and the
  schedules :func:`exponential_schedule`, :func:`sigmoid_schedule`.
"""

from claspe.strategies._io import image_key
from claspe.strategies.parts import (
    BoxMean,
    NoiseSchedule,
    Randomness,
    Scorer,
    Selector,
    Stratifier,
    exponential_schedule,
    sigmoid_schedule,
)
from claspe.strategies.presets import ALIASES, PRESETS, get_strategy, list_strategies, resolve
from claspe.strategies.random_baselines import RandomStrategy, starting_budget
from claspe.strategies.uncertainty import Candidates, UncertaintyStrategy

Strategy = UncertaintyStrategy | RandomStrategy

__all__ = [
    "ALIASES",
    "PRESETS",
    "BoxMean",
    "Candidates",
    "NoiseSchedule",
    "RandomStrategy",
    "Randomness",
    "Scorer",
    "Selector",
    "Strategy",
    "Stratifier",
    "UncertaintyStrategy",
    "exponential_schedule",
    "get_strategy",
    "image_key",
    "list_strategies",
    "resolve",
    "sigmoid_schedule",
    "starting_budget",
]
