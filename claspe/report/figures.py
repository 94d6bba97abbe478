"""PNG figures of the report (matplotlib, Agg backend; no seaborn)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pandas as pd

PAPER_ORDER = ["BALD", "PowerBALD", "SoftrankBALD", "PE", "PowerPE", "Random", "Random 33% FG", "Random 66% FG",
               "Cla PE 33%", "Cla PE 66%", "ClaP PE", "ClaSP PE"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _default_style(fn):
    """Draw with matplotlib's default style: other code in the same process (nnU-Net's progress plot
    calls ``seaborn.set(font_scale=2.5)``) changes the global rcParams."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        plt = _plt()
        with plt.style.context("default"):
            return fn(*args, **kwargs)

    return wrapper


def method_order(methods) -> list[str]:
    methods = list(dict.fromkeys(methods))
    known = [m for m in PAPER_ORDER if m in methods]
    return known + sorted(m for m in methods if m not in known)


def method_colors(methods) -> dict:
    plt = _plt()
    cmap = plt.get_cmap("tab20")
    fixed = {m: cmap(2 * k % 20 + (k // 10)) for k, m in enumerate(PAPER_ORDER)}
    fixed["ClaSP PE"] = "#d62728"
    fixed["Random 66% FG"] = "#1f77b4"
    fixed["Random 33% FG"] = "#17becf"
    fixed["Random"] = "#7f7f7f"
    fixed["PE"] = "#2ca02c"
    out, extra = {}, 0
    for m in methods:
        if m in fixed:
            out[m] = fixed[m]
        else:
            out[m] = plt.get_cmap("Dark2")(extra % 8)
            extra += 1
    return out


def _wrap(label: str, width: int = 70) -> str:
    parts, line = [], ""
    for tok in label.split(" | "):
        if line and len(line) + len(tok) + 3 > width:
            parts.append(line)
            line = tok
        else:
            line = f"{line} | {tok}" if line else tok
    parts.append(line)
    return "\n".join(parts)


@_default_style
def budget_curves(runs_df: pd.DataFrame, setting: str, path: Path) -> Path:
    """Mean Dice vs budget per method: seed mean (line) and min–max band over seeds; unfinished runs
    are included up to their last loop (the band then covers fewer seeds)."""
    plt = _plt()
    g = runs_df[runs_df["setting"] == setting]
    methods = method_order(g["method"])
    colors = method_colors(methods)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for m in methods:
        gm = g[g["method"] == m]
        agg = gm.groupby("budget")["mean_dice"].agg(["mean", "min", "max", "count"]).sort_index()
        n_seeds = gm["seed"].nunique()
        x = agg.index.to_numpy(float)
        lw = 2.4 if m == "ClaSP PE" else 1.6
        ax.plot(x, 100 * agg["mean"], marker="o", ms=3.5, lw=lw, color=colors[m], label=f"{m} (n={n_seeds})")
        if n_seeds > 1:
            ax.fill_between(x, 100 * agg["min"], 100 * agg["max"], color=colors[m], alpha=0.15, lw=0)
    ax.set_xlabel("budget (annotated patches)")
    ax.set_ylabel("Mean foreground Dice (%)")
    ax.grid(alpha=0.3)
    ax.set_title(_wrap(str(g["setting_label"].iloc[0])), fontsize=8.5)
    ax.legend(fontsize=8, loc="lower right", framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@_default_style
def ppm_heatmap(pct: pd.DataFrame, path: Path, title: str) -> Path:
    """Heatmap of a PPM in % of settings (rows win, columns lose) with the "Mean" row below a gap."""
    plt = _plt()
    order = method_order([m for m in pct.columns])
    body = pct.loc[order, order].to_numpy(float)
    mean = pct.loc["Mean", order].to_numpy(float)
    n = len(order)
    fig_w = max(5.5, 0.75 * n + 2.5)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(fig_w, 0.6 * n + 2.6), dpi=110, sharex=True,
                                  gridspec_kw={"height_ratios": [n, 1], "hspace": 0.08})
    for a, data in ((ax, body), (ax2, mean[None, :])):
        shown = data.copy()
        im = a.imshow(np.ma.masked_invalid(shown), cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for (i, j), v in np.ndenumerate(data):
            if math.isfinite(v):
                a.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                       color="white" if v < 55 else "black")
    for i in range(n):
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, color="#dddddd"))
    ax.set_yticks(range(n), order, fontsize=8)
    ax2.set_yticks([0], ["Mean"], fontsize=8)
    ax2.set_xticks(range(n), order, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("significantly beats →\n(row wins)", fontsize=8)
    ax2.set_xlabel("← is beaten (column losses)", fontsize=8)
    ax.set_title(title, fontsize=9.5)
    cbar = fig.colorbar(im, ax=[ax, ax2], fraction=0.04, pad=0.02)
    cbar.set_label("% of settings", fontsize=8)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


@_default_style
def fg_eff_plot(runs_df: pd.DataFrame, fits: dict, setting: str, path: Path) -> Path:
    """Dice vs annotated foreground fraction: points of every complete run and each method's fitted
    curve ``c - a·exp(-γ(x - x0))`` (γ ± SE in the legend); dashed line = c."""
    plt = _plt()
    g = runs_df[(runs_df["setting"] == setting) & runs_df["complete"].astype(bool)]
    g = g[np.isfinite(g["fg_fraction"].astype(float))]
    methods = method_order(g["method"])
    colors = method_colors(methods)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    c = None
    xmax = float(g["fg_fraction"].max()) if len(g) else 1.0
    for m in methods:
        gm = g[g["method"] == m]
        ax.scatter(100 * gm["fg_fraction"], 100 * gm["mean_dice"], s=12, color=colors[m], alpha=0.55)
        fit = fits.get((setting, m))
        label = m
        if fit is not None:
            xs = np.linspace(fit.x0, xmax * 1.05, 200)
            ax.plot(100 * xs, 100 * fit.curve(xs), color=colors[m], lw=2.2 if m == "ClaSP PE" else 1.5)
            label = f"{m}: γ={fit.gamma:.2f} ± {fit.stderr:.2f}"
            c = fit
        ax.plot([], [], color=colors[m], marker="o", label=label)
    if c is not None:
        ax.axhline(100 * c.c, color="k", ls="--", lw=1)
        ax.text(100 * xmax * 1.04, 100 * c.c, "c (fitted)" if c.c_fitted else "c = full-data Dice",
                ha="right", va="bottom", fontsize=7.5)
    ax.set_xlabel("annotated foreground (% of the pool's foreground voxels)")
    ax.set_ylabel("Mean foreground Dice (%)")
    ax.grid(alpha=0.3)
    lab = str(runs_df[runs_df["setting"] == setting]["setting_label"].iloc[0])
    ax.set_title(_wrap("FG-Eff | " + lab), fontsize=8.5)
    ax.legend(fontsize=7.5, loc="lower right", framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


@_default_style
def rank_plot(ranks: dict, path: Path) -> Path | None:
    """Mean rank ± std across settings for each metric (1 = best), one panel per metric."""
    plt = _plt()
    panels = [(k, v) for k, v in ranks.items() if v.get("mean") is not None]
    if not panels:
        return None
    all_methods = method_order([m for _, v in panels for m in v["mean"]["method"]])
    colors = method_colors(all_methods)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.5, 0.42 * len(all_methods) + 1.8),
                             dpi=110, sharey=True, squeeze=False)
    for ax, (metric, v) in zip(axes[0], panels):
        mr = v["mean"].set_index("method").reindex(all_methods)
        y = np.arange(len(all_methods))
        for k, m in enumerate(all_methods):
            if not np.isfinite(mr.loc[m, "mean_rank"]):
                continue
            ax.errorbar(mr.loc[m, "mean_rank"], y[k], xerr=np.nan_to_num(mr.loc[m, "std_rank"]), fmt="o",
                        color=colors[m], capsize=3, ms=6)
        n_set = int(v["mean"]["n_settings"].iloc[0])
        fr = v.get("friedman")
        sub = f"{n_set} setting(s)" + (f", Friedman p={fr.pvalue:.3g}" if fr is not None else "")
        ax.set_title(f"{metric}\n{sub}", fontsize=9)
        ax.set_xlabel("mean rank (1 = best)", fontsize=8)
        n_m = v["mean"].shape[0]
        ax.set_xlim(0.5, n_m + 0.5)
        ax.set_xticks(range(1, n_m + 1))
        ax.set_ylim(len(all_methods) - 0.5, -0.5)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(all_methods)), all_methods, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
