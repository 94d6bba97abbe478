"""``paper_results/`` as data: published settings, method names, full-data Dice, claims, and a local
store of imported published per-run results (``claspe paper import``).

Location of ``paper_results/``: ``$CLASPE_PAPER_RESULTS`` or the folder beside the ``claspe`` package
(the repository checkout). Store of imported results: ``$CLASPE_PAPER_STORE`` or
``$XDG_DATA_HOME/claspe/paper_store`` (default ``~/.local/share/claspe/paper_store``).

Accepted import formats (CSV, header row, column names case-insensitive; aliases in ``_ALIASES``):

1. **per-run long format** — one row per (run, loop): required ``dataset``, ``label_regime``,
   ``method``, ``seed``, ``mean_dice`` and ``loop`` or ``budget``; optional ``fg_fraction``,
   ``setting_group`` (``main`` if absent), ``patch_size``, ``query_size``, ``trainer``.
   ``mean_dice`` in [0, 1] (values > 1.5 are read as percent and divided by 100).
2. **summary format** (the reference's ``main_results_tables.py`` template) — one row per
   (setting, method): required ``dataset``, ``label_regime``, ``method``, ``AUBC``; optional
   ``AUBC_std``, ``FinalDice``, ``FinalDice_std``, ``FG_Eff``, ``FG_Eff_std``, ``setting_group``;
   AUBC/Final Dice ×100 as in the paper's tables.

Datasets may be given as ``Dataset004_Hippocampus``, ``004``/``4`` or a short name (``Hippocampus``);
methods as paper names (``ClaSP PE``), nnActive registered names (``class_power_pe66_exp``) or claspe
preset names (``clasp_pe``).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SETTING_FIELDS = ("patch_size", "agg_stride", "query_size", "starting_budget_size", "n_patch_per_image",
                  "query_steps", "trainer")
SETTINGS_COLUMNS = ("setting_id", "setting_group", "dataset", "dataset_short", "label_regime", "patch_size",
                    "agg_stride", "query_size", "starting_budget_size", "n_patch_per_image", "query_steps",
                    "trainer", "starting_budget", "seeds", "method_set", "source", "confidence")
METHODS_COLUMNS = ("paper_name", "nnactive_name", "claspe_name", "role", "main", "patch_half", "rollout", "p1")
FULL_DATA_COLUMNS = ("dataset", "trainer", "epochs", "class", "dice")
GROUPS = ("main", "patch_half", "rollout")
REGIMES = {"low": "low", "low label": "low", "medium": "medium", "med": "medium", "mid": "medium",
           "medium label": "medium", "high": "high", "high label": "high", "rollout": "rollout",
           "roll-out": "rollout", "default": "rollout"}


def paper_dir() -> Path:
    """The ``paper_results/`` folder (``$CLASPE_PAPER_RESULTS`` overrides)."""
    env = os.environ.get("CLASPE_PAPER_RESULTS")
    p = Path(env) if env else Path(__file__).resolve().parents[2] / "paper_results"
    if not (p / "settings.csv").is_file():
        raise FileNotFoundError(f"paper_results folder not found at {p} (set CLASPE_PAPER_RESULTS)")
    return p


def store_dir() -> Path:
    env = os.environ.get("CLASPE_PAPER_STORE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "claspe" / "paper_store"


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in required if c not in cols]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; has {cols}")
        return list(reader)


def parse_triple(s: str) -> tuple[int, int, int]:
    parts = [int(x) for x in re.split(r"[x,;\s]+", str(s).strip("()[] ")) if x]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or any(p <= 0 for p in parts):
        raise ValueError(f"expected 3 positive integers like 20x20x20, got {s!r}")
    return tuple(parts)


def load_settings(root: Path | None = None) -> list[dict]:
    """``settings.csv`` validated and typed (triples as tuples, sizes as ints, seeds as a list)."""
    root = root or paper_dir()
    rows = _read_csv(root / "settings.csv", SETTINGS_COLUMNS)
    out, seen = [], set()
    for k, r in enumerate(rows, start=2):
        where = f"{root / 'settings.csv'} line {k}"
        if r["setting_id"] in seen:
            raise ValueError(f"{where}: duplicate setting_id {r['setting_id']!r}")
        seen.add(r["setting_id"])
        if r["setting_group"] not in GROUPS:
            raise ValueError(f"{where}: setting_group {r['setting_group']!r} not in {GROUPS}")
        if r["label_regime"] not in ("low", "medium", "high", "rollout"):
            raise ValueError(f"{where}: label_regime {r['label_regime']!r}")
        if not re.fullmatch(r"Dataset\d{3}_\w+", r["dataset"]):
            raise ValueError(f"{where}: dataset {r['dataset']!r} is not an nnU-Net dataset name")
        d = dict(r)
        d["patch_size"] = parse_triple(r["patch_size"])
        d["agg_stride"] = parse_triple(r["agg_stride"])
        for key in ("query_size", "starting_budget_size", "n_patch_per_image", "query_steps"):
            d[key] = int(r[key])
            if d[key] <= 0:
                raise ValueError(f"{where}: {key} must be positive")
        d["seeds"] = [int(s) for s in r["seeds"].split(";")]
        if r["confidence"] not in ("code", "inferred"):
            raise ValueError(f"{where}: confidence must be code|inferred")
        out.append(d)
    return out


def load_methods(root: Path | None = None) -> list[dict]:
    root = root or paper_dir()
    rows = _read_csv(root / "methods.csv", METHODS_COLUMNS)
    for r in rows:
        for g in ("main", "patch_half", "rollout", "p1"):
            if r[g] not in ("0", "1"):
                raise ValueError(f"methods.csv: {r['paper_name']}: column {g} must be 0 or 1")
    return rows


def load_full_data(root: Path | None = None) -> list[dict]:
    root = root or paper_dir()
    rows = _read_csv(root / "full_data_dice.csv", FULL_DATA_COLUMNS)
    for r in rows:
        r["dice"] = float(r["dice"])
        r["epochs"] = int(r["epochs"])
        if not 0.0 <= r["dice"] <= 1.0:
            raise ValueError(f"full_data_dice.csv: dice {r['dice']} out of [0, 1]")
    return rows


CLAIM_KINDS = ("ppm_wins_exceed_losses", "only_method_ppm_wins_exceed_losses", "all_methods_ppm_wins_exceed_losses",
               "no_method_ppm_wins_exceed_losses", "best_mean_rank", "metric_not_worse", "factor_effect",
               "descriptive")


def load_claims(root: Path | None = None) -> list[dict]:
    """``claims.yaml`` validated: ids unique, known rule kinds, method names known."""
    import yaml

    root = root or paper_dir()
    path = root / "claims.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise ValueError(f"{path}: expected a mapping with a 'claims' list")
    names = {m["paper_name"] for m in load_methods(root)}
    ids = set()
    for c in data["claims"]:
        for key in ("id", "source", "text", "interpretation", "rule"):
            if key not in c:
                raise ValueError(f"{path}: claim {c.get('id', '?')} lacks {key!r}")
        if c["id"] in ids:
            raise ValueError(f"{path}: duplicate claim id {c['id']}")
        ids.add(c["id"])
        if not re.match(r"^P[12] ", c["source"]):
            raise ValueError(f"{path}: claim {c['id']}: source must start with 'P1 ' or 'P2 '")
        rule = c["rule"]
        if rule.get("kind") not in CLAIM_KINDS:
            raise ValueError(f"{path}: claim {c['id']}: unknown rule kind {rule.get('kind')!r}")
        mentioned = [rule.get("method"), rule.get("baseline"), *rule.get("baselines", []), *rule.get("methods", []),
                     *rule.get("competitors", []), *rule.get("among", [])]
        bad = [m for m in mentioned if m is not None and m not in names]
        if bad:
            raise ValueError(f"{path}: claim {c['id']}: unknown methods {bad}")
        for g in rule.get("scope", []):
            if g not in (*GROUPS, "any"):
                raise ValueError(f"{path}: claim {c['id']}: unknown scope {g!r}")
    return data["claims"]


# ------------------------------------------------------------------ name normalisation
@dataclass(frozen=True)
class Names:
    methods: dict  # lower-case alias -> paper name
    datasets: dict  # lower-case alias -> nnU-Net dataset name

    def method(self, name: str) -> str | None:
        return self.methods.get(str(name).strip().lower())

    def dataset(self, name: str) -> str | None:
        s = str(name).strip()
        hit = self.datasets.get(s.lower())
        if hit:
            return hit
        m = re.match(r"^(?:dataset)?0*(\d{1,3})(?:_.*)?$", s, re.IGNORECASE)
        if m:
            return self.datasets.get(f"id:{int(m.group(1))}")
        return None


def names(root: Path | None = None) -> Names:
    """Alias tables for methods and datasets (cached per folder and file modification times)."""
    root = Path(root or paper_dir())
    stamp = tuple((root / f).stat().st_mtime_ns for f in ("methods.csv", "settings.csv", "full_data_dice.csv"))
    return _names(root, stamp)


@functools.lru_cache(maxsize=8)
def _names(root: Path, _stamp: tuple) -> Names:
    meth = {}
    for r in load_methods(root):
        for k in ("paper_name", "nnactive_name", "claspe_name"):
            meth[r[k].lower()] = r["paper_name"]
    ds = {}
    datasets = {s["dataset"]: s["dataset_short"] for s in load_settings(root)}
    for r in load_full_data(root):
        datasets.setdefault(r["dataset"], r["dataset"].split("_", 1)[1])
    for full, short in datasets.items():
        ds[full.lower()] = full
        ds[short.lower()] = full
        ds[full.split("_", 1)[1].lower()] = full
        ds[f"id:{int(full[7:10])}"] = full
    return Names(meth, ds)


def canonical_regime(s: str) -> str:
    r = REGIMES.get(str(s).strip().lower())
    return r if r else str(s).strip().lower()


def trainer_epochs(trainer: str) -> int | None:
    m = re.search(r"(\d+)\s*ep", str(trainer))
    if m:
        return int(m.group(1))
    if str(trainer).strip() in ("nnUNetTrainer", "nnActiveTrainer"):
        return 1000
    return None


def full_data_dice(dataset: str, trainer: str, root: Path | None = None) -> tuple[float, str] | None:
    """c for FG-Eff: full-data foreground-mean Dice of the matching trainer (``nnUNetTrainer_<epochs>``),
    falling back to the closest available epoch count of that dataset. Returns ``(dice, source)``."""
    root = root or paper_dir()
    ds = names(root).dataset(dataset)
    if ds is None:
        return None
    rows = [r for r in load_full_data(root) if r["dataset"] == ds and r["class"] == "fg_mean"]
    if not rows:
        return None
    ep = trainer_epochs(trainer)
    exact = [r for r in rows if r["epochs"] == ep and r["trainer"] != "nnUNetTrainer"]
    exact = exact or [r for r in rows if r["epochs"] == ep]
    if exact:
        r = exact[0]
        return r["dice"], f"paper_results/full_data_dice.csv {ds} {r['trainer']}"
    r = min(rows, key=lambda r: abs(r["epochs"] - (ep or 1000)))
    return r["dice"], f"paper_results/full_data_dice.csv {ds} {r['trainer']} (fallback: no {ep}-epoch value)"


def match_setting(cfg: dict, root: Path | None = None) -> dict:
    """Compare an experiment's settings with the published ones.

    ``cfg`` has ExperimentConfig fields. Returns ``{"match": setting_id | None, "closest": setting_id |
    None, "group": ..., "differences": {field: (ours, paper)}}`` — ``closest`` is the paper setting of
    the same dataset and label regime with the fewest differing fields.
    """
    root = root or paper_dir()
    nm = names(root)
    ds = nm.dataset(cfg.get("dataset", ""))
    regime = canonical_regime(cfg.get("label_regime", ""))
    ours = {
        "patch_size": tuple(cfg["patch_size"]),
        "agg_stride": tuple(cfg.get("agg_stride", (1, 1, 1))),
        "query_size": int(cfg["query_size"]),
        "starting_budget_size": int(cfg.get("starting_budget_size") or cfg["query_size"]),
        "n_patch_per_image": int(cfg["n_patch_per_image"]) if cfg.get("n_patch_per_image") is not None
        else int(cfg["query_size"]),
        "query_steps": int(cfg.get("query_steps", 5)),
        "trainer": str(cfg.get("trainer", "")),
    }
    best = None
    for s in load_settings(root):
        if s["dataset"] != ds:
            continue
        diffs = {f: (ours[f], s[f]) for f in SETTING_FIELDS if ours[f] != s[f]}
        if s["label_regime"] != regime:
            diffs["label_regime"] = (regime, s["label_regime"])
        if best is None or len(diffs) < len(best[1]):
            best = (s, diffs)
    if best is None:
        return {"match": None, "closest": None, "group": None,
                "differences": {"dataset": (cfg.get("dataset"), "no published setting for this dataset")}}
    s, diffs = best
    return {"match": s["setting_id"] if not diffs else None, "closest": s["setting_id"], "group": s["setting_group"],
            "differences": diffs}


# ------------------------------------------------------------------ import store
_ALIASES = {
    "query method": "method", "query_method": "method", "strategy": "method", "qm": "method",
    "num_samples": "budget", "n_patches": "budget", "budget_step": "loop", "al_iteration": "loop",
    "mean dice": "mean_dice", "dice": "mean_dice", "foreground_mean": "mean_dice", "mean_fg_dice": "mean_dice",
    "percentage_of_voxels_foreground": "fg_fraction", "fg fraction": "fg_fraction",
    "regime": "label_regime", "label regime": "label_regime", "group": "setting_group",
    "final dice": "FinalDice", "finaldice": "FinalDice", "final_dice": "FinalDice", "aubc": "AUBC",
    "aubc_std": "AUBC_std", "finaldice_std": "FinalDice_std", "final_dice_std": "FinalDice_std",
    "fg_eff": "FG_Eff", "fg-eff": "FG_Eff", "fg_eff_std": "FG_Eff_std",
}
RUN_COLUMNS = ("setting_group", "dataset", "label_regime", "method", "seed", "loop", "budget", "mean_dice",
               "fg_fraction", "source_file")
SUMMARY_COLUMNS = ("setting_group", "dataset", "label_regime", "method", "AUBC", "AUBC_std", "FinalDice",
                   "FinalDice_std", "FG_Eff", "FG_Eff_std", "source_file")


def _norm_col(c: str) -> str:
    k = c.strip()
    return _ALIASES.get(k.lower(), k.lower() if k.lower() in (
        "dataset", "label_regime", "method", "seed", "loop", "budget", "mean_dice", "fg_fraction", "setting_group",
        "patch_size", "query_size", "trainer") else k)


def read_import(path: str | Path, root: Path | None = None) -> tuple[str, list[dict]]:
    """Read and normalise one export file; returns ``(kind, rows)`` with kind ``runs`` or ``summary``."""
    root = root or paper_dir()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    if path.suffix.lower() not in (".csv", ".tsv"):
        raise ValueError(f"{path}: unsupported format {path.suffix!r}; export a CSV (see `claspe paper import --help`)")
    with path.open(newline="") as f:
        sample = f.read(4096)
        f.seek(0)
        delim = "\t" if path.suffix.lower() == ".tsv" or sample.count("\t") > sample.count(",") else ","
        reader = csv.DictReader(f, delimiter=delim)
        if not reader.fieldnames:
            raise ValueError(f"{path}: empty file")
        cols = {c: _norm_col(c) for c in reader.fieldnames}
        raw = [{cols[k]: v for k, v in r.items() if k is not None} for r in reader]
    have = set(cols.values())
    nm = names(root)
    if {"mean_dice", "seed"} <= have and ({"loop", "budget"} & have):
        kind, need = "runs", ("dataset", "label_regime", "method", "seed", "mean_dice")
    elif "AUBC" in have:
        kind, need = "summary", ("dataset", "label_regime", "method", "AUBC")
    else:
        raise ValueError(f"{path}: neither the per-run format (dataset,label_regime,method,seed,loop|budget,mean_dice) "
                         f"nor the summary format (dataset,label_regime,method,AUBC,...); columns: {sorted(have)}")
    missing = [c for c in need if c not in have]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    rows = []
    for k, r in enumerate(raw, start=2):
        where = f"{path} line {k}"
        ds = nm.dataset(r["dataset"])
        if ds is None:
            raise ValueError(f"{where}: unknown dataset {r['dataset']!r}")
        meth = nm.method(r["method"])
        if meth is None:
            raise ValueError(f"{where}: unknown method {r['method']!r}")
        group = (r.get("setting_group") or "main").strip()
        if group not in GROUPS:
            raise ValueError(f"{where}: setting_group {group!r} not in {GROUPS}")
        out = {"setting_group": group, "dataset": ds, "label_regime": canonical_regime(r["label_regime"]),
               "method": meth, "source_file": path.name}
        try:
            if kind == "runs":
                out["seed"] = int(float(r["seed"]))
                out["loop"] = int(float(r["loop"])) if r.get("loop") not in (None, "") else None
                out["budget"] = float(r["budget"]) if r.get("budget") not in (None, "") else None
                d = float(r["mean_dice"])
                out["mean_dice"] = d / 100.0 if d > 1.5 else d
                fg = r.get("fg_fraction")
                out["fg_fraction"] = float(fg) if fg not in (None, "") else None
            else:
                for c in ("AUBC", "AUBC_std", "FinalDice", "FinalDice_std", "FG_Eff", "FG_Eff_std"):
                    v = r.get(c)
                    out[c] = float(v) if v not in (None, "") else None
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        rows.append(out)
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return kind, rows


def import_files(files, store: Path | None = None, root: Path | None = None) -> list[tuple[Path, str, int]]:
    """Validate and copy exports into the store (normalised CSV); returns ``[(stored, kind, n_rows)]``."""
    store = Path(store) if store else store_dir()
    store.mkdir(parents=True, exist_ok=True)
    done = []
    for f in files:
        kind, rows = read_import(f, root)
        digest = hashlib.sha256(Path(f).read_bytes()).hexdigest()[:10]
        dest = store / f"{kind}-{Path(f).stem}-{digest}.csv"
        cols = RUN_COLUMNS if kind == "runs" else SUMMARY_COLUMNS
        tmp = dest.with_suffix(".tmp")
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
        tmp.replace(dest)
        log.info("imported %s -> %s (%d %s rows)", f, dest, len(rows), kind)
        done.append((dest, kind, len(rows)))
    return done


def load_store(store: Path | None = None):
    """``(runs, summary)`` DataFrames of everything imported (empty frames when nothing is)."""
    import pandas as pd

    store = Path(store) if store else store_dir()
    runs, summ = [], []
    if store.is_dir():
        for p in sorted(store.glob("runs-*.csv")):
            runs.append(pd.read_csv(p))
        for p in sorted(store.glob("summary-*.csv")):
            summ.append(pd.read_csv(p))
    runs_df = pd.concat(runs, ignore_index=True) if runs else pd.DataFrame(columns=list(RUN_COLUMNS))
    summ_df = pd.concat(summ, ignore_index=True) if summ else pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    return runs_df, summ_df
