"""Held-out split and class-aware cross-validation splits (METHOD.md §3.1 step 2, §3.4)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)


def _group(case: str, level_separator: str | None) -> str:
    if not level_separator:
        return case
    return case.split(level_separator)[0]


def heldout_split(cases: Iterable[str], *, test_size: float = 0.25, seed: int = 12345,
                  level_separator: str | None = None) -> tuple[list[str], list[str]]:
    """Splits ``cases`` into ``(train_pool, heldout)``, both sorted.

    Unlike nnActive (``os.listdir`` order) the case list is **sorted** before the seeded shuffle, so
    the split depends only on the case names and the seed. ``level_separator`` (e.g. ``"_"``) keeps
    cases sharing the prefix before it (a patient) on the same side. The held-out side gets
    ``ceil(test_size * n_groups)`` groups (>= 1). Raises ValueError when fewer than 2 groups would
    remain for training or ``test_size`` is not in (0, 1).
    """
    cases = sorted(set(cases))
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    groups = sorted({_group(c, level_separator) for c in cases})
    n_val = max(1, math.ceil(float(test_size) * len(groups)))
    if len(groups) - n_val < 2:
        raise ValueError(f"too few cases for a held-out split: {len(cases)} case(s) in {len(groups)} group(s), "
                         f"test_size={test_size} leaves {len(groups) - n_val} group(s) for training (need >= 2)")
    rng = np.random.default_rng(int(seed))
    order = rng.permutation(len(groups))
    val_groups = {groups[i] for i in order[:n_val]}
    val = [c for c in cases if _group(c, level_separator) in val_groups]
    train = [c for c in cases if _group(c, level_separator) not in val_groups]
    return train, val


def cv_splits(case_classes: Mapping[str, Iterable[int]], *, folds: int = 5, seed: int = 12345) -> list[dict]:
    """Class-aware ``folds``-fold split over the annotated images (METHOD.md §3.4).

    ``case_classes`` maps each annotated case id to the foreground classes present in its annotated
    voxels. Classes are handled rarest first (ties by class id); a class's images (shuffled with the
    seeded generator) are placed into folds that do not yet hold that class — smallest fold first —
    until the class sits in 2 different folds, so every training set (all folds but one) contains
    every class that has >= 2 images (a warning otherwise). The rest goes to the smallest folds
    (round-robin in shuffled order). Returns nnU-Net's ``splits_final.json`` list:
    ``[{"train": [...], "val": [...]}, ...]`` (sorted ids).

    ``folds == 1`` trains on every annotated image (``train == val == all``). Raises ValueError
    when there are fewer annotated images than folds.
    """
    folds = int(folds)
    cases = sorted(case_classes)
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    if folds == 1:
        if not cases:
            raise ValueError("no annotated case to train on")
        return [{"train": list(cases), "val": list(cases)}]
    if len(cases) < folds:
        raise ValueError(f"too few annotated cases for {folds}-fold cross-validation: {len(cases)} "
                         f"({cases}); use fewer folds or a larger starting budget")
    rng = np.random.default_rng(int(seed))
    classes_of = {c: {int(k) for k in case_classes[c]} for c in cases}
    all_classes = sorted({k for ks in classes_of.values() for k in ks})
    count = {k: sum(k in classes_of[c] for c in cases) for k in all_classes}
    fold_of: dict[str, int] = {}
    members: list[list[str]] = [[] for _ in range(folds)]

    def place(case: str, fold: int) -> None:
        fold_of[case] = fold
        members[fold].append(case)

    for k in sorted(all_classes, key=lambda k: (count[k], k)):
        if count[k] < 2:
            log.warning("class %d is annotated in only %d image(s): some CV training sets will lack it", k, count[k])
        have = {fold_of[c] for c in cases if c in fold_of and k in classes_of[c]}
        todo = [c for c in cases if c not in fold_of and k in classes_of[c]]
        todo = [todo[i] for i in rng.permutation(len(todo))]
        for c in todo:
            if len(have) >= min(2, folds):
                break
            free = [f for f in range(folds) if f not in have]
            f = min(free, key=lambda f: (len(members[f]), f))
            place(c, f)
            have.add(f)
    rest = [c for c in cases if c not in fold_of]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    for c in rest:
        f = min(range(folds), key=lambda f: (len(members[f]), f))
        place(c, f)
    out = []
    for f in range(folds):
        val = sorted(members[f])
        out.append({"train": sorted(c for c in cases if fold_of[c] != f), "val": val})
    return out


def check_cv_coverage(splits: Sequence[dict], case_classes: Mapping[str, Iterable[int]]) -> dict[int, list[int]]:
    """For each class, the folds whose training set lacks it (diagnostics and tests)."""
    classes = sorted({int(k) for ks in case_classes.values() for k in ks})
    missing: dict[int, list[int]] = {}
    for k in classes:
        lack = [f for f, s in enumerate(splits) if not any(k in set(case_classes[c]) for c in s["train"])]
        if lack:
            missing[k] = lack
    return missing
