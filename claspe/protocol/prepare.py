"""``claspe prepare``: a nnU-Net raw dataset -> a prepared AL dataset (METHOD.md §3.1 steps 1-3).

Prepared layout ``<data_root>/<name>/`` (``name`` defaults to the raw folder's name; it is the
``dataset`` of :class:`~claspe.protocol.config.ExperimentConfig`)::

    dataset.json                    the raw dataset.json (numTraining = pool size)
    imagesTr/ labelsTr/             training pool, resampled to the 3d_fullres target spacing
    imagesVal/ labelsVal/           held-out split, resampled the same way
    imagesTr_original/ ...          the untouched original files of both sides (4 folders)
    nnUNetPlans.json                nnU-Net plans of the resampled pool (used by every experiment)
    dataset_fingerprint.json        its fingerprint
    prepare.json                    settings, the split, target spacing, per-case shapes and the
                                    foreground voxel counts of the pool (schema_version 1)

Steps: validate the raw dataset (``claspe.data.load_dataset``, every voxel: shapes, spacings,
label values, corrupt files); held-out split (sorted, seeded, optional patient grouping);
fingerprint + plan of the original pool (nnU-Net, child process) to get the target spacing;
nnU-Net's preprocessing of every case (crop to non-zero, normalisation, resampling; label ``-1``
set to 0) written back as NIfTI with the target spacing; fingerprint + plan again on the resampled
pool. Everything is built in a hidden temporary folder and renamed into place, so a crash never
leaves a half-prepared dataset, and preparing again with the same settings returns the existing one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from claspe.protocol.config import SCHEMA_VERSION

log = logging.getLogger(__name__)

PREPARED_FILES = ("dataset.json", "nnUNetPlans.json", "dataset_fingerprint.json", "prepare.json")


def _settings(test_size, seed, level_separator, configuration, source) -> dict:
    return {"test_size": float(test_size), "seed": int(seed), "level_separator": level_separator,
            "configuration": configuration, "source": str(source)}


def prepare_dataset(raw_dir: str | os.PathLike, data_root: str | os.PathLike, *, name: str | None = None,
                    test_size: float = 0.25, seed: int = 12345, level_separator: str | None = None,
                    configuration: str = "3d_fullres", overwrite: bool = False, progress: bool = True,
                    n_proc: int = 1, log_file: str | os.PathLike | None = None) -> Path:
    """Prepares ``raw_dir`` into ``data_root/name`` (see the module docstring); returns that folder.

    Raises ValueError/FileNotFoundError for invalid datasets (from ``claspe.data.load_dataset``),
    for too few cases for the split, and FileExistsError when the target exists with other settings
    (unless ``overwrite``).
    """
    from claspe.data import load_dataset, write_json
    from claspe.nnunet.plan import plan_resample_plan
    from claspe.protocol.splits import heldout_split

    raw_dir = Path(raw_dir).absolute()
    name = name or raw_dir.name
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid prepared dataset name {name!r}")
    data_root = Path(data_root)
    target = data_root / name
    settings = _settings(test_size, seed, level_separator, configuration, raw_dir)
    if target.exists():
        pj = target / "prepare.json"
        existing = json.loads(pj.read_text()).get("settings") if pj.is_file() else None
        if existing == settings:
            log.info("prepared dataset %s exists with the same settings; reusing it", target)
            return target
        if not overwrite:
            raise FileExistsError(f"{target} exists and was prepared with other settings; pass overwrite=True")
    info = load_dataset(raw_dir, check="deep")
    if info.has_regions:
        raise ValueError(f"{raw_dir}: region-based labels are not supported by the AL protocol")
    if info.ignore_label is not None:
        raise ValueError(f"{raw_dir}: the raw dataset already has an 'ignore' label; the protocol adds its own")
    train, val = heldout_split(info.case_ids, test_size=test_size, seed=seed, level_separator=level_separator)
    data_root.mkdir(parents=True, exist_ok=True)
    tmp = data_root / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fe = info.file_ending
    dj = json.loads(json.dumps(info.dataset_json))
    dj.pop("dataset", None)
    dj["numTraining"] = len(train)
    try:
        # 1. originals
        for side, cases in (("Tr", train), ("Val", val)):
            (tmp / f"images{side}_original").mkdir(parents=True)
            (tmp / f"labels{side}_original").mkdir(parents=True)
            for c in cases:
                for ch, p in enumerate(info.image_paths[c]):
                    shutil.copyfile(p, tmp / f"images{side}_original" / f"{c}_{ch:04d}{fe}")
                shutil.copyfile(info.label_paths[c], tmp / f"labels{side}_original" / f"{c}{fe}")
        # 2.-4. plan the original pool, resample every case, plan the resampled pool (one child process)
        write_json(tmp / "dataset.json", dj)
        log.info("prepare %s: nnU-Net planning + resampling of %d cases", name, len(train) + len(val))
        res = plan_resample_plan(tmp, train=train, val=val, n_channels=info.num_channels,
                                 configuration=configuration, n_proc=n_proc, log_file=log_file)
        spacing, shapes, fg_voxels = res["target_spacing"], res["shapes"], res["fg_voxels"]
        write_json(tmp / "prepare.json", {
            "schema_version": SCHEMA_VERSION, "name": name, "settings": settings,
            "split": {"train": list(train), "val": list(val)},
            "target_spacing": list(spacing) if spacing is not None else None,
            "shapes": shapes, "pool_fg_voxels_per_case": fg_voxels,
            "pool_fg_voxels": int(sum(sum(v.values()) for v in fg_voxels.values())),
            "labels": info.labels, "file_ending": fe,
        })
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared %s: %d pool cases, %d held-out cases", target, len(train), len(val))
    return target


def load_prepared(data_root: str | os.PathLike, name: str) -> tuple[Path, dict]:
    """``(folder, prepare.json)`` of a prepared dataset; FileNotFoundError with a hint when missing."""
    folder = Path(data_root) / name
    pj = folder / "prepare.json"
    if not pj.is_file():
        raise FileNotFoundError(f"{folder} is not a prepared dataset (no prepare.json); run `claspe prepare` first")
    meta = json.loads(pj.read_text())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{pj} has schema_version {meta.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    for f in PREPARED_FILES:
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder / f} missing: the prepared dataset is incomplete")
    return folder, meta
