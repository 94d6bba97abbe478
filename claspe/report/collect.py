"""Collect experiment folders (layout: :mod:`claspe.protocol.config`) into long tables.

A *setting* is everything in ``experiment.json`` that changes the experiment except the strategy and
the seed (dataset, label regime, patch size, stride, query/starting budget sizes, candidates per
image, loops, trainer, folds, configuration); the *method* is the strategy (shown with the paper's
name when it is a known alias, e.g. ``clasp_pe`` -> ``ClaSP PE``); seeds are repetitions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from claspe.protocol.config import ExperimentConfig, load_config, result_path

log = logging.getLogger(__name__)

SETTING_KEYS = ("dataset", "label_regime", "patch_size", "agg_stride", "query_size", "starting_budget_size",
                "n_patch_per_image", "query_steps", "trainer", "folds", "configuration")


@dataclass
class Run:
    path: Path
    config: ExperimentConfig
    results: dict[int, dict] = field(default_factory=dict)  # loop -> results/loop_XXX.json

    @property
    def missing_loops(self) -> list[int]:
        return [k for k in range(self.config.query_steps) if k not in self.results]

    @property
    def complete(self) -> bool:
        return not self.missing_loops


@dataclass
class Collection:
    root: Path
    runs: list[Run]
    problems: list[tuple[str, str]]  # (path, message) for folders that could not be read
    runs_df: pd.DataFrame  # one row per (run, loop with a result)
    classes_df: pd.DataFrame  # one row per (run, loop, class)
    status_df: pd.DataFrame  # one row per run: complete?, missing loops
    settings: dict = field(default_factory=dict)  # setting id -> setting dict (SETTING_KEYS)


def setting_of(cfg: ExperimentConfig) -> dict:
    d = cfg.to_json()
    return {k: (tuple(d[k]) if isinstance(d[k], list) else d[k]) for k in SETTING_KEYS}


def setting_label(s: dict) -> str:
    p = "x".join(map(str, s["patch_size"]))
    st = "x".join(map(str, s["agg_stride"]))
    npi = s["n_patch_per_image"] if s["n_patch_per_image"] is not None else "qs"
    return (f"{s['dataset']} | {s['label_regime']} | patch {p} | stride {st} | qs {s['query_size']} | "
            f"sbs {s['starting_budget_size']} | npi {npi} | {s['query_steps']} loops | {s['trainer']} | "
            f"{s['folds']} folds")


def setting_id(s: dict) -> str:
    """Short, file-name-safe id: ``<dataset>-<regime>-<hash of all setting fields>``."""
    h = hashlib.sha1(json.dumps({k: s[k] for k in SETTING_KEYS}, sort_keys=True, default=list).encode()).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9]+", "-", f"{s['dataset']}-{s['label_regime']}").strip("-")
    return f"{stem}-{h}"


def _method_name(strategy: str) -> str:
    try:
        from claspe.report.paper import names

        return names().method(strategy) or strategy
    except (FileNotFoundError, ValueError):  # paper_results not available: keep the registered name
        return strategy


def find_experiments(root: Path) -> list[Path]:
    if (root / "experiment.json").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("experiment.json")
                  if not any(part.startswith(".") for part in p.relative_to(root).parts[:-1]))


def collect_runs(root) -> Collection:
    """Read every experiment under ``root`` (any depth; ``root`` itself may be one).

    Unreadable folders are listed in ``problems`` (not fatal); result files that do not parse or
    lack ``mean_dice`` make that loop count as missing, with a problem entry.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no experiment.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    dirs = find_experiments(root)
    if not dirs:
        raise FileNotFoundError(f"no experiment (experiment.json) found under {root}")
    runs, problems = [], []
    for d in dirs:
        try:
            cfg = load_config(d)
        except (ValueError, FileNotFoundError, TypeError) as exc:
            problems.append((str(d), f"experiment.json unreadable: {exc}"))
            continue
        run = Run(d, cfg)
        for k in range(cfg.query_steps):
            p = result_path(d, k)
            if not p.is_file():
                continue
            try:
                doc = json.loads(p.read_text())
                if doc["mean_dice"] is None:  # NaN written as null: a class absent from every case
                    problems.append((str(p), "mean_dice is null (NaN: a class absent in every case?); the run "
                                             "has no AUBC"))
                    doc["mean_dice"] = float("nan")
                float(doc["mean_dice"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                problems.append((str(p), f"result unreadable ({type(exc).__name__}: {exc}); loop counted as missing"))
                continue
            run.results[k] = doc
        runs.append(run)
    regime_rank = {"low": 0, "medium": 1, "high": 2}
    runs.sort(key=lambda r: (r.config.dataset, regime_rank.get(r.config.label_regime, 3), r.config.label_regime,
                             r.config.query_size, r.config.patch_size, r.config.trainer, r.config.strategy,
                             r.config.seed))
    rows, crow, srow, settings = [], [], [], {}
    for run in runs:
        cfg = run.config
        s = setting_of(cfg)
        sid, label = setting_id(s), setting_label(s)
        settings[sid] = s
        method = _method_name(cfg.strategy)
        base = {"setting": sid, "setting_label": label, **{k: s[k] for k in ("dataset", "label_regime")},
                "method": method, "strategy": cfg.strategy, "seed": cfg.seed, "trainer": cfg.trainer,
                "query_size": cfg.query_size, "exp_dir": str(run.path)}
        for k, doc in sorted(run.results.items()):
            budget = doc.get("n_patches")
            if budget is None:
                budget = cfg.starting_budget_size + k * cfg.query_size
            fgf = doc.get("fg_fraction")
            if fgf is None and doc.get("pool_fg_voxels"):
                fgf = doc.get("annotated_fg_voxels", float("nan")) / doc["pool_fg_voxels"]
            rows.append({**base, "loop": k, "budget": float(budget), "mean_dice": float(doc["mean_dice"]),
                         "fg_fraction": float(fgf) if fgf is not None else float("nan"),
                         "annotated_fg_voxels": doc.get("annotated_fg_voxels"),
                         "pool_fg_voxels": doc.get("pool_fg_voxels"), "complete": run.complete})
            for c, v in (doc.get("dice_per_class") or {}).items():
                crow.append({"setting": sid, "method": method, "seed": cfg.seed, "loop": k, "class": str(c),
                             "dice": float(v) if v is not None else float("nan")})
        srow.append({"setting": sid, "setting_label": label, "method": method, "seed": cfg.seed,
                     "loops_done": len(run.results), "loops_total": cfg.query_steps, "complete": run.complete,
                     "missing_loops": ",".join(map(str, run.missing_loops)), "exp_dir": str(run.path)})
    runs_df = pd.DataFrame(rows, columns=["setting", "setting_label", "dataset", "label_regime", "method", "strategy",
                                          "seed", "trainer", "query_size", "exp_dir", "loop", "budget", "mean_dice",
                                          "fg_fraction", "annotated_fg_voxels", "pool_fg_voxels", "complete"])
    classes_df = pd.DataFrame(crow, columns=["setting", "method", "seed", "loop", "class", "dice"])
    status_df = pd.DataFrame(srow, columns=["setting", "setting_label", "method", "seed", "loops_done", "loops_total",
                                            "complete", "missing_loops", "exp_dir"])
    log.info("collected %d experiments (%d complete) under %s", len(runs), int(status_df["complete"].sum()), root)
    return Collection(root, runs, problems, runs_df, classes_df, status_df, settings)


def missing_report(col: Collection) -> list[str]:
    """Human-readable lines on what is missing: unreadable folders, unfinished runs, and, per setting,
    methods or seeds that other settings/methods have but this one lacks."""
    lines = [f"problem: {p}: {m}" for p, m in col.problems]
    st = col.status_df
    for r in st[~st["complete"]].itertuples():
        lines.append(f"unfinished: {r.method} seed {r.seed} in {r.setting_label}: loops {r.missing_loops} missing "
                     f"({r.loops_done}/{r.loops_total} done)")
    all_methods = list(dict.fromkeys(st["method"]))
    for _sid, g in st.groupby("setting", sort=False):
        label = g["setting_label"].iloc[0]
        lacking = [m for m in all_methods if m not in set(g["method"])]
        if lacking:
            lines.append(f"methods without runs in {label}: {', '.join(lacking)}")
        seeds = set(g["seed"])
        for m, gm in g.groupby("method", sort=False):
            ms = seeds - set(gm[gm["complete"]]["seed"])
            if ms:
                lines.append(f"seeds without a complete run for {m} in {label}: {', '.join(map(str, sorted(ms)))}")
        n_complete = g[g["complete"]].groupby("method")["seed"].nunique()
        few = [m for m, n in n_complete.items() if n < 2]
        if few:
            lines.append(f"fewer than 2 complete seeds (no significance tests) in {label}: {', '.join(few)}")
    return lines
