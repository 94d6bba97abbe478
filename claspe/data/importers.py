"""Importers into nnU-Net v2 raw format: existing nnU-Net raw datasets and Medical Segmentation
Decathlon (MSD) task folders.

Both build the new dataset in a hidden temporary sibling folder and rename it into place at the end,
so an interrupted import never leaves a half-written dataset; then they validate the result with
:func:`claspe.data.load_dataset` (``check="headers"`` by default, ``"deep"`` reads every voxel).
An existing destination raises FileExistsError unless ``overwrite=True``.

MSD format (``TaskXX_Name/dataset.json``)::

    {"name": "Hippocampus", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior", ...},
     "numTraining": 260, "training": [{"image": "./imagesTr/hippocampus_367.nii.gz",
                                        "label": "./labelsTr/hippocampus_367.nii.gz"}, ...],
     "test": ["./imagesTs/hippocampus_267.nii.gz", ...]}

Multi-modal MSD images are 4D NIfTI files (SimpleITK size ``(x, y, z, m)``, array ``(m, z, y, x)``);
they are split into one 3D file per modality, ``<case>_0000.nii.gz`` ... , each keeping the spatial
spacing, origin and direction of the first three axes (what nnU-Net's own MSD converter does). Cases
are named after the image file (``hippocampus_367``). Only the files listed in ``training``/``test`` are
read, so stray files in the task folder (e.g. macOS ``._*`` files in the MSD archives) are ignored.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from claspe.data.dataset import load_dataset
from claspe.data.io import (
    SUPPORTED_ENDINGS,
    build_dir_atomically,
    check_complete,
    copy_file,
    read_header,
    read_image,
    read_json,
    write_image,
    write_json,
)

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^Dataset(\d{3})_([A-Za-z0-9_\-]+)$")
_MSD_RE = re.compile(r"^Task(\d+)_([A-Za-z0-9_\-]+)$")


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f"dataset name must look like 'Dataset123_Name' (nnU-Net naming), got {name!r}")
    return name


def _dataset_id(dataset_id: int) -> int:
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id must be an integer in 1..999, got {dataset_id!r}")
    return int(dataset_id)


def _build_atomically(target: Path, overwrite: bool, build: Callable[[Path], None]) -> Path:
    return build_dir_atomically(target, build, overwrite=overwrite)


def _ending(p: Path) -> str:
    for e in SUPPORTED_ENDINGS:  # ".nii.gz" before ".nii"
        if p.name.lower().endswith(e):
            return e
    return p.suffix.lower()


def _transfer(src: Path, dst: Path, *, label: bool) -> None:
    """Copies ``src`` to ``dst`` (checked complete); converts the format when the file endings differ."""
    if _ending(src) == _ending(dst):
        check_complete(src)
        copy_file(src, dst)
        return
    img = read_image(src)
    arr = img.array
    if label:
        if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{src} contains non-integer label values")
        arr = arr.astype(np.uint8 if arr.max(initial=0) < 256 and arr.min(initial=0) >= 0 else np.int16)
    write_image(dst, arr, spacing=img.spacing, origin=img.origin, direction=img.direction)


def import_nnunet_raw(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dataset_name: str | None = None,
    dataset_id: int | None = None,
    file_ending: str | None = None,
    check: str = "headers",
    strict: bool = True,
    include_test: bool = True,
    overwrite: bool = False,
) -> Path:
    """Copies an nnU-Net v2 raw dataset into ``out_dir`` (an nnUNet_raw folder), validated and normalised.

    Args:
        src_dir: the source dataset folder (with dataset.json).
        out_dir: parent folder of the new dataset.
        dataset_name: new name ``DatasetXXX_Name``; default: the source folder name, or with
            ``dataset_id`` given, ``Dataset{id:03d}_<Name part of the source>``.
        file_ending: convert every image to this format (e.g. ``".nii.gz"`` from ``.nrrd``); default:
            keep the source's.
        check: validation of the *source* before copying (``"files"``, ``"headers"``, ``"deep"``);
            the copy is checked at the same level.
        strict: passed to :func:`load_dataset` (numTraining mismatch is an error); the copy always has
            the correct ``numTraining``.
        include_test: also copy ``imagesTs`` when present.

    A source whose dataset.json has an explicit ``"dataset"`` file list is written in the standard
    ``imagesTr``/``labelsTr`` layout (the ``"dataset"`` key is dropped). Returns the new folder.
    """
    info = load_dataset(src_dir, check=check, strict=strict)
    if dataset_name is None:
        m = _NAME_RE.match(info.name)
        base = m.group(2) if m else re.sub(r"[^A-Za-z0-9_\-]+", "_", info.name)
        dataset_name = f"Dataset{_dataset_id(dataset_id):03d}_{base}" if dataset_id is not None else info.name
    elif dataset_id is not None:
        raise ValueError("pass either dataset_name or dataset_id, not both")
    _check_name(dataset_name)
    fe = file_ending or info.file_ending
    if not fe.startswith("."):
        raise ValueError(f"file_ending must start with '.', got {fe!r}")
    target = Path(out_dir) / dataset_name
    if target.resolve() == info.root.resolve():
        raise ValueError(f"source and destination are the same folder: {target}")

    def build(root: Path) -> None:
        from tqdm.auto import tqdm

        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        for case in tqdm(info.case_ids, desc=f"import {info.name}", disable=None):
            for ch, p in enumerate(info.image_paths[case]):
                _transfer(p, root / "imagesTr" / f"{case}_{ch:04d}{fe}", label=False)
            _transfer(info.label_paths[case], root / "labelsTr" / f"{case}{fe}", label=True)
        ts = info.root / "imagesTs"
        if include_test and ts.is_dir():
            (root / "imagesTs").mkdir()
            for f in sorted(ts.iterdir()):
                if f.is_file() and not f.name.startswith(".") and f.name.endswith(info.file_ending):
                    _transfer(f, root / "imagesTs" / (f.name[: -len(info.file_ending)] + fe), label=False)
        dj = {k: v for k, v in info.dataset_json.items() if k != "dataset"}
        dj["name"] = dataset_name
        dj["numTraining"] = info.num_cases
        dj["file_ending"] = fe
        dj["claspe_import"] = {"format": "nnunet_raw", "source": str(info.root)}
        write_json(root / "dataset.json", dj)

    _build_atomically(target, overwrite, build)
    load_dataset(target, check=check)
    log.info("imported %s -> %s (%d cases)", info.root, target, info.num_cases)
    return target


def _read_msd_json(task_dir: Path) -> dict:
    p = task_dir / "dataset.json"
    dj = read_json(p, missing=f"{p} not found (an MSD task folder TaskXX_Name needs a dataset.json)")
    if not isinstance(dj, dict):
        raise ValueError(f"{p}: must be a JSON object")
    missing = [k for k in ("modality", "labels", "training") if k not in dj]
    if missing:
        raise ValueError(f"{p}: missing MSD key(s) {missing} (expected 'modality', 'labels', 'training')")
    for k in ("modality", "labels"):
        if not isinstance(dj[k], dict) or not dj[k]:
            raise ValueError(f"{p}: '{k}' must be a non-empty mapping like {{\"0\": ...}}, got {dj[k]!r}")
        try:
            keys = sorted(int(i) for i in dj[k])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{p}: '{k}' keys must be integers as strings, got {list(dj[k])}") from exc
        if keys != list(range(len(keys))):
            raise ValueError(f"{p}: '{k}' keys must be 0..{len(keys) - 1}, got {sorted(dj[k])}")
    if not isinstance(dj["training"], list) or not dj["training"]:
        raise ValueError(f"{p}: 'training' must be a non-empty list of {{'image': ..., 'label': ...}}")
    for e in dj["training"]:
        if not isinstance(e, dict) or not isinstance(e.get("image"), str) or not isinstance(e.get("label"), str):
            raise ValueError(f"{p}: 'training' entry {e!r} needs string 'image' and 'label'")
    return dj


def _msd_path(task_dir: Path, rel: str) -> Path:
    q = (task_dir / rel).resolve()
    if task_dir.resolve() not in q.parents:
        raise ValueError(f"{task_dir / 'dataset.json'}: path {rel!r} points outside the task folder")
    if not q.is_file():
        raise FileNotFoundError(f"{q} (listed in {task_dir / 'dataset.json'}) not found")
    return q


def _case_id(path: Path) -> str:
    name = path.name
    for e in (".nii.gz", ".nii"):
        if name.endswith(e):
            return name[: -len(e)]
    raise ValueError(f"{path}: MSD images must be .nii.gz or .nii files")


def _split_channels(src: Path, dst_dir: Path, case: str, n_mod: int) -> None:
    """Writes ``case_000c.nii.gz`` for every modality of ``src`` (3D: one; 4D: split the last axis)."""
    h = read_header(src)
    if len(h.shape) == 3 and h.n_components == 1:
        if n_mod != 1:
            raise ValueError(f"{src} is 3D but dataset.json 'modality' lists {n_mod} modalities")
        _transfer(src, dst_dir / f"{case}_0000.nii.gz", label=False)
        return
    if len(h.shape) == 4 and h.n_components == 1:
        if h.shape[0] != n_mod:
            raise ValueError(f"{src} has {h.shape[0]} volumes (4D shape {h.shape}) but 'modality' lists {n_mod}")
        check_complete(src)
        try:
            img = sitk.ReadImage(str(src))
        except RuntimeError as exc:
            raise ValueError(f"{src} is not a readable image: {exc}") from exc
        for c in range(n_mod):
            vol = img[:, :, :, c]  # 3D image; keeps spacing/origin/direction of x, y, z
            arr = sitk.GetArrayFromImage(vol)
            write_image(
                dst_dir / f"{case}_{c:04d}.nii.gz", arr, spacing=vol.GetSpacing()[::-1], origin=vol.GetOrigin(),
                direction=vol.GetDirection(),
            )
        return
    raise ValueError(f"{src} has shape {h.shape} with {h.n_components} component(s); expected 3D or 4D")


def import_msd(
    task_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dataset_id: int,
    *,
    dataset_name: str | None = None,
    check: str = "headers",
    include_test: bool = True,
    overwrite: bool = False,
) -> Path:
    """Converts a Medical Segmentation Decathlon task folder into an nnU-Net v2 raw dataset.

    Args:
        task_dir: ``TaskXX_Name`` folder (dataset.json, imagesTr, labelsTr, optionally imagesTs).
        out_dir: parent folder of the new dataset (an nnUNet_raw folder).
        dataset_id: nnU-Net dataset id (1..999); the folder becomes ``Dataset{id:03d}_{Name}`` with
            ``Name`` from ``TaskXX_Name`` (or the MSD ``name``), unless ``dataset_name`` is given.
        check: validation level of the result (see :func:`load_dataset`).
        include_test: also convert the images listed under ``"test"`` into ``imagesTs``.

    Labels ``{"0": "background", "1": "liver"}`` become ``{"background": 0, "liver": 1}`` (value 0 is
    always named ``background``); ``modality`` becomes ``channel_names``. Label files are copied
    unchanged; 4D images are split into channels (module docstring). Errors: missing dataset.json,
    image or label -> FileNotFoundError; malformed dataset.json, a 4D image whose number of volumes
    differs from ``modality``, duplicate label names -> ValueError. Returns the new folder.
    """
    task = Path(task_dir)
    if not task.is_dir():
        raise FileNotFoundError(f"MSD task folder {task} not found")
    did = _dataset_id(dataset_id)
    dj = _read_msd_json(task)
    if dataset_name is None:
        m = _MSD_RE.match(task.name)
        base = m.group(2) if m else str(dj.get("name") or task.name)
        dataset_name = f"Dataset{did:03d}_" + re.sub(r"[^A-Za-z0-9_\-]+", "_", base)
    _check_name(dataset_name)
    n_mod = len(dj["modality"])
    channel_names = {str(i): str(dj["modality"][str(i)]) for i in range(n_mod)}
    labels: dict[str, int] = {}
    for k in sorted(dj["labels"], key=int):
        name = "background" if int(k) == 0 else str(dj["labels"][k])
        if name in labels:
            raise ValueError(f"{task / 'dataset.json'}: label name {name!r} is used twice")
        labels[name] = int(k)
    entries = []
    for e in dj["training"]:
        img, lab = _msd_path(task, e["image"]), _msd_path(task, e["label"])
        entries.append((_case_id(img), img, lab))
    ids = [c for c, _, _ in entries]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{task / 'dataset.json'}: duplicate training case names")
    tests = []
    if include_test:
        for t in dj.get("test", []) or []:
            rel = t if isinstance(t, str) else (t.get("image") if isinstance(t, dict) else None)
            if not isinstance(rel, str):
                raise ValueError(f"{task / 'dataset.json'}: 'test' entry {t!r} is not a path")
            p = _msd_path(task, rel)
            tests.append((_case_id(p), p))

    def build(root: Path) -> None:
        from tqdm.auto import tqdm

        for sub in ("imagesTr", "labelsTr"):
            (root / sub).mkdir(parents=True)
        for case, img, lab in tqdm(entries, desc=f"import {task.name}", disable=None):
            _split_channels(img, root / "imagesTr", case, n_mod)
            _transfer(lab, root / "labelsTr" / f"{case}.nii.gz", label=True)
        if tests:
            (root / "imagesTs").mkdir()
            for case, p in tests:
                _split_channels(p, root / "imagesTs", case, n_mod)
        out = {
            "name": dataset_name,
            "description": dj.get("description", ""),
            "reference": dj.get("reference", ""),
            "licence": dj.get("licence", ""),
            "release": dj.get("release", ""),
            "channel_names": channel_names,
            "labels": labels,
            "numTraining": len(entries),
            "file_ending": ".nii.gz",
            "claspe_import": {"format": "msd", "source": str(task.resolve()), "msd_name": dj.get("name")},
        }
        if dj.get("numTraining") not in (None, len(entries)):
            log.warning("%s: numTraining %s differs from the %d training entries; using %d",
                        task / "dataset.json", dj.get("numTraining"), len(entries), len(entries))
        write_json(root / "dataset.json", out)

    target = _build_atomically(Path(out_dir) / dataset_name, overwrite, build)
    load_dataset(target, check=check)
    log.info("imported MSD %s -> %s (%d cases)", task, target, len(entries))
    return target


def import_dataset(src: str | os.PathLike, out_dir: str | os.PathLike, *, dataset_id: int | None = None,
                   **kwargs) -> Path:
    """Imports ``src``, deciding the format: an MSD task (dataset.json with ``modality`` and ``training``)
    needs ``dataset_id``; anything else is treated as an nnU-Net v2 raw dataset."""
    p = Path(src) / "dataset.json"
    dj = read_json(p, missing=f"{p} not found: {src} is neither an nnU-Net raw nor an MSD dataset")
    if isinstance(dj, dict) and "modality" in dj and "training" in dj:
        if dataset_id is None:
            raise ValueError(f"{src} is an MSD task folder: pass dataset_id (1..999)")
        return import_msd(src, out_dir, dataset_id, **kwargs)
    return import_nnunet_raw(src, out_dir, dataset_id=dataset_id, **kwargs)


__all__ = ["import_dataset", "import_msd", "import_nnunet_raw"]
