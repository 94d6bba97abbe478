"""``claspe report``: tables (CSV + Markdown), PNG figures and one self-contained HTML page.

Output folder (default ``<EXPERIMENTS_DIR>/report``)::

    runs.csv             one row per (run, loop): budget, Mean Dice, foreground fraction, ...
    per_class_dice.csv   one row per (run, loop, class)
    status.csv           one row per run: loops done / total, missing loops
    run_metrics.csv      one row per complete run: AUBC, Final Dice, final foreground fraction ([0, 1])
    summary.csv          per setting and method: seeds, AUBC ± std, Final Dice ± std (×100), FG-Eff γ, SE, c
    ppm_tests.csv        every paired t-test (setting, pair, budget step, p, Holm p, significant?)
    ppm_<none|holm>.csv  PPM summed over settings, % of settings, with the "Mean" row
    ranks_<metric>.csv   mean rank ± std per method; ranks_per_setting_<metric>.csv (1 = best, ties -> min)
    friedman.csv, nemenyi_<metric>.csv   Friedman χ² across settings, Nemenyi post-hoc p-values
    mean_table.csv       mean over settings, SE, 95% half-width (×100)
    loso.csv             leave-one-seed-out ranks (AUBC)
    report.md            all tables in Markdown
    figures/*.png        budget curves per setting, PPM heatmaps, FG-Eff per setting, rank plot
    report.html          everything above on one page, images embedded (base64)
"""

from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path

import pandas as pd

from claspe.report import figures
from claspe.report.analysis import analyze, ppm_percent
from claspe.report.collect import collect_runs, missing_report

log = logging.getLogger(__name__)


def _fmt(v, nd: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.{nd}f}" if abs(v) < 1e5 else f"{v:.3g}"
    return str(v)


def to_markdown(df: pd.DataFrame, nd: int = 2, index: bool = False) -> str:
    """A GitHub Markdown table (no extra dependency)."""
    if df is None or df.empty:
        return "_(no data)_\n"
    d = df.reset_index() if index else df
    cols = [str(c) for c in d.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in d.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, nd).replace("|", "/") for v in row) + " |")
    return "\n".join(lines) + "\n"


def _html_table(df: pd.DataFrame, nd: int = 2, index: bool = False) -> str:
    if df is None or df.empty:
        return "<p><em>no data</em></p>"
    d = df.reset_index() if index else df
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v, nd))}</td>" for v in row) + "</tr>"
                   for row in d.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .5em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;
border:1px solid #eee;margin:.4em 0}.warn{background:#fff6e0;border-left:4px solid #e0a000;padding:.5em 1em}
.note{color:#555;font-size:.9em}.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1em}"""


def write_report(exp_root, out_dir=None, *, alpha: float = 0.05, full_data: dict | None = None) -> Path:
    """Collect the experiments under ``exp_root``, compute every table and figure, write them to
    ``out_dir`` (default ``exp_root/report``) and return the path of ``report.html``.

    Works on partial results: unfinished runs appear in the curves and the status table, and
    everything that is missing is listed at the top of the page. ``full_data`` maps dataset name ->
    full-data Mean Dice for FG-Eff (else paper_results/full_data_dice.csv; else c is fitted, flagged).

    Raises:
        FileNotFoundError: ``exp_root`` is missing or has no experiment.
    """
    exp_root = Path(exp_root)
    col = collect_runs(exp_root)
    out = Path(out_dir) if out_dir is not None else exp_root / "report"
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for pattern in ("figures/*.png", "ppm_*.csv", "ranks_*.csv", "nemenyi_*.csv", "loso.csv", "mean_table.csv",
                    "ppm_tests.csv"):
        for stale in out.glob(pattern):  # outputs of an earlier report in the same folder
            stale.unlink()
    an = analyze(col.runs_df, alpha=alpha, full_data=full_data)
    missing = missing_report(col)

    # ---- CSV tables
    col.runs_df.to_csv(out / "runs.csv", index=False)
    col.classes_df.to_csv(out / "per_class_dice.csv", index=False)
    col.status_df.to_csv(out / "status.csv", index=False)
    an.run_metrics.to_csv(out / "run_metrics.csv", index=False)
    an.summary.to_csv(out / "summary.csv", index=False)
    if an.ppm_tests is not None:
        an.ppm_tests.to_csv(out / "ppm_tests.csv", index=False)
    ppm_tables = {}
    for corr, total in an.ppm_total.items():
        ppm_tables[corr] = ppm_percent(total)
        ppm_tables[corr].to_csv(out / f"ppm_{corr}.csv")
    fried_rows = []
    for metric, r in an.ranks.items():
        if r.get("mean") is not None:
            r["mean"].to_csv(out / f"ranks_{metric}.csv", index=False)
            r["table"].to_csv(out / f"ranks_per_setting_{metric}.csv")
        fr = r.get("friedman")
        if fr is not None:
            fr.nemenyi.to_csv(out / f"nemenyi_{metric}.csv")
            fried_rows.append({"metric": metric, "chi2": fr.statistic, "p": fr.pvalue, "n_settings": fr.n_settings,
                               "n_methods": fr.n_methods})
    fried = pd.DataFrame(fried_rows, columns=["metric", "chi2", "p", "n_settings", "n_methods"])
    fried.to_csv(out / "friedman.csv", index=False)
    if an.mean_table is not None:
        an.mean_table.to_csv(out / "mean_table.csv", index=False)
    if an.loso is not None:
        an.loso.to_csv(out / "loso.csv", index=False)

    # ---- figures
    figs: dict[str, list[Path]] = {"curves": [], "ppm": [], "fg_eff": [], "ranks": []}
    settings = list(dict.fromkeys(col.runs_df["setting"]))
    for sid in settings:
        figs["curves"].append(figures.budget_curves(col.runs_df, sid, fig_dir / f"curves_{sid}.png"))
        if any(k[0] == sid for k in an.fg_fits):
            figs["fg_eff"].append(figures.fg_eff_plot(col.runs_df, an.fg_fits, sid, fig_dir / f"fg_eff_{sid}.png"))
    n_ppm = len(an.ppm)
    for corr, pct in ppm_tables.items():
        title = (f"Pairwise penalty matrix ({'Holm-corrected' if corr == 'holm' else 'plain'} t-tests, "
                 f"alpha={alpha}), % of {n_ppm} setting(s)")
        figs["ppm"].append(figures.ppm_heatmap(pct, fig_dir / f"ppm_{corr}.png", title))
    rp = figures.rank_plot(an.ranks, fig_dir / "ranks.png")
    if rp is not None:
        figs["ranks"].append(rp)

    # ---- Markdown
    summ_cols = ["setting", "method", "n_seeds", "AUBC", "AUBC_std", "FinalDice", "FinalDice_std", "FG_Eff",
                 "FG_Eff_SE", "FinalFGFraction"]
    md = [f"# ClaSP PE report: {exp_root}\n",
          f"{len(col.runs)} experiment(s), {int(col.status_df['complete'].sum())} complete, "
          f"{len(settings)} setting(s), methods: {', '.join(figures.method_order(col.runs_df['method']))}.\n"]
    settings_tab = (col.status_df.groupby("setting", sort=False)
                    .agg(setting_label=("setting_label", "first"), methods=("method", "nunique"),
                         runs=("seed", "size"), complete=("complete", "sum")).reset_index())
    settings_tab.to_csv(out / "settings.csv", index=False)
    md.append("## Settings\n")
    md.append(to_markdown(settings_tab))
    md.append("## What is missing\n")
    md.append("\n".join(f"- {line}" for line in missing) + "\n" if missing else "Nothing: every run is complete.\n")
    md.append("## Summary per setting (AUBC, Final Dice ×100; mean ± std over seeds; FG-Eff γ ± SE)\n")
    md.append(to_markdown(an.summary[summ_cols]))
    if any(an.summary["FG_Eff_c_source"].str.startswith("fitted")):
        md.append("\nFG-Eff note: c was fitted where no full-data reference exists; γ is then not comparable "
                  "to the paper.\n")
    if not ppm_tables:
        md.append("## Pairwise penalty matrix\n\n_Not computed: no setting has 2 methods with >= 2 complete seeds._\n")
    for corr, pct in ppm_tables.items():
        md.append(f"## Pairwise penalty matrix ({corr}), % of settings (rows beat columns)\n")
        md.append(to_markdown(pct.round(1), nd=1, index=True))
    for metric, r in an.ranks.items():
        md.append(f"## Mean rank: {metric}\n")
        md.append(to_markdown(r.get("mean")) if r.get("mean") is not None else f"_{r.get('note')}_\n")
    md.append("## Friedman test across settings\n")
    md.append(to_markdown(fried, nd=4))
    md.append("## Mean over settings (×100; SE = sqrt(Σ_s var_s / n_s) / N; CI = 1.96·SE)\n")
    md.append(to_markdown(an.mean_table))
    if an.loso is not None:
        md.append("## Leave-one-seed-out mean ranks (AUBC)\n")
        md.append(to_markdown(an.loso))
    if an.notes:
        md.append("## Notes\n" + "\n".join(f"- {n}" for n in an.notes) + "\n")
    (out / "report.md").write_text("\n".join(md))

    # ---- HTML
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>ClaSP PE report</title><style>{CSS}</style>"
         "</head><body>", f"<h1>ClaSP PE report</h1><p class='note'>{html.escape(str(exp_root))}: "
         f"{len(col.runs)} experiment(s), {int(col.status_df['complete'].sum())} complete, {len(settings)} setting(s)."
         "</p>"]
    h.append("<h2>Settings</h2>" + _html_table(settings_tab))
    h.append("<h2>What is missing</h2>")
    if missing:
        h.append("<div class='warn'><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in missing) + "</ul></div>")
    else:
        h.append("<p>Nothing: every run is complete.</p>")
    h.append("<h2>Budget curves</h2><p class='note'>Line: mean over seeds; band: min–max over seeds.</p>"
             "<div class='grid'>" + "".join(_img(p) for p in figs["curves"]) + "</div>")
    h.append("<h2>Summary per setting</h2><p class='note'>AUBC and Final Dice ×100, mean ± std over complete "
             "seeds; FG-Eff γ ± standard error (sqrt of the fit variance).</p>" + _html_table(an.summary[summ_cols]))
    h.append("<h2>Pairwise penalty matrix</h2><p class='note'>Cell (row, column): % of settings in which the row "
             "method is significantly better than the column method (share of budget steps, paired two-sided "
             "t-tests over seeds). Mean row: column sum / (methods − 1).</p>")
    if not ppm_tables:
        h.append("<p><em>Not computed: no setting has 2 methods with at least 2 complete seeds.</em></p>")
    h.append("<div class='grid'>" + "".join(_img(p) for p in figs["ppm"]) + "</div>")
    for corr, pct in ppm_tables.items():
        h.append(f"<h3>{corr}</h3>" + _html_table(pct.round(1), nd=1, index=True))
    h.append("<h2>Foreground efficiency</h2><div class='grid'>" + "".join(_img(p) for p in figs["fg_eff"]) + "</div>")
    h.append("<h2>Rankings</h2>" + "".join(_img(p) for p in figs["ranks"]))
    for metric, r in an.ranks.items():
        h.append(f"<h3>{metric}</h3>")
        h.append(_html_table(r["mean"]) if r.get("mean") is not None else f"<p>{html.escape(r.get('note', ''))}</p>")
    h.append("<h3>Friedman test</h3>" + _html_table(fried, nd=4))
    h.append("<h2>Mean over settings</h2>" + _html_table(an.mean_table))
    if an.loso is not None:
        h.append("<h2>Leave-one-seed-out ranks (AUBC)</h2>" + _html_table(an.loso))
    if an.notes:
        h.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in an.notes) + "</ul>")
    h.append("</body></html>")
    page = out / "report.html"
    page.write_text("".join(h))
    log.info("report written to %s", page)
    return page
