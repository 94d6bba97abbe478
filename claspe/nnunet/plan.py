"""nnU-Net planning and preprocessing with explicit folders.

* :func:`plan_resample_plan` — the compute part of ``claspe prepare``: dataset fingerprint +
  ``ExperimentPlanner`` (nnU-Net's defaults, 8 GB target) of the original pool, resampling of every
  case, fingerprint + plan of the resampled pool. nnU-Net only offers planning through the
  ``nnUNet_raw`` / ``nnUNet_preprocessed`` environment variables, so this runs in ONE child process
  (``python -m claspe.nnunet.plan``) whose own environment carries private temporary paths; the
  caller's ``os.environ`` is never touched.
* :func:`resample_case` — nnU-Net's ``DefaultPreprocessor.run_case`` (crop to non-zero, normalise,
  resample to the configuration's target spacing) of one image/label pair, returned as arrays in the
  image's array order with the target spacing (METHOD.md §3.1 step 3).
* :func:`preprocess_cases` — ``run_case_save`` of the annotated training cases into a folder the
  trainers read (blosc2 files + ``class_locations`` incl. the annotated-voxel key for the ignore label).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from claspe.nnunet._proc import nnunet_env, run_child

log = logging.getLogger(__name__)

_DATASET_ID = 999  # private id inside the child's private nnUNet_raw


def _fingerprint_and_plan(dataset_id: int, n_proc: int) -> None:  # pragma: no cover - runs in the child
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    fpe = DatasetFingerprintExtractor(dataset_id, max(1, n_proc), verbose=False)
    fpe.show_progress_bar = False
    fpe.run(overwrite_existing=True)
    ExperimentPlanner(dataset_id).plan_experiment()


def plan_resample_plan(root: str | os.PathLike, *, train: list[str], val: list[str], n_channels: int,
                       configuration: str = "3d_fullres", n_proc: int = 1,
                       log_file: str | os.PathLike | None = None) -> dict:
    """The compute part of ``claspe prepare`` in ONE child process (one nnU-Net import):

    ``root`` holds ``images{Tr,Val}_original``, ``labels{Tr,Val}_original`` and ``dataset.json``.
    1. fingerprint + plan of the original pool -> target spacing;
    2. :func:`resample_case` of every case into ``images{Tr,Val}``/``labels{Tr,Val}`` (NIfTI, target
       spacing, source origin/direction);
    3. fingerprint + plan of the resampled pool -> ``root/nnUNetPlans.json``,
       ``root/dataset_fingerprint.json``.
    Returns ``{"target_spacing", "shapes": {file: shape}, "fg_voxels": {pool file: {label: count}}}``.
    """
    root = Path(root).resolve()
    with tempfile.TemporaryDirectory(prefix=".claspe-plan-", dir=root) as tmp:
        tmp = Path(tmp)
        job = {"root": str(root), "train": list(train), "val": list(val), "n_channels": int(n_channels),
               "configuration": configuration, "n_proc": int(n_proc)}
        (tmp / "job.json").write_text(json.dumps(job))
        env = nnunet_env(raw=tmp / "raw", preprocessed=tmp / "pre", results=tmp / "res", n_proc=n_proc)
        run_child(["-m", "claspe.nnunet.plan", "--prepare-job", str(tmp / "job.json")], env=env, log_file=log_file,
                  what="nnU-Net planning + resampling")
        return json.loads((tmp / "result.json").read_text())


def _prepare_job(job_file: str) -> None:  # pragma: no cover - runs in the child (coverage via tests' subprocess)
    from claspe.data.io import read_header, write_image

    job_path = Path(job_file)
    tmp = job_path.parent
    job = json.loads(job_path.read_text())
    root = Path(job["root"])
    raw = Path(os.environ["nnUNet_raw"])
    dj = json.loads((root / "dataset.json").read_text())
    fe = dj["file_ending"]

    def stage(dataset_id: int, images: str, labels: str) -> Path:
        ds = raw / f"Dataset{dataset_id:03d}_plan"
        ds.mkdir(parents=True)
        os.symlink(root / images, ds / "imagesTr")
        os.symlink(root / labels, ds / "labelsTr")
        shutil.copyfile(root / "dataset.json", ds / "dataset.json")
        _fingerprint_and_plan(dataset_id, job["n_proc"])
        return Path(os.environ["nnUNet_preprocessed"]) / ds.name

    pre1 = stage(_DATASET_ID, "imagesTr_original", "labelsTr_original")
    plans = json.loads((pre1 / "nnUNetPlans.json").read_text())
    cfg = job["configuration"]
    if cfg not in plans["configurations"]:
        raise SystemExit(f"nnU-Net planned no {cfg!r} configuration (got {sorted(plans['configurations'])})")
    shapes, fg, spacing = {}, {}, None
    todo = [("Tr", c) for c in job["train"]] + [("Val", c) for c in job["val"]]
    for i, (side, c) in enumerate(todo):
        imgs = [str(root / f"images{side}_original" / f"{c}_{ch:04d}{fe}") for ch in range(job["n_channels"])]
        lab_file = root / f"labels{side}_original" / f"{c}{fe}"
        data, seg, spacing = resample_case(imgs, str(lab_file), plans, dj, cfg)
        hdr = read_header(lab_file)
        geo = {"spacing": spacing, "origin": hdr.origin, "direction": hdr.direction}
        for ch in range(data.shape[0]):
            write_image(root / f"images{side}" / f"{c}_{ch:04d}{fe}", data[ch], dtype=np.float32, **geo)
        write_image(root / f"labels{side}" / f"{c}{fe}", seg, dtype=np.uint8 if seg.max() < 256 else np.int16, **geo)
        shapes[c + fe] = [int(s) for s in seg.shape]
        if side == "Tr":
            vals, counts = np.unique(seg, return_counts=True)
            fg[c + fe] = {str(int(v)): int(n) for v, n in zip(vals, counts) if v > 0}
        print(f"resampled {i + 1}/{len(todo)}: {c} -> shape {list(seg.shape)}", flush=True)
    pre2 = stage(_DATASET_ID - 1, "imagesTr", "labelsTr")
    for name in ("nnUNetPlans.json", "dataset_fingerprint.json"):
        shutil.copyfile(pre2 / name, root / name)
    (tmp / "result.json").write_text(json.dumps({"target_spacing": list(spacing) if spacing else None,
                                                 "shapes": shapes, "fg_voxels": fg}))


def _child_main(argv: list[str] | None = None) -> int:  # pragma: no cover - runs in the child
    ap = argparse.ArgumentParser(description="internal: nnU-Net planning in a child process (env carries paths)")
    ap.add_argument("--dataset-id", type=int)
    ap.add_argument("--n-proc", type=int, default=1)
    ap.add_argument("--prepare-job")
    a = ap.parse_args(argv)
    if a.prepare_job:
        _prepare_job(a.prepare_job)
    else:
        _fingerprint_and_plan(a.dataset_id, a.n_proc)
    return 0


# ---------------------------------------------------------------------------------------------------------
# in-process preprocessing (explicit plans, no paths)


def plans_manager(plans: dict):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(json.loads(json.dumps(plans)))


def target_spacing(plans: dict, configuration: str = "3d_fullres") -> tuple[float, ...]:
    """The configuration's target spacing in image array order (un-transposed)."""
    pm = plans_manager(plans)
    cm = pm.get_configuration(configuration)
    sp = list(cm.spacing)
    back = pm.transpose_backward
    return tuple(float(sp[i]) for i in back)


def resample_case(image_files: list[str], label_file: str | None, plans: dict, dataset_json: dict,
                  configuration: str = "3d_fullres") -> tuple[np.ndarray, np.ndarray | None, tuple[float, ...]]:
    """Runs nnU-Net's ``DefaultPreprocessor.run_case`` on one case; returns arrays in array order.

    Returns ``(data [channels, z, y, x] float32, label [z, y, x] int16 or None, spacing)`` where the
    spacing is the target spacing (array order). Regions nnU-Net marks ``-1`` (outside the non-zero
    mask) are set to background 0, as nnActive does.
    """
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    pm = plans_manager(plans)
    cm = pm.get_configuration(configuration)
    pp = DefaultPreprocessor(verbose=False)
    data, seg, _props = pp.run_case(list(image_files), label_file, pm, cm, dataset_json)
    back = [0, *[i + 1 for i in pm.transpose_backward]]
    data = np.ascontiguousarray(data.transpose(back)).astype(np.float32, copy=False)
    if seg is not None and label_file is not None:
        seg = np.ascontiguousarray(seg.transpose(back))[0].astype(np.int16)
        seg[seg < 0] = 0
    else:
        seg = None
    return data, seg, target_spacing(plans, configuration)


def preprocess_cases(cases: Iterable[str], *, images_dir: str | os.PathLike, labels_dir: str | os.PathLike,
                     out_dir: str | os.PathLike, plans: dict, dataset_json: dict,
                     configuration: str = "3d_fullres", progress: bool = False) -> Path:
    """nnU-Net preprocessing (``run_case_save``) of ``cases`` (ids without file ending) into
    ``out_dir/<data_identifier>/``; returns that folder. Existing case files are overwritten
    (labels change every loop)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from tqdm import tqdm

    pm = plans_manager(plans)
    cm = pm.get_configuration(configuration)
    ending = dataset_json["file_ending"]
    n_ch = len(dataset_json.get("channel_names", dataset_json.get("modality", {"0": 0})))
    folder = Path(out_dir) / cm.data_identifier
    folder.mkdir(parents=True, exist_ok=True)
    pp = DefaultPreprocessor(verbose=False)
    cases = list(cases)
    for case in tqdm(cases, desc="preprocess", disable=not progress, leave=False):
        imgs = [str(Path(images_dir) / f"{case}_{c:04d}{ending}") for c in range(n_ch)]
        pp.run_case_save(str(folder / case), imgs, str(Path(labels_dir) / f"{case}{ending}"), pm, cm, dataset_json)
    return folder


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_child_main())
