"""Loading and validating an nnU-Net v2 raw dataset folder (:func:`load_dataset`, :class:`DatasetInfo`).

Folder layout (nnU-Net v2)::

    DatasetXXX_Name/
        dataset.json     {"channel_names": {"0": "CT", ...}, "labels": {"background": 0, "organ": 1, ...},
                          "numTraining": N, "file_ending": ".nii.gz", ...}
        imagesTr/        <case>_0000<file_ending>, <case>_0001<file_ending>, ...  (one file per channel)
        labelsTr/        <case><file_ending>
        imagesVal/ labelsVal/   (optional: the protocol's held-out split, ``subset="Val"``)

A ``"dataset"`` key in dataset.json (nnU-Net's explicit file lists:
``{"case": {"images": [...], "label": "..."}}``, paths relative to the folder) replaces the folder listing.

Checks and their errors (every message names the file or key):

* :func:`load_dataset` (always, cheap): missing folder / dataset.json / imagesTr / labelsTr / image
  channel / label file -> FileNotFoundError; dataset.json not valid JSON, not an object, missing one of
  ``channel_names, labels, numTraining, file_ending``, ``labels`` not a mapping, a label value that is not
  an int (or a list of ints for region-style labels), no ``background`` or ``background != 0``, duplicate
  label values, ``ignore`` not the highest value, non-consecutive label values (nnU-Net requires
  0, 1, 2, ...), an image file without the ``_XXXX`` channel suffix, a channel index beyond
  ``channel_names``, image files that all have another ending than ``file_ending``, no training case
  at all -> ValueError.
* ``numTraining`` differing from the number of cases found in ``imagesTr`` -> ValueError (decision:
  nnU-Net's ``verify_dataset_integrity`` fails on it later with a bare AssertionError, so we fail early
  and clearly); ``strict=False`` turns it into a logged warning recorded in ``DatasetInfo.warnings``.
  Label files without an image are always only a warning (nnU-Net ignores them).
* ``check="headers"`` (or :meth:`DatasetInfo.validate`): every image and label header is read;
  unreadable (corrupt) files, channel/label shape mismatch, spacing mismatch, vector or non-3D images
  -> ValueError. Spacings are equal when ``np.allclose(a, b, rtol=1e-4, atol=1e-6)`` (NIfTI stores
  float32 spacings; nnU-Net uses ``np.allclose`` defaults, which are stricter than this only in rtol).
  Origin/direction mismatches are warnings, as in nnU-Net.
* ``check="deep"`` (or ``validate(deep=True)``): additionally reads all voxels: truncated files, NaN/inf
  in images, non-integer label values and label values not in dataset.json -> ValueError.

Validation collects every problem of the dataset and raises one ValueError listing them (at most 20
lines, then a count).

Axis convention: ``shape``/``spacing`` are in array order as nnU-Net loads the images
(see :mod:`claspe.data.io`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from claspe.data.io import ImageHeader, read_header, read_image, read_json

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
SPACING_RTOL = 1e-4
SPACING_ATOL = 1e-6
_MAX_LISTED = 20
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def parse_labels(labels: Any, *, source: str = "dataset.json") -> dict[str, int | tuple[int, ...]]:
    """Validates a dataset.json ``labels`` entry; returns ``{name: int}`` (region labels: tuples).

    Rules (nnU-Net v2): a mapping name -> int (or, region-style, a list of ints); ``background`` present
    and 0; no duplicate int values; an ``ignore`` label, if any, is the highest value; values
    0, 1, ..., N consecutive (the ignore label included). Raises ValueError naming ``source``.
    """
    if not isinstance(labels, Mapping):
        raise ValueError(f"{source}: 'labels' must be a mapping name -> value, got {type(labels).__name__}")
    if not labels:
        raise ValueError(f"{source}: 'labels' is empty")
    out: dict[str, int | tuple[int, ...]] = {}
    for name, value in labels.items():
        if _is_int(value):
            out[str(name)] = int(value)
        elif isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
            out[str(name)] = tuple(int(v) for v in value)
        else:
            raise ValueError(
                f"{source}: label {name!r} has value {value!r}; expected an integer "
                "(or a non-empty list of integers for region-based labels)"
            )
    if "background" not in out:
        raise ValueError(f"{source}: 'labels' has no 'background' entry (nnU-Net requires background: 0)")
    if out["background"] != 0:
        raise ValueError(f"{source}: 'background' must be 0, got {out['background']!r}")
    ints = {n: v for n, v in out.items() if isinstance(v, int)}
    seen: dict[int, str] = {}
    for n, v in ints.items():
        if v < 0:
            raise ValueError(f"{source}: label {n!r} has negative value {v}")
        if v in seen:
            raise ValueError(f"{source}: labels {seen[v]!r} and {n!r} have the same value {v}")
        seen[v] = n
    all_values = set(ints.values())
    for v in out.values():
        if isinstance(v, tuple):
            if any(x < 0 for x in v):
                raise ValueError(f"{source}: region label {v} has a negative value")
            all_values.update(v)
    if "ignore" in out:
        ign = out["ignore"]
        if not isinstance(ign, int):
            raise ValueError(f"{source}: 'ignore' must be a single integer, got {ign!r}")
        if ign != max(all_values):
            raise ValueError(f"{source}: 'ignore' ({ign}) must be the highest label value ({max(all_values)})")
    expected = list(range(max(all_values) + 1))
    if sorted(all_values) != expected:
        missing = sorted(set(expected) - all_values)
        raise ValueError(
            f"{source}: label values must be consecutive 0, 1, 2, ... (nnU-Net requirement); missing {missing}"
        )
    return out


def parse_dataset_json(obj: Any, *, source: str = "dataset.json") -> dict:
    """Validates a parsed nnU-Net v2 dataset.json object; returns it with ``labels`` parsed.

    Raises ValueError naming ``source`` and the key for a missing key or a wrong type.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise ValueError(f"{source}: missing required key(s) {missing} (nnU-Net v2 needs {list(REQUIRED_KEYS)})")
    ch = obj["channel_names"]
    if not isinstance(ch, Mapping) or not ch:
        raise ValueError(f"{source}: 'channel_names' must be a non-empty mapping like {{\"0\": \"CT\"}}, got {ch!r}")
    try:
        idx = sorted(int(k) for k in ch)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: 'channel_names' keys must be channel indices '0', '1', ..., got {list(ch)}") from exc
    if idx != list(range(len(idx))):
        raise ValueError(f"{source}: 'channel_names' keys must be 0..{len(idx) - 1}, got {sorted(ch)}")
    fe = obj["file_ending"]
    if not isinstance(fe, str) or not fe.startswith("."):
        raise ValueError(f"{source}: 'file_ending' must be a string like '.nii.gz', got {fe!r}")
    nt = obj["numTraining"]
    if not _is_int(nt) or nt < 0:
        raise ValueError(f"{source}: 'numTraining' must be a non-negative integer, got {nt!r}")
    labels = parse_labels(obj["labels"], source=source)
    out = dict(obj)
    out["labels"] = labels
    return out


def foreground_ids(labels: Mapping[str, int | tuple[int, ...]]) -> tuple[int, ...]:
    """Foreground label ids in dataset.json order: every label but ``background`` and ``ignore``;
    for region-style labels (lists) the last element (METHOD.md §1.2)."""
    out = []
    for name, v in labels.items():
        if name in ("background", "ignore"):
            continue
        out.append(int(v[-1]) if isinstance(v, (tuple, list)) else int(v))
    return tuple(out)


@dataclass(frozen=True)
class DatasetInfo:
    """An nnU-Net v2 raw dataset as found on disk (made by :func:`load_dataset`).

    Attributes:
        root: the dataset folder (``.../DatasetXXX_Name``), absolute.
        name: the folder name (nnU-Net's dataset name, e.g. ``Dataset990_ClaspSynthetic``).
        subset: ``"Tr"`` (imagesTr/labelsTr) or ``"Val"`` (imagesVal/labelsVal) etc.
        labels: ``{name: value}`` from dataset.json in its order, ``background`` and ``ignore`` included;
            region-style labels have tuple values.
        foreground: foreground label ids in dataset.json order (see :func:`foreground_ids`).
        ignore_label: value of the ``ignore`` label or None.
        channel_names: channel names ordered by channel index.
        file_ending: e.g. ``".nii.gz"``.
        case_ids: case identifiers, sorted.
        image_paths: ``{case: (channel 0 path, channel 1 path, ...)}``.
        label_paths: ``{case: label path}``.
        dataset_json: the dataset.json content as read (a copy; ``labels`` as written in the file).
        warnings: problems that were not errors (numTraining with ``strict=False``, orphan labels).
    """

    root: Path
    name: str
    subset: str
    labels: dict[str, int | tuple[int, ...]]
    foreground: tuple[int, ...]
    ignore_label: int | None
    channel_names: tuple[str, ...]
    file_ending: str
    case_ids: tuple[str, ...]
    image_paths: dict[str, tuple[Path, ...]]
    label_paths: dict[str, Path]
    dataset_json: dict = field(repr=False)
    warnings: tuple[str, ...] = ()

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_cases(self) -> int:
        return len(self.case_ids)

    @property
    def has_regions(self) -> bool:
        return any(isinstance(v, tuple) for v in self.labels.values())

    @property
    def allowed_label_values(self) -> frozenset[int]:
        """Every integer a label file may contain (background, classes, region members, ignore)."""
        vals: set[int] = set()
        for v in self.labels.values():
            vals.update(v if isinstance(v, tuple) else (v,))
        return frozenset(vals)

    def _case(self, case: str) -> str:
        if case not in self.label_paths:
            raise ValueError(f"unknown case {case!r} in dataset {self.name} ({self.subset})")
        return case

    def image_file_name(self, case: str) -> str:
        """The file name patches refer to (nnActive convention: the label file name ``<case><ending>``)."""
        return self._case(case) + self.file_ending

    def case_from_file(self, file: str) -> str:
        """Inverse of :meth:`image_file_name`; also accepts ``<case>_0000<ending>``; ValueError if unknown."""
        f = Path(file).name
        if f.endswith(self.file_ending):
            stem = f[: -len(self.file_ending)]
            if stem in self.label_paths:
                return stem
            m = _CHANNEL_RE.match(stem)
            if m and m["case"] in self.label_paths:
                return m["case"]
        raise ValueError(f"file {file!r} names no case of dataset {self.name} ({self.subset})")

    def header(self, case: str) -> ImageHeader:
        """Header of the case's label file (shape/spacing in array order), read on demand."""
        return read_header(self.label_paths[self._case(case)])

    def shape(self, case: str) -> tuple[int, ...]:
        """Array shape (array order, see :mod:`claspe.data.io`) of the case, from the label header."""
        return self.header(case).shape

    def spacing(self, case: str) -> tuple[float, ...]:
        """Voxel spacing in array order (as nnU-Net's ``properties['spacing']``), from the label header."""
        return self.header(case).spacing

    def read_case(self, case: str, *, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Reads a case: ``(image [C, *shape] in dtype, label [*shape] as int16/uint8...)``."""
        case = self._case(case)
        chans = [read_image(p, dtype=dtype).array for p in self.image_paths[case]]
        lab = read_image(self.label_paths[case]).array
        return np.stack(chans), lab

    def read_label(self, case: str) -> np.ndarray:
        """The label array of a case (array order)."""
        return read_image(self.label_paths[self._case(case)]).array

    def validate(self, *, deep: bool = False, progress: bool | None = None) -> None:
        """Checks headers (and with ``deep=True`` all voxels) of every file; see the module docstring.

        Raises ValueError listing every problem found, each naming its file. ``progress``: tqdm bar
        (None = only on a terminal).
        """
        from tqdm.auto import tqdm

        problems: list[str] = []
        allowed = self.allowed_label_values
        for case in tqdm(self.case_ids, desc=f"validate {self.name}", disable=None if progress is None else not progress):
            problems.extend(_check_case(self, case, deep=deep, allowed=allowed))
        if problems:
            shown = problems[:_MAX_LISTED]
            more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
            raise ValueError(
                f"dataset {self.root} has {len(problems)} problem(s):\n  " + "\n  ".join(shown) + more
            )


def _close(a, b) -> bool:
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=SPACING_RTOL, atol=SPACING_ATOL))


def _check_case(info: DatasetInfo, case: str, *, deep: bool, allowed: frozenset[int]) -> list[str]:
    problems: list[str] = []
    headers: dict[Path, ImageHeader] = {}
    for p in (*info.image_paths[case], info.label_paths[case]):
        try:
            headers[p] = read_header(p)
        except (ValueError, FileNotFoundError) as exc:
            problems.append(str(exc))
    if problems:
        return problems
    lab_p = info.label_paths[case]
    lab_h = headers[lab_p]
    for p, h in headers.items():
        if h.n_components != 1:
            problems.append(f"{p} is a vector image ({h.n_components} components); one file per channel is needed")
        if len(h.shape) != 3:
            problems.append(f"{p} is {len(h.shape)}D (shape {h.shape}); nnU-Net raw images must be 3D")
    if problems:
        return problems
    for p in info.image_paths[case]:
        h = headers[p]
        if h.shape != lab_h.shape:
            problems.append(f"shape mismatch in case {case}: image {p} has shape {h.shape}, label {lab_p} has {lab_h.shape}")
        if not _close(h.spacing, lab_h.spacing):
            problems.append(
                f"spacing mismatch in case {case}: image {p} has spacing {h.spacing}, label {lab_p} has {lab_h.spacing}"
            )
        if not np.allclose(h.origin, lab_h.origin, atol=1e-3):
            log.warning("origin mismatch in case %s: %s %s vs label %s", case, p, h.origin, lab_h.origin)
        if not np.allclose(h.direction, lab_h.direction, atol=1e-4):
            log.warning("direction mismatch in case %s: %s vs label %s", case, p, lab_p)
    if problems or not deep:
        return problems
    for p in info.image_paths[case]:
        try:
            arr = read_image(p, check="full").array
        except (ValueError, FileNotFoundError) as exc:
            problems.append(str(exc))
            continue
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            problems.append(f"{p} contains NaN or infinite values ({int((~np.isfinite(arr)).sum())} voxels)")
    try:
        lab = read_image(lab_p, check="full").array
    except (ValueError, FileNotFoundError) as exc:
        problems.append(str(exc))
        return problems
    if np.issubdtype(lab.dtype, np.floating):
        if not np.isfinite(lab).all():
            problems.append(f"{lab_p} contains NaN or infinite label values")
            return problems
        if not np.array_equal(lab, np.round(lab)):
            problems.append(f"{lab_p} contains non-integer label values")
            return problems
    found = np.unique(lab)
    bad = sorted(int(v) for v in found if int(v) not in allowed)
    if bad:
        problems.append(
            f"{lab_p} contains label values {bad} that are not in dataset.json labels {sorted(allowed)}"
        )
    return problems


def read_dataset_json(path: str | os.PathLike) -> dict:
    """Reads and validates a dataset.json (see :func:`parse_dataset_json`); errors name the path."""
    p = Path(path)
    obj = read_json(p, missing=f"{p} not found (an nnU-Net v2 raw dataset needs a dataset.json)")
    return parse_dataset_json(obj, source=str(p))


def _list_files(folder: Path, ending: str) -> list[str]:
    return sorted(
        f.name for f in folder.iterdir() if f.is_file() and not f.name.startswith(".") and f.name.endswith(ending)
    )


def load_dataset(
    raw_dir: str | os.PathLike,
    *,
    subset: str = "Tr",
    check: str = "files",
    strict: bool = True,
) -> DatasetInfo:
    """Loads an nnU-Net v2 raw dataset folder and checks it (see the module docstring for every error).

    Args:
        raw_dir: the dataset folder (containing dataset.json).
        subset: ``"Tr"`` reads ``imagesTr``/``labelsTr``; ``"Val"`` reads ``imagesVal``/``labelsVal``
            (the protocol's held-out split); numTraining is only checked for ``"Tr"``.
        check: ``"files"`` (structure only, no image is opened), ``"headers"`` (also
            :meth:`DatasetInfo.validate`) or ``"deep"`` (``validate(deep=True)``, reads every voxel).
        strict: numTraining mismatch is an error (True) or a warning (False).

    Hidden files (starting with ``.``, e.g. the atomic-write temp folder) are ignored.
    """
    if check not in ("files", "headers", "deep"):
        raise ValueError(f"check must be 'files', 'headers' or 'deep', got {check!r}")
    root = Path(raw_dir).expanduser().absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} not found")
    dj_path = root / "dataset.json"
    dj = read_dataset_json(dj_path)
    raw_json = json.loads(dj_path.read_text())
    labels: dict = dj["labels"]
    fe: str = dj["file_ending"]
    n_ch = len(dj["channel_names"])
    channel_names = tuple(str(dj["channel_names"][k]) for k in sorted(dj["channel_names"], key=int))
    warnings: list[str] = []

    image_paths: dict[str, tuple[Path, ...]] = {}
    label_paths: dict[str, Path] = {}
    if "dataset" in dj and subset == "Tr":
        entries = dj["dataset"]
        if not isinstance(entries, Mapping):
            raise ValueError(f"{dj_path}: 'dataset' must map case -> {{'images': [...], 'label': ...}}")
        for case, e in entries.items():
            if not isinstance(e, Mapping) or "images" not in e or "label" not in e:
                raise ValueError(f"{dj_path}: 'dataset' entry {case!r} needs 'images' (list) and 'label'")
            imgs = [root / os.path.expandvars(str(i)) for i in e["images"]]
            if len(imgs) != n_ch:
                raise ValueError(f"{dj_path}: case {case!r} lists {len(imgs)} images, channel_names has {n_ch}")
            image_paths[str(case)] = tuple(imgs)
            label_paths[str(case)] = root / os.path.expandvars(str(e["label"]))
    else:
        img_dir, lab_dir = root / f"images{subset}", root / f"labels{subset}"
        for d in (img_dir, lab_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{d} not found (nnU-Net v2 raw datasets have images{subset}/ and labels{subset}/)")
        channels: dict[str, dict[int, Path]] = {}
        for fname in _list_files(img_dir, fe):
            m = _CHANNEL_RE.match(fname[: -len(fe)])
            if not m:
                raise ValueError(
                    f"{img_dir / fname}: image file names must be <case>_XXXX{fe} (4-digit channel index)"
                )
            ch = int(m["ch"])
            if ch >= n_ch:
                raise ValueError(
                    f"{img_dir / fname}: channel index {ch} but dataset.json channel_names has {n_ch} channel(s)"
                )
            channels.setdefault(m["case"], {})[ch] = img_dir / fname
        if not channels:
            others = sorted(f.name for f in img_dir.iterdir() if f.is_file() and not f.name.startswith("."))
            if others:
                raise ValueError(
                    f"{img_dir}: no file ends with file_ending {fe!r} from {dj_path} (found e.g. {others[:3]})"
                )
        for case in sorted(channels):
            paths = []
            for ch in range(n_ch):
                if ch not in channels[case]:
                    raise FileNotFoundError(
                        f"{img_dir / f'{case}_{ch:04d}{fe}'} not found: case {case!r} lacks channel {ch} "
                        f"({channel_names[ch]})"
                    )
                paths.append(channels[case][ch])
            image_paths[case] = tuple(paths)
            label_paths[case] = lab_dir / f"{case}{fe}"
        orphans = sorted(set(f[: -len(fe)] for f in _list_files(lab_dir, fe)) - set(image_paths))
        if orphans:
            warnings.append(f"{lab_dir}: {len(orphans)} label file(s) without image: {orphans[:5]}")
    if not image_paths and subset == "Tr":
        raise ValueError(f"dataset {root} has no training cases")
    missing = [str(p) for c in sorted(image_paths) for p in (*image_paths[c], label_paths[c]) if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"dataset {root}: missing file(s) {missing[:5]}{more}")
    if subset == "Tr" and dj["numTraining"] != len(image_paths):
        msg = f"{dj_path}: numTraining is {dj['numTraining']} but {len(image_paths)} training case(s) were found"
        if strict:
            raise ValueError(msg + " (fix numTraining, or load with strict=False)")
        warnings.append(msg)
    for w in warnings:
        log.warning(w)
    info = DatasetInfo(
        root=root,
        name=root.name,
        subset=subset,
        labels=dict(labels),
        foreground=foreground_ids(labels),
        ignore_label=labels.get("ignore") if isinstance(labels.get("ignore"), int) else None,
        channel_names=channel_names,
        file_ending=fe,
        case_ids=tuple(sorted(image_paths)),
        image_paths=dict(sorted(image_paths.items())),
        label_paths=dict(sorted(label_paths.items())),
        dataset_json=raw_json,
        warnings=tuple(warnings),
    )
    if check != "files":
        info.validate(deep=check == "deep")
    return info
