"""``claspe plan``: AL settings for a new dataset from one documented rule (ours).

The paper's "predefined guidelines" for unseen datasets are unknown (METHOD.md §4.3), so this rule
is **ours**. It reads the prepared dataset (labels of the training pool at the 3d_fullres target
spacing, and nnU-Net's plan) and derives, in this order:

1. ``patch_size`` (array order): per foreground class, the median over the pool images containing
   it of the physical volume (mm^3) of the class's bounding box; ``s`` = the cube root of the median
   of these over classes (a typical object's size in mm); the box is the physically isotropic cube
   of side ``s`` in voxels (``round(s / spacing)`` per axis), clipped per axis to
   ``[min(4, nnU-Net patch // 2), ceil(nnU-Net 3d_fullres patch / 2)]`` and to the smallest image.
   (Query boxes are about object-sized and never larger than half of what the network sees; the
   paper's main boxes are about half the nnU-Net patch and roughly isotropic in mm, e.g. KiTS 64^3,
   ACDC 4x40x40 at 10x1.56x1.56 mm.)
2. ``query_size``: the number of boxes that covers 1 % of the pool's voxels,
   ``ceil(0.01 * pool voxels / patch voxels)``, at least ``2 * (K + 1)`` (K foreground classes),
   rounded up to a multiple of ``K + 1`` (every stratum of ClaSP PE gets the same share).
3. ``starting_budget_size`` = ``query_size`` (as in every paper setting), at least ``2 * K`` (the
   starting budget puts two boxes on each class).
4. ``agg_stride`` per axis = ``clip(patch // 8, 1, 8)`` (aggregation cost vs. resolution; the
   paper's 64-voxel KiTS boxes use 8).
5. ``n_patch_per_image`` = ``max(20, 3 * (K + 1), ceil(2 * query_size / pool images))`` so the
   candidate pool holds at least twice the query and every stratum at least one candidate per image.

:func:`recommend_settings` returns the values with the statistics they came from.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np


def _class_extents(label: np.ndarray, classes: list[int]) -> dict[int, np.ndarray]:
    out = {}
    for k in classes:
        idx = np.nonzero(label == k)
        if idx[0].size == 0:
            continue
        out[k] = np.array([int(i.max() - i.min() + 1) for i in idx])
    return out


def recommend_settings(prepared_dir: str | os.PathLike, *, configuration: str = "3d_fullres") -> dict:
    """Settings for ``prepared_dir`` (a ``claspe prepare`` output) by the rule of the module docstring."""
    from claspe.data.io import read_image
    from claspe.nnunet.plan import plans_manager

    d = Path(prepared_dir)
    meta_path = d / "prepare.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{d} is not a prepared dataset (no prepare.json); run `claspe prepare` first")
    from claspe.data.io import read_json

    meta = read_json(meta_path)
    plans = read_json(d / "nnUNetPlans.json")
    pm = plans_manager(plans)
    if configuration not in plans["configurations"]:
        raise ValueError(f"{d}: the plans have no {configuration!r} configuration")
    cm = pm.get_configuration(configuration)
    nn_patch = np.array([cm.patch_size[i] for i in pm.transpose_backward], dtype=int)
    labels = meta["labels"]
    classes = sorted(int(v) for k, v in labels.items() if k not in ("background", "ignore"))
    fe = meta["file_ending"]
    pool = [c + fe for c in meta["split"]["train"]]
    shapes = np.array([meta["shapes"][f] for f in pool], dtype=int)
    per_class: dict[int, list[np.ndarray]] = {k: [] for k in classes}
    for f in pool:
        lab = read_image(d / "labelsTr" / f).array
        for k, e in _class_extents(lab, classes).items():
            per_class[k].append(e)
    spacing = np.array(meta["target_spacing"], dtype=float)
    med_class = {k: np.median(np.stack(v), axis=0) for k, v in per_class.items() if v}
    if not med_class:
        raise ValueError(f"{d}: the training pool has no foreground voxels")
    vol_class = {k: float(np.median([np.prod(e * spacing) for e in per_class[k]])) for k in med_class}
    side_mm = float(np.median(list(vol_class.values()))) ** (1.0 / 3.0)
    hi = np.ceil(nn_patch / 2).astype(int)
    lo = np.minimum(4, np.maximum(1, nn_patch // 2))
    patch = np.clip(np.round(side_mm / spacing).astype(int), lo, hi)
    patch = np.minimum(patch, shapes.min(axis=0))
    patch = np.maximum(patch, 1)
    K = len(classes)
    pool_voxels = int(np.prod(shapes, axis=1).sum())
    qs = max(2 * (K + 1), math.ceil(0.01 * pool_voxels / int(np.prod(patch))))
    qs = int(math.ceil(qs / (K + 1)) * (K + 1))
    sbs = max(qs, 2 * K)
    stride = np.clip(patch // 8, 1, 8)
    npi = max(20, 3 * (K + 1), math.ceil(2 * qs / len(pool)))
    return {
        "dataset": meta.get("name", d.name),
        "patch_size": [int(x) for x in patch],
        "query_size": qs,
        "starting_budget_size": int(sbs),
        "agg_stride": [int(x) for x in stride],
        "n_patch_per_image": int(npi),
        "rule": "claspe v1 (ours; see claspe.protocol.rule)",
        "statistics": {
            "n_pool_images": len(pool),
            "pool_voxels": pool_voxels,
            "foreground_classes": classes,
            "median_class_extent": {str(k): [float(x) for x in v] for k, v in med_class.items()},
            "median_box_volume_mm3": {str(k): v for k, v in vol_class.items()},
            "typical_object_side_mm": side_mm,
            "target_spacing": [float(x) for x in spacing],
            "nnunet_patch_size": [int(x) for x in nn_patch],
            "fraction_of_pool_per_query": float(qs * np.prod(patch) / pool_voxels),
        },
    }
