"""Image and JSON input/output with SimpleITK: reading with clear errors, atomic writing.

Axis convention (used everywhere in ClaSP PE)
---------------------------------------------
Arrays are in **SimpleITK array order**, the order ``sitk.GetArrayFromImage`` returns and the order
nnU-Net v2's ``SimpleITKIO`` hands to its planner, trainer and predictor: for a 3D image whose
SimpleITK size is ``(nx, ny, nz)`` the array has shape ``(nz, ny, nx)``; array axis 0 is the
*slowest* image axis (NIfTI ``k``, usually the slice axis), axis 2 the fastest (NIfTI ``i``).

* ``shape`` and ``spacing`` are always given in array order (``spacing[0]`` is the spacing of array
  axis 0, i.e. the *reversed* ``sitk.Image.GetSpacing()``), exactly like nnU-Net's
  ``properties["spacing"]``. A dataset with thick slices therefore has e.g. ``spacing=(2.5, 1.0, 1.0)``.
* ``origin`` and ``direction`` are passed through untouched in SimpleITK's physical (x, y, z) order
  (``direction`` is the row-major 3x3 cosine matrix as a flat 9-tuple). They only matter for writing a
  derived image back into the same physical space, so treat them as opaque.
* Patch coordinates (:class:`claspe.Patch` ``coords``/``size``) and every per-voxel probability map
  refer to these array axes, at the resolution the arrays have (after the protocol's resampling).

No reorientation is ever done: what is stored on disk is what nnU-Net sees.

Atomic writes
-------------
:func:`write_image`, :func:`write_json` and :func:`copy_file` first write into a hidden sibling folder
``.claspe-tmp`` of the destination (same file system), then ``os.replace`` the finished file into place,
so readers (and nnU-Net, which lists every ``*<file_ending>`` file in ``imagesTr``) never see a partial
file, and a crash leaves at most a stray file inside ``.claspe-tmp`` (a folder, which nnU-Net ignores).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

TMP_DIR_NAME = ".claspe-tmp"

#: file endings SimpleITK writes and nnU-Net's SimpleITKIO reads
SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".gipl")


class ImageData(NamedTuple):
    """An image read by :func:`read_image`; unpacks as ``array, spacing, origin, direction``.

    ``array`` is in array order (see the module docstring), ``spacing`` in array order,
    ``origin``/``direction`` in SimpleITK physical order.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


class ImageHeader(NamedTuple):
    """Geometry of an image file, read without its voxels (:func:`read_header`).

    ``shape``/``spacing`` in array order; ``n_components`` > 1 for vector images;
    ``pixel_type`` is SimpleITK's component type string (e.g. ``"16-bit signed integer"``).
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    n_components: int
    pixel_type: str


def _sitk_error(path: Path, exc: Exception) -> str:
    msg = str(exc).strip().splitlines()
    # SimpleITK messages: "Exception thrown in ...: file.cxx:99: sitk::ERROR: <text>"
    text = " ".join(line.strip() for line in msg if line.strip())
    if "sitk::ERROR:" in text:
        text = text.split("sitk::ERROR:", 1)[1].strip()
    return text[:300]


def _existing(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        if p.exists():
            raise ValueError(f"{p} is not a regular file")
        raise FileNotFoundError(f"image file {p} not found")
    return p


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Reads the geometry of an image file without its voxel data.

    Raises FileNotFoundError when ``path`` does not exist and ValueError (naming the path) when the
    file is not a readable image (garbage, empty, unknown format).
    """
    p = _existing(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ValueError(f"{p} is not a readable image (corrupt or unsupported file): {_sitk_error(p, exc)}") from exc
    size = reader.GetSize()
    return ImageHeader(
        shape=tuple(int(s) for s in size[::-1]),
        spacing=tuple(float(s) for s in reader.GetSpacing()[::-1]),
        origin=tuple(float(o) for o in reader.GetOrigin()),
        direction=tuple(float(d) for d in reader.GetDirection()),
        n_components=int(reader.GetNumberOfComponents()),
        pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
    )


# --- completeness checks ------------------------------------------------------------------------------
# ITK reads a truncated .nii/.nii.gz without any error (the missing voxels come back as zeros), so a
# half-written file would silently become a wrong image.  We therefore check the byte count ourselves.

_NIFTI_BITPIX_OK = {1, 8, 16, 32, 64, 128, 256}


def _nifti_expected_bytes(header: bytes, path: Path) -> int | None:
    """Bytes a complete NIfTI-1/2 single file needs (vox_offset + voxel data); None if not NIfTI."""
    if len(header) < 4:
        return None
    for endian in ("<", ">"):
        (sizeof_hdr,) = struct.unpack(endian + "i", header[:4])
        if sizeof_hdr == 348 and len(header) >= 348:  # NIfTI-1
            dims = struct.unpack(endian + "8h", header[40:56])
            (bitpix,) = struct.unpack(endian + "h", header[72:74])
            (vox_offset,) = struct.unpack(endian + "f", header[108:112])
            ndim = dims[0]
            if not 1 <= ndim <= 7 or bitpix not in _NIFTI_BITPIX_OK:
                raise ValueError(f"{path} has a malformed NIfTI-1 header (ndim={ndim}, bitpix={bitpix})")
            n = int(np.prod([max(int(d), 1) for d in dims[1 : ndim + 1]], dtype=np.int64))
            return int(vox_offset) + n * bitpix // 8
        if sizeof_hdr == 540 and len(header) >= 540:  # NIfTI-2
            (bitpix,) = struct.unpack(endian + "h", header[14:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            (vox_offset,) = struct.unpack(endian + "q", header[168:176])
            ndim = dims[0]
            if not 1 <= ndim <= 7 or bitpix not in _NIFTI_BITPIX_OK:
                raise ValueError(f"{path} has a malformed NIfTI-2 header (ndim={ndim}, bitpix={bitpix})")
            n = int(np.prod([max(int(d), 1) for d in dims[1 : ndim + 1]], dtype=np.int64))
            return int(vox_offset) + n * bitpix // 8
    return None


def check_complete(path: str | os.PathLike, *, full: bool = False) -> None:
    """Raises ValueError naming ``path`` when the file is truncated or its gzip stream is corrupt.

    NIfTI files (plain or gzip) must hold ``vox_offset + n_voxels * bitpix / 8`` bytes. For ``.nii.gz``
    the fast check (default) compares that number with the gzip trailer's ISIZE field (uncompressed size
    mod 2**32; a truncated file ends in compressed data, which matches by chance with probability 2**-32)
    and only decompresses the whole stream when they differ. ``full=True`` always decompresses the whole
    stream, which also verifies the CRC (what ``validate(deep=True)`` uses). Other formats are left to
    SimpleITK, which reports their truncation itself; other gzip files are always checked in full.
    """
    p = _existing(path)
    name = p.name.lower()
    is_gz = name.endswith(".gz")
    is_nifti = name.endswith(".nii") or name.endswith(".nii.gz")
    try:
        if is_gz and is_nifti and not full:
            with gzip.open(p, "rb") as fh:
                head = fh.read(540)
            with open(p, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                (isize,) = struct.unpack("<I", fh.read(4))
            expected = _nifti_expected_bytes(head, p)
            if expected is None:
                raise ValueError(f"{p} is not a NIfTI file (no NIfTI-1/2 header)")
            if isize == expected % (1 << 32):
                return
        if is_gz:
            total = 0
            head = b""
            with gzip.open(p, "rb") as fh:
                while True:
                    chunk = fh.read(1 << 22)
                    if not chunk:
                        break
                    if len(head) < 540:
                        head += chunk[: 540 - len(head)]
                    total += len(chunk)
        else:
            total = p.stat().st_size
            with open(p, "rb") as fh:
                head = fh.read(540)
    except (EOFError, OSError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{p} is corrupt or truncated (gzip stream: {exc})") from exc
    if is_nifti:
        expected = _nifti_expected_bytes(head, p)
        if expected is None:
            raise ValueError(f"{p} is not a NIfTI file (no NIfTI-1/2 header)")
        if total < expected:
            raise ValueError(f"{p} is truncated: {total} bytes of image data, the header needs {expected}")


def read_image(path: str | os.PathLike, *, dtype: Any = None, check: bool | str = True) -> ImageData:
    """Reads an image file (any format SimpleITK reads; NIfTI for nnU-Net datasets).

    Returns :class:`ImageData` ``(array, spacing, origin, direction)`` in the module's axis convention
    (array order ``(z, y, x)`` for 3D; a 4D NIfTI gives ``(t, z, y, x)``; vector images give the
    components last). ``dtype`` casts the array (e.g. ``np.float32``); ``check`` verifies that the file
    is complete before reading, because ITK silently zero-fills truncated files: True = the fast check
    of :func:`check_complete` (header + gzip trailer, O(1)), ``"full"`` = decompress and verify the CRC,
    False = none.

    Raises FileNotFoundError for a missing file and ValueError naming the path for a corrupt one.
    """
    p = _existing(path)
    if check:
        check_complete(p, full=check == "full")
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise ValueError(f"{p} is not a readable image (corrupt or unsupported file): {_sitk_error(p, exc)}") from exc
    arr = sitk.GetArrayFromImage(img)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return ImageData(
        array=arr,
        spacing=tuple(float(s) for s in img.GetSpacing()[::-1]),
        origin=tuple(float(o) for o in img.GetOrigin()),
        direction=tuple(float(d) for d in img.GetDirection()),
    )


def _atomic_write(path: Path, write_fn) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = path.parent / TMP_DIR_NAME
    tmp = tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex[:12]}-{path.name}"
    last_exc: Exception | None = None
    for _ in range(3):  # another writer may remove the (empty) tmp folder between mkdir and the write
        tmp_dir.mkdir(exist_ok=True)
        try:
            write_fn(tmp)
            os.replace(tmp, path)
            last_exc = None
            break
        except (OSError, RuntimeError) as exc:
            last_exc = exc
            if tmp_dir.is_dir():  # a real error, not a vanished tmp folder: do not retry
                break
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    with contextlib.suppress(OSError):
        tmp_dir.rmdir()  # only succeeds when empty
    if isinstance(last_exc, RuntimeError):  # SimpleITK
        raise OSError(f"could not write {path}: {_sitk_error(path, last_exc)}") from last_exc
    if last_exc is not None:
        raise last_exc


def _as_triple_float(v: Sequence[float], n: int, name: str) -> tuple[float, ...]:
    try:
        t = tuple(float(x) for x in v)
    except TypeError as exc:
        raise ValueError(f"{name} must be a sequence of {n} numbers, got {v!r}") from exc
    if len(t) != n:
        raise ValueError(f"{name} must have {n} entries (one per array axis), got {v!r}")
    return t


def write_image(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    dtype: Any = None,
    compress: bool = True,
) -> Path:
    """Writes a 3D (or 4D) array as an image file atomically (temp file + ``os.replace``).

    ``array`` is in array order and ``spacing`` in array order (see the module docstring); ``origin``
    (physical x, y, z) and ``direction`` (flat row-major cosines) are SimpleITK's and default to
    SimpleITK's defaults; pass the ones from :func:`read_image` to stay in an image's physical space.
    A 4D array ``(t, z, y, x)`` is written as a 4D image (spacing then has 4 entries, origin 4,
    direction 16). ``dtype`` casts before writing (labels: ``np.uint8``). Bool arrays become uint8,
    float64 becomes float32, int64 becomes int32 (NIfTI readers handle these everywhere).

    Returns the path written. Raises ValueError for bad arguments.
    """
    p = Path(path)
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.int64:
        if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
            raise ValueError(f"int64 values of the array for {p} do not fit into int32")
        arr = arr.astype(np.int32)
    if arr.ndim not in (3, 4):
        raise ValueError(f"write_image needs a 3D or 4D array, got shape {arr.shape} for {p}")
    if not p.name.lower().endswith(SUPPORTED_ENDINGS):
        raise ValueError(f"{p}: unsupported file ending, use one of {SUPPORTED_ENDINGS}")
    spacing_t = _as_triple_float(spacing, arr.ndim, "spacing")
    if any(not np.isfinite(s) or s <= 0 for s in spacing_t):
        raise ValueError(f"spacing must be positive and finite, got {spacing_t} for {p}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=False)
    img.SetSpacing(spacing_t[::-1])
    if origin is not None:
        img.SetOrigin(_as_triple_float(origin, arr.ndim, "origin"))
    if direction is not None:
        img.SetDirection(_as_triple_float(direction, arr.ndim * arr.ndim, "direction"))

    def _write(tmp: Path) -> None:
        sitk.WriteImage(img, str(tmp), bool(compress))

    _atomic_write(p, _write)
    return p


def read_json(path: str | os.PathLike, *, missing: str | None = None) -> Any:
    """Reads a JSON file; errors name the path.

    FileNotFoundError (message ``missing``, default ``"<path> not found"``) when ``path`` is not a
    file; ValueError when it is not valid JSON or not UTF-8 text.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(missing if missing is not None else f"{p} not found")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p} is not a UTF-8 text file: {exc}") from exc


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Writes ``obj`` as JSON atomically (temp file + ``os.replace``); returns the path."""
    p = Path(path)
    text = json.dumps(obj, indent=indent, sort_keys=False) + "\n"

    def _write(tmp: Path) -> None:
        tmp.write_text(text)

    _atomic_write(p, _write)
    return p


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copies a file atomically (temp file + ``os.replace``); returns the destination."""
    s = _existing(src)
    d = Path(dst)
    _atomic_write(d, lambda tmp: shutil.copyfile(s, tmp))
    return d


def build_dir_atomically(
    target: str | os.PathLike,
    build: Callable[[Path], None],
    *,
    overwrite: bool = False,
    is_same: Callable[[Path], bool] | None = None,
) -> Path:
    """Builds a folder by ``build(tmp)`` in a hidden sibling ``.<name>.tmp-*`` and renames it to ``target``.

    ``is_same(path)`` tells whether an existing folder already is the wanted result: such a ``target`` is
    returned untouched, before building and also after (when a concurrent builder finished first, its
    folder is kept and ours discarded, so parallel runs of the same generator are safe). Any other
    existing ``target`` raises FileExistsError unless ``overwrite``. The temporary folder is removed on
    any error, so an interrupted build never leaves a half-written ``target``.
    """
    target = Path(target)

    def same() -> bool:
        return is_same is not None and target.exists() and bool(is_same(target))

    def refuse() -> FileExistsError:
        return FileExistsError(f"{target} exists and is not what was asked for; pass overwrite=True to replace it")

    if target.exists():
        if same():
            return target
        if not overwrite:
            raise refuse()
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    try:
        build(tmp)
        if target.exists():
            if same():
                return target
            if not overwrite:
                raise refuse()
            old = target.parent / f".{target.name}.old-{tag}"
            os.rename(target, old)  # keeps the window without a target short
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if same():
                return target
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
