"""All numbers of the report, computed from a long runs table with :mod:`claspe.metrics`.

Input (``runs_df``): one row per (run, loop) with columns ``setting``, ``setting_label``, ``dataset``,
``method``, ``seed``, ``loop``, ``budget``, ``mean_dice``, ``fg_fraction``, ``complete`` and (for FG-Eff)
``trainer``. Only complete runs (all loops) enter AUBC, Final Dice, PPM, FG-Eff and rankings, as in the
reference (``enforce_full``). Seeds are paired by sorted seed value (the reference pairs by row order).
AUBC uses equally spaced budget steps (the reference's ``dx = 1/(n-1)``). Tables show AUBC and Final
Dice ×100 like the paper.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from claspe import metrics

log = logging.getLogger(__name__)

RANK_METRICS = ("AUBC", "FinalDice", "FG_Eff")


@dataclass
class Analysis:
    run_metrics: pd.DataFrame
    summary: pd.DataFrame
    fg_fits: dict = field(default_factory=dict)  # (setting, method) -> FGEffResult
    ppm: dict = field(default_factory=dict)  # setting -> {"none"|"holm": (methods, matrix)}
    ppm_tests: pd.DataFrame | None = None
    ppm_total: dict = field(default_factory=dict)  # "none"|"holm" -> (methods, summed, counts)
    ranks: dict = field(default_factory=dict)  # metric -> dict(mean=..., table=..., friedman=..., note=...)
    mean_table: pd.DataFrame | None = None
    loso: pd.DataFrame | None = None
    notes: list = field(default_factory=list)


def _complete(runs_df: pd.DataFrame) -> pd.DataFrame:
    return runs_df[runs_df["complete"].astype(bool)].sort_values(["setting", "method", "seed", "loop"])


def run_level_metrics(runs_df: pd.DataFrame) -> pd.DataFrame:
    """AUBC, Final Dice and final foreground fraction of every complete run (values in [0, 1])."""
    rows = []
    for (sid, m, seed), g in _complete(runs_df).groupby(["setting", "method", "seed"], sort=False):
        g = g.sort_values("budget")
        y = g["mean_dice"].to_numpy(float)
        if not np.all(np.isfinite(y)) or y.size < 2:
            continue
        rows.append({"setting": sid, "setting_label": g["setting_label"].iloc[0], "dataset": g["dataset"].iloc[0],
                     "method": m, "seed": seed, "AUBC": metrics.aubc(y), "FinalDice": metrics.final_dice(y),
                     "FinalFGFraction": float(g["fg_fraction"].iloc[-1]), "n_budgets": int(y.size)})
    return pd.DataFrame(rows, columns=["setting", "setting_label", "dataset", "method", "seed", "AUBC", "FinalDice",
                                       "FinalFGFraction", "n_budgets"])


def _full_data_c(dataset: str, trainer: str, full_data) -> tuple[float | None, str]:
    if full_data and dataset in full_data:
        return float(full_data[dataset]), "given"
    try:
        from claspe.report.paper import full_data_dice

        hit = full_data_dice(dataset, trainer)
    except (FileNotFoundError, ValueError):
        hit = None
    if hit is None:
        return None, ""
    return hit


def fg_efficiency_fits(runs_df: pd.DataFrame, full_data: dict | None = None, notes: list | None = None) -> dict:
    """FG-Eff per (setting, method): x0 = smallest fg fraction of the setting, a = c - mean Dice at x0.

    c = full-data Dice of the dataset and trainer (``full_data`` mapping dataset -> c, else
    paper_results/full_data_dice.csv). Without a reference c is fitted once per setting on all its
    points (then the same c is used for every method of the setting) and marked ``c_fitted``.
    """
    fits = {}
    notes = notes if notes is not None else []
    comp = _complete(runs_df)
    comp = comp[np.isfinite(comp["fg_fraction"].astype(float))]
    for sid, g in comp.groupby("setting", sort=False):
        x_all = g["fg_fraction"].to_numpy(float)
        y_all = g["mean_dice"].to_numpy(float)
        if x_all.size < 3:
            continue
        x0 = float(x_all.min())
        y0 = float(y_all[np.isclose(x_all, x0, rtol=1e-9, atol=1e-12)].mean())
        c, src = _full_data_c(str(g["dataset"].iloc[0]), str(g["trainer"].iloc[0]), full_data)
        fitted = c is None
        if fitted:
            try:
                c = metrics.foreground_efficiency(x_all, y_all, None, x0=x0).c
            except (ValueError, RuntimeError) as exc:
                notes.append(f"FG-Eff skipped for {g['setting_label'].iloc[0]}: {exc}")
                continue
            src = "fitted on all runs of the setting (no full-data reference; not comparable to the paper)"
        for m, gm in g.groupby("method", sort=False):
            try:
                res = metrics.foreground_efficiency(gm["fg_fraction"].to_numpy(float), gm["mean_dice"].to_numpy(float),
                                                    c, x0=x0, a=c - y0)
            except (ValueError, RuntimeError) as exc:
                notes.append(f"FG-Eff of {m} in {g['setting_label'].iloc[0]} failed: {exc}")
                continue
            res.c_source = src
            res.c_fitted = fitted
            fits[(sid, m)] = res
    return fits


def _ppm_for_settings(runs_df: pd.DataFrame, alpha: float):
    per, tests = {}, []
    comp = _complete(runs_df)
    for sid, g in comp.groupby("setting", sort=False):
        results, budgets = {}, None
        for m, gm in g.groupby("method", sort=False):
            piv = gm.pivot_table(index="seed", columns="loop", values="mean_dice").sort_index()
            if piv.shape[0] < 2:  # a t-test needs >= 2 seeds; such methods are listed as missing
                continue
            results[m] = piv.to_numpy(float)
            budgets = gm.groupby("loop")["budget"].mean().sort_index().to_numpy()
        if len(results) < 2:
            continue
        per[sid] = {}
        for corr in ("none", "holm"):
            methods, mat = metrics.penalty_matrix(results, alpha=alpha, correction=None if corr == "none" else "holm")
            per[sid][corr] = (methods, mat)
        methods, plain = metrics.pairwise_tests(results, alpha=alpha)
        _, holm = metrics.pairwise_tests(results, alpha=alpha, correction="holm")
        for tp, th in zip(plain, holm):
            tests.append({"setting": sid, "setting_label": g["setting_label"].iloc[0], "method_i": methods[tp.i],
                          "method_j": methods[tp.j], "step": tp.step,
                          "budget": float(budgets[tp.step]) if budgets is not None and tp.step < len(budgets) else np.nan,
                          "n_pairs": tp.n, "mean_diff": tp.mean_diff, "t": tp.t, "p": tp.p, "p_holm": th.p_adj,
                          "significant": tp.significant, "significant_holm": th.significant})
    return per, pd.DataFrame(tests)


def _rank_block(table: pd.DataFrame, notes: list, metric: str) -> dict:
    """Rank on complete blocks: drop settings with gaps; if none is left, drop methods with gaps."""
    out = {"mean": None, "table": None, "friedman": None, "note": ""}
    if table.empty:
        out["note"] = f"{metric}: no data"
        return out
    t = table.dropna(axis=0, how="any")
    if t.empty or t.shape[1] < 2:
        t = table.dropna(axis=1, how="any")
        if t.shape[1] < 2:
            out["note"] = f"{metric}: fewer than 2 methods with values in every setting; no ranking"
            return out
        out["note"] = f"{metric}: methods missing in some settings were left out: " + \
            ", ".join(sorted(set(table.columns) - set(t.columns)))
    elif len(t) < len(table):
        out["note"] = f"{metric}: {len(table) - len(t)} setting(s) with missing methods left out"
    out["table"] = metrics.rank_table(t)
    out["mean"] = metrics.mean_ranks(t)
    try:
        out["friedman"] = metrics.friedman_nemenyi(t)
    except ValueError as exc:
        out["note"] = (out["note"] + "; " if out["note"] else "") + f"Friedman/Nemenyi not computed: {exc}"
    if out["note"]:
        notes.append(out["note"])
    return out


def analyze(runs_df: pd.DataFrame, *, alpha: float = 0.05, full_data: dict | None = None) -> Analysis:
    """Compute every table of the report (see the module docstring)."""
    notes: list[str] = []
    rm = run_level_metrics(runs_df)
    fits = fg_efficiency_fits(runs_df, full_data, notes)
    summ_rows = []
    for (sid, m), g in rm.groupby(["setting", "method"], sort=False):
        fit = fits.get((sid, m))
        summ_rows.append({
            "setting": sid, "setting_label": g["setting_label"].iloc[0], "method": m, "n_seeds": int(g["seed"].nunique()),
            "AUBC": 100 * g["AUBC"].mean(), "AUBC_std": 100 * g["AUBC"].std(ddof=1) if len(g) > 1 else np.nan,
            "FinalDice": 100 * g["FinalDice"].mean(),
            "FinalDice_std": 100 * g["FinalDice"].std(ddof=1) if len(g) > 1 else np.nan,
            "FG_Eff": fit.gamma if fit else np.nan, "FG_Eff_SE": fit.stderr if fit else np.nan,
            "FG_Eff_var": fit.variance if fit else np.nan, "FG_Eff_c": fit.c if fit else np.nan,
            "FG_Eff_c_source": getattr(fit, "c_source", "") if fit else "",
            "FinalFGFraction": g["FinalFGFraction"].mean(),
        })
    summary = pd.DataFrame(summ_rows, columns=["setting", "setting_label", "method", "n_seeds", "AUBC", "AUBC_std",
                                               "FinalDice", "FinalDice_std", "FG_Eff", "FG_Eff_SE", "FG_Eff_var",
                                               "FG_Eff_c", "FG_Eff_c_source", "FinalFGFraction"])
    ppm, tests = _ppm_for_settings(runs_df, alpha)
    total = {}
    for corr in ("none", "holm"):
        mats = [per[corr] for per in ppm.values()]
        if mats:
            total[corr] = metrics.aggregate_ppm(mats)
    ranks = {}
    for metric in RANK_METRICS:
        if metric == "FG_Eff":
            table = summary.pivot_table(index="setting", columns="method", values="FG_Eff", sort=False) \
                if summary["FG_Eff"].notna().any() else pd.DataFrame()
        else:
            table = metrics.seed_mean_table(rm, metric, complete=False) if not rm.empty else pd.DataFrame()
        ranks[metric] = _rank_block(table, notes, metric)
    mt = None
    if not rm.empty:
        mt = metrics.mean_table(rm, ["AUBC", "FinalDice"])
        for c in mt.columns:
            if c.startswith(("AUBC_", "FinalDice_")):
                mt[c] = 100 * mt[c]
    loso = None
    if not rm.empty and rm["seed"].nunique() >= 2 and rm["method"].nunique() >= 2:
        try:
            loso = metrics.leave_one_seed_out(rm, "AUBC")
        except ValueError as exc:
            notes.append(f"leave-one-seed-out not computed: {exc}")
    return Analysis(rm, summary, fits, ppm, tests, total, ranks, mt, loso, list(dict.fromkeys(notes)))


def ppm_percent(total: tuple) -> pd.DataFrame:
    """Summed PPM as % of the settings that had both methods, plus the reference's "Mean" row."""
    methods, summed, counts = total
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(counts > 0, 100.0 * summed / np.maximum(counts, 1), np.nan)
    df = pd.DataFrame(pct, index=methods, columns=methods)
    mean = [np.nansum(pct[:, j]) / (len(methods) - 1) if len(methods) > 1 else math.nan for j in range(len(methods))]
    df.loc["Mean"] = mean
    return df
