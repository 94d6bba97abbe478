"""A synthetic 3D segmentation dataset in nnU-Net v2 raw format (no download needed).

Each case is a small anisotropic "abdomen-like" volume (array order ``(z, y, x)``, see
:mod:`claspe.data.io`):

* a *body* ellipse (background label, intensity ~0.4) inside air (~0.05);
* label 1 ``organ``: a large, irregular ellipsoid (randomly sized, rotated in-plane, with a smooth
  random boundary deformation) -- 4-13 % of the voxels (median 8 %, ~6000 voxels at the default shape);
* label 2 ``lesion``: a small hypo-intense ellipsoidal blob inside the organ (radius 2.5-4.5 mm,
  0.03-0.25 % of the voxels, median ~50 voxels); absent in ``floor(n_cases * lesion_absent_fraction)`` cases chosen by the
  seed (so the class-aware CV and the starting budget meet classes missing in some images), but
  present in at least ``min(n_cases, 4)`` cases;
* label 3 ``vessel``: a thin bright tube (radius 1.0-1.6 mm) running mostly along axis 0 on a smooth
  sinusoidal path that passes the organ's edge -- 0.06-0.22 % of the voxels (median ~90 voxels).

(Ranges measured over 60 cases of the default settings.)

Intensities are blurred (partial volume, sigma 0.6 voxel), multiplied by a smooth random bias field
(about +-15 %), corrupted by Gaussian noise (sigma 0.04) and stored as int16 (x1000). Noise covers the
whole volume, so nnU-Net's crop-to-nonzero keeps the full image (shapes do not change during
preprocessing). Objects are defined in millimetres, so anisotropic ``spacing`` gives physically
similar objects with anisotropic voxels. With ``n_channels=2`` a second channel ("T2") has different
contrasts (lesion bright).

Every case is drawn from its own generator ``np.random.default_rng([seed, case_index])``, so a dataset
is deterministic per seed and case ``i`` does not depend on ``n_cases`` (except for which cases lack a
lesion).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from claspe.data.io import build_dir_atomically, write_image, write_json

log = logging.getLogger(__name__)

LABELS = {"background": 0, "organ": 1, "lesion": 2, "vessel": 3}
GENERATOR_VERSION = 1
_NAME_RE = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")

# intensity of each tissue per channel: (air, body, organ, lesion, vessel)
_CONTRASTS = (
    (0.05, 0.40, 0.60, 0.25, 0.95),  # channel 0, "T1": hypo-intense lesion, bright vessel
    (0.05, 0.35, 0.45, 0.90, 0.55),  # channel 1, "T2": bright lesion
)
_CHANNEL_NAMES = ("T1", "T2")


def _coords(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Physical coordinates (mm) of voxel centres, centred on the volume, broadcastable, array order."""
    out = []
    for ax, (n, s) in enumerate(zip(shape, spacing)):
        c = (np.arange(n, dtype=np.float32) + 0.5 - n / 2.0) * np.float32(s)
        sh = [1, 1, 1]
        sh[ax] = n
        out.append(c.reshape(sh))
    return out


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], sigma_vox: Sequence[float]) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation."""
    from scipy import ndimage

    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=sigma_vox, mode="wrap")
    f -= f.mean()
    sd = f.std()
    return f / sd if sd > 0 else f


def make_case(
    rng: np.random.Generator,
    *,
    shape: Sequence[int],
    spacing: Sequence[float],
    lesion: bool = True,
    n_channels: int = 1,
    noise_sigma: float = 0.04,
    bias_amplitude: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """Draws one case: ``(image [n_channels, *shape] float32, label [*shape] uint8)`` in array order.

    Labels follow :data:`LABELS`. ``rng`` is the only source of randomness.
    """
    from scipy import ndimage

    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=np.float32)
    ext = np.asarray(shape, dtype=np.float32) * sp  # mm per axis
    z, y, x = _coords(shape, spacing)

    # body: in-plane ellipse, whole axis-0 extent
    body = (y / (0.46 * ext[1])) ** 2 + (x / (0.47 * ext[2])) ** 2 <= 1.0
    body = np.broadcast_to(body, shape)

    # organ: irregular rotated ellipsoid
    c = np.array([rng.uniform(-0.08, 0.08) * e for e in ext], dtype=np.float32)
    semi = np.array([0.30 * ext[0], 0.24 * ext[1], 0.27 * ext[2]], dtype=np.float32) * rng.uniform(0.85, 1.15, 3)
    semi = np.maximum(semi, 2.0 * sp)  # at least ~4 voxels across on every axis
    th = rng.uniform(0.0, np.pi)
    zc, yc, xc = z - c[0], y - c[1], x - c[2]
    yr = np.cos(th) * yc + np.sin(th) * xc
    xr = -np.sin(th) * yc + np.cos(th) * xc
    d_org = np.sqrt((zc / semi[0]) ** 2 + (yr / semi[1]) ** 2 + (xr / semi[2]) ** 2)
    wobble = _smooth_field(rng, shape, sigma_vox=[max(6.0 / s, 1.0) for s in sp])
    organ = d_org <= 1.0 + 0.12 * wobble

    label = np.zeros(shape, dtype=np.uint8)
    label[organ & body] = LABELS["organ"]

    # vessel: thin tube along axis 0 on a sinusoidal path near the organ's edge
    ang = rng.uniform(0.0, 2.0 * np.pi)
    off = rng.uniform(0.7, 1.1)
    y0 = c[1] + off * semi[1] * np.sin(ang)
    x0 = c[2] + off * semi[2] * np.cos(ang)
    amp_y, amp_x = rng.uniform(0.03, 0.08, 2) * ext[1:]
    freq = rng.uniform(0.5, 1.5)
    ph_y, ph_x = rng.uniform(0.0, 2.0 * np.pi, 2)
    t = z / ext[0]  # -0.5..0.5
    cy = y0 + amp_y * np.sin(2 * np.pi * freq * t + ph_y)
    cx = x0 + amp_x * np.sin(2 * np.pi * freq * t + ph_x)
    r_v = rng.uniform(1.0, 1.6) * max(1.0, float(sp[1:].min()))
    z_lo, z_hi = sorted(rng.uniform(-0.5, 0.5, 2))
    z_lo, z_hi = min(z_lo, -0.2), max(z_hi, 0.2)  # at least 40 % of axis 0
    vessel = ((y - cy) ** 2 + (x - cx) ** 2 <= r_v**2) & (t >= z_lo) & (t <= z_hi) & body
    label[vessel] = LABELS["vessel"]

    # lesion: small blob centred deep inside the organ
    if lesion:
        inner = np.argwhere((d_org <= 0.55) & organ & body & ~vessel)
        if len(inner) == 0:
            inner = np.argwhere(organ & body)
        if len(inner) == 0:
            raise ValueError(f"shape {shape} with spacing {tuple(spacing)} is too small for an organ")
        cen = inner[rng.integers(len(inner))]
        cen_mm = np.array([z.ravel()[cen[0]], y.ravel()[cen[1]], x.ravel()[cen[2]]])
        r_l = rng.uniform(2.5, 4.5) * max(1.0, float(sp[1:].min())) * rng.uniform(0.8, 1.2, 3)
        r_l[0] = max(r_l[0], 0.6 * sp[0])  # visible in >= 1 slice
        d_les = ((z - cen_mm[0]) / r_l[0]) ** 2 + ((y - cen_mm[1]) / r_l[1]) ** 2 + ((x - cen_mm[2]) / r_l[2]) ** 2
        les = d_les <= 1.0
        les[tuple(cen)] = True
        label[les] = LABELS["lesion"]

    # intensities
    tissue = np.zeros(shape, dtype=np.int64)  # 0 air, 1 body, 2 organ, 3 lesion, 4 vessel
    tissue[body] = 1
    tissue[label == LABELS["organ"]] = 2
    tissue[label == LABELS["lesion"]] = 3
    tissue[label == LABELS["vessel"]] = 4
    bias = np.exp(bias_amplitude * _smooth_field(rng, shape, sigma_vox=[max(20.0 / s, 2.0) for s in sp]))
    chans = []
    for ch in range(n_channels):
        contrast = np.asarray(_CONTRASTS[ch % len(_CONTRASTS)], dtype=np.float32)
        tex = 1.0 + 0.05 * _smooth_field(rng, shape, sigma_vox=[max(2.0 / s, 0.7) for s in sp])
        img = contrast[tissue] * tex
        img = ndimage.gaussian_filter(img, sigma=0.6)
        img = img * bias + rng.normal(0.0, noise_sigma, shape).astype(np.float32)
        chans.append(img.astype(np.float32))
    return np.stack(chans), label


def _params(**kw) -> dict:
    d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}
    d["generator_version"] = GENERATOR_VERSION
    return d


def make_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    n_cases: int = 12,
    seed: int = 0,
    shape: Sequence[int] = (32, 48, 48),
    spacing: Sequence[float] = (2.5, 1.0, 1.0),
    dataset_name: str = "Dataset990_ClaspSynthetic",
    n_channels: int = 1,
    lesion_absent_fraction: float = 0.25,
    shape_jitter: float = 0.0,
    noise_sigma: float = 0.04,
    overwrite: bool = False,
) -> Path:
    """Writes a synthetic nnU-Net v2 raw dataset to ``out_dir/dataset_name`` and returns that folder.

    Args:
        out_dir: parent folder (an ``nnUNet_raw`` folder); created if missing.
        n_cases: number of training cases (>= 2), ``synth_000`` ... in ``imagesTr``/``labelsTr``.
        seed: everything is deterministic per seed.
        shape: array shape ``(axis0, axis1, axis2)`` = SimpleITK ``(z, y, x)``, each >= 8; the default
            32x48x48 keeps nnU-Net's tiny CPU trainer fast.
        spacing: voxel spacing in mm in array order (``(2.5, 1.0, 1.0)``: thick slices along axis 0).
        dataset_name: ``DatasetXXX_Name`` (nnU-Net naming, 3-digit id).
        n_channels: 1 (``T1``) or 2 (``T1``, ``T2``); files ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``.
        lesion_absent_fraction: fraction of cases without a lesion (rounded down; at least
            ``min(n_cases, 4)`` cases keep one).
        shape_jitter: each case's shape is ``shape * U(1 - j, 1 + j)`` per axis (0: all cases equal).
        noise_sigma: Gaussian noise standard deviation (intensities are ~0..1 before the x1000 scale).
        overwrite: replace an existing dataset folder made with other settings.

    If the folder already exists and was made by this function with the same settings it is
    returned as is (idempotent); with other settings (or not made by us) a FileExistsError is raised
    unless ``overwrite``. The dataset is built in a hidden temporary sibling folder and renamed into
    place, so a crash never leaves a half-written dataset. dataset.json records the settings under
    ``"claspe_synthetic"`` and the per-class voxel counts per case under ``"claspe_class_voxels"``.
    """
    from claspe.data.dataset import read_dataset_json

    if not _NAME_RE.match(dataset_name):
        raise ValueError(f"dataset_name must look like 'Dataset123_Name' (nnU-Net naming), got {dataset_name!r}")
    if int(n_cases) < 2:
        raise ValueError(f"n_cases must be >= 2, got {n_cases}")
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or any(s < 8 for s in shape):
        raise ValueError(f"shape must be 3 sizes >= 8 (array order z, y, x), got {shape}")
    if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers (array order), got {spacing}")
    if n_channels not in (1, 2):
        raise ValueError(f"n_channels must be 1 or 2, got {n_channels}")
    if not 0.0 <= lesion_absent_fraction < 1.0:
        raise ValueError(f"lesion_absent_fraction must be in [0, 1), got {lesion_absent_fraction}")
    if not 0.0 <= shape_jitter < 0.5:
        raise ValueError(f"shape_jitter must be in [0, 0.5), got {shape_jitter}")

    params = _params(
        n_cases=int(n_cases), seed=int(seed), shape=shape, spacing=spacing, n_channels=int(n_channels),
        lesion_absent_fraction=float(lesion_absent_fraction), shape_jitter=float(shape_jitter),
        noise_sigma=float(noise_sigma),
    )
    target = Path(out_dir) / dataset_name

    def is_same(path: Path) -> bool:
        try:
            return read_dataset_json(path / "dataset.json").get("claspe_synthetic") == params
        except (FileNotFoundError, ValueError):
            return False

    if is_same(target):
        log.info("synthetic dataset %s exists with the same settings; reusing it", target)
        return target
    build_dir_atomically(target, lambda tmp: _build(tmp, params, dataset_name), overwrite=overwrite, is_same=is_same)
    log.info("wrote synthetic dataset %s (%d cases)", target, n_cases)
    return target


def _build(root: Path, p: dict, dataset_name: str) -> None:
    from tqdm.auto import tqdm

    n, seed = p["n_cases"], p["seed"]
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    n_absent = min(int(np.floor(n * p["lesion_absent_fraction"])), max(n - 4, 0))
    absent = set(np.random.default_rng([seed, 2**31 - 1]).permutation(n)[:n_absent].tolist())
    counts = {}
    for i in tqdm(range(n), desc=f"synthesise {dataset_name}", disable=None):
        rng = np.random.default_rng([seed, i])
        shape = tuple(p["shape"])
        if p["shape_jitter"] > 0:
            j = p["shape_jitter"]
            shape = tuple(max(8, int(round(s * rng.uniform(1 - j, 1 + j)))) for s in shape)
        img, lab = make_case(
            rng, shape=shape, spacing=p["spacing"], lesion=i not in absent, n_channels=p["n_channels"],
            noise_sigma=p["noise_sigma"],
        )
        case = f"synth_{i:03d}"
        for ch in range(img.shape[0]):
            arr = np.clip(np.round(img[ch] * 1000.0), -32768, 32767).astype(np.int16)
            write_image(root / "imagesTr" / f"{case}_{ch:04d}.nii.gz", arr, spacing=p["spacing"])
        write_image(root / "labelsTr" / f"{case}.nii.gz", lab, spacing=p["spacing"])
        bc = np.bincount(lab.ravel(), minlength=len(LABELS))
        counts[case] = {name: int(bc[v]) for name, v in LABELS.items()}
    dj = {
        "name": dataset_name,
        "description": "ClaSP PE synthetic dataset: large organ, small lesion, thin vessel; anisotropic; "
        "bias field and noise (claspe.data.synthetic)",
        "licence": "CC0 (generated)",
        "channel_names": {str(c): _CHANNEL_NAMES[c] for c in range(p["n_channels"])},
        "labels": dict(LABELS),
        "numTraining": n,
        "file_ending": ".nii.gz",
        "claspe_synthetic": p,
        "claspe_class_voxels": counts,
    }
    write_json(root / "dataset.json", dj)
