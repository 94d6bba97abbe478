"""Rankings, Friedman/Nemenyi, the mean table and leave-one-seed-out stability (METHOD.md §5).

Inputs are long tables (pandas DataFrames) with one row per run: a setting column, a method column,
a seed column and one column per metric (e.g. ``AUBC``, ``FinalDice``). Per setting the methods are
ranked by their seed-mean (higher = better, ties get the minimum rank, as the reference does);
Friedman's test runs across settings (blocks) and Nemenyi's post-hoc gives pairwise p-values
(``scikit_posthocs.posthoc_nemenyi_friedman``). Only settings in which every method has a value are
used for ranking (complete blocks), and that is stated in the returned objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

Z95 = 1.959963984540054  # two-sided 95% normal quantile (the reference uses 1.96)


def _check_long(df: pd.DataFrame, cols: list[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; has {list(df.columns)}")


def seed_mean_table(df: pd.DataFrame, value: str, *, setting: str = "setting", method: str = "method",
                    complete: bool = True) -> pd.DataFrame:
    """Settings × methods table of seed means of ``value``; ``complete`` drops settings with a gap."""
    _check_long(df, [setting, method, value])
    t = df.groupby([setting, method], sort=False)[value].mean().unstack(method)
    order = list(dict.fromkeys(df[method]))
    t = t.reindex(columns=[m for m in order if m in t.columns])
    if complete:
        t = t.dropna(axis=0, how="any")
    return t


def _as_table(table, what: str) -> pd.DataFrame:
    """A settings × methods DataFrame (a 2-D array gets default row/column labels)."""
    if isinstance(table, pd.DataFrame):
        return table
    try:
        a = np.asarray(table, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} needs a settings × methods DataFrame or 2-D array, got {type(table).__name__}") from exc
    if a.ndim != 2:
        raise ValueError(f"{what} needs a settings × methods table (2-D), got shape {a.shape}")
    return pd.DataFrame(a)


def rank_table(table: pd.DataFrame) -> pd.DataFrame:
    """Rank methods within each setting (row): 1 = best (highest value), ties -> minimum rank."""
    from scipy.stats import rankdata

    table = _as_table(table, "rank_table")
    if table.isna().any().any():
        raise ValueError("rank_table needs a complete settings × methods table (no NaN)")
    ranks = np.vstack([rankdata(-row, method="min") for row in table.to_numpy(dtype=float)]) if len(table) else \
        np.zeros((0, table.shape[1]))
    return pd.DataFrame(ranks, index=table.index, columns=table.columns)


def mean_ranks(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation (ddof=1; 0 for one setting) of each method's rank across settings."""
    r = rank_table(table)
    if len(r) == 0:
        raise ValueError("mean_ranks needs at least one setting (the table has no rows)")
    std = r.std(axis=0, ddof=1) if len(r) > 1 else r.iloc[0] * 0.0
    out = pd.DataFrame({"method": r.columns, "mean_rank": r.mean(axis=0).to_numpy(),
                        "std_rank": std.to_numpy(), "n_settings": len(r)})
    return out.sort_values("mean_rank", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class FriedmanResult:
    statistic: float
    pvalue: float
    n_settings: int
    n_methods: int
    nemenyi: pd.DataFrame  # methods × methods p-values


def friedman_nemenyi(table: pd.DataFrame) -> FriedmanResult:
    """Friedman χ² test across settings (scipy) and Nemenyi post-hoc p-values (scikit-posthocs).

    Raises:
        ValueError: fewer than 3 methods or 2 settings (the tests are undefined), or gaps.
    """
    import scikit_posthocs as sp
    from scipy.stats import friedmanchisquare

    table = _as_table(table, "friedman_nemenyi")
    if table.isna().any().any():
        raise ValueError("friedman_nemenyi needs a complete settings × methods table (no NaN)")
    n_s, n_m = table.shape
    if n_m < 3 or n_s < 2:
        raise ValueError(f"Friedman's test needs >= 3 methods and >= 2 settings, got {n_m} methods, {n_s} settings")
    vals = table.to_numpy(dtype=float)
    res = friedmanchisquare(*[vals[:, k] for k in range(n_m)])
    nem = sp.posthoc_nemenyi_friedman(vals)
    nem.index = list(table.columns)
    nem.columns = list(table.columns)
    return FriedmanResult(float(res.statistic), float(res.pvalue), n_s, n_m, nem)


def standard_error(variances, n_seeds) -> float:
    """SE of the mean over N settings of seed-means: ``sqrt(Σ_s var_s / n_s) / N``.

    With n_s = 4 seeds everywhere this is the reference's ``sqrt(Σ_s var_s) / (2·N)`` (2 = sqrt(4));
    ``var_s`` is the across-seed sample variance (ddof=1) of setting s.
    """
    v = np.asarray(variances, dtype=float).ravel()
    n = np.broadcast_to(np.asarray(n_seeds, dtype=float), v.shape)
    if v.size == 0:
        raise ValueError("no settings")
    if np.any(n < 1):
        raise ValueError("n_seeds must be >= 1")
    return float(math.sqrt(np.sum(v / n)) / v.size)


def mean_table(df: pd.DataFrame, values: list[str], *, setting: str = "setting", method: str = "method",
               seed: str = "seed") -> pd.DataFrame:
    """The reference's mean table: per method, the mean over settings of the seed-mean of each value,
    its standard error (:func:`standard_error`) and the 95% half-width ``CI = 1.96·SE``.

    Settings where a method has a single seed contribute variance NaN -> SE NaN (stated, not hidden).
    """
    _check_long(df, [setting, method, seed, *values])
    rows = []
    for m, g in df.groupby(method, sort=False):
        row = {"method": m, "n_settings": g[setting].nunique()}
        for v in values:
            per = g.groupby(setting)[v].agg(["mean", "var", "count"])
            row[f"{v}_mean"] = float(per["mean"].mean())
            se = standard_error(per["var"].to_numpy(), per["count"].to_numpy())
            row[f"{v}_SE"] = se
            row[f"{v}_CI"] = 1.96 * se
        row["n_seeds_min"] = int(g.groupby(setting)[seed].nunique().min())
        rows.append(row)
    return pd.DataFrame(rows)


def leave_one_seed_out(df: pd.DataFrame, value: str, *, setting: str = "setting", method: str = "method",
                       seed: str = "seed") -> pd.DataFrame:
    """Leave-one-seed-out ranking stability (the reference's "bootstrap" ranking).

    For every seed, drop it, recompute the per-setting seed-means and the mean ranks. Returns one row
    per (dropped seed, method) with ``mean_rank``, plus ``kendall_tau``/``kendall_p`` between that
    mean-rank order and the order with all seeds, and ``top`` (the best method of that drop).
    Seed ``"none"`` is the full ranking.
    """
    from scipy.stats import kendalltau

    _check_long(df, [setting, method, seed, value])
    full_t = seed_mean_table(df, value, setting=setting, method=method)
    if full_t.empty:
        raise ValueError(f"no setting with all methods present for {value!r}")
    full = mean_ranks(full_t)
    full_r = full.set_index("method")["mean_rank"]
    rows = [{"dropped_seed": "none", "method": m, "mean_rank": r, "kendall_tau": 1.0, "kendall_p": 0.0,
             "top": full["method"].iloc[0]} for m, r in full_r.items()]
    for s in sorted(df[seed].unique(), key=str):
        sub = df[df[seed] != s]
        t = seed_mean_table(sub, value, setting=setting, method=method)
        if t.empty or t.shape[1] != len(full_r):
            continue
        mr = mean_ranks(t).set_index("method")["mean_rank"].reindex(full_r.index)
        if mr.nunique() > 1 and full_r.nunique() > 1:
            tau, p = kendalltau(full_r.to_numpy(), mr.to_numpy())
        else:
            tau, p = math.nan, math.nan
        top = mr.idxmin()
        for m, r in mr.items():
            rows.append({"dropped_seed": str(s), "method": m, "mean_rank": float(r), "kendall_tau": float(tau),
                         "kendall_p": float(p), "top": top})
    return pd.DataFrame(rows)
