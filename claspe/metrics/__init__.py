"""Metrics and statistics of the nnActive / ClaSP PE evaluation (METHOD.md §3.6, §5).

Stable public names::

    from claspe import metrics
    metrics.dice_per_class(prediction, reference, labels)      # {label: dice}, NaN if absent in both
    metrics.mean_foreground_dice(per_case)                     # nnU-Net foreground_mean
    metrics.aubc(values, budgets=None)                         # trapezoid on budgets normalised to [0, 1]
    metrics.final_dice(values)
    metrics.foreground_efficiency(fg_fraction, dice, c)        # -> (gamma, stderr) with fit details
    metrics.penalty_matrix(results, alpha=0.05, correction=None | "holm")  # -> (methods, matrix)
    metrics.rank_table / mean_ranks / friedman_nemenyi / mean_table / leave_one_seed_out
"""

from claspe.metrics.curves import aubc, final_dice
from claspe.metrics.dice import class_means, dice_per_class, mean_foreground_dice
from claspe.metrics.fg_eff import FGEffResult, foreground_efficiency
from claspe.metrics.ppm import PairTest, aggregate_ppm, pairwise_tests, penalty_matrix, ppm_mean_row
from claspe.metrics.ranking import (
    FriedmanResult,
    friedman_nemenyi,
    leave_one_seed_out,
    mean_ranks,
    mean_table,
    rank_table,
    seed_mean_table,
    standard_error,
)

__all__ = [
    "FGEffResult",
    "FriedmanResult",
    "PairTest",
    "aggregate_ppm",
    "aubc",
    "class_means",
    "dice_per_class",
    "final_dice",
    "foreground_efficiency",
    "friedman_nemenyi",
    "leave_one_seed_out",
    "mean_foreground_dice",
    "mean_ranks",
    "mean_table",
    "pairwise_tests",
    "penalty_matrix",
    "ppm_mean_row",
    "rank_table",
    "seed_mean_table",
    "standard_error",
]
