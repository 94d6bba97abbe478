"""Per-class Dice on the held-out split exactly as nnU-Net v2 computes it.

Per case: nnU-Net's ``compute_metrics`` (Dice = 2TP / (2TP + FP + FN), NaN when the class is absent
from both reference and prediction). Per class: NaN-mean over cases. Mean Dice = nnU-Net's
``foreground_mean`` = the mean of the per-class means (METHOD.md §3.6).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np


def case_dice(reference_file: str | os.PathLike, prediction_file: str | os.PathLike,
              labels: Sequence[int]) -> dict[str, float]:
    """Dice per foreground label of one case (nnU-Net ``compute_metrics`` with SimpleITKIO)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    res = compute_metrics(str(reference_file), str(prediction_file), SimpleITKIO(), [int(k) for k in labels], None)
    return {str(k): float(res["metrics"][int(k)]["Dice"]) for k in labels}


def aggregate(per_case: Mapping[str, Mapping[str, float]], labels: Sequence[int]) -> tuple[dict[str, float], float]:
    """``(dice_per_class, mean_dice)``: class = nanmean over cases, mean = mean over classes."""
    per_class = {}
    for k in labels:
        vals = [float(c[str(k)]) for c in per_case.values()]
        arr = np.asarray(vals, dtype=float)
        per_class[str(k)] = float(np.nanmean(arr)) if np.any(~np.isnan(arr)) else math.nan
    vals = list(per_class.values())
    mean = float(np.mean(vals)) if vals else math.nan
    return per_class, mean
