"""Grid specifications: parse a YAML/TOML grid file and expand it into experiment settings.

A grid is ``datasets x label regimes x strategies x seeds``. Example (YAML)::

    data_root: prepared            # where prepared datasets live (<data_root>/<dataset>/)
    output: runs                   # grid folder (experiment folders + _grid/); --out wins
    defaults:                      # lowest precedence: datasets and regimes may change these
      n_patch_per_image: 20
    overrides:                     # the whole grid; no dataset or regime may set these
      trainer: nnActiveTrainer_200epochs
      folds: 5
      query_steps: 5
      device: cuda
    datasets:
      - name: Dataset004_Hippocampus
        patch_size: [20, 20, 20]   # any experiment setting
      - name: Dataset027_ACDC
        data_root: /scratch/acdc   # per-dataset prepared-data root
        patch_size: [4, 40, 40]
        agg_stride: [1, 8, 8]
        label_regimes:             # replaces the top-level regimes for this dataset
          low: {query_size: 30}
          high: {query_size: 90}
    label_regimes:                 # mapping name -> settings, or a list of {name: ..., ...}
      low: {query_size: 20}
      medium: {query_size: 40}
    strategies: [random, pred_entropy, clasp_pe]
    seeds: [12345, 12346]

Precedence (documented decision, the issue leaves it open), lowest first:

1. :class:`~claspe.protocol.config.ExperimentConfig` field defaults;
2. ``defaults`` (grid level): explicitly overridable by a dataset or a label regime;
3. dataset settings and label-regime settings: the *same* rank, so a key set by both must have the
   same value, otherwise it is a conflict (``ValueError`` naming both places);
4. ``overrides`` (grid level): applied to every experiment; a key there may not also be set by a
   dataset or a regime (``ValueError``), and not also in ``defaults``, so a grid never silently mixes
   two values of one setting.

``dataset``, ``strategy``, ``seed`` and ``label_regime`` are the grid's axes and cannot be set as
settings; every experiment is named by ``ExperimentConfig.name`` (derived from its settings), and
two entries that expand to the same name are an error.
"""

from __future__ import annotations

import difflib
import importlib
import json
import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from claspe.protocol.config import ExperimentConfig, is_finished, load_config

log = logging.getLogger(__name__)

AXES = ("dataset", "strategy", "seed", "label_regime")
# settings a grid may set (ExperimentConfig fields minus the axes; ``extra`` is not part of the name)
SETTING_KEYS = tuple(f.name for f in fields(ExperimentConfig) if f.name not in AXES + ("extra",))
_DATASET_KEYS = ("name", "data_root", "settings", "label_regimes", "raw", "synthetic", "prepare")
SYNTHETIC_KEYS = ("n_cases", "seed", "shape", "spacing", "n_channels", "lesion_absent_fraction", "shape_jitter",
                  "noise_sigma")
PREPARE_KEYS = ("test_size", "seed", "level_separator", "n_proc")
_TOP_KEYS = ("name", "data_root", "output", "defaults", "overrides", "datasets", "label_regimes",
             "strategies", "seeds")
# settings an existing experiment folder may differ in: none, like run_experiment's own check (it compares
# the whole ExperimentConfig, the device included)
RESULT_NEUTRAL: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegimeSpec:
    """One label regime: a name (goes into the experiment name) and its settings."""

    name: str
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a grid: its name (folder under the data root), settings and optional regimes."""

    name: str
    data_root: Path | None = None
    settings: dict = field(default_factory=dict)
    label_regimes: tuple[RegimeSpec, ...] | None = None
    raw: Path | None = None  # nnU-Net raw dataset folder to prepare when not prepared yet
    synthetic: dict | None = None  # make_synthetic_dataset arguments (then prepared)
    prepare: dict = field(default_factory=dict)  # prepare_dataset arguments

    @property
    def has_source(self) -> bool:
        return self.raw is not None or self.synthetic is not None


@dataclass(frozen=True)
class GridSpec:
    """A parsed grid file (paths resolved against the file's folder)."""

    name: str
    datasets: tuple[DatasetSpec, ...]
    label_regimes: tuple[RegimeSpec, ...]
    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    defaults: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    data_root: Path | None = None
    output: Path | None = None


@dataclass(frozen=True)
class GridEntry:
    """One experiment of an expanded grid."""

    config: ExperimentConfig
    data_root: Path

    @property
    def name(self) -> str:
        return self.config.name


# ----------------------------------------------------------------------------------------- parsing


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _norm_value(key: str, value: Any, where: str) -> Any:
    """Normalizes setting values so that equal settings compare equal (lists -> tuples, '8x8x8')."""
    if key in ("patch_size", "agg_stride"):
        if isinstance(value, str):
            parts = re.split(r"[x,\s]+", value.strip())
            try:
                value = [int(p) for p in parts if p]
            except ValueError:
                raise ValueError(f"{where}: {key} {value!r} is not 'AxBxC' integers") from None
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value, value, value)
        if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{where}: {key} must be an integer or 3 integers, got {value!r}")
        return tuple(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def _settings(d: Any, where: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a mapping of settings, got {type(d).__name__}")
    out = {}
    for k, v in d.items():
        k = str(k)
        if k in AXES:
            axis = {"dataset": "datasets", "strategy": "strategies", "seed": "seeds",
                    "label_regime": "label_regimes"}[k]
            raise ValueError(f"{where}: {k!r} is a grid axis, not a setting (list values under '{axis}')")
        if k not in SETTING_KEYS:
            raise ValueError(f"{where}: unknown setting {k!r}{_suggest(k, SETTING_KEYS)}; "
                             f"valid settings: {', '.join(SETTING_KEYS)}")
        out[k] = _norm_value(k, v, where)
    return out


def _name(v: Any, where: str) -> str:
    if not isinstance(v, (str, int)) or isinstance(v, bool) or not str(v).strip():
        raise ValueError(f"{where}: name must be a non-empty string, got {v!r}")
    s = str(v).strip()
    if "/" in s or s in (".", ".."):
        raise ValueError(f"{where}: name {s!r} may not contain '/'")
    return s


def _regimes(raw: Any, where: str) -> tuple[RegimeSpec, ...]:
    items: list[RegimeSpec] = []
    if isinstance(raw, dict):
        for name, settings in raw.items():
            items.append(RegimeSpec(name=_name(name, where), settings=_settings(settings, f"{where}.{name}")))
    elif isinstance(raw, list):
        for i, r in enumerate(raw):
            w = f"{where}[{i}]"
            if isinstance(r, str):
                items.append(RegimeSpec(name=_name(r, w)))
                continue
            if not isinstance(r, dict) or "name" not in r:
                raise ValueError(f"{w} must be a mapping with a 'name' (and settings), got {r!r}")
            rest = {k: v for k, v in r.items() if k != "name"}
            if "settings" in rest:
                rest = {**_settings(rest.pop("settings"), f"{w}.settings"), **rest}
            items.append(RegimeSpec(name=_name(r["name"], w), settings=_settings(rest, w)))
    else:
        raise ValueError(f"{where} must be a mapping (name -> settings) or a list, got {type(raw).__name__}")
    if not items:
        raise ValueError(f"{where} is empty")
    names = [r.name for r in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: label regime names repeated: {dup}")
    return tuple(items)


def _kwargs(d: Any, allowed: tuple[str, ...], where: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a mapping, got {type(d).__name__}")
    for k in d:
        if k not in allowed:
            raise ValueError(f"{where}: unknown key {k!r}{_suggest(str(k), allowed)}; valid: {', '.join(allowed)}")
    return dict(d)


def _path(v: Any, base: Path, where: str) -> Path:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{where} must be a path string, got {v!r}")
    p = Path(v).expanduser()
    return p if p.is_absolute() else (base / p)


def parse_spec(data: Any, *, base_dir: str | Path = ".", name: str = "grid") -> GridSpec:
    """Validates a grid mapping (as loaded from YAML/TOML) and returns a :class:`GridSpec`.

    Relative paths (``data_root``, ``output``) are resolved against ``base_dir`` (the spec's folder).
    """
    base = Path(base_dir).resolve()
    if not isinstance(data, dict):
        raise ValueError(f"a grid spec must be a mapping at the top level, got {type(data).__name__}")
    unknown = [k for k in data if k not in _TOP_KEYS]
    if unknown:
        k = str(unknown[0])
        hint = " (experiment settings go under 'defaults' or 'overrides')" if k in SETTING_KEYS else _suggest(
            k, _TOP_KEYS)
        raise ValueError(f"unknown top-level key {k!r} in grid spec{hint}; valid keys: {', '.join(_TOP_KEYS)}")
    for key in ("datasets", "strategies"):
        if not data.get(key):
            raise ValueError(f"grid spec needs a non-empty '{key}' list")
    defaults = _settings(data.get("defaults"), "defaults")
    overrides = _settings(data.get("overrides"), "overrides")
    both = sorted(set(defaults) & set(overrides))
    if both:
        raise ValueError(f"setting(s) {both} appear in both 'defaults' and 'overrides'; keep each in one place")
    top_root = _path(data["data_root"], base, "data_root") if data.get("data_root") is not None else None
    output = _path(data["output"], base, "output") if data.get("output") is not None else None

    raw_ds = data["datasets"]
    if isinstance(raw_ds, (str, dict)):
        raw_ds = [raw_ds]
    if not isinstance(raw_ds, list):
        raise ValueError(f"'datasets' must be a list, got {type(raw_ds).__name__}")
    datasets = []
    for i, d in enumerate(raw_ds):
        w = f"datasets[{i}]"
        if isinstance(d, str):
            datasets.append(DatasetSpec(name=_name(d, w)))
            continue
        if not isinstance(d, dict) or "name" not in d:
            raise ValueError(f"{w} must be a dataset name or a mapping with a 'name', got {d!r}")
        dname = _name(d["name"], w)
        w = f"datasets[{i}] ({dname})"
        settings = {k: v for k, v in d.items() if k not in _DATASET_KEYS}
        settings = _settings(settings, w)
        if "settings" in d:
            inner = _settings(d["settings"], f"{w}.settings")
            clash = sorted(set(inner) & set(settings))
            if clash:
                raise ValueError(f"{w}: {clash} set both directly and under 'settings'")
            settings.update(inner)
        root = _path(d["data_root"], base, f"{w}.data_root") if d.get("data_root") is not None else None
        regs = _regimes(d["label_regimes"], f"{w}.label_regimes") if d.get("label_regimes") is not None else None
        raw = _path(d["raw"], base, f"{w}.raw") if d.get("raw") is not None else None
        synth = _kwargs(d.get("synthetic"), SYNTHETIC_KEYS, f"{w}.synthetic") if "synthetic" in d else None
        if raw is not None and synth is not None:
            raise ValueError(f"{w}: give either 'raw' or 'synthetic' as the dataset's source, not both")
        prep = _kwargs(d.get("prepare"), PREPARE_KEYS, f"{w}.prepare")
        if prep and raw is None and synth is None:
            raise ValueError(f"{w}: 'prepare' settings need a source ('raw' or 'synthetic')")
        datasets.append(DatasetSpec(name=dname, data_root=root, settings=settings, label_regimes=regs, raw=raw,
                                    synthetic=synth, prepare=prep))
    names = [d.name for d in datasets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"datasets listed more than once: {dup}")

    regimes = (_regimes(data["label_regimes"], "label_regimes") if data.get("label_regimes") is not None
               else (RegimeSpec(name="custom"),))

    strategies = data["strategies"]
    if isinstance(strategies, str):
        strategies = [strategies]
    if not isinstance(strategies, list) or not all(isinstance(s, str) and s for s in strategies):
        raise ValueError(f"'strategies' must be a list of strategy names, got {strategies!r}")
    if len(set(strategies)) != len(strategies):
        raise ValueError(f"'strategies' lists a name twice: {strategies}")

    seeds = data.get("seeds", [12345])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"'seeds' must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"'seeds' lists a seed twice: {seeds}")

    return GridSpec(name=str(data.get("name") or name), datasets=tuple(datasets), label_regimes=regimes,
                    strategies=tuple(strategies), seeds=tuple(seeds), defaults=defaults, overrides=overrides,
                    data_root=top_root, output=output)


def load_spec(path: str | Path) -> GridSpec:
    """Reads a grid file: ``.yaml``/``.yml`` (PyYAML) or ``.toml`` (tomllib)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"grid spec {p} not found")
    suffix = p.suffix.lower()
    text = p.read_text()
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{p} is not valid YAML: {exc}") from exc
    elif suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError:
                raise ValueError(f"grid spec {p}: TOML needs Python >= 3.11 (or the tomli package); "
                                 "use a .yaml spec") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{p} is not valid TOML: {exc}") from exc
    else:
        raise ValueError(f"grid spec {p}: unknown format {suffix!r}, use .yaml, .yml or .toml")
    if data is None:
        raise ValueError(f"grid spec {p} is empty")
    return parse_spec(data, base_dir=p.parent, name=p.stem)


# --------------------------------------------------------------------------------------- expansion


def _merge(ds: DatasetSpec, reg: RegimeSpec, spec: GridSpec) -> dict:
    """Settings of one (dataset, regime) cell following the precedence rule in the module docstring."""
    for key in set(ds.settings) & set(reg.settings):
        if ds.settings[key] != reg.settings[key]:
            raise ValueError(
                f"conflicting settings: {key}={ds.settings[key]!r} in dataset {ds.name!r} but "
                f"{key}={reg.settings[key]!r} in label regime {reg.name!r}; datasets and regimes have the same "
                "precedence, so set it in one of them (or per-dataset label_regimes)")
    for key in spec.overrides:
        for what, src in (("dataset", ds), ("label regime", reg)):
            if key in src.settings:
                raise ValueError(
                    f"conflicting settings: {key!r} is in 'overrides' (the whole grid) and also set by {what} "
                    f"{src.name!r}; move it to 'defaults' if datasets or regimes may change it")
    return {**spec.defaults, **ds.settings, **reg.settings, **spec.overrides}


def optional_module(name: str, consequence: str, logger: logging.Logger = log):
    """The module ``name``, or None (logging ``"<name> is not available: <consequence>"``) when it, or
    a package above it, is missing; a module missing deeper inside it still raises."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            logger.warning("%s is not available: %s", name, consequence)
            return None
        raise


def _known_strategies():
    """Canonical name of each accepted strategy name (aliases included), or None if unavailable."""
    strat = optional_module("claspe.strategies", "strategy names are not checked")
    if strat is None:
        return None
    if not hasattr(strat, "list_strategies") or not hasattr(strat, "get_strategy"):
        log.warning("claspe.strategies has no list_strategies/get_strategy: strategy names are not checked")
        return None
    return strat


def check_strategies(names) -> dict:
    """Maps each strategy name of a spec to its canonical preset name; unknown names raise ValueError."""
    strat = _known_strategies()
    if strat is None:
        return {n: n for n in names}
    known = [k if isinstance(k, str) else k[0] for k in strat.list_strategies()]
    out = {}
    for n in names:
        try:
            s = strat.get_strategy(n)
        except (ValueError, KeyError) as exc:
            raise ValueError(f"grid spec 'strategies': {exc}{_suggest(n, known)}") from None
        out[n] = n if n in known else str(getattr(s, "name", n))
    canon = list(out.values())
    dup = sorted({c for c in canon if canon.count(c) > 1})
    if dup:
        raise ValueError(f"strategies {sorted(k for k, v in out.items() if v in dup)} are the same preset {dup}")
    return out


def dataset_root(ds: DatasetSpec, spec: GridSpec) -> Path:
    root = ds.data_root or spec.data_root
    if root is None and ds.has_source and spec.output is not None:
        root = spec.output / "_grid" / "prepared"
    if root is None:
        raise ValueError(f"dataset {ds.name!r} has no data_root (set 'data_root' at the top or on the dataset, "
                         "or pass --data-root)")
    return root


def is_prepared(root: Path, name: str) -> bool:
    """A prepared dataset folder has ``prepare.json`` (written last by ``claspe prepare``)."""
    return (root / name / "prepare.json").is_file()


def check_datasets(spec: GridSpec) -> None:
    """Every dataset must be prepared (``<data_root>/<name>/prepare.json``) or have a source that
    ``claspe grid`` prepares first (``raw`` folder that exists, or ``synthetic``); FileNotFoundError
    otherwise."""
    for ds in spec.datasets:
        root = dataset_root(ds, spec)
        if is_prepared(root, ds.name):
            continue
        if ds.raw is not None and not (ds.raw / "dataset.json").is_file():
            raise FileNotFoundError(f"dataset {ds.name!r}: raw source {ds.raw} is not an nnU-Net raw dataset "
                                    "(no dataset.json)")
        if ds.has_source:
            continue
        if (root / ds.name).is_dir():
            raise FileNotFoundError(f"dataset {ds.name!r}: {root / ds.name} exists but is not a prepared dataset "
                                    "(no prepare.json); run `claspe prepare` or give a 'raw' source in the spec")
        if not (root / ds.name).is_dir():
            avail = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            where = f"{root} has: {', '.join(avail)}" if avail else f"{root} has no datasets" if root.is_dir() \
                else f"{root} does not exist"
            raise FileNotFoundError(
                f"unknown dataset {ds.name!r} in grid spec: no prepared folder {root / ds.name} ({where}); "
                f"prepare it first (`claspe prepare`) or fix the name/data_root")


def expand(spec: GridSpec, *, check_data: bool = True) -> list[GridEntry]:
    """All experiments of the grid, in order dataset, label regime, strategy, seed.

    Validates strategy names (via ``claspe.strategies`` when installed), datasets (prepared folders,
    when ``check_data``), settings (via ``ExperimentConfig``) and unique experiment names.
    """
    canon = check_strategies(spec.strategies)
    if check_data:
        check_datasets(spec)
    entries: list[GridEntry] = []
    seen: dict[str, str] = {}
    for ds in spec.datasets:
        root = dataset_root(ds, spec)
        for reg in ds.label_regimes or spec.label_regimes:
            settings = _merge(ds, reg, spec)
            for key in ("query_size", "patch_size"):
                if key not in settings:
                    raise ValueError(f"{key} is not set for dataset {ds.name!r}, label regime {reg.name!r}: set it "
                                     "in the regime, the dataset or 'defaults'")
            for strategy in spec.strategies:
                for seed in spec.seeds:
                    where = f"dataset {ds.name!r}, regime {reg.name!r}, strategy {strategy!r}, seed {seed}"
                    try:
                        cfg = ExperimentConfig(dataset=ds.name, strategy=canon[strategy], seed=seed,
                                               label_regime=reg.name, **settings)
                    except (TypeError, ValueError) as exc:
                        raise ValueError(f"invalid settings for {where}: {exc}") from None
                    if cfg.name in seen:
                        raise ValueError(f"two grid entries expand to the same experiment {cfg.name}: "
                                         f"{seen[cfg.name]} and {where}")
                    seen[cfg.name] = where
                    entries.append(GridEntry(config=cfg, data_root=root))
    return entries


# ---------------------------------------------------------------------------------- folder status


def experiment_status(entry: GridEntry, grid_root: str | Path) -> str:
    """``finished`` (skip), ``partial`` (resume) or ``new``; ValueError if the folder holds other settings."""
    d = Path(grid_root) / entry.name
    if not (d / "experiment.json").is_file():
        return "new"
    try:
        existing = load_config(d)
    except ValueError as exc:
        raise ValueError(f"experiment folder {d} cannot be resumed: {exc}") from None
    a, b = existing.to_json(), entry.config.to_json()
    diff = sorted(k for k in set(a) | set(b) if k not in RESULT_NEUTRAL + ("extra",) and a.get(k) != b.get(k))
    if diff:
        detail = ", ".join(f"{k}: folder {a.get(k)!r} vs grid {b.get(k)!r}" for k in diff)
        raise ValueError(f"experiment folder {d} was created with other settings ({detail}); "
                         "move it away or use another output folder")
    return "finished" if is_finished(d) else "partial"


def entries_to_json(entries: list[GridEntry]) -> list[dict]:
    return [{"name": e.name, "data_root": str(e.data_root), "config": e.config.to_json()} for e in entries]


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
