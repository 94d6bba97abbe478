"""``claspe compare``: a set of runs against ``paper_results/``.

1. Settings: for every setting among the runs, is it identical to a published setting (dataset, label
   regime, patch size, stride, query/starting budget sizes, candidates per image, loops, trainer)? If
   not, which published setting is closest and which fields differ.
2. Claims: every claim of ``paper_results/claims.yaml`` evaluated on the runs (see
   :mod:`claspe.report.claims`), with the statistics behind each verdict.
3. Numbers: where published per-run or summary results were imported (``claspe paper import``), the
   runs' AUBC / Final Dice per matched setting and method next to the published ones (difference and
   Welch t-test; for summary imports n = 4 seeds is assumed, as published), and the claims evaluated on
   the published runs too.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from claspe.report import paper
from claspe.report.analysis import analyze, run_level_metrics
from claspe.report.claims import ClaimResult, Context, evaluate_claims
from claspe.report.collect import collect_runs

log = logging.getLogger(__name__)


@dataclass
class CompareResult:
    root: Path
    matches: pd.DataFrame
    claims: list[ClaimResult]
    paper_claims: list[ClaimResult] = field(default_factory=list)
    numbers: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        lines = [f"claspe compare: {self.root}", "", "Settings vs published settings:"]
        for r in self.matches.itertuples():
            if r.paper_setting:
                lines.append(f"  IDENTICAL to {r.paper_setting} ({r.group}): {r.setting_label}")
            else:
                lines.append(f"  NOT a published setting: {r.setting_label}")
                lines.append(f"      closest: {r.closest or '-'}; differs in {r.differences}")
        lines += ["", "Claims (verdict on these runs, with the statistics behind it):"]
        lines += [f"  {c.line()}" for c in self.claims]
        if self.paper_claims:
            lines += ["", "Claims evaluated on the imported published runs:"]
            lines += [f"  {c.line()}" for c in self.paper_claims]
        lines += ["", "Numbers vs published:"]
        if self.numbers.empty:
            lines.append("  none comparable (no imported published results for the matched settings; "
                         "see `claspe paper import --help`). The paper's numeric tables are not in paper_results/.")
        else:
            for r in self.numbers.itertuples():
                lines.append(f"  {r.paper_setting} {r.method} {r.metric}: ours {r.ours_mean:.2f}±{r.ours_std:.2f} "
                             f"(n={r.ours_n}) vs paper {r.paper_mean:.2f}±{r.paper_std:.2f} (n={r.paper_n}); "
                             f"diff {r.diff:+.2f}, Welch p={r.p_welch:.3g}")
        if self.notes:
            lines += ["", "Notes:"] + [f"  - {n}" for n in self.notes]
        counts = pd.Series([c.verdict for c in self.claims]).value_counts().to_dict()
        lines += ["", "Verdict counts: " + ", ".join(f"{k}: {v}" for k, v in counts.items())]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        def clean(o):
            if isinstance(o, dict):
                return {str(k): clean(v) for k, v in o.items()}
            if isinstance(o, (list, tuple)):
                return [clean(v) for v in o]
            if isinstance(o, (np.floating, float)):
                return None if not math.isfinite(float(o)) else float(o)
            if isinstance(o, np.integer):
                return int(o)
            return o

        return clean({"root": str(self.root), "settings": self.matches.to_dict("records"),
                      "claims": [c.__dict__ for c in self.claims],
                      "paper_claims": [c.__dict__ for c in self.paper_claims],
                      "numbers": self.numbers.to_dict("records"), "notes": self.notes})


def _paper_runs_df(runs: pd.DataFrame, root: Path) -> tuple[pd.DataFrame, dict]:
    """Imported per-run rows -> the long runs table of :mod:`claspe.report.analysis` (setting = paper id)."""
    sets = {(s["setting_group"], s["dataset"], s["label_regime"]): s for s in paper.load_settings(root)}
    rows, groups = [], {}
    for (grp, ds, reg, meth, seed), g in runs.groupby(["setting_group", "dataset", "label_regime", "method", "seed"]):
        s = sets.get((grp, ds, reg))
        if s is None:
            continue
        g = g.sort_values(["loop", "budget"], na_position="last").reset_index(drop=True)
        complete = len(g) == s["query_steps"]
        for k, r in g.iterrows():
            loop = int(r["loop"]) if pd.notna(r.get("loop")) else k
            budget = r["budget"] if pd.notna(r.get("budget")) else s["starting_budget_size"] + loop * s["query_size"]
            rows.append({"setting": s["setting_id"], "setting_label": s["setting_id"], "dataset": ds, "method": meth,
                         "seed": int(seed), "loop": loop, "budget": float(budget), "mean_dice": float(r["mean_dice"]),
                         "fg_fraction": float(r["fg_fraction"]) if pd.notna(r.get("fg_fraction")) else np.nan,
                         "complete": complete, "trainer": s["trainer"]})
        groups[s["setting_id"]] = grp
    return pd.DataFrame(rows), groups


def _welch(a: np.ndarray, b_mean: float, b_std: float, b_n: int, a_mean=None, a_std=None) -> float:
    from scipy.stats import ttest_ind_from_stats

    if len(a) < 2 or b_n < 2 or not np.isfinite(b_std):
        return math.nan
    r = ttest_ind_from_stats(float(np.mean(a)), float(np.std(a, ddof=1)), len(a), b_mean, b_std, b_n,
                             equal_var=False)
    return float(r.pvalue)


def compare(exp_root, *, paper_root: Path | None = None, store: Path | None = None, alpha: float = 0.05,
            full_data: dict | None = None) -> CompareResult:
    """Compare the runs under ``exp_root`` with the paper (see the module docstring)."""
    root = Path(paper_root) if paper_root else paper.paper_dir()
    col = collect_runs(exp_root)
    an = analyze(col.runs_df, alpha=alpha, full_data=full_data)
    notes = list(an.notes)
    mrows, groups = [], {}
    for sid, s in col.settings.items():
        label = col.runs_df.loc[col.runs_df["setting"] == sid, "setting_label"].iloc[0]
        m = paper.match_setting(s, root)
        groups[sid] = m["group"] if m["match"] else None
        diffs = "; ".join(f"{k}: ours {a} vs paper {b}" for k, (a, b) in m["differences"].items())
        mrows.append({"setting": sid, "setting_label": label, "paper_setting": m["match"], "closest": m["closest"],
                      "group": m["group"] if m["match"] else None, "differences": diffs or "-"})
    matches = pd.DataFrame(mrows, columns=["setting", "setting_label", "paper_setting", "closest", "group",
                                           "differences"])
    claims = paper.load_claims(root)
    results = evaluate_claims(claims, Context(col.runs_df, an, groups, col.settings))

    # published numbers
    runs_p, summ_p = paper.load_store(store)
    numbers, paper_claims = [], []
    if not runs_p.empty:
        prdf, pgroups = _paper_runs_df(runs_p, root)
        if not prdf.empty:
            pan = analyze(prdf, alpha=alpha)
            paper_claims = evaluate_claims(claims, Context(prdf, pan, pgroups, {}))
            prm = run_level_metrics(prdf)
        else:
            prm = pd.DataFrame()
            notes.append("imported per-run results match no published setting")
    else:
        prm = pd.DataFrame()
    rm = an.run_metrics
    for r in matches.itertuples():
        if not r.paper_setting:
            continue
        ours = rm[rm["setting"] == r.setting]
        ps = next(s for s in paper.load_settings(root) if s["setting_id"] == r.paper_setting)
        for meth, g in ours.groupby("method"):
            for metric in ("AUBC", "FinalDice"):
                a = 100 * g[metric].to_numpy(float)
                ref = None
                if not prm.empty:
                    pr = prm[(prm["setting"] == r.paper_setting) & (prm["method"] == meth)]
                    if len(pr):
                        b = 100 * pr[metric].to_numpy(float)
                        ref = (float(b.mean()), float(b.std(ddof=1)) if b.size > 1 else math.nan, int(b.size),
                               "imported runs")
                if ref is None and not summ_p.empty:
                    sp = summ_p[(summ_p["setting_group"] == ps["setting_group"]) & (summ_p["dataset"] == ps["dataset"])
                                & (summ_p["label_regime"] == ps["label_regime"]) & (summ_p["method"] == meth)]
                    if len(sp) and pd.notna(sp.iloc[0].get(metric)):
                        std = sp.iloc[0].get(f"{metric}_std")
                        ref = (float(sp.iloc[0][metric]), float(std) if pd.notna(std) else math.nan, 4,
                               "imported summary (n=4 assumed)")
                if ref is None:
                    continue
                numbers.append({"paper_setting": r.paper_setting, "method": meth, "metric": metric,
                                "ours_mean": float(a.mean()), "ours_std": float(a.std(ddof=1)) if a.size > 1 else math.nan,
                                "ours_n": int(a.size), "paper_mean": ref[0], "paper_std": ref[1], "paper_n": ref[2],
                                "diff": float(a.mean() - ref[0]), "p_welch": _welch(a, ref[0], ref[1], ref[2]),
                                "source": ref[3]})
    if not any(matches["paper_setting"].notna()):
        notes.append("no run uses a published setting: claim verdicts describe these runs only (not comparable)")
    return CompareResult(Path(exp_root), matches, results, paper_claims, pd.DataFrame(numbers), notes)
