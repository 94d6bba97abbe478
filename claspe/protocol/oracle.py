"""The simulated oracle: labels with the ignore label outside the annotated boxes (METHOD.md §3.1 step 4).

For every pool image with at least one box, the partial label is the ignore label everywhere
except inside the union of its boxes, where it is the ground truth. Images without boxes get no
label file (they are not part of the training set). Files are written atomically.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from claspe.types import Patch


def box_mask(shape, patches: Iterable[Patch]) -> np.ndarray:
    """Boolean union of the boxes (clipped to ``shape``)."""
    m = np.zeros(tuple(int(s) for s in shape), dtype=bool)
    for p in patches:
        sl = tuple(slice(c, min(c + s, d)) for c, s, d in zip(p.coords, p.size, m.shape))
        m[sl] = True
    return m


def partial_label(gt: np.ndarray, patches: Iterable[Patch], ignore_label: int) -> np.ndarray:
    """Ground truth inside the boxes, ``ignore_label`` elsewhere."""
    gt = np.asarray(gt)
    out = np.full(gt.shape, int(ignore_label), dtype=np.uint8 if ignore_label < 256 else np.int16)
    m = box_mask(gt.shape, patches)
    out[m] = gt[m]
    return out


def group_by_file(patches: Iterable[Patch]) -> dict[str, list[Patch]]:
    d: dict[str, list[Patch]] = defaultdict(list)
    for p in patches:
        d[p.file].append(p)
    return dict(sorted(d.items()))


def annotate(patches: Iterable[Patch], *, ground_truth: Mapping[str, np.ndarray] | Callable[[str], np.ndarray],
             out_dir: str | os.PathLike, ignore_label: int, write: Callable[[Path, np.ndarray, str], None],
             after_each: Callable[[str], None] | None = None) -> dict:
    """Writes the partial labels of every image with boxes into ``out_dir/<file>``.

    ``ground_truth``: file name -> full label array (or a function); ``write(path, array, file)``
    writes one label image atomically (keeping the source geometry). Returns statistics:
    ``{"cases": {file: {"annotated_voxels", "annotated_fg_voxels", "classes"}}, "annotated_voxels",
    "annotated_fg_voxels"}`` (foreground = ground-truth label > 0 inside the boxes).
    """
    get = ground_truth if callable(ground_truth) else ground_truth.__getitem__
    stats: dict = {"cases": {}}
    tot = fg = 0
    out_dir = Path(out_dir)
    for file, ps in group_by_file(patches).items():
        gt = np.asarray(get(file))
        m = box_mask(gt.shape, ps)
        inside = gt[m]
        lab = np.full(gt.shape, int(ignore_label), dtype=np.uint8 if ignore_label < 256 else np.int16)
        lab[m] = inside
        write(out_dir / file, lab, file)
        n, nfg = int(m.sum()), int(np.count_nonzero(inside > 0))
        classes = sorted(int(v) for v in np.unique(inside) if v > 0)
        stats["cases"][file] = {"annotated_voxels": n, "annotated_fg_voxels": nfg, "classes": classes}
        tot += n
        fg += nfg
        if after_each is not None:
            after_each(file)
    stats["annotated_voxels"] = tot
    stats["annotated_fg_voxels"] = fg
    return stats
