"""``claspe demo``: a complete small AL experiment on the CPU, start to finish.

Synthetic dataset (``claspe.data.synthetic``, organ / lesion / vessel) -> ``prepare`` (held-out split,
nnU-Net planning, resampling) -> settings by the ``claspe plan`` rule -> ClaSP PE and Random 66% FG,
a few loops each with the tiny trainer (real nnU-Net v2, 2 folds) -> a table of Dice per loop, a
budget-curve PNG, and the HTML report of ``claspe.report`` when that package is installed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from claspe.protocol.config import ExperimentConfig, result_path

log = logging.getLogger(__name__)

DEMO_STRATEGIES = ("clasp_pe", "random_fg66")


def results_table(exp_dirs: list[Path]) -> list[dict]:
    """Rows ``{strategy, seed, loop, n_patches, fg_fraction, mean_dice, dice_per_class}`` of the
    experiments' ``results/loop_XXX.json`` files."""
    from claspe.protocol.config import load_config

    rows = []
    for e in exp_dirs:
        cfg = load_config(e)
        for k in range(cfg.query_steps):
            p = result_path(e, k)
            if not p.is_file():
                continue
            r = json.loads(p.read_text())
            rows.append({"experiment": e.name, "strategy": cfg.strategy, "seed": cfg.seed, "loop": k,
                         "n_patches": r["n_patches"], "annotated_voxels": r["annotated_voxels"],
                         "fg_fraction": r["fg_fraction"], "mean_dice": r["mean_dice"],
                         "dice_per_class": r["dice_per_class"]})
    return rows


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table (one line per experiment and loop)."""
    if not rows:
        return "(no results)"
    classes = sorted({k for r in rows for k in r["dice_per_class"]}, key=int)
    head = f"{'strategy':<14} {'loop':>4} {'boxes':>5} {'fg-frac':>7} {'meanDice':>8} " + " ".join(
        f"{'dice_' + k:>7}" for k in classes)
    lines = [head, "-" * len(head)]

    def f(x):
        return "    nan" if x is None else f"{x:7.3f}"

    for r in rows:
        lines.append(f"{r['strategy']:<14} {r['loop']:>4} {r['n_patches']:>5} {r['fg_fraction']:7.3f} "
                     f"{'     nan' if r['mean_dice'] is None else format(r['mean_dice'], '8.3f')} "
                     + " ".join(f(r["dice_per_class"].get(k)) for k in classes))
    return "\n".join(lines)


def budget_curve_png(rows: list[dict], path: str | os.PathLike, *, title: str = "") -> Path:
    """Mean Dice against the number of annotated boxes, one line per strategy.

    Drawn with matplotlib's default style whatever the process's global rcParams are (nnU-Net's
    progress plot calls ``seaborn.set(font_scale=2.5)``, which changes them for the whole process);
    the global rcParams are left as they were.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    with plt.style.context("default"):
        return _draw_budget_curve(plt, rows, Path(path), title)


def _draw_budget_curve(plt, rows: list[dict], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for strat in sorted({r["strategy"] for r in rows}):
        rs = sorted((r for r in rows if r["strategy"] == strat), key=lambda r: r["n_patches"])
        xs = [r["n_patches"] for r in rs]
        ys = [float("nan") if r["mean_dice"] is None else r["mean_dice"] for r in rs]
        ax.plot(xs, ys, marker="o", label=strat)
    ax.set_xlabel("annotated boxes (budget)")
    ax.set_ylabel("mean foreground Dice (held-out)")
    ax.set_title(title or "budget curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(out_dir: str | os.PathLike = "claspe_demo", *, n_cases: int = 12, loops: int = 3, folds: int = 2,
             seed: int = 12345, strategies: tuple[str, ...] = DEMO_STRATEGIES, device: str = "cpu",
             trainer: str = "nnActiveTrainer_tiny", eval_tta: bool = False, progress: bool = True) -> dict:
    """Runs the demo into ``out_dir`` (resumable: running it again reuses what is done).

    The held-out evaluation runs without mirroring TTA by default (``eval_tta``; the protocol's
    default is with TTA) to keep the demo within a few minutes on 2 cores.

    Returns ``{"table": str, "rows": [...], "png": Path, "report": Path | None, "settings": dict,
    "experiments": [Path, ...]}``.
    """
    from claspe.data import make_synthetic_dataset
    from claspe.protocol.experiment import run_experiment
    from claspe.protocol.prepare import prepare_dataset
    from claspe.protocol.rule import recommend_settings

    out = Path(out_dir)
    raw = make_synthetic_dataset(out / "raw", n_cases=n_cases, seed=0)
    prepared = prepare_dataset(raw, out / "data", progress=progress)
    settings = recommend_settings(prepared)
    log.info("demo settings (claspe plan rule): %s", {k: v for k, v in settings.items() if k != "statistics"})
    exps = []
    for strat in strategies:
        cfg = ExperimentConfig(dataset=prepared.name, strategy=strat, query_size=settings["query_size"],
                               patch_size=settings["patch_size"], agg_stride=settings["agg_stride"],
                               starting_budget_size=settings["starting_budget_size"],
                               n_patch_per_image=settings["n_patch_per_image"], query_steps=loops, trainer=trainer,
                               folds=folds, seed=seed, device=device, label_regime="demo",
                               extra={"eval_tta": bool(eval_tta)})
        exps.append(run_experiment(cfg, data_root=out / "data", exp_root=out / "experiments", progress=progress))
    rows = results_table(exps)
    table = format_table(rows)
    (out / "dice_per_loop.txt").write_text(table + "\n")
    png = budget_curve_png(rows, out / "budget_curve.png", title=f"{prepared.name}: {loops} loops, {folds} folds")
    report = None
    try:
        from claspe.report import write_report
    except ImportError:
        write_report = None
    if write_report is not None:
        try:
            report = write_report(out / "experiments", out_dir=out / "report")
        except Exception as exc:  # the demo's own outputs stay valid when the report fails
            log.warning("report failed: %s", exc)
    return {"table": table, "rows": rows, "png": png, "report": report, "settings": settings, "experiments": exps}
