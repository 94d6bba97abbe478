"""Synthetic experiment folders for tests and for trying the report without training anything.

The numbers are *computed* from a simple model, never real results: each method has an annotation
speed (how fast it gathers foreground, ``fg_speed``) and an efficiency ``gamma``; the Mean Dice after
loop k follows ``c - a·exp(-gamma·(x - x0))`` of the annotated foreground fraction x, plus Gaussian
seed noise. Folders follow the layout contract of :mod:`claspe.protocol.config` exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from claspe.protocol.config import ExperimentConfig, result_path

DEFAULT_METHODS = {  # strategy -> (gamma, fg_speed)
    "clasp_pe": (9.0, 1.3),
    "random_fg66": (6.0, 1.1),
    "random_fg33": (5.0, 0.9),
    "pred_entropy": (6.5, 1.6),
    "random": (3.0, 0.5),
}


def write_experiment(root, cfg: ExperimentConfig, dice: Sequence[float], fg_fraction: Sequence[float], *,
                     pool_fg_voxels: int = 100_000, n_classes: int = 2, loops_done: int | None = None,
                     seed_noise: int = 0) -> Path:
    """Write one experiment folder (``experiment.json`` + ``results/loop_XXX.json``) and return it.

    ``loops_done`` < ``cfg.query_steps`` leaves the run unfinished (later result files absent).
    Per-class Dice values are spread around the mean (their mean is exactly ``dice[k]``).
    """
    exp = Path(root) / cfg.name
    (exp / "results").mkdir(parents=True, exist_ok=True)
    (exp / "experiment.json").write_text(json.dumps(cfg.to_json(), indent=2))
    n = cfg.query_steps if loops_done is None else loops_done
    rng = np.random.default_rng(seed_noise)
    for k in range(n):
        spread = rng.normal(0, 0.02, n_classes)
        spread -= spread.mean()
        per_class = {str(c + 1): float(dice[k] + spread[c]) for c in range(n_classes)}
        fg = int(round(fg_fraction[k] * pool_fg_voxels))
        doc = {"loop": k, "n_patches": cfg.starting_budget_size + k * cfg.query_size,
               "annotated_voxels": (cfg.starting_budget_size + k * cfg.query_size) * int(np.prod(cfg.patch_size)),
               "annotated_fg_voxels": fg, "pool_fg_voxels": pool_fg_voxels, "fg_fraction": fg / pool_fg_voxels,
               "dice_per_class": per_class, "mean_dice": float(np.mean(list(per_class.values()))), "per_case": {}}
        result_path(exp, k).write_text(json.dumps(doc))
    return exp


def make_experiments(root, *, datasets: Sequence[str] = ("Dataset004_Hippocampus",), regimes=("low", "high"),
                     methods: Mapping[str, tuple[float, float]] | None = None, seeds=(12345, 12346, 12347, 12348),
                     query_steps: int = 5, c: float = 0.86, noise: float = 0.004, seed: int = 0,
                     unfinished: Sequence[tuple[str, int]] = (), paper_settings: bool = True) -> list[Path]:
    """A grid of synthetic experiments (datasets × regimes × methods × seeds).

    With ``paper_settings`` the Hippocampus settings equal the published Main settings (patch 20³,
    stride 1, qs 20/40/60, 20 candidates per image), so ``claspe compare`` finds them.
    ``unfinished`` lists (strategy, seed) pairs whose runs stop after 3 loops.
    """
    methods = dict(methods or DEFAULT_METHODS)
    rng = np.random.default_rng(seed)
    qs_for = {"low": 20, "medium": 40, "high": 60}
    out = []
    for ds in datasets:
        for regime in regimes:
            qs = qs_for.get(regime, 20)
            x0 = 0.01 * qs / 20
            a = c - 0.35
            for seed_v in seeds:
                base_noise = rng.normal(0, noise, query_steps)  # shared by methods (same start budget)
                for strat, (gamma, speed) in methods.items():
                    x = x0 + np.arange(query_steps) * 0.04 * speed * qs / 20
                    x = x + np.r_[0.0, rng.uniform(0, 0.004, query_steps - 1)]
                    y = c - a * np.exp(-gamma * (x - x0)) + base_noise + np.r_[0.0, rng.normal(0, noise, query_steps - 1)]
                    cfg = ExperimentConfig(dataset=ds, strategy=strat, query_size=qs,
                                           patch_size=(20, 20, 20) if paper_settings else (8, 8, 8),
                                           seed=seed_v, label_regime=regime, agg_stride=1, n_patch_per_image=20,
                                           query_steps=query_steps)
                    done = 3 if (strat, seed_v) in set(unfinished) else None
                    out.append(write_experiment(root, cfg, y, x, loops_done=done, seed_noise=seed_v))
    return out
