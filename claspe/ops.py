"""The query engine's public kernels.

Every function validates its inputs at this boundary (clear ``ValueError`` naming the problem) and
then routes to a backend:

* ``"cpu"``: the compiled C++/OpenMP engine ``claspe._C`` (default when built),
* ``"cuda"``: the CUDA engine, for arrays that live on a GPU (``__cuda_array_interface__``/DLPack),
* ``"numpy"``: the plain reference (:mod:`claspe.reference`), also the fallback without a compiler.

``backend="auto"`` picks ``cuda`` for GPU arrays, else ``cpu`` when built, else ``numpy``.
All backends give bit-identical results (see :mod:`claspe.reference` for the arithmetic contract).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from claspe import _ext
from claspe import reference as _ref

BACKENDS = ("auto", "cpu", "cuda", "numpy")
SCORES = ("pe", "class_pe", "bald", "expected_entropy")


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------


def _triple(value, name: str, *, positive: bool = True) -> tuple[int, int, int]:
    if np.isscalar(value):
        value = (value, value, value)
    try:
        t = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an int or 3 ints, got {value!r}") from exc
    if len(t) != 3:
        raise ValueError(f"{name} must have 3 entries (x, y, z), got {value!r}")
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


def _check_finite(a: np.ndarray, name: str) -> None:
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")


def prob_tolerance(dtype) -> float:
    """Allowed |sum_c p_c - 1| per voxel: 1e-3 for float32, 5e-3 for float16 input."""
    return 5e-3 if np.dtype(dtype) == np.float16 else 1e-3


def _check_probabilities(p: np.ndarray, name: str) -> None:
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
# fold accumulation and score maps
# ----------------------------------------------------------------------------------------------


class FoldAccumulator:
    """Running fold sum of softmax probabilities, one fold at a time (folds are never stacked).

    ``add(fold, logits=False)`` takes one fold's [C, X, Y, Z] probabilities (or logits, softmax
    fused, with ``logits=True``), float32 or float16.  With ``track_fold_entropy=True`` the
    per-fold entropy is summed in the same pass (needed by BALD and expected entropy).

    If ``add`` raises (bad input), the accumulator is left *unchanged*.
    """

    def __init__(self, *, track_fold_entropy: bool = False, backend: str = "auto") -> None:
        self.track_fold_entropy = bool(track_fold_entropy)
        self._backend_req = backend
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self._impl = None
        self.backend: str | None = None
        self.shape: tuple[int, ...] | None = None

    @property
    def n_folds(self) -> int:
        return 0 if self._impl is None else self._impl.n_folds

    def add(self, fold, *, logits: bool = False) -> None:
        backend = _resolve_backend(self._backend_req if self.backend is None else self.backend, fold)
        if self.backend is not None and backend != self.backend:
            raise ValueError(f"fold is on backend {backend!r} but the accumulator is on {self.backend!r}")
        a = _as_float_array(fold, "fold", 4)
        if self.shape is not None and a.shape != self.shape:
            if a.shape[0] != self.shape[0]:
                raise ValueError(f"fold has {a.shape[0]} classes, earlier folds had {self.shape[0]}")
            raise ValueError(f"fold shape {a.shape} differs from earlier folds {self.shape}")
        if logits:
            _check_finite(a, "fold logits")
        else:
            _check_probabilities(a, "fold")
        if self._impl is None:
            self._impl = _ref.FoldAccumulator(track_fold_entropy=self.track_fold_entropy)
            self.backend = backend
            self.shape = a.shape
        self._impl.add(a, logits=logits)

    def _require(self) -> None:
        if self._impl is None or self.n_folds == 0:
            raise ValueError("no fold was added to the accumulator")

    def mean(self) -> np.ndarray:
        """Fold-mean probabilities [C, X, Y, Z] float32."""
        self._require()
        return self._impl.mean()

    def mean_fold_entropy(self) -> np.ndarray:
        self._require()
        if not self.track_fold_entropy:
            raise ValueError("mean fold entropy needs FoldAccumulator(track_fold_entropy=True)")
        return self._impl.mean_fold_entropy()

    def score_maps(self, score: str = "pe", classes: Sequence[int] | None = None) -> np.ndarray:
        """Score maps [K, X, Y, Z] float32 (see :func:`score_maps`)."""
        self._require()
        mfe = self.mean_fold_entropy() if score in ("bald", "expected_entropy") else None
        return score_maps(self.mean(), score, classes, mean_fold_entropy=mfe, backend="numpy", _validated=True)


def score_maps(
    mean,
    score: str = "pe",
    classes: Sequence[int] | None = None,
    *,
    mean_fold_entropy=None,
    backend: str = "auto",
    _validated: bool = False,
) -> np.ndarray:
    """Score maps [K, X, Y, Z] float32 from fold-mean probabilities [C, X, Y, Z].

    ``score``: ``pe`` -> [PE]; ``class_pe`` -> [PE*p_c for c in classes] + [PE] (PE last);
    ``bald`` -> [max(PE - mean fold entropy, 0)]; ``expected_entropy`` -> [mean fold entropy].
    """
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; valid: {SCORES}")
    if not _validated:
        mean = _as_float_array(mean, "mean", 4)
        _check_probabilities(mean, "mean")
    if score == "class_pe":
        if classes is None or len(classes) == 0:
            raise ValueError("score 'class_pe' needs a non-empty list of classes")
        bad = [c for c in classes if not 0 <= int(c) < mean.shape[0]]
        if bad:
            raise ValueError(f"classes {bad} are not channels of the probabilities (C={mean.shape[0]})")
        classes = [int(c) for c in classes]
    if score in ("bald", "expected_entropy"):
        if mean_fold_entropy is None:
            raise ValueError(f"score {score!r} needs mean_fold_entropy (track_fold_entropy=True)")
        mean_fold_entropy = np.asarray(mean_fold_entropy, np.float32)
        if mean_fold_entropy.shape != mean.shape[1:]:
            raise ValueError(
                f"mean_fold_entropy shape {mean_fold_entropy.shape} != spatial shape {mean.shape[1:]}"
            )
    _resolve_backend(backend, mean)
    return _ref.score_maps(np.asarray(mean, np.float32), score, classes, mean_fold_entropy)


# ----------------------------------------------------------------------------------------------
# aggregation, noise, selection
# ----------------------------------------------------------------------------------------------


def grid_shape(volume_shape, patch, stride) -> tuple[int, int, int]:
    """Candidate grid shape: per axis (dim - min(patch, dim)) // stride + 1."""
    return _ref.grid_shape(_triple(volume_shape, "volume_shape"), _triple(patch, "patch"), _triple(stride, "stride"))


def box_mean(maps, patch, stride=1, *, backend: str = "auto") -> np.ndarray:
    """Valid-mode box mean over ``patch`` (clipped per axis to the volume) at stride positions.

    ``maps``: [K, X, Y, Z] or [X, Y, Z] float32/float16.  Returns float32 [K, nx, ny, nz] (or
    [nx, ny, nz]); candidate i on an axis has start corner i*stride.
    """
    a = _as_float_array(maps, "maps", (3, 4))
    squeeze = a.ndim == 3
    if squeeze:
        a = a[None]
    patch = _triple(patch, "patch")
    stride = _triple(stride, "stride")
    _check_finite(a, "maps")
    _resolve_backend(backend, a)
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
    s = _as_float_array(scores, "scores", (1, 2, 3, 4))
    _check_finite(s, "scores")
    if (s < 0).any():
        raise ValueError("scores must be >= 0 for log-scale power noising")
    if noise is None:
        if beta is None or not np.isfinite(beta) or beta <= 0:
            raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
        _check_seed_fields(seed, loop, image, key)
    else:
        noise = np.asarray(noise)
        if noise.shape != s.shape:
            raise ValueError(f"noise shape {noise.shape} != scores shape {s.shape}")
        if not np.isfinite(noise).all():
            raise ValueError("noise contains NaN or Inf")
    _resolve_backend(backend, s)
    return _ref.power_noise(s, beta, seed=int(seed), loop=int(loop), image=int(image), key=int(key), noise=noise)


def _check_boxes(blocked, name: str = "blocked") -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
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


def select_patches(scores, *, patch, stride, volume_shape, quotas, blocked=(), backend: str = "auto"):
    """Greedy non-overlapping top-n per key inside one image.

    ``scores`` [K, nx, ny, nz] float32 (e.g. noised box means), keys processed in order of axis 0;
    key k takes up to ``quotas[k]`` boxes.  Ranking: higher score first, then lower flat index;
    NaN is rejected, -inf ranks last.  Boxes of earlier keys and the ``blocked`` boxes (already
    annotated; ``(start, size)`` tuples or :class:`claspe.Patch`) block overlapping candidates.
    Returns per key ``(starts int64 [n_k, 3], scores float32 [n_k])``; n_k < quota when the
    candidates run out (never hangs).
    """
    a = _as_float_array(scores, "scores", (3, 4))
    if a.ndim == 3:
        a = a[None]
    if np.isnan(a).any() or np.isposinf(a).any():
        raise ValueError("scores contain NaN or +Inf")
    patch = _triple(patch, "patch")
    stride = _triple(stride, "stride")
    volume_shape = _triple(volume_shape, "volume_shape")
    expect = _ref.grid_shape(volume_shape, patch, stride)
    if tuple(a.shape[1:]) != expect:
        raise ValueError(
            f"scores grid {tuple(a.shape[1:])} does not match volume {volume_shape}, patch {patch}, "
            f"stride {stride} (expected {expect})"
        )
    quotas = [int(q) for q in quotas]
    if len(quotas) != a.shape[0]:
        raise ValueError(f"{len(quotas)} quotas for {a.shape[0]} keys")
    if any(q < 0 for q in quotas):
        raise ValueError(f"quotas must be >= 0, got {quotas}")
    boxes = _check_boxes(blocked)
    _resolve_backend(backend, a)
    return _ref.select_patches(a.astype(np.float32), patch=patch, stride=stride, volume_shape=volume_shape,
                               quotas=quotas, blocked=boxes)
