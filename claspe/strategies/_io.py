"""Input handling shared by the strategies: probabilities (streamed fold by fold), labels, patches.

Accepted ``probabilities`` (see :meth:`claspe.strategies.Strategy.query`)
----------------------------------------------------------------------------
A mapping ``image id -> value`` where ``value`` is

* an array ``[M, C, X, Y, Z]`` (M fold models; NumPy, torch CPU tensor or a GPU array),
* an array ``[C, X, Y, Z]`` (a single model, M = 1),
* a sequence of M per-fold items, each an array ``[C, X, Y, Z]`` or a path to a ``.npy`` file or a
  ``.npz`` file (nnU-Net's ``--save_probabilities`` output: key ``"probabilities"``; a ``.npz`` that
  holds exactly one array is accepted too), or
* a path to one ``.npy``/``.npz`` file holding ``[M, C, X, Y, Z]`` or ``[C, X, Y, Z]``.

Each image's value is looked up exactly once and its folds are iterated exactly once, in order, so a
lazy sequence whose item ``f`` runs fold ``f``'s prediction is consumed one fold at a time and the
folds are never stacked in memory.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from claspe.types import Patch

NPZ_KEY = "probabilities"


def image_key(image_id: str) -> int:
    """Stable 32-bit id of an image for the noise stream: ``zlib.crc32(id.encode("utf-8"))``.

    It depends only on the id string, not on the processing position, so a pool split across
    processes (or processed in another order) gets the same noise per image.
    """
    return zlib.crc32(str(image_id).encode("utf-8")) & 0xFFFFFFFF


def _unreadable(p: Path, what: str, exc: BaseException) -> ValueError:
    return ValueError(
        f"{what}: cannot read {p} as a NumPy {p.suffix} file ({type(exc).__name__}: {exc}); "
        f"is it corrupt or not fully written?"
    )


def _np_load(p: Path, what: str, **kwargs):
    """``np.load`` whose failures on a damaged file (numpy raises ValueError, EOFError,
    zipfile.BadZipFile, SyntaxError, tokenize.TokenError, OSError ...) become one ValueError
    naming the file."""
    try:
        return np.load(p, allow_pickle=False, **kwargs)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise _unreadable(p, what, exc) from exc


def load_array_file(path: str | Path, what: str) -> np.ndarray:
    """Loads a ``.npy`` or ``.npz`` file (key ``probabilities`` or the only array in the file).

    ``FileNotFoundError`` for a missing file; ``ValueError`` naming the file for a damaged one
    (truncated, empty, not a zip archive, bad CRC, pickled objects)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: file {p} not found")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return _np_load(p, what)
    if suffix == ".npz":
        with _np_load(p, what) as z:
            keys = list(z.keys())
            if NPZ_KEY in keys:
                key = NPZ_KEY
            elif len(keys) == 1:
                key = keys[0]
            else:
                raise ValueError(
                    f"{what}: {p} has no array {NPZ_KEY!r} and holds {len(keys)} arrays {keys}; "
                    f"expected nnU-Net's probabilities file or a single-array .npz"
                )
            try:
                return z[key]
            except Exception as exc:  # a damaged member: bad CRC, truncated data, bad header
                raise _unreadable(p, what, exc) from exc
    raise ValueError(f"{what}: {p} is neither a .npy nor a .npz file")


def _is_pathlike(x) -> bool:
    return isinstance(x, (str, Path))


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") or hasattr(x, "__cuda_array_interface__")


def as_fold_array(item, what: str):
    """One fold as an array the engine accepts (float32/float16; GPU arrays pass through)."""
    if _is_pathlike(item):
        item = load_array_file(item, what)
    if hasattr(item, "__cuda_array_interface__"):
        return item
    if hasattr(item, "detach") and hasattr(item, "numpy"):  # torch CPU tensor
        item = item.detach().numpy()
    a = np.asarray(item)
    if a.dtype in (np.float32, np.float16):
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{what}: probabilities must be floating point, got dtype {a.dtype}")
    return a.astype(np.float32)


def iter_folds(value, image_id: str) -> Iterator:
    """Yields the fold arrays ``[C, X, Y, Z]`` of one image, one at a time, in order."""
    what = f"image {image_id!r}"
    if _is_pathlike(value):
        value = load_array_file(value, what)
    if _is_array(value):
        ndim = len(value.shape)
        if ndim == 5:
            if value.shape[0] == 0:
                raise ValueError(f"{what}: probabilities have 0 folds (shape {tuple(value.shape)})")
            for f in range(value.shape[0]):
                yield as_fold_array(value[f], f"{what} fold {f}")
            return
        if ndim == 4:
            yield as_fold_array(value, f"{what} fold 0")
            return
        raise ValueError(
            f"{what}: probabilities must be [M, C, X, Y, Z] or [C, X, Y, Z], got shape {tuple(value.shape)}"
        )
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise ValueError(
            f"{what}: expected an array, a path or a sequence of per-fold arrays/paths, got {type(value).__name__}"
        )
    n = 0
    for f, item in enumerate(value):
        n += 1
        a = as_fold_array(item, f"{what} fold {f}")
        if len(a.shape) != 4:
            raise ValueError(f"{what} fold {f}: expected [C, X, Y, Z], got shape {tuple(a.shape)}")
        yield a
    if n == 0:
        raise ValueError(f"{what}: the fold sequence is empty")


def npy_fold_paths(value) -> list[Path] | None:
    """The fold files when ``value`` is a non-empty list/tuple of existing ``.npy`` paths, else None."""
    if not isinstance(value, (list, tuple)) or not value:
        return None
    if not all(_is_pathlike(v) and str(v).lower().endswith(".npy") and Path(v).is_file() for v in value):
        return None
    dtypes = set()
    for v in value:  # the fused engine path reads float32/float16 (one dtype); others are converted on load
        try:
            dtype = np.load(v, mmap_mode="r", allow_pickle=False).dtype
        except Exception:  # damaged file: load_array_file reports it with its name
            return None
        if dtype not in (np.float32, np.float16):
            return None
        dtypes.add(dtype)
    if len(dtypes) > 1:  # float32 and float16 folds: the fold-by-fold path accepts the mix, like arrays
        return None
    return [Path(v) for v in value]


def npy_shape(path: Path) -> tuple[int, ...]:
    """Shape of a ``.npy`` file from its header (the data are not read)."""
    return tuple(int(s) for s in np.load(path, mmap_mode="r", allow_pickle=False).shape)


def first_fold_shape(value, image_id: str) -> tuple[int, ...]:
    """Spatial shape (X, Y, Z) of an image from its probabilities, reading at most one fold."""
    what = f"image {image_id!r}"
    if _is_pathlike(value) and Path(value).suffix.lower() == ".npy" and Path(value).is_file():
        value = _np_load(Path(value), what, mmap_mode="r")
    for a in iter_folds(value, image_id):
        return tuple(int(s) for s in a.shape[1:])
    raise ValueError(f"{what}: no folds")  # pragma: no cover - iter_folds raises first


def to_numpy(a) -> np.ndarray:
    """A host NumPy copy of an engine result (NumPy, torch, CuPy)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        return a.detach().cpu().numpy()
    if hasattr(a, "get") and hasattr(a, "__cuda_array_interface__"):
        return a.get()
    return np.asarray(a)


def _is_loop_doc(x) -> bool:
    return isinstance(x, Mapping) and "patches" in x and "file" not in x


def as_patches(items, what: str = "annotated") -> list[Patch]:
    """``Patch`` objects from Patches or nnActive dicts ``{"file", "coords", "size"}``; a whole
    loop-file document ``{"patches": [...]}`` or the path of a ``loop_XXX.json`` file (or a list
    of them) contributes its patches."""
    if items is None:
        return []
    if isinstance(items, (Patch, Mapping, str, os.PathLike)):
        items = [items]
    out = []
    for it in items:
        if isinstance(it, (str, os.PathLike)):
            from claspe.data.io import read_json

            doc = read_json(it, missing=f"{what}: loop file {it} not found")
            if not (_is_loop_doc(doc) or isinstance(doc, list)):
                raise ValueError(f"{what}: {it} is not a loop file {{\"patches\": [...]}}")
            try:
                out.extend(as_patches(doc if isinstance(doc, list) else [doc], what))
            except ValueError as exc:
                raise ValueError(f"{it}: {exc}") from exc
        elif isinstance(it, Patch):
            out.append(it)
        elif _is_loop_doc(it):
            entries = it["patches"]
            if not isinstance(entries, (list, tuple)):
                raise ValueError(f"{what}: a loop file's 'patches' must be a list, got {type(entries).__name__}")
            out.extend(as_patches(list(entries), what))
        elif isinstance(it, Mapping):
            out.append(Patch.from_json(it))
        else:
            raise ValueError(f"{what} entries must be claspe.Patch or {{'file','coords','size'}} dicts, got {it!r}")
    return out


def check_annotated_in_pool(annotated: list[Patch], pool: Iterable[str]) -> dict[str, list[Patch]]:
    """Groups annotated patches by image; raises if one names an image that is not in the pool."""
    pool = set(pool)
    by_image: dict[str, list[Patch]] = {}
    missing = sorted({p.file for p in annotated if p.file not in pool})
    if missing:
        show = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(
            f"annotated patches name {len(missing)} image(s) that are not in the pool: {show} "
            f"(Patch.file must equal the pool's image id, e.g. {sorted(pool)[:1]})"
        )
    for p in annotated:
        by_image.setdefault(p.file, []).append(p)
    return by_image


def _label_array(a, k) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3:
        raise ValueError(f"labels[{k!r}] must be a 3D array [X, Y, Z], got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_)):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.mod(a, 1) == 0):
            a = a.astype(np.int64)
        else:
            raise ValueError(f"labels[{k!r}] must hold integer class ids, got dtype {a.dtype}")
    return a


class LabelView(Mapping):
    """A validated, lazy view of a label mapping ``id -> int array [X, Y, Z]`` (string ids, sorted).

    Nothing is loaded up front: each access reads the caller's mapping (which may itself read a file,
    as the protocol's ground truth does) and validates the array; only the last accessed image is
    kept, so the random baselines and the starting budget hold one pool label at a time, not all of
    them.  :meth:`scan` makes one pass over all images for their shapes and present classes.
    """

    def __init__(self, labels: Mapping) -> None:
        self._src = labels
        self._keys = {str(k): k for k in labels}
        self._ids = sorted(self._keys)
        self._last: tuple[str, np.ndarray] | None = None
        self._scan: tuple[dict, dict] | None = None

    def __getitem__(self, k: str) -> np.ndarray:
        if self._last is not None and self._last[0] == k:
            return self._last[1]
        if k not in self._keys:
            raise KeyError(k)
        a = _label_array(self._src[self._keys[k]], k)
        self._last = (k, a)
        return a

    def __contains__(self, k) -> bool:
        return k in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def scan(self) -> tuple[dict[str, tuple[int, ...]], dict[str, set[int]]]:
        """``(shapes, present)``: per image its shape and the set of class ids in it (one pass)."""
        if self._scan is None:
            shapes, present = {}, {}
            for k in self._ids:
                a = self[k]
                shapes[k] = tuple(a.shape)
                present[k] = {int(c) for c in np.unique(a)}
            self._scan = (shapes, present)
        return self._scan


def check_labels(labels, ids: Iterable[str] | None, strategy: str) -> LabelView:
    """Validates a label mapping ``id -> int array [X, Y, Z]``; returns a lazy :class:`LabelView`
    (each array is validated when it is read)."""
    if labels is None:
        raise ValueError(
            f"strategy {strategy!r} places boxes from the ground truth and needs labels= "
            f"(a mapping image id -> integer label array [X, Y, Z])"
        )
    if not isinstance(labels, Mapping) or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty mapping image id -> label array, got {type(labels).__name__}")
    out = LabelView(labels)
    if ids is not None:
        missing = sorted(set(ids) - set(out))
        if missing:
            raise ValueError(f"labels are missing for {len(missing)} pool image(s): {missing[:5]}")
    return out
