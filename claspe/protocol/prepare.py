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

import numpy as np

from claspe.protocol.config import SCHEMA_VERSION

log = logging.getLogger(__name__)

PREPARED_FILES = ("dataset.json", "nnUNetPlans.json", "dataset_fingerprint.json", "prepare.json")


def _settings(test_size, seed, level_separator, configuration, source) -> dict:
    return {"test_size": float(test_size), "seed": int(seed), "level_separator": level_separator,
            "configuration": configuration, "source": str(source)}


def prepare_dataset(raw_dir: str | os.PathLike, data_root: str | os.PathLike, *, name: str | None = None,
                    test_size: float = 0.25, seed: int = 12345, level_separator: str | None = None,
                    configuration: str = "3d_fullres", overwrite: bool = False, progress: bool = True,
                    n_proc: int = 1) -> Path:
    """Prepares ``raw_dir`` into ``data_root/name`` (see the module docstring); returns that folder.

    Raises ValueError/FileNotFoundError for invalid datasets (from ``claspe.data.load_dataset``),
    for too few cases for the split, and FileExistsError when the target exists with other settings
    (unless ``overwrite``).
    """
    from tqdm import tqdm

    from claspe.data import load_dataset, write_image, write_json
    from claspe.nnunet.plan import plan_dataset, resample_case
    from claspe.protocol.splits import heldout_split

    raw_dir = Path(raw_dir).absolute()
    info = load_dataset(raw_dir, check="deep")
    if info.has_regions:
        raise ValueError(f"{raw_dir}: region-based labels are not supported by the AL protocol")
    if info.ignore_label is not None:
        raise ValueError(f"{raw_dir}: the raw dataset already has an 'ignore' label; the protocol adds its own")
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
        # 2. plan the original pool (target spacing)
        orig = tmp / ".plan_original"
        orig.mkdir()
        os.symlink(tmp / "imagesTr_original", orig / "imagesTr")
        os.symlink(tmp / "labelsTr_original", orig / "labelsTr")
        (orig / "dataset.json").write_text(json.dumps(dj, indent=2))
        log.info("prepare %s: planning the original pool (%d cases)", name, len(train))
        plans_path, _ = plan_dataset(orig, orig, n_proc=n_proc)
        plans = json.loads(plans_path.read_text())
        if configuration not in plans["configurations"]:
            raise ValueError(f"nnU-Net planned no {configuration!r} configuration for {raw_dir} "
                             f"(got {sorted(plans['configurations'])})")
        # 3. resample every case to the target spacing
        shapes: dict[str, list[int]] = {}
        fg_voxels: dict[str, dict[str, int]] = {}
        spacing = None
        todo = [("Tr", c) for c in train] + [("Val", c) for c in val]
        for side, c in tqdm(todo, desc=f"resample {name}", disable=not progress, leave=False):
            imgs = [str(tmp / f"images{side}_original" / f"{c}_{ch:04d}{fe}") for ch in range(info.num_channels)]
            lab_file = str(tmp / f"labels{side}_original" / f"{c}{fe}")
            data, seg, spacing = resample_case(imgs, lab_file, plans, dj, configuration)
            hdr = info.header(c)
            geo = {"spacing": spacing, "origin": hdr.origin, "direction": hdr.direction}
            for ch in range(data.shape[0]):
                write_image(tmp / f"images{side}" / f"{c}_{ch:04d}{fe}", data[ch], dtype=np.float32, **geo)
            write_image(tmp / f"labels{side}" / f"{c}{fe}", seg, dtype=np.uint8 if seg.max() < 256 else np.int16,
                        **geo)
            shapes[c + fe] = [int(s) for s in seg.shape]
            if side == "Tr":
                vals, counts = np.unique(seg, return_counts=True)
                fg_voxels[c + fe] = {str(int(v)): int(n) for v, n in zip(vals, counts) if v > 0}
        # 4. plan the resampled pool: the plans every experiment uses
        write_json(tmp / "dataset.json", dj)
        log.info("prepare %s: planning the resampled pool", name)
        plan_dataset(tmp, tmp, n_proc=n_proc)
        shutil.rmtree(orig)
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
