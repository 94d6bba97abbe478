"""Experiment settings and the experiment folder layout (a contract used by protocol, report, grid).

Experiment folder ``<root>/<config.name>/``::

    experiment.json            ExperimentConfig.to_json()  (written once, at creation)
    state.json                 {"schema_version": 1, "steps": {step_name: {...}}}  (resume state)
    loop_000.json ...          nnActive loop files: {"patches": [{"file", "coords", "size"}, ...]}
                               loop_000 = starting budget, loop_k = query of AL loop k-1
    results/loop_000.json ...  evaluation after training on loops 0..k:
                               {"loop": k, "n_patches": int, "annotated_voxels": int,
                                "annotated_fg_voxels": int, "pool_fg_voxels": int,
                                "fg_fraction": float, "dice_per_class": {"1": float, ...},
                                "mean_dice": float, "per_case": {case: {"1": float, ...}}}
    log.txt                    the run's log

An experiment is *finished* when ``results/loop_XXX.json`` exists for every loop
0..query_steps-1.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

SCHEMA_VERSION = 1


def _triple(v, name):
    if isinstance(v, int):
        v = (v, v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 3 or any(x <= 0 for x in t):
        raise ValueError(f"{name} must be 3 positive integers, got {v!r}")
    return t


@dataclass(frozen=True)
class ExperimentConfig:
    """All settings of one AL experiment; the experiment's folder name is derived from them."""

    dataset: str
    strategy: str
    query_size: int
    patch_size: tuple[int, int, int]
    seed: int = 12345
    label_regime: str = "custom"
    starting_budget_size: int | None = None  # None -> query_size
    agg_stride: tuple[int, int, int] = (1, 1, 1)
    n_patch_per_image: int | None = 20  # None -> query_size
    query_steps: int = 5  # trainings; queries = query_steps - 1
    trainer: str = "nnActiveTrainer_200epochs"
    folds: int = 5
    configuration: str = "3d_fullres"
    device: str = "cpu"
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", _triple(self.patch_size, "patch_size"))
        object.__setattr__(self, "agg_stride", _triple(self.agg_stride, "agg_stride"))
        if self.starting_budget_size is None:
            object.__setattr__(self, "starting_budget_size", int(self.query_size))
        if int(self.query_size) <= 0:
            raise ValueError(f"query_size must be > 0, got {self.query_size}")
        if int(self.query_steps) < 1:
            raise ValueError(f"query_steps must be >= 1, got {self.query_steps}")
        if not 1 <= int(self.folds) <= 10:
            raise ValueError(f"folds must be in 1..10, got {self.folds}")
        if self.device not in ("cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    @property
    def name(self) -> str:
        """Folder name derived from the settings that change results."""
        p = "x".join(map(str, self.patch_size))
        s = "x".join(map(str, self.agg_stride))
        parts = [
            self.dataset, self.label_regime, self.strategy, f"patch{p}", f"stride{s}",
            f"qs{self.query_size}", f"sbs{self.starting_budget_size}",
            f"npi{self.n_patch_per_image if self.n_patch_per_image is not None else 'qs'}",
            f"steps{self.query_steps}", self.trainer, f"folds{self.folds}", f"seed{self.seed}",
        ]
        return re.sub(r"[^A-Za-z0-9._-]+", "-", "__".join(parts))

    def to_json(self) -> dict:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["agg_stride"] = list(self.agg_stride)
        d["schema_version"] = SCHEMA_VERSION
        return d

    @classmethod
    def from_json(cls, d: dict) -> ExperimentConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"schema_version", "name"}
        if unknown:
            raise ValueError(f"unknown experiment settings: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})


def load_config(exp_dir: str | Path) -> ExperimentConfig:
    path = Path(exp_dir) / "experiment.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not an experiment folder")
    try:
        return ExperimentConfig.from_json(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def result_path(exp_dir: str | Path, loop: int) -> Path:
    return Path(exp_dir) / "results" / f"loop_{loop:03d}.json"


def is_finished(exp_dir: str | Path) -> bool:
    """True when every loop of the experiment has its evaluation result."""
    try:
        cfg = load_config(exp_dir)
    except (FileNotFoundError, ValueError):
        return False
    return all(result_path(exp_dir, k).is_file() for k in range(cfg.query_steps))
