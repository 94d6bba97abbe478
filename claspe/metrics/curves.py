"""Budget-curve summaries: AUBC and Final Dice (METHOD.md §5)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _as_curve(values, name: str = "values") -> np.ndarray:
    if isinstance(values, Mapping):
        raise ValueError(f"{name} must be a sequence of numbers (for a {{budget: value}} mapping use aubc)")
    try:
        y = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers, one per budget step, got {values!r}") from exc
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per budget step), got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains NaN/inf (only complete runs can be summarised): {y.tolist()}")
    return y


def aubc(values, budgets=None) -> float:
    """Area under the budget curve, trapezoid rule on budgets normalised to [0, 1].

    Args:
        values: the metric (Mean Dice) at each budget step, ordered by budget; or a mapping
            ``{budget: value}`` (then ``budgets`` must be None).
        budgets: the budgets of the steps (distinct; given in any order, the steps are sorted by
            budget first, as METHOD.md §5 sorts a run's loops by budget). ``None`` = equally spaced,
            which is the reference's ``dx = 1/(n-1)``; for 5 steps
            AUBC = (y0/2 + y1 + y2 + y3 + y4/2)/4.

    Returns:
        AUBC in the unit of ``values`` (a constant curve c gives c).

    Raises:
        ValueError: fewer than 2 steps, non-finite values (incomplete run), budgets of the wrong
            length, non-finite or repeated.
    """
    if isinstance(values, Mapping):
        if budgets is not None:
            raise ValueError("give either a {budget: value} mapping or values with budgets=, not both")
        budgets, values = list(values.keys()), list(values.values())
    y = _as_curve(values)
    if y.size < 2:
        raise ValueError(f"AUBC needs at least 2 budget steps, got {y.size}")
    if budgets is None:
        x = np.linspace(0.0, 1.0, y.size)
    else:
        try:
            b = np.asarray(budgets, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"budgets must be numbers, got {budgets!r}") from exc
        if b.shape != y.shape:
            raise ValueError(f"budgets shape {b.shape} != values shape {y.shape}")
        if not np.all(np.isfinite(b)):
            raise ValueError(f"budgets must be finite, got {b.tolist()}")
        order = np.argsort(b, kind="stable")
        b, y = b[order], y[order]
        if np.any(np.diff(b) <= 0):
            raise ValueError(f"budgets must be distinct (one value per budget step), got {np.asarray(budgets).tolist()}")
        x = (b - b[0]) / (b[-1] - b[0])
    return float(np.trapezoid(y, x))


def final_dice(values) -> float:
    """The metric at the last budget step (the reference's "Final Dice")."""
    y = _as_curve(values)
    return float(y[-1])
