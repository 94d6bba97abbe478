"""A small real-anatomy dataset from the Colin27 T1 brain and the AAL atlas (Debian ``mricron-data``).

Debian's ``mricron-data`` package (``apt-get install -y mricron-data``) installs, in
``/usr/share/mricron/templates``, ``ch2.nii.gz`` (Colin Holmes' 27-scan average T1, 181x217x181 at 1 mm,
MNI space) and ``aal.nii.gz`` (the AAL atlas, 116 regions, the same grid; names in ``aal.nii.txt``).
:func:`make_colin27_dataset` turns this one subject into several nnU-Net v2 training cases:

* AAL regions are merged into a few classes of very different size (:data:`DEFAULT_CLASSES`):
  ``cerebellum`` (hemispheres + vermis, ~195 cm^3), ``hippocampus`` (left + right, ~15 cm^3) and
  ``pallidum`` (left + right, ~4.5 cm^3) -- about 40:3:1;
* every case is a random smooth warp of the template: an affine part (rotation up to
  ``max_rotation_deg`` per axis, scaling 1 +- ``max_scale``, small shear) about the crop centre, plus a
  B-spline elastic displacement (control grid 4x4x4, coefficients ~ N(0, ``elastic_mm``)), followed by a
  crop of ``shape`` voxels at ``spacing`` (array order, default (3, 2, 2) mm: thick axial slices) centred
  on the three structures with a random shift up to ``max_shift_mm``;
* the T1 is smoothed (Gaussian, sigma = (spacing - 1 mm) / 2 per axis) before resampling (linear) to avoid
  aliasing; labels are resampled with nearest neighbour; intensities get a random gamma, a smooth bias
  field and Gaussian noise, stored as int16.

Case ``i`` uses ``np.random.default_rng([seed, i])``; the dataset is deterministic per seed. Output
geometry keeps the template's direction cosines (so the physical space is MNI, LPS in ITK terms).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from claspe.data.io import build_dir_atomically, write_image, write_json

log = logging.getLogger(__name__)

DEBIAN_PACKAGE = "mricron-data"
DEFAULT_TEMPLATES_DIR = Path("/usr/share/mricron/templates")
#: AAL region names (as in ``aal.nii.txt``, regular expressions) merged into each class, in label order
DEFAULT_CLASSES: dict[str, str] = {
    "cerebellum": r"^(Cerebelum_.*|Vermis_.*)$",
    "hippocampus": r"^Hippocampus_[LR]$",
    "pallidum": r"^Pallidum_[LR]$",
}
GENERATOR_VERSION = 1
_NAME_RE = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")


def templates_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding ``ch2.nii.gz``, ``aal.nii.gz`` and ``aal.nii.txt``: ``path``, else the
    environment variable ``CLASPE_MRICRON_TEMPLATES``, else Debian's ``/usr/share/mricron/templates``.

    Raises FileNotFoundError naming the missing file and the Debian package when a file is absent.
    """
    d = Path(path or os.environ.get("CLASPE_MRICRON_TEMPLATES") or DEFAULT_TEMPLATES_DIR)
    for f in ("ch2.nii.gz", "aal.nii.gz", "aal.nii.txt"):
        if not (d / f).is_file():
            raise FileNotFoundError(
                f"Colin27/AAL template {d / f} not found: install Debian's {DEBIAN_PACKAGE} package "
                f"(apt-get install -y {DEBIAN_PACKAGE}) or pass templates_dir"
            )
    return d


def available(path: str | os.PathLike | None = None) -> bool:
    """True when the templates are installed (see :func:`templates_dir`)."""
    try:
        templates_dir(path)
    except FileNotFoundError:
        return False
    return True


def read_aal_names(path: str | os.PathLike) -> dict[str, int]:
    """Parses ``aal.nii.txt`` (lines ``<value> <name> <code>``) into ``{name: value}``."""
    out: dict[str, int] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{n}: expected '<value> <name> ...', got {line!r}")
        out[parts[1]] = int(parts[0])
    return out


def merged_label_lut(aal_names: Mapping[str, int], classes: Mapping[str, str]) -> np.ndarray:
    """Lookup table AAL value -> class id (1..K in ``classes`` order; 0 elsewhere).

    Raises ValueError when a class pattern matches no AAL region or when two classes claim a region.
    """
    lut = np.zeros(max(aal_names.values()) + 1, dtype=np.uint8)
    for k, (cls, pattern) in enumerate(classes.items(), 1):
        rx = re.compile(pattern)
        hits = [v for name, v in aal_names.items() if rx.search(name)]
        if not hits:
            raise ValueError(f"class {cls!r}: pattern {pattern!r} matches no AAL region")
        clash = [v for v in hits if lut[v] not in (0, k)]
        if clash:
            raise ValueError(f"class {cls!r}: AAL values {clash} already belong to another class")
        lut[hits] = k
    return lut


def _random_transform(rng: np.random.Generator, center, domain: sitk.Image, *, max_rotation_deg: float,
                      max_scale: float, elastic_mm: float) -> sitk.Transform:
    ang = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    scale = np.diag(1.0 + rng.uniform(-max_scale, max_scale, 3))
    shear = np.eye(3) + np.triu(rng.uniform(-0.03, 0.03, (3, 3)), 1)
    aff = sitk.AffineTransform(3)
    aff.SetMatrix((rz @ ry @ rx @ scale @ shear).ravel().tolist())
    aff.SetCenter(tuple(float(c) for c in center))
    tx = sitk.CompositeTransform(3)
    tx.AddTransform(aff)
    if elastic_mm > 0:
        bs = sitk.BSplineTransformInitializer(domain, [4, 4, 4])
        n = len(bs.GetParameters())
        bs.SetParameters((rng.normal(0.0, elastic_mm, n)).tolist())
        tx.AddTransform(bs)
    return tx


def make_colin27_dataset(
    out_dir: str | os.PathLike,
    *,
    n_cases: int = 6,
    seed: int = 0,
    shape: Sequence[int] = (32, 64, 64),
    spacing: Sequence[float] = (3.0, 2.0, 2.0),
    dataset_name: str = "Dataset991_Colin27",
    classes: Mapping[str, str] | None = None,
    max_rotation_deg: float = 8.0,
    max_scale: float = 0.08,
    elastic_mm: float = 2.5,
    max_shift_mm: float = 8.0,
    noise_sigma: float = 0.03,
    templates: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes ``out_dir/dataset_name``: ``n_cases`` randomly warped and cropped Colin27 T1 cases with
    merged AAL labels (module docstring), in nnU-Net v2 raw format; returns the dataset folder.

    ``shape``/``spacing`` are in array order (axis 0 = superior-inferior, the slice axis).
    ``classes`` maps label name -> regular expression over AAL region names (default
    :data:`DEFAULT_CLASSES`). Idempotent like :func:`claspe.data.make_synthetic_dataset`: an existing
    folder made with the same settings is returned, other contents need ``overwrite=True``.

    Raises FileNotFoundError (naming the Debian package ``mricron-data``) when the templates are not
    installed, ValueError for bad arguments. A class missing from fewer than 2 cases is logged as a
    warning (the protocol's starting budget needs every class in >= 2 images).
    """
    from claspe.data.dataset import read_dataset_json

    tdir = templates_dir(templates)
    classes = dict(DEFAULT_CLASSES if classes is None else classes)
    if not classes:
        raise ValueError("classes must name at least one class")
    if "background" in classes or "ignore" in classes:
        raise ValueError("classes must not be named 'background' or 'ignore'")
    if not _NAME_RE.match(dataset_name):
        raise ValueError(f"dataset_name must look like 'Dataset123_Name' (nnU-Net naming), got {dataset_name!r}")
    if int(n_cases) < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or any(s < 8 for s in shape):
        raise ValueError(f"shape must be 3 sizes >= 8 (array order), got {shape}")
    if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers (array order), got {spacing}")
    params = {
        "n_cases": int(n_cases), "seed": int(seed), "shape": list(shape), "spacing": list(spacing),
        "classes": classes, "max_rotation_deg": float(max_rotation_deg), "max_scale": float(max_scale),
        "elastic_mm": float(elastic_mm), "max_shift_mm": float(max_shift_mm), "noise_sigma": float(noise_sigma),
        "generator_version": GENERATOR_VERSION,
    }
    target = Path(out_dir) / dataset_name

    def is_same(path: Path) -> bool:
        try:
            return read_dataset_json(path / "dataset.json").get("claspe_colin27") == params
        except (FileNotFoundError, ValueError):
            return False

    if is_same(target):
        log.info("Colin27 dataset %s exists with the same settings; reusing it", target)
        return target
    return build_dir_atomically(
        target, lambda tmp: _build(tmp, tdir, params, dataset_name), overwrite=overwrite, is_same=is_same
    )


def _build(root: Path, tdir: Path, p: dict, dataset_name: str) -> None:
    from scipy import ndimage
    from tqdm.auto import tqdm

    from claspe.data.synthetic import _smooth_field

    classes: dict[str, str] = p["classes"]
    shape, spacing = tuple(p["shape"]), tuple(p["spacing"])
    t1 = sitk.Cast(sitk.ReadImage(str(tdir / "ch2.nii.gz")), sitk.sitkFloat32)
    aal = sitk.ReadImage(str(tdir / "aal.nii.gz"))
    lut = merged_label_lut(read_aal_names(tdir / "aal.nii.txt"), classes)
    aal_arr = sitk.GetArrayFromImage(aal)
    if aal_arr.max() >= len(lut):
        raise ValueError(f"{tdir / 'aal.nii.gz'} has value {aal_arr.max()} not listed in aal.nii.txt")
    merged = sitk.GetImageFromArray(lut[aal_arr])
    merged.CopyInformation(aal)
    # anti-aliasing before downsampling: Gaussian, sigma = spacing / 2 minus the template's 0.5 mm (array order)
    t1_sp = np.asarray(t1.GetSpacing()[::-1])
    sig = np.maximum(np.asarray(spacing) / 2.0 - t1_sp / 2.0, 0.0) / t1_sp
    t1s = t1
    if sig.max() > 0:
        t1s = sitk.GetImageFromArray(ndimage.gaussian_filter(sitk.GetArrayFromImage(t1), sig, truncate=3.0))
        t1s.CopyInformation(t1)

    # crop centre: centre of the bounding box of all classes (physical)
    idx = np.argwhere(lut[aal_arr] > 0)
    bb_centre_idx = (idx.min(0) + idx.max(0)) / 2.0  # array order
    centre = np.array(merged.TransformContinuousIndexToPhysicalPoint(bb_centre_idx[::-1].tolist()))
    direction = np.asarray(merged.GetDirection()).reshape(3, 3)
    size_xyz = shape[::-1]
    sp_xyz = np.asarray(spacing[::-1])

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    counts: dict[str, dict[str, int]] = {}
    names = ["background", *classes]
    for i in tqdm(range(p["n_cases"]), desc=f"colin27 {dataset_name}", disable=None):
        rng = np.random.default_rng([p["seed"], i])
        c = centre + rng.uniform(-p["max_shift_mm"], p["max_shift_mm"], 3)
        origin = c - direction @ (sp_xyz * (np.asarray(size_xyz) - 1) / 2.0)
        ref = sitk.Image([int(s) for s in size_xyz], sitk.sitkUInt8)
        ref.SetSpacing(sp_xyz.tolist())
        ref.SetDirection(direction.ravel().tolist())
        ref.SetOrigin(origin.tolist())
        tx = _random_transform(rng, c, merged, max_rotation_deg=p["max_rotation_deg"], max_scale=p["max_scale"],
                               elastic_mm=p["elastic_mm"])
        # evaluate the (slow) B-spline transform once on the output grid, use it for image and label
        disp = sitk.TransformToDisplacementField(tx, sitk.sitkVectorFloat64, ref.GetSize(), ref.GetOrigin(),
                                                 ref.GetSpacing(), ref.GetDirection())
        tx = sitk.DisplacementFieldTransform(disp)
        img = sitk.GetArrayFromImage(sitk.Resample(t1s, ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        lab = sitk.GetArrayFromImage(sitk.Resample(merged, ref, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
        img = np.clip(img / 255.0, 0.0, None) ** rng.uniform(0.8, 1.25)
        bias = np.exp(0.12 * _smooth_field(rng, shape, sigma_vox=[max(25.0 / s, 2.0) for s in spacing]))
        img = img * bias + rng.normal(0.0, p["noise_sigma"], shape)
        case = f"colin_{i:03d}"
        kw = {"spacing": spacing, "origin": origin.tolist(), "direction": direction.ravel().tolist()}
        write_image(root / "imagesTr" / f"{case}_0000.nii.gz", np.round(img * 1000).astype(np.int16), **kw)
        write_image(root / "labelsTr" / f"{case}.nii.gz", lab.astype(np.uint8), **kw)
        bc = np.bincount(lab.ravel(), minlength=len(names))
        counts[case] = {n: int(bc[k]) for k, n in enumerate(names)}
    for k, n in enumerate(names[1:], 1):
        present = sum(1 for v in counts.values() if v[n] > 0)
        if present < min(2, p["n_cases"]):
            log.warning("class %s (%d) is present in only %d of %d cases", n, k, present, p["n_cases"])
    dj = {
        "name": dataset_name,
        "description": "Colin27 T1 (ch2) warped and cropped into cases; labels merged from the AAL atlas "
        "(claspe.data.colin27; data from Debian's mricron-data)",
        "reference": "Holmes et al. 1998 (Colin27); Tzourio-Mazoyer et al. 2002 (AAL)",
        "licence": "see /usr/share/doc/mricron-data/copyright",
        "channel_names": {"0": "T1"},
        "labels": {n: k for k, n in enumerate(names)},
        "numTraining": p["n_cases"],
        "file_ending": ".nii.gz",
        "claspe_colin27": p,
        "claspe_class_voxels": counts,
    }
    write_json(root / "dataset.json", dj)
