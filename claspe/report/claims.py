"""Evaluate the papers' claims (``paper_results/claims.yaml``) on a set of runs.

Each claim has a machine-readable rule; :func:`evaluate_claims` returns one :class:`ClaimResult` per
claim with a verdict and the statistics behind it:

* ``reproduced`` / ``not reproduced`` — the rule could be evaluated and holds / fails;
* ``insufficient data`` — methods, seeds (>= 2 complete) or settings needed by the rule are missing;
* ``not checkable`` — the claim is descriptive (no rule).

``comparable`` says whether the runs used are the paper's settings (their setting group matches the
claim's scope). If no run is in scope, the rule is evaluated on every available setting and the
verdict is marked *not comparable* — a statement about these runs, not a replication.

Rule kinds (fields in brackets):

* ``ppm_wins_exceed_losses`` [method, baselines, scope, correction]: summed over settings, the method's
  PPM wins against each baseline exceed its losses.
* ``only_method_ppm_wins_exceed_losses`` [+ competitors]: the method satisfies the above and no competitor does.
* ``all_methods_ppm_wins_exceed_losses`` / ``no_method_ppm_wins_exceed_losses`` [methods, baseline].
* ``best_mean_rank`` [method, among, metric ∈ AUBC, FinalDice, FG_Eff, FinalFGFraction]: the method has the
  lowest mean rank (ties allowed) among ``among`` (settings where all of them ran).
* ``metric_not_worse`` [method, baselines, metric=FG_Eff, alpha]: per setting z-test of the two gammas
  (their SEs); significantly lower in no more settings than significantly higher.
* ``factor_effect`` [factor, better_level | "smaller", methods, baseline, metric]: in setting pairs that
  differ only in ``factor``, the mean advantage of ``methods`` over ``baseline`` is larger at the better
  level in more than half of the pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from claspe import metrics

REPRODUCED, NOT_REPRODUCED, INSUFFICIENT, NOT_CHECKABLE = ("reproduced", "not reproduced", "insufficient data",
                                                           "not checkable")


@dataclass
class ClaimResult:
    id: str
    source: str
    text: str
    verdict: str
    comparable: bool | None
    scope: str
    detail: str
    stats: dict = field(default_factory=dict)

    def line(self) -> str:
        comp = "" if self.comparable is None else (" [paper settings]" if self.comparable else
                                                   " [not comparable: non-paper settings]")
        return f"{self.id} ({self.source}): {self.verdict.upper()}{comp} — {self.detail}"


@dataclass
class Context:
    """What a claim is evaluated on: runs (long), their analysis and setting info."""

    runs_df: pd.DataFrame
    analysis: object  # claspe.report.analysis.Analysis
    groups: dict  # setting id -> paper setting group (None if not a paper setting)
    settings: dict = field(default_factory=dict)  # setting id -> setting dict (for factor_effect)
    min_seeds: int = 2


def _scope(ctx: Context, scope: list[str]) -> tuple[list[str], bool]:
    all_s = list(dict.fromkeys(ctx.runs_df["setting"]))
    if "any" in scope:
        return all_s, all(ctx.groups.get(s) is not None for s in all_s) if all_s else False
    ins = [s for s in all_s if ctx.groups.get(s) in scope]
    if ins:
        return ins, True
    return all_s, False


def _seeds(ctx: Context, settings: list[str], method: str) -> dict:
    rm = ctx.analysis.run_metrics
    g = rm[(rm["method"] == method) & rm["setting"].isin(settings)]
    return g.groupby("setting")["seed"].nunique().to_dict()


def _ppm_pair(ctx: Context, settings: list[str], a: str, b: str, correction: str) -> dict | None:
    """Wins/losses of a vs b summed over the settings where both have >= min_seeds complete runs."""
    wins = losses = 0.0
    per = []
    sa, sb = _seeds(ctx, settings, a), _seeds(ctx, settings, b)
    tests = ctx.analysis.ppm_tests
    for s in settings:
        if sa.get(s, 0) < ctx.min_seeds or sb.get(s, 0) < ctx.min_seeds or s not in ctx.analysis.ppm:
            continue
        methods, mat = ctx.analysis.ppm[s]["holm" if correction == "holm" else "none"]
        i, j = methods.index(a), methods.index(b)
        wins += mat[i, j]
        losses += mat[j, i]
        t = tests[(tests["setting"] == s) & (((tests["method_i"] == a) & (tests["method_j"] == b)) |
                                             ((tests["method_i"] == b) & (tests["method_j"] == a)))]
        pcol = "p_holm" if correction == "holm" else "p"
        per.append({"setting": s, "wins": round(float(mat[i, j]), 4), "losses": round(float(mat[j, i]), 4),
                    "min_p": float(np.nanmin(t[pcol])) if t[pcol].notna().any() else math.nan})
    if not per:
        return None
    n = len(per)
    pos = sum(1 for r in per if r["wins"] > r["losses"])
    neg = sum(1 for r in per if r["wins"] < r["losses"])
    from scipy.stats import binomtest

    sign_p = binomtest(pos, pos + neg, 0.5).pvalue if pos + neg else 1.0
    return {"method": a, "baseline": b, "n_settings": n, "wins": wins, "losses": losses,
            "wins_pct": 100 * wins / n, "losses_pct": 100 * losses / n, "settings_won": pos, "settings_lost": neg,
            "sign_test_p": float(sign_p), "correction": correction, "per_setting": per}


def _fmt_pair(r: dict) -> str:
    return (f"{r['method']} vs {r['baseline']}: wins {r['wins_pct']:.0f}% / losses {r['losses_pct']:.0f}% of "
            f"{r['n_settings']} setting(s) ({r['correction']}; net-positive in {r['settings_won']}, negative in "
            f"{r['settings_lost']}, sign test p={r['sign_test_p']:.3g})")


def _present(ctx: Context, settings: list[str], method: str) -> bool:
    return any(v >= ctx.min_seeds for v in _seeds(ctx, settings, method).values())


def _rule_ppm(claim, ctx, settings, comparable):
    rule = claim["rule"]
    corr = rule.get("correction", "holm")
    kind = rule["kind"]

    def beats_all(m, baselines):
        res = [_ppm_pair(ctx, settings, m, b, corr) for b in baselines]
        if any(r is None for r in res):
            return None, res
        return all(r["wins"] > r["losses"] for r in res), res

    if kind in ("ppm_wins_exceed_losses", "only_method_ppm_wins_exceed_losses"):
        m, bases = rule["method"], rule["baselines"]
        missing = [x for x in [m, *bases] if not _present(ctx, settings, x)]
        if missing:
            return INSUFFICIENT, f"missing (>= {ctx.min_seeds} complete seeds): {', '.join(missing)}", {}
        ok, res = beats_all(m, bases)
        if ok is None:
            return INSUFFICIENT, "method and baselines never ran in the same setting", {}
        stats = {"pairs": res}
        detail = "; ".join(_fmt_pair(r) for r in res)
        if kind == "ppm_wins_exceed_losses":
            return (REPRODUCED if ok else NOT_REPRODUCED), detail, stats
        if not ok:
            return NOT_REPRODUCED, detail, stats
        comp_res, absent, also = {}, [], []
        for c in rule["competitors"]:
            if not _present(ctx, settings, c):
                absent.append(c)
                continue
            okc, rc = beats_all(c, bases)
            comp_res[c] = rc
            if okc:
                also.append(c)
        stats["competitors"] = comp_res
        if also:
            return NOT_REPRODUCED, detail + f"; but also beating both: {', '.join(also)}", stats
        if absent:
            return INSUFFICIENT, detail + f"; competitors not run: {', '.join(absent)}", stats
        return REPRODUCED, detail + f"; no competitor ({', '.join(rule['competitors'])}) does", stats

    base = rule["baseline"]
    if not _present(ctx, settings, base):
        return INSUFFICIENT, f"baseline {base} missing (>= {ctx.min_seeds} complete seeds)", {}
    res, absent = {}, []
    for m in rule["methods"]:
        if not _present(ctx, settings, m):
            absent.append(m)
            continue
        r = _ppm_pair(ctx, settings, m, base, corr)
        if r is not None:
            res[m] = r
        else:
            absent.append(m)
    detail = "; ".join(_fmt_pair(r) for r in res.values()) or "no method ran with the baseline"
    stats = {"pairs": list(res.values()), "absent": absent}
    if kind == "all_methods_ppm_wins_exceed_losses":
        failing = [m for m, r in res.items() if not r["wins"] > r["losses"]]
        if failing:
            return NOT_REPRODUCED, detail + f"; not beating {base}: {', '.join(failing)}", stats
    else:
        winning = [m for m, r in res.items() if r["wins"] > r["losses"]]
        if winning:
            return NOT_REPRODUCED, detail + f"; beating {base}: {', '.join(winning)}", stats
    if absent:
        return INSUFFICIENT, detail + f"; not run: {', '.join(absent)}", stats
    return REPRODUCED, detail, stats


def _metric_table(ctx, settings, metric, among) -> pd.DataFrame:
    an = ctx.analysis
    if metric == "FG_Eff":
        s = an.summary[an.summary["setting"].isin(settings) & an.summary["method"].isin(among)]
        s = s[s["n_seeds"] >= ctx.min_seeds]
        return s.pivot_table(index="setting", columns="method", values="FG_Eff")
    rm = an.run_metrics[an.run_metrics["setting"].isin(settings) & an.run_metrics["method"].isin(among)]
    if rm.empty:
        return pd.DataFrame()
    return metrics.seed_mean_table(rm, metric, complete=False)


def _rule_rank(claim, ctx, settings, comparable):
    rule = claim["rule"]
    m, among, metric = rule["method"], rule["among"], rule["metric"]
    t = _metric_table(ctx, settings, metric, among)
    absent = [x for x in among if x not in t.columns]
    if m in absent or t.empty:
        return INSUFFICIENT, f"{m} has no {metric} values" if not t.empty else f"no {metric} values", {}
    if absent:
        return INSUFFICIENT, f"methods not run: {', '.join(absent)}", {}
    t = t.dropna(axis=0, how="any")
    if t.empty:
        return INSUFFICIENT, "no setting in which all compared methods ran", {}
    mr = metrics.mean_ranks(t)
    best = float(mr["mean_rank"].min())
    mine = float(mr.set_index("method").loc[m, "mean_rank"])
    stats = {"mean_ranks": mr.to_dict("records"), "n_settings": len(t)}
    detail = f"mean {metric} rank over {len(t)} setting(s): " + ", ".join(
        f"{r.method} {r.mean_rank:.2f}" for r in mr.itertuples())
    try:
        fr = metrics.friedman_nemenyi(t)
        runner = mr[mr["method"] != m].iloc[0]["method"]
        stats.update(friedman_chi2=fr.statistic, friedman_p=fr.pvalue, nemenyi_vs_next=float(fr.nemenyi.loc[m, runner]))
        detail += f"; Friedman p={fr.pvalue:.3g}, Nemenyi p({m} vs {runner})={fr.nemenyi.loc[m, runner]:.3g}"
    except ValueError as exc:
        detail += f"; Friedman not computed ({exc})"
    return (REPRODUCED if mine <= best + 1e-12 else NOT_REPRODUCED), detail, stats


def _rule_not_worse(claim, ctx, settings, comparable):
    from scipy.stats import norm, wilcoxon

    rule = claim["rule"]
    m, bases, alpha = rule["method"], rule["baselines"], float(rule.get("alpha", 0.05))
    fits = ctx.analysis.fg_fits
    out, ok_all, parts = [], True, []
    for b in bases:
        rows = []
        for s in settings:
            fm, fb = fits.get((s, m)), fits.get((s, b))
            if fm is None or fb is None:
                continue
            se = math.hypot(fm.stderr, fb.stderr)
            z = (fm.gamma - fb.gamma) / se if se > 0 else math.copysign(math.inf, fm.gamma - fb.gamma)
            rows.append({"setting": s, "gamma": fm.gamma, "gamma_baseline": fb.gamma, "z": z,
                         "p": float(2 * norm.sf(abs(z)))})
        if not rows:
            return INSUFFICIENT, f"no setting with FG-Eff fits of both {m} and {b}", {}
        lower = sum(1 for r in rows if r["p"] < alpha and r["z"] < 0)
        higher = sum(1 for r in rows if r["p"] < alpha and r["z"] > 0)
        diffs = [r["gamma"] - r["gamma_baseline"] for r in rows]
        wp = float(wilcoxon(diffs).pvalue) if len(diffs) >= 2 and any(d != 0 for d in diffs) else math.nan
        ok_all &= lower <= higher
        out.append({"baseline": b, "n_settings": len(rows), "sig_lower": lower, "sig_higher": higher,
                    "wilcoxon_p": wp, "per_setting": rows})
        parts.append(f"FG-Eff {m} vs {b}: significantly lower in {lower}, higher in {higher} of {len(rows)} "
                     f"setting(s) (Wilcoxon p={wp:.3g})")
    return (REPRODUCED if ok_all else NOT_REPRODUCED), "; ".join(parts), {"comparisons": out}


def _rule_factor(claim, ctx, settings, comparable):
    from scipy.stats import binomtest

    rule = claim["rule"]
    factor, base, methods_ = rule["factor"], rule["baseline"], rule["methods"]
    metric = rule.get("metric", "AUBC")
    if not ctx.settings:
        return INSUFFICIENT, "setting details unknown for these runs", {}
    keys = [k for k in next(iter(ctx.settings.values())) if k != factor and not (
        factor == "query_size" and k == "n_patch_per_image")]
    t = _metric_table(ctx, settings, metric, [*methods_, base])
    if t.empty or base not in t.columns:
        return INSUFFICIENT, f"baseline {base} has no {metric} values", {}

    def adv(s):
        if s not in t.index or pd.isna(t.loc[s, base]):
            return None
        vals = [t.loc[s, m] - t.loc[s, base] for m in methods_ if m in t.columns and pd.notna(t.loc[s, m])]
        return float(np.mean(vals)) if vals else None

    groups: dict = {}
    for s in settings:
        if s not in ctx.settings:
            continue
        key = tuple(str(ctx.settings[s][k]) for k in keys)
        groups.setdefault(key, []).append(s)
    pairs = []
    for members in groups.values():
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                si, sj = members[i], members[j]
                li, lj = ctx.settings[si][factor], ctx.settings[sj][factor]
                if li == lj:
                    continue
                if rule.get("better_level") == "smaller":
                    better, other = (si, sj) if li < lj else (sj, si)
                else:
                    lv = {li: si, lj: sj}
                    if rule.get("better_level") not in lv or rule.get("other_level") not in lv:
                        continue
                    better, other = lv[rule["better_level"]], lv[rule["other_level"]]
                ab, ao = adv(better), adv(other)
                if ab is None or ao is None:
                    continue
                pairs.append({"better_setting": better, "other_setting": other, "advantage_better": ab,
                              "advantage_other": ao})
    if not pairs:
        return INSUFFICIENT, f"no pair of settings that differ only in {factor} (with {base} and the AL methods)", {}
    k = sum(1 for p in pairs if p["advantage_better"] > p["advantage_other"])
    p = binomtest(k, len(pairs), 0.5, alternative="greater").pvalue
    detail = (f"AL advantage over {base} ({metric}) larger at the favoured {factor} level in {k} of {len(pairs)} "
              f"matched pair(s) (binomial p={p:.3g})")
    return (REPRODUCED if k > len(pairs) / 2 else NOT_REPRODUCED), detail, {"pairs": pairs, "binomial_p": p}


_RULES = {
    "ppm_wins_exceed_losses": _rule_ppm, "only_method_ppm_wins_exceed_losses": _rule_ppm,
    "all_methods_ppm_wins_exceed_losses": _rule_ppm, "no_method_ppm_wins_exceed_losses": _rule_ppm,
    "best_mean_rank": _rule_rank, "metric_not_worse": _rule_not_worse, "factor_effect": _rule_factor,
}


def evaluate_claims(claims: list[dict], ctx: Context) -> list[ClaimResult]:
    out = []
    for c in claims:
        rule = c["rule"]
        if rule["kind"] == "descriptive":
            out.append(ClaimResult(c["id"], c["source"], c["text"], NOT_CHECKABLE, None, "-",
                                   "descriptive statement; no machine-readable rule"))
            continue
        scope = rule.get("scope", ["any"])
        settings, comparable = _scope(ctx, scope)
        if not settings:
            out.append(ClaimResult(c["id"], c["source"], c["text"], INSUFFICIENT, None, ",".join(scope), "no runs"))
            continue
        verdict, detail, stats = _RULES[rule["kind"]](c, ctx, settings, comparable)
        out.append(ClaimResult(c["id"], c["source"], c["text"], verdict, comparable,
                               f"{','.join(scope)} ({len(settings)} setting(s) used)", detail, stats))
    return out
