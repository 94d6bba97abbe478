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

from __future__ import annotations

import importlib

# name -> submodule; loaded on first access (PEP 562) so that `claspe --help`, which imports
# claspe.strategies.cli, does not pay for numpy/scipy/the engine
_LAZY = {
    "image_key": "_io",
    "BoxMean": "parts",
    "NoiseSchedule": "parts",
    "Randomness": "parts",
    "Scorer": "parts",
    "Selector": "parts",
    "Stratifier": "parts",
    "exponential_schedule": "parts",
    "sigmoid_schedule": "parts",
    "ALIASES": "presets",
    "PRESETS": "presets",
    "get_strategy": "presets",
    "list_strategies": "presets",
    "resolve": "presets",
    "RandomStrategy": "random_baselines",
    "starting_budget": "random_baselines",
    "Candidates": "uncertainty",
    "UncertaintyStrategy": "uncertainty",
}


def __getattr__(name: str):
    if name == "Strategy":
        return __getattr__("UncertaintyStrategy") | __getattr__("RandomStrategy")
    if name in _LAZY:
        value = getattr(importlib.import_module(f"claspe.strategies.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'claspe.strategies' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY, "Strategy"])


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
