"""The query engine's public kernels.

Every function validates its inputs at this boundary (clear ``ValueError`` naming the problem) and
then routes to a backend:

* ``"cpu"``: the compiled C++/OpenMP engine ``claspe._C`` (default when built),
* ``"cuda"``: the CUDA engine, for arrays that live on a GPU (``__cuda_array_interface__``/DLPack),
* ``"numpy"``: the plain reference (:mod:`claspe.reference`), also the fallback without a compiler.

``backend="auto"`` picks ``cuda`` for GPU arrays, else ``cpu`` when built, else ``numpy``.
All backends give bit-identical results (see :mod:`claspe.reference` for the arithmetic contract).
Each op chooses its backend in exactly one place (``backend = _resolve_backend(...)`` followed by one
``if backend == ...`` block), which is where a new backend is wired in.

Entry points: :class:`FoldAccumulator` (one fold at a time: prediction streams folds into it),
:func:`fold_box_scores` (all folds of an image at once, read block-wise: each input byte is read once
and neither the fold sum nor the full-size score maps are ever materialised), :func:`score_maps`,
:func:`box_mean`, :func:`power_noise`, :func:`select_patches`, :func:`grid_shape`, and the thread
controls :func:`set_num_threads` / :func:`get_num_threads` / :func:`threads`.

Input copies: the CPU engine reads float32/float16 arrays with any strides (no copy; memory-mapped
``.npy`` files are read in place).  Other float dtypes are rejected.  The small candidate-grid arrays
of :func:`power_noise` and :func:`select_patches` are converted to contiguous float32 (a copy of a
grid-sized array).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from claspe import _cuda, _ext
from claspe import reference as _ref

BACKENDS = ("auto", "cpu", "cuda", "numpy")
SCORES = ("pe", "class_pe", "bald", "expected_entropy")


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------


def _triple(value, name: str, *, positive: bool = True, ints_only: bool = False,
            axes: str = "x, y, z") -> tuple[int, int, int]:
    """An int or 3 ints as a tuple of 3 ints.

    A scalar is repeated on every axis; with ``ints_only`` only integer scalars are (a float or
    bool is then rejected instead of truncated).  ``axes`` names the entries in the length error.
    """
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{name} must be an int or 3 ints, got {value!r}")
    if (isinstance(value, (int, np.integer)) and not isinstance(value, bool)) if ints_only else np.isscalar(value):
        value = (value, value, value)
    try:
        items = list(value)
        t = tuple(int(v) for v in items)
        # a bool, a string or a fractional value is not a voxel count (int() would accept/truncate it)
        if any(isinstance(v, (bool, np.bool_, str, bytes)) or v != int(v) for v in items):
            raise ValueError("not integral")
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be an int or 3 ints, got {value!r}") from exc
    if len(t) != 3:
        raise ValueError(f"{name} must have 3 entries ({axes}), got {value!r}")
    if positive and any(v <= 0 for v in t):
        raise ValueError(f"{name} must be positive on every axis, got {t}")
    return t  # type: ignore[return-value]


def _resolve_backend(backend: str, *arrays) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_gpu = [hasattr(a, "__cuda_array_interface__") for a in arrays if a is not None]
    if any(on_gpu) and not all(on_gpu):
        raise ValueError("inputs mix CPU and GPU arrays; put them on the same device")
    if backend == "auto":
        if any(on_gpu):
            backend = "cuda"
        else:
            backend = "cpu" if _ext.HAS_EXT else "numpy"
    if backend == "cuda":
        if not _ext.HAS_CUDA:
            raise ValueError("backend 'cuda' requested but claspe._C was built without CUDA")
    elif any(on_gpu):
        raise ValueError(f"backend {backend!r} cannot take GPU arrays; use backend='cuda' or 'auto'")
    if backend == "cpu" and not _ext.HAS_EXT:
        _ext.warn_fallback()
        backend = "numpy"
    return backend


def _routed(backend: str, op: str) -> str:
    """Each op below routes "cpu" to claspe._C and "numpy" to claspe.reference right after resolving
    its backend; a resolved backend an op has no route for is an error, never a silent fallback."""
    if backend not in ("cpu", "numpy"):
        raise ValueError(f"{op}: backend {backend!r} is not available for this operation")
    return backend


def _as_float_array(a, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    if hasattr(a, "detach") and hasattr(a, "numpy"):  # torch CPU tensor
        a = a.detach().numpy()
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float16):
        raise ValueError(f"{name} must be float32 or float16, got dtype {a.dtype}")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if a.ndim not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {a.shape}")
    if 0 in a.shape:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    return a


def _C():
    return _ext._C


def _check_finite(a: np.ndarray, name: str, backend: str = "numpy") -> None:
    if backend == "cpu" and 1 <= a.ndim <= 4:
        bad = _C().check_finite(a)
    else:
        bad = not np.isfinite(a).all()
    if bad:
        raise ValueError(f"{name} contains NaN or Inf")


def prob_tolerance(dtype) -> float:
    """Allowed |sum_c p_c - 1| per voxel: 1e-3 for float32, 5e-3 for float16 input."""
    return 5e-3 if np.dtype(dtype) == np.float16 else 1e-3


# bits of the engine's validation flags (csrc/common/scores.h CheckFlag)
_FLAG_NONFINITE, _FLAG_RANGE, _FLAG_SUM = 1, 2, 4


def _raise_flags(flags: int, maxdev: float, name: str, tol: float) -> None:
    """Turns the engine's validation flags into the same ValueErrors as the NumPy checks."""
    if flags & _FLAG_NONFINITE:
        raise ValueError(f"{name} contains NaN or Inf")
    if flags & _FLAG_RANGE:
        raise ValueError(f"{name}: probabilities outside [0, 1] (are these logits? pass logits=True)")
    if flags & _FLAG_SUM:
        raise ValueError(
            f"{name}: probabilities do not sum to 1 over the class axis (max deviation {maxdev:.3g} > "
            f"{tol}); pass logits=True for logits"
        )


def _check_probabilities(p: np.ndarray, name: str, backend: str = "numpy") -> None:
    """Finite, within [-tol, 1+tol] and summing to 1 +- tol over axis 0 (tol: :func:`prob_tolerance`).

    The CPU engine checks in one pass in float32 (thresholds float32(-tol), float32(1+tol)); the
    NumPy check compares in the input dtype, so the two can differ only for values within one
    float16 ulp of a threshold.
    """
    if backend == "cpu" and p.ndim == 4:
        tol = prob_tolerance(p.dtype)
        flags, maxdev = _C().check_probs(p, tol)
        _raise_flags(flags, maxdev, name, tol)
        return
    _check_finite(p, name)
    tol = prob_tolerance(p.dtype)
    if (p < -tol).any() or (p > 1 + tol).any():
        raise ValueError(f"{name}: probabilities outside [0, 1] (are these logits? pass logits=True)")
    s = np.zeros(p.shape[1:], np.float32)
    for c in range(p.shape[0]):
        s += p[c]
    err = float(np.max(np.abs(s - 1)))
    if err > tol:
        raise ValueError(
            f"{name}: probabilities do not sum to 1 over the class axis (max deviation {err:.3g} > "
            f"{tol}); pass logits=True for logits"
        )


# ----------------------------------------------------------------------------------------------
# threads
# ----------------------------------------------------------------------------------------------


def set_num_threads(n: int) -> None:
    """OpenMP threads of the CPU engine for later calls from this thread (results never depend on it)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    if _ext.HAS_EXT:
        _C().set_num_threads(n)


def get_num_threads() -> int:
    """OpenMP threads the CPU engine will use (1 without the extension)."""
    return int(_C().get_num_threads()) if _ext.HAS_EXT else 1


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """``with ops.threads(2): ...`` runs the CPU engine with ``n`` threads, then restores the count."""
    before = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# fold accumulation and score maps
# ----------------------------------------------------------------------------------------------


def _score_kind(score: str) -> int:
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; valid: {SCORES}")
    return SCORES.index(score)  # csrc/common/scores.h ScoreKind order


def _check_score_classes(score: str, classes, n_channels: int) -> list[int]:
    _score_kind(score)
    if score != "class_pe":
        return []
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):  # one class id
        classes = [classes]
    if classes is None or not hasattr(classes, "__len__") or len(classes) == 0:
        raise ValueError(f"score 'class_pe' needs a non-empty list of classes, got {classes!r}")
    try:
        cls = [int(c) for c in classes]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"classes must be integers, got {classes!r}") from exc
    bad = [c for c in cls if not 0 <= c < n_channels]
    if bad:
        raise ValueError(f"classes {bad} are not channels of the probabilities (C={n_channels})")
    return cls


class FoldAccumulator:
    """Running fold sum of softmax probabilities, one fold at a time (folds are never stacked).

    ``add(fold, logits=False)`` takes one fold's [C, X, Y, Z] probabilities (or logits, softmax
    fused, with ``logits=True``), float32 or float16, any strides.  With ``track_fold_entropy=True``
    the per-fold entropy is summed in the same pass (needed by BALD and expected entropy).
    Probabilities must be finite, within [0, 1] and sum to 1 over the classes, up to
    :func:`prob_tolerance`; logits must be finite.

    If ``add`` raises (bad input), the accumulator is left *unchanged* (the CPU engine validates
    the whole fold before it writes anything).

    Memory: the float32 sum [C, X, Y, Z] (+ [X, Y, Z] with fold entropy).  When all folds are at
    hand, :func:`fold_box_scores` needs neither.
    """

    def __init__(self, *, track_fold_entropy: bool = False, backend: str = "auto") -> None:
        self.track_fold_entropy = bool(track_fold_entropy)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self._backend_req = backend
        self.backend: str | None = None
        self.shape: tuple[int, ...] | None = None
        self._sum: np.ndarray | None = None
        self._ent: np.ndarray | None = None
        self._n = 0
        self._gpu: _cuda.CudaFoldAccumulator | None = None  # CUDA backend state (claspe/_cuda.py)

    @property
    def n_folds(self) -> int:
        return self._n

    @property
    def fold_sum(self) -> np.ndarray:
        """The running float32 sum [C, X, Y, Z] (fold order, starting from 0)."""
        self._require()
        return self._sum

    def add(self, fold, *, logits: bool = False) -> None:
        if self.backend == "cuda" or (self.backend is None and _cuda.wants(self._backend_req, fold)):  # GPU folds
            self._gpu = self._gpu or _cuda.CudaFoldAccumulator(track_fold_entropy=self.track_fold_entropy)
            self._gpu.add(fold, logits=logits)
            self.backend, self.shape, self._n, self._sum, self._ent = (
                "cuda", self._gpu.shape, self._gpu.n_folds, self._gpu.sum, self._gpu.ent)
            return
        backend = _routed(_resolve_backend(self._backend_req if self.backend is None else self.backend, fold),
                          "FoldAccumulator.add")
        if self.backend is not None and backend != self.backend:
            raise ValueError(f"fold is on backend {backend!r} but the accumulator is on {self.backend!r}")
        a = _as_float_array(fold, "fold", 4)
        if self.shape is not None and a.shape != self.shape:
            if a.shape[0] != self.shape[0]:
                raise ValueError(f"fold has {a.shape[0]} classes, earlier folds had {self.shape[0]}")
            raise ValueError(f"fold shape {a.shape} differs from earlier folds {self.shape}")
        first = self._sum is None
        if backend == "cpu":
            tol = prob_tolerance(a.dtype)
            s = np.empty(a.shape, np.float32) if first else self._sum
            e = None
            if self.track_fold_entropy:
                e = np.empty(a.shape[1:], np.float32) if first else self._ent
            flags, maxdev = _C().fold_add(a, bool(logits), tol, s, e, first)
            _raise_flags(flags, maxdev, "fold logits" if logits else "fold", tol)  # nothing was written
        else:  # "numpy"
            if logits:
                _check_finite(a, "fold logits")
                p = _ref.softmax(a)
            else:
                _check_probabilities(a, "fold")
                p = a.astype(np.float32)
            s = ((np.zeros(a.shape, np.float32) if first else self._sum) + p).astype(np.float32)
            e = None
            if self.track_fold_entropy:
                prev = np.zeros(a.shape[1:], np.float32) if first else self._ent
                e = (prev + _ref.entropy(p)).astype(np.float32)
        self._sum, self._ent = s, e
        if first:
            self.backend = backend
            self.shape = a.shape
        self._n += 1

    def _require(self) -> None:
        if self._sum is None or self._n == 0:
            raise ValueError("no fold was added to the accumulator")

    def mean(self) -> np.ndarray:
        """Fold-mean probabilities [C, X, Y, Z] float32: sum / float32(n_folds)."""
        self._require()
        if self.backend == "cuda":
            return self._gpu.mean()
        return (self._sum / np.float32(self._n)).astype(np.float32)

    def mean_fold_entropy(self) -> np.ndarray:
        """Mean per-fold entropy [X, Y, Z] float32 (needs ``track_fold_entropy=True``)."""
        self._require()
        if not self.track_fold_entropy:
            raise ValueError("mean fold entropy needs FoldAccumulator(track_fold_entropy=True)")
        if self.backend == "cuda":
            return self._gpu.mean_fold_entropy()
        return (self._ent / np.float32(self._n)).astype(np.float32)

    def _score_args(self, score: str, classes):
        self._require()
        cls = _check_score_classes(score, classes, self.shape[0])
        if score in ("bald", "expected_entropy") and not self.track_fold_entropy:
            raise ValueError(f"score {score!r} needs FoldAccumulator(track_fold_entropy=True)")
        return cls

    def score_maps(self, score: str = "pe", classes: Sequence[int] | None = None) -> np.ndarray:
        """Score maps [K, X, Y, Z] float32 (see :func:`score_maps`), computed from the fold sums."""
        cls = self._score_args(score, classes)
        if self.backend == "cuda":
            return self._gpu.score_maps(score, cls)
        if self.backend == "cpu":
            return _C().acc_maps(self._sum, self._ent, float(self._n), _score_kind(score), cls)
        mfe = self.mean_fold_entropy() if score in ("bald", "expected_entropy") else None
        return _ref.score_maps(self.mean(), score, cls, mfe)

    def box_scores(self, score: str = "pe", classes: Sequence[int] | None = None, *, patch, stride=1) -> np.ndarray:
        """``box_mean(self.score_maps(score, classes), patch, stride)`` fused: [K, nx, ny, nz] float32.

        Bit-identical to the two-step version, without materialising the full-size score maps.
        """
        cls = self._score_args(score, classes)
        patch = _triple(patch, "patch")
        stride = _triple(stride, "stride")
        if self.backend == "cuda":
            return self._gpu.box_scores(score, cls, patch, stride)
        if self.backend == "cpu":
            return _C().acc_box(self._sum, self._ent, float(self._n), _score_kind(score), cls, patch, stride)
        return _ref.box_mean(self.score_maps(score, cls), patch, stride)


def score_maps(
    mean,
    score: str = "pe",
    classes: Sequence[int] | None = None,
    *,
    mean_fold_entropy=None,
    backend: str = "auto",
) -> np.ndarray:
    """Score maps [K, X, Y, Z] float32 from fold-mean probabilities [C, X, Y, Z].

    ``score``: ``pe`` -> [PE]; ``class_pe`` -> [PE*p_c for c in classes] + [PE] (PE last);
    ``bald`` -> [max(PE - mean fold entropy, 0)]; ``expected_entropy`` -> [mean fold entropy].
    ``mean_fold_entropy`` [X, Y, Z] is required for ``bald`` and ``expected_entropy``.
    """
    _score_kind(score)
    if _cuda.wants(backend, mean, mean_fold_entropy):
        return _cuda.score_maps(mean, score, classes, mean_fold_entropy)
    mean = _as_float_array(mean, "mean", 4)
    backend = _routed(_resolve_backend(backend, mean), "score_maps")
    _check_probabilities(mean, "mean", backend)
    cls = _check_score_classes(score, classes, mean.shape[0])
    if score in ("bald", "expected_entropy"):
        if mean_fold_entropy is None:
            raise ValueError(f"score {score!r} needs mean_fold_entropy (track_fold_entropy=True)")
        mean_fold_entropy = np.asarray(mean_fold_entropy, np.float32)
        if mean_fold_entropy.shape != mean.shape[1:]:
            raise ValueError(
                f"mean_fold_entropy shape {mean_fold_entropy.shape} != spatial shape {mean.shape[1:]}"
            )
        _check_finite(mean_fold_entropy, "mean_fold_entropy")
    else:
        mean_fold_entropy = None
    if backend == "cpu":
        # the engine divides fold sums by the fold count: with count 1 that is the mean itself
        return _C().acc_maps(mean, mean_fold_entropy, 1.0, _score_kind(score), cls)
    return _ref.score_maps(np.asarray(mean, np.float32), score, cls, mean_fold_entropy)


# ----------------------------------------------------------------------------------------------
# all folds at once: fused accumulation + score maps + box mean
# ----------------------------------------------------------------------------------------------


class _MappedNpy:
    """A ``.npy`` file memory-mapped read-only; ``release(x0, x1)`` drops the pages of planes
    x0..x1-1 of a [C, X, Y, Z] array from this process (they stay in the page cache), so reading a
    large file plane-block by plane-block keeps the resident set small."""

    def __init__(self, path, what: str) -> None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{what}: file {p} not found")
        if p.suffix.lower() != ".npy":
            raise ValueError(f"{what}: {p} is not a .npy file (fold_box_scores memory-maps .npy files)")
        with open(p, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            except ValueError as exc:
                raise ValueError(f"{what}: {p} is not a valid .npy file ({exc})") from exc
            offset = fh.tell()
            size = os.fstat(fh.fileno()).st_size
            need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if size < need:
                raise ValueError(f"{what}: {p} is truncated ({size} bytes, header says {need})")
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.path = p
        self._offset = offset
        count = int(np.prod(shape, dtype=np.int64))
        if dtype not in (np.float32, np.float16) or dtype.hasobject:
            self.array = np.empty((0,), np.float32)
            self.close()
            raise ValueError(f"{what}: {p} holds dtype {dtype}; must be float32 or float16")
        flat = np.frombuffer(self._mm, dtype=dtype, count=count, offset=offset)
        self.array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
        self._contiguous = not fortran

    def release(self, x0: int, x1: int) -> None:
        a = self.array
        if not self._contiguous or a.ndim != 4 or x1 <= x0 or not hasattr(mmap, "MADV_DONTNEED"):
            return
        C, _, Y, Z = a.shape
        plane = Y * Z * a.itemsize
        page = mmap.PAGESIZE
        for c in range(C):
            start = self._offset + (c * a.shape[1] + x0) * plane
            end = start + (x1 - x0) * plane
            start -= start % page
            with contextlib.suppress(OSError, ValueError):
                self._mm.madvise(mmap.MADV_DONTNEED, start, min(end, len(self._mm)) - start)

    def close(self) -> None:
        self.array = None
        with contextlib.suppress(BufferError, ValueError):
            self._mm.close()


def _fold_items(folds) -> list:
    if isinstance(folds, (str, os.PathLike)):
        raise ValueError("folds must be a sequence of fold arrays/paths or an [M, C, X, Y, Z] array, not one path")
    if hasattr(folds, "detach") and hasattr(folds, "numpy"):
        folds = folds.detach().numpy()
    if isinstance(folds, np.ndarray):
        if folds.ndim != 5:
            raise ValueError(f"folds array must be [M, C, X, Y, Z], got shape {folds.shape}")
        return [folds[m] for m in range(folds.shape[0])]
    try:
        items = list(folds)
    except TypeError as exc:
        raise ValueError(f"folds must be a sequence of arrays or .npy paths, got {type(folds).__name__}") from exc
    if not items:
        raise ValueError("folds is empty: need at least one fold")
    return items


def fold_box_scores(
    folds,
    *,
    score: str = "pe",
    classes: Sequence[int] | None = None,
    patch,
    stride=1,
    logits: bool = False,
    backend: str = "auto",
    planes_per_block: int | None = None,
) -> np.ndarray:
    """Box-mean score maps [K, nx, ny, nz] float32 of all M folds of one image, in one fused pass.

    Equal bit for bit to ``FoldAccumulator`` (adding the folds in order) followed by
    ``box_mean(acc.score_maps(score, classes), patch, stride)``, but the folds are read block-wise
    (a block of x-planes of every fold at a time): each input byte is read once, and neither the
    [C, X, Y, Z] fold sum nor the full-size score maps are ever stored (working memory is a
    few per-thread line buffers plus a float64 [K, X, ny, nz] array of partial window sums).

    ``folds``: an [M, C, X, Y, Z] array, or a sequence of M items, each a [C, X, Y, Z] array
    (float32/float16, any strides) or a path to a ``.npy`` file.  ``.npy`` files are memory-mapped
    and the pages of each finished block are released, so the resident memory stays far below one
    fold even for folds larger than RAM.  ``planes_per_block``: x-planes per block for memory-mapped
    folds (default: about 64 MiB per fold, at least 2 per thread); arrays in memory are processed
    in one block.  Validation as :meth:`FoldAccumulator.add`; errors name the fold index.
    """
    _score_kind(score)
    patch = _triple(patch, "patch")
    stride = _triple(stride, "stride")
    gpu_items = _cuda.gpu_folds(folds, backend)
    if gpu_items is not None:
        return _cuda.fold_box_scores(gpu_items, score=score, classes=classes, patch=patch, stride=stride, logits=logits)
    items = _fold_items(folds)
    mapped: list[_MappedNpy] = []
    try:
        arrays = []
        for m, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                mapped.append(_MappedNpy(item, f"fold {m}"))
                item = mapped[-1].array
            a = _as_float_array(item, f"fold {m}", 4)
            if arrays:
                if a.shape[0] != arrays[0].shape[0]:
                    raise ValueError(f"fold {m} has {a.shape[0]} classes, fold 0 has {arrays[0].shape[0]}")
                if a.shape != arrays[0].shape:
                    raise ValueError(f"fold {m} shape {a.shape} differs from fold 0 {arrays[0].shape}")
                if a.dtype != arrays[0].dtype:
                    raise ValueError(f"fold {m} dtype {a.dtype} differs from fold 0 {arrays[0].dtype}")
            arrays.append(a)
        cls = _check_score_classes(score, classes, arrays[0].shape[0])
        backend = _routed(_resolve_backend(backend, *arrays), "fold_box_scores")
        if backend == "cpu":
            return _fold_box_scores_cpu(arrays, mapped, score, cls, patch, stride, bool(logits), planes_per_block)
        acc = FoldAccumulator(track_fold_entropy=score in ("bald", "expected_entropy"), backend="numpy")
        for m, a in enumerate(arrays):
            if logits:  # same messages as the CPU path (add() checks again: this is the slow fallback)
                _check_finite(a, f"fold {m} logits")
            else:
                _check_probabilities(a, f"fold {m}")
            acc.add(a, logits=logits)
        return acc.box_scores(score, cls, patch=patch, stride=stride)
    finally:
        arrays = a = item = None  # drop views of the mapped files before unmapping them
        for mp in mapped:
            mp.close()


def _fold_box_scores_cpu(arrays, mapped, score, cls, patch, stride, logits, planes_per_block) -> np.ndarray:
    C, X, Y, Z = arrays[0].shape
    grid = _ref.grid_shape((X, Y, Z), patch, stride)
    K = len(cls) + 1 if score == "class_pe" else 1
    t2 = np.empty((K, X, grid[1], grid[2]), np.float64)
    if mapped:
        if planes_per_block is None:
            per_plane = C * Y * Z * arrays[0].itemsize
            planes_per_block = max(2 * get_num_threads(), (64 << 20) // max(per_plane, 1))
        step = max(1, int(planes_per_block))
    else:
        step = X
    tol = prob_tolerance(arrays[0].dtype)
    kind = _score_kind(score)
    for x0 in range(0, X, step):
        x1 = min(X, x0 + step)
        checks = _C().folds_box_planes(arrays, logits, tol, kind, cls, patch, stride, x0, x1, t2)
        for m, (flags, maxdev) in enumerate(checks):
            _raise_flags(flags, maxdev, f"fold {m}" + (" logits" if logits else ""), tol)
        for mp in mapped:
            mp.release(x0, x1)
    return _C().box_x_pass(t2, (X, Y, Z), patch, stride)


# ----------------------------------------------------------------------------------------------
# aggregation, noise, selection
# ----------------------------------------------------------------------------------------------


def grid_shape(volume_shape, patch, stride) -> tuple[int, int, int]:
    """Candidate grid shape: per axis (dim - min(patch, dim)) // stride + 1."""
    return _ref.grid_shape(_triple(volume_shape, "volume_shape"), _triple(patch, "patch"), _triple(stride, "stride"))


def box_mean(maps, patch, stride=1, *, backend: str = "auto") -> np.ndarray:
    """Valid-mode box mean over ``patch`` (clipped per axis to the volume) at stride positions.

    ``maps``: [K, X, Y, Z] or [X, Y, Z] float32/float16 (finite).  Returns float32 [K, nx, ny, nz]
    (or [nx, ny, nz]); candidate i on an axis has start corner i*stride.  Running sums in float64
    (Z, then Y, then X), so any box size costs O(N); equal to a conv3d box filter to ~1e-7 relative.
    """
    if _cuda.wants(backend, maps):
        return _cuda.box_mean(maps, patch, stride)
    a = _as_float_array(maps, "maps", (3, 4))
    squeeze = a.ndim == 3
    if squeeze:
        a = a[None]
    patch = _triple(patch, "patch")
    stride = _triple(stride, "stride")
    backend = _routed(_resolve_backend(backend, a), "box_mean")
    _check_finite(a, "maps", backend)
    if backend == "cpu":
        out = _C().box_mean(a, patch, stride)
    else:
        out = _ref.box_mean(a, patch, stride)
    return out[0] if squeeze else out


def _check_seed_fields(seed, loop, image, key) -> None:
    if not (isinstance(seed, (int, np.integer)) and 0 <= int(seed) < 2**64):
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    for name, v in (("loop", loop), ("image", image)):
        if not (isinstance(v, (int, np.integer)) and 0 <= int(v) < 2**32):
            raise ValueError(f"{name} must be an integer in [0, 2**32), got {v!r}")
    if not (isinstance(key, (int, np.integer)) and -(2**31) <= int(key) < 2**31):
        raise ValueError(f"key must be a 32-bit signed integer (class id or -1), got {key!r}")


def power_noise(scores, beta=None, *, seed: int = 0, loop: int = 0, image: int = 0, key: int = 0,
                noise=None, backend: str = "auto") -> np.ndarray:
    """log(scores) + Gumbel(0, 1/beta) noise, float32, same shape as ``scores`` (>= 0, finite).

    The noise at flat position i is a pure function of (seed, loop, image, key, i) (Philox), so it
    does not depend on thread count, processing order or device.  With ``noise=`` (same shape,
    already scaled) that array is added instead and ``beta`` is ignored.  Zero scores give -inf.
    """
    if _cuda.wants(backend, scores, noise):
        return _cuda.power_noise(scores, beta, seed=seed, loop=loop, image=image, key=key, noise=noise)
    s = _as_float_array(scores, "scores", (1, 2, 3, 4))
    _check_finite(s, "scores")
    if (s < 0).any():
        raise ValueError("scores must be >= 0 for log-scale power noising")
    if noise is None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating)) \
                or not np.isfinite(beta) or beta <= 0:
            raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
        _check_seed_fields(seed, loop, image, key)
    else:
        if hasattr(noise, "detach") and hasattr(noise, "numpy"):  # torch CPU tensor
            noise = noise.detach().numpy()
        noise = np.asarray(noise)
        if noise.dtype.kind not in "iuf":
            raise ValueError(f"noise must be a real-valued array, got dtype {noise.dtype}")
        if noise.shape != s.shape:
            raise ValueError(f"noise shape {noise.shape} != scores shape {s.shape}")
        if not np.isfinite(noise).all():
            raise ValueError("noise contains NaN or Inf")
    backend = _routed(_resolve_backend(backend, s), "power_noise")
    if s.size >= 2**32:
        raise ValueError(f"scores has {s.size} elements; the noise stream is indexed by 32-bit positions")
    if backend == "cpu":
        s32 = np.ascontiguousarray(s, dtype=np.float32)
        if noise is None:
            return _C().power_noise(s32, int(seed), int(loop), int(image), int(key) & 0xFFFFFFFF, float(beta))
        return _C().log_plus_noise(s32, np.ascontiguousarray(noise, dtype=np.float64))
    return _ref.power_noise(s, beta, seed=int(seed), loop=int(loop), image=int(image), key=int(key), noise=noise)


def _check_boxes(blocked, name: str = "blocked") -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    if blocked is None:
        return []
    out = []
    for b in blocked:
        if hasattr(b, "coords") and hasattr(b, "size"):
            start, size = b.coords, b.size
        else:
            try:
                start, size = b
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} entries must be (start, size) or Patch, got {b!r}") from exc
        start = _triple(start, f"{name} start", positive=False)
        size = _triple(size, f"{name} size")
        out.append((start, size))
    return out


def _check_select_args(scores_shape, *, patch, stride, volume_shape, quotas, blocked):
    """Checks :func:`select_patches`' arguments against the [K, nx, ny, nz] ``scores_shape`` (CPU,
    NumPy and GPU paths); returns ``(patch, stride, volume_shape, quotas, blocked boxes)`` normalised."""
    patch = _triple(patch, "patch")
    stride = _triple(stride, "stride")
    volume_shape = _triple(volume_shape, "volume_shape")
    expect = _ref.grid_shape(volume_shape, patch, stride)
    if tuple(scores_shape[1:]) != expect:
        raise ValueError(
            f"scores grid {tuple(scores_shape[1:])} does not match volume {volume_shape}, patch {patch}, "
            f"stride {stride} (expected {expect})"
        )
    try:
        if any(isinstance(q, bool) or int(q) != q for q in quotas):
            raise ValueError("not integral")
        quotas = [int(q) for q in quotas]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"quotas must be integers, got {quotas!r}") from exc
    if len(quotas) != scores_shape[0]:
        raise ValueError(f"{len(quotas)} quotas for {scores_shape[0]} keys")
    if any(q < 0 for q in quotas):
        raise ValueError(f"quotas must be >= 0, got {quotas}")
    return patch, stride, volume_shape, quotas, _check_boxes(blocked)


def select_patches(scores, *, patch, stride, volume_shape, quotas, blocked=(), backend: str = "auto"):
    """Greedy non-overlapping top-n per key inside one image.

    ``scores`` [K, nx, ny, nz] (or [nx, ny, nz] for one key) float32/float16 (e.g. noised box
    means), keys processed in order of axis 0; key k takes up to ``quotas[k]`` boxes.  Ranking:
    higher score first, then lower flat index; NaN and +inf are rejected, -inf ranks last (after
    every finite score).  Boxes of earlier keys and the ``blocked`` boxes (already annotated;
    ``(start, size)`` tuples or :class:`claspe.Patch`) block overlapping candidates.
    Returns per key ``(starts int64 [n_k, 3], scores float32 [n_k])``; n_k < quota when the
    candidates run out (never hangs).  The CPU engine tests overlap in O(1) through a mask over the
    candidate grid and ranks by partial selection, not a full sort.
    """
    if _cuda.wants(backend, scores):
        return _cuda.select_patches(scores, patch=patch, stride=stride, volume_shape=volume_shape, quotas=quotas,
                                    blocked=blocked)
    a = _as_float_array(scores, "scores", (3, 4))
    if a.ndim == 3:
        a = a[None]
    if np.isnan(a).any() or np.isposinf(a).any():
        raise ValueError("scores contain NaN or +Inf")
    patch, stride, volume_shape, quotas, boxes = _check_select_args(
        a.shape, patch=patch, stride=stride, volume_shape=volume_shape, quotas=quotas, blocked=blocked
    )
    backend = _routed(_resolve_backend(backend, a), "select_patches")
    if backend == "cpu":
        res = _C().select_patches(np.ascontiguousarray(a, dtype=np.float32), patch, stride, volume_shape, quotas, boxes)
        return [(st, sc) for st, sc in res]
    return _ref.select_patches(a.astype(np.float32), patch=patch, stride=stride, volume_shape=volume_shape,
                               quotas=quotas, blocked=boxes)
