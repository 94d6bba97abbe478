"""Dice per class and the nnU-Net "foreground mean" Dice (METHOD.md §3.6).

Conventions follow nnU-Net's ``compute_metrics_on_folder``:

* per case and class: Dice = 2·TP / (2·TP + FP + FN); **NaN** when the class is absent from both the
  reference and the prediction (TP + FP + FN = 0);
* voxels whose reference value is the ignore label (if given) are excluded from every count;
* class mean = ``nanmean`` over cases (cases where the class is absent in both do not count);
* "Mean Dice" (``foreground_mean``) = plain mean of the class means. As in nnU-Net, a class that is
  absent from every case has a NaN class mean and therefore makes the foreground mean NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping

import numpy as np


def _labels(labels) -> list[int]:
    if isinstance(labels, (int, np.integer)) and not isinstance(labels, bool):  # one label value
        labels = [labels]
    if isinstance(labels, (str, bytes)) or not isinstance(labels, (Mapping, Iterable)):
        raise ValueError(f"labels must be label values (ints) or a dataset.json labels mapping, got {labels!r}")
    if isinstance(labels, Mapping):  # a dataset.json "labels" dict: name -> value (background/ignore skipped)
        labels = [v for k, v in labels.items() if str(k).lower() not in ("background", "ignore")
                  and not isinstance(v, (list, tuple))]
    out = []
    for lab in labels:
        if isinstance(lab, bool) or not isinstance(lab, (int, np.integer)):
            raise ValueError(f"labels must be integers, got {lab!r}")
        out.append(int(lab))
    if not out:
        raise ValueError("labels is empty: give the foreground label values to score")
    if len(set(out)) != len(out):
        raise ValueError(f"labels contains duplicates: {out}")
    return out


def dice_per_class(prediction, reference, labels: Iterable[int], *, ignore_label: int | None = None) -> dict[int, float]:
    """Dice of each label value between a predicted and a reference label map of one case.

    Args:
        prediction: integer label map (any shape).
        reference: integer label map of the same shape.
        labels: the label values to score (usually the foreground labels 1..K), or a dataset.json
            ``labels`` mapping (name -> value; ``background`` and ``ignore`` are skipped).
        ignore_label: reference value whose voxels are excluded from the counts (nnU-Net's ignore label).

    Returns:
        ``{label: dice}``; NaN for a label absent from both maps (nnU-Net's convention).

    Raises:
        ValueError: shapes differ, the maps are not integer-valued, or labels are invalid.
    """
    pred = np.asarray(prediction)
    ref = np.asarray(reference)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    for name, arr in (("prediction", pred), ("reference", ref)):
        if arr.dtype.kind not in "iub":
            if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
                continue
            raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    labs = _labels(labels)
    if ignore_label is not None:
        valid = ref != ignore_label
        pred = pred[valid]
        ref = ref[valid]
    out: dict[int, float] = {}
    for lab in labs:
        p = pred == lab
        r = ref == lab
        tp = int(np.count_nonzero(p & r))
        fp = int(np.count_nonzero(p & ~r))
        fn = int(np.count_nonzero(~p & r))
        denom = 2 * tp + fp + fn
        out[lab] = math.nan if denom == 0 else 2.0 * tp / denom
    return out


def class_means(per_case: Mapping[str, Mapping] | Iterable[Mapping]) -> dict[str, float]:
    """Per-class mean Dice over cases (``nanmean``; NaN if a class is NaN in every case).

    ``per_case`` maps case id -> ``{label: dice}`` (or is a sequence of such dicts). Label keys are
    compared as strings, so ``1`` and ``"1"`` are the same class.
    """
    cases = list(per_case.values()) if isinstance(per_case, Mapping) else list(per_case)
    if not cases:
        raise ValueError("per_case is empty: no cases to average")
    keys: list[str] = []
    for c in cases:
        if not isinstance(c, Mapping):
            raise ValueError(f"each case must map label -> dice, got {type(c).__name__}")
        for k in c:
            if str(k) not in keys:
                keys.append(str(k))
    out: dict[str, float] = {}
    for k in keys:
        try:  # None (JSON null) is an unscored class, like NaN
            vals = np.array([math.nan if (v := _get(c, k)) is None else float(v) for c in cases], dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Dice values of class {k!r} must be numbers (or NaN/None): {exc}") from exc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[k] = float(np.nanmean(vals)) if vals.size else math.nan
    return out


def _get(case: Mapping, key: str) -> float:
    if key in case:
        return case[key]
    for k, v in case.items():
        if str(k) == key:
            return v
    return math.nan  # class not scored for this case


def mean_foreground_dice(per_case: Mapping[str, Mapping] | Iterable[Mapping]) -> float:
    """nnU-Net's ``foreground_mean`` Dice: the plain mean over classes of the per-class nanmeans.

    A class that is NaN in every case makes the result NaN, exactly as in nnU-Net.
    """
    means = class_means(per_case)
    if not means:
        raise ValueError("per_case has no scored class: every case maps no label to a Dice value")
    return float(np.mean(list(means.values())))
