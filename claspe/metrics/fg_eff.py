"""Foreground efficiency (FG-Eff, called "beta" in the reference code; METHOD.md §5).

Model: ``Dice(x) = c - a·exp(-gamma·(x - x0))`` where x is the cumulative fraction of all
foreground voxels of the training pool that is annotated, c is the full-data Mean Dice of the
matching trainer, x0 the smallest x of the setting and ``a = c - mean Dice of the runs at x0``.
Only gamma is fitted (least squares, ``scipy.optimize.curve_fit``); higher gamma = the curve
approaches the full-data Dice with less annotated foreground.
"""

from __future__ import annotations

import math
import warnings

import numpy as np


class FGEffResult(tuple):
    """``(gamma, stderr)`` — a 2-tuple that unpacks as ``gamma, se = ...`` — with the fit details
    as attributes: ``gamma``, ``stderr`` (sqrt of the fit variance), ``variance`` (``pcov[0, 0]``,
    the value the reference code reports as "std"), ``a``, ``c``, ``x0``, ``n`` (points fitted),
    ``c_fitted`` (True when c was not given and was fitted as a second parameter).
    """

    def __new__(cls, gamma: float, stderr: float, *, variance: float, a: float, c: float, x0: float,
                n: int, c_fitted: bool = False):
        self = super().__new__(cls, (float(gamma), float(stderr)))
        self.variance = float(variance)
        self.a = float(a)
        self.c = float(c)
        self.x0 = float(x0)
        self.n = int(n)
        self.c_fitted = bool(c_fitted)
        return self

    def __getitem__(self, key):
        if isinstance(key, str):  # res["gamma"], res["stderr"], res["variance"], ...
            try:
                return getattr(self, key)
            except AttributeError:
                raise KeyError(key) from None
        return super().__getitem__(key)

    @property
    def gamma(self) -> float:
        return self[0]

    @property
    def stderr(self) -> float:
        return self[1]

    def curve(self, x) -> np.ndarray:
        """The fitted Dice at foreground fractions ``x``."""
        x = np.asarray(x, dtype=float)
        return self.c - self.a * np.exp(-self.gamma * (x - self.x0))

    def __repr__(self) -> str:
        return (f"FGEffResult(gamma={self.gamma:.6g}, stderr={self.stderr:.3g}, variance={self.variance:.3g}, "
                f"a={self.a:.4g}, c={self.c:.4g}, x0={self.x0:.4g}, n={self.n}, c_fitted={self.c_fitted})")


def _start_gamma(x, y, a, c, x0) -> float:
    """Best gamma on a log grid (a robust starting point for the local least-squares fit)."""
    grid = np.logspace(-3, 5, 161)
    sse = [np.sum((y - (c - a * np.exp(-g * (x - x0)))) ** 2) for g in grid]
    return float(grid[int(np.argmin(sse))])


def foreground_efficiency(fg_fraction, dice, full_data_dice: float | None = None, *, x0: float | None = None,
                          a: float | None = None, c: float | None = None) -> FGEffResult:
    """Fit gamma of ``Dice(x) = c - a·exp(-gamma·(x - x0))`` to the points of one method.

    Args:
        fg_fraction: x values, the annotated fraction of the pool's foreground voxels (all seeds and
            loops of the method pooled).
        dice: Mean Dice at those points.
        full_data_dice: c, the full-data Mean Dice of the matching trainer (same unit as ``dice``).
            ``None`` fits c as a second parameter bounded to [max Dice, 1] (not the paper's metric;
            flagged by ``c_fitted=True``) for datasets without a full-data reference.
        x0: the setting's smallest x (over all methods); default: the smallest x given here.
        a: ``c - mean Dice of the runs at x0`` of the setting; default: computed from the points
            given here whose x equals x0.
        c: keyword alias of ``full_data_dice``.

    Returns:
        :class:`FGEffResult` — unpacks as ``(gamma, stderr)`` with ``stderr = sqrt(pcov[0, 0])``, a
        real standard error. Note: the reference implementation reports ``pcov[0, 0]`` itself (a
        variance) as the "std" of gamma; that value is kept as ``.variance``.

    Raises:
        ValueError: shapes differ, fewer than 2 points (3 with c fitted), non-finite input, no
            point at x0 when ``a`` must be computed, or no point beyond x0 (gamma undefined).
    """
    from scipy.optimize import curve_fit

    if c is not None:
        if full_data_dice is not None and float(full_data_dice) != float(c):
            raise ValueError(f"full_data_dice={full_data_dice} and c={c} disagree; give one")
        full_data_dice = c
    try:
        x = np.asarray(fg_fraction, dtype=float).ravel()
        y = np.asarray(dice, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"fg_fraction and dice must be numbers: {exc}") from exc
    if x.shape != y.shape:
        raise ValueError(f"fg_fraction has {x.size} values but dice has {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    if not np.all(keep):
        raise ValueError("fg_fraction/dice contain NaN or inf; drop incomplete points first")
    fit_c = full_data_dice is None
    if x.size < (3 if fit_c else 2):
        raise ValueError(f"foreground_efficiency needs at least {3 if fit_c else 2} points, got {x.size}")
    if x0 is None:
        x0 = float(np.min(x))
    at_x0 = np.isclose(x, x0, rtol=1e-9, atol=1e-12)
    y0 = float(np.mean(y[at_x0])) if np.any(at_x0) else None
    if not np.any(x[~at_x0] > x0):  # every point sits at x0, where the model is c - a for any gamma
        raise ValueError(
            f"foreground_efficiency needs a point with fg_fraction > x0={x0:g} (all {x.size} points are at or "
            f"below x0): gamma is not identifiable from the starting budget alone"
        )

    if not fit_c:
        c = float(full_data_dice)
        if not math.isfinite(c):
            raise ValueError(f"full_data_dice must be finite, got {full_data_dice}")
        if (c > 1.0) != (float(np.max(y)) > 1.0):  # a Dice in [0, 1] next to one in percent
            raise ValueError(
                f"full_data_dice={c:g} and dice (max {float(np.max(y)):g}) are on different scales; give both as "
                f"fractions in [0, 1] or both in percent"
            )
        if a is None:
            if y0 is None:
                raise ValueError(f"no point at x0={x0}; pass a= explicitly")
            a = c - y0
        a = float(a)

        def f(xx, g):
            return c - a * np.exp(-g * (xx - x0))

        g0 = _start_gamma(x, y, a, c, x0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            popt, pcov = curve_fit(f, x, y, p0=[g0], maxfev=20000)
        var = float(pcov[0, 0])
        se = math.sqrt(var) if math.isfinite(var) and var >= 0 else math.nan
        return FGEffResult(popt[0], se, variance=var, a=a, c=c, x0=x0, n=x.size)

    # c unknown: fit (gamma, c) with a = c - y0 tied to the setting's first point
    if y0 is None and a is None:
        raise ValueError(f"no point at x0={x0}; pass a= explicitly")

    def g2(xx, g, cc):
        aa = (cc - y0) if a is None else a
        return cc - aa * np.exp(-g * (xx - x0))

    # c is bounded to [max observed Dice, 1] (a Dice cannot exceed 1; 100 for Dice in percent, i.e.
    # when a value exceeds 1); without the bound a nearly linear curve drives c -> inf and gamma -> 0
    # (not identifiable)
    c_lo = float(np.max(y))
    c_hi = max(100.0 if c_lo > 1.0 else 1.0, c_lo + 1e-6)
    best = None
    for gs in np.logspace(-2, 4, 25):
        for cs in (c_lo + 0.25 * (c_hi - c_lo), c_lo + 0.75 * (c_hi - c_lo)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    popt, pcov = curve_fit(g2, x, y, p0=[gs, cs], bounds=([0.0, c_lo], [np.inf, c_hi]),
                                           maxfev=20000)
                except (RuntimeError, ValueError):
                    continue
            sse = float(np.sum((y - g2(x, *popt)) ** 2))
            if best is None or sse < best[0]:
                best = (sse, popt, pcov)
    if best is None:
        raise ValueError("foreground_efficiency: the fit with free c did not converge")
    _, popt, pcov = best
    var = float(pcov[0, 0])
    se = math.sqrt(var) if math.isfinite(var) and var >= 0 else math.nan
    aa = (popt[1] - y0) if a is None else float(a)
    return FGEffResult(popt[0], se, variance=var, a=aa, c=popt[1], x0=x0, n=x.size, c_fitted=True)
