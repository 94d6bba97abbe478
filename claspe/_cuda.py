"""CUDA backend of :mod:`claspe.ops`: the Python side of the kernels in ``csrc/cuda``.

:mod:`claspe.ops` routes here (``backend="auto"`` with GPU arrays, or ``backend="cuda"``); use ``ops``,
not this module.  Results are bit-identical to the CPU engine and to :mod:`claspe.reference`.

Arrays
    GPU arrays are read zero-copy through ``__cuda_array_interface__`` (torch CUDA tensors, CuPy
    arrays, Numba, ...); objects that only speak DLPack (``__dlpack__`` with a CUDA device) are
    wrapped by ``torch.from_dlpack`` (zero-copy).  float32/float16 input, any strides.  Outputs are
    allocated with the input's own library (torch in -> torch out, CuPy in -> CuPy out; other
    producers get torch tensors, or CuPy arrays without torch), on the input's device.  Selections
    (:func:`select_patches`) are small and come back as NumPy arrays, like on the CPU.

Streams
    Work is queued on the caller's current stream: ``torch.cuda.current_stream(device)`` for torch
    tensors, ``cupy.cuda.get_current_stream()`` for CuPy arrays, else the ``stream`` field of the
    array interface (v3), else the legacy default stream.  Functions that return device arrays do
    not synchronize; validation (a NaN/range check kernel whose flags are read back) and
    :func:`select_patches` synchronize that stream.

Validation
    The same checks and the same ``ValueError`` messages as the CPU path: dtype, ndim, shapes,
    NaN/Inf, probability range and sums (:func:`claspe.ops.prob_tolerance`), CPU arrays mixed with
    GPU arrays, and arrays on different devices.  A failed :meth:`CudaFoldAccumulator.add` leaves the
    accumulator unchanged: the fold is added out of place (new sum = old sum + fold) and checked in the
    same pass, and the new sum replaces the old one only when the checks pass.  So each fold is read
    once; the price is a second float32 sum while ``add`` runs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from claspe import _ext

_TYPESTR = {"f4": (np.dtype(np.float32), 0), "f2": (np.dtype(np.float16), 1), "f8": (np.dtype(np.float64), 2)}
_DLPACK_GPU = (2, 13)  # kDLCUDA, kDLCUDAManaged
SCORES = ("pe", "class_pe", "bald", "expected_entropy")


# ----------------------------------------------------------------------------------------------
# array descriptors
# ----------------------------------------------------------------------------------------------


def is_gpu_array(a) -> bool:
    """True for objects that expose GPU memory (array interface, or DLPack on a CUDA device)."""
    if a is None:
        return False
    if _is_torch(a):
        return bool(a.is_cuda)
    if hasattr(a, "__cuda_array_interface__"):
        return True
    dev = getattr(a, "__dlpack_device__", None)
    if callable(dev):
        try:
            return int(dev()[0]) in _DLPACK_GPU
        except Exception:  # noqa: BLE001 - a foreign object's protocol method failing means "not a GPU array"
            return False
    return False


def _is_torch(a) -> bool:
    return type(a).__module__.startswith("torch") and hasattr(a, "is_cuda")


def _is_cupy(a) -> bool:
    return type(a).__module__.startswith("cupy")


def _cuda_array_interface(a, name: str) -> dict:
    try:
        return a.__cuda_array_interface__
    except (AttributeError, RuntimeError, TypeError) as exc:
        raise ValueError(f"{name}: cannot read its __cuda_array_interface__ ({exc})") from exc


@dataclass(frozen=True)
class DevArray:
    """A GPU array as the kernels see it (zero-copy view of ``obj``)."""

    obj: object
    ptr: int
    dtype: np.dtype
    code: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # in elements
    contiguous: bool
    device: int
    stream: int
    lib: str | None  # "torch", "cupy" or None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def desc(self) -> tuple:
        """The tuple the C++ side takes: (ptr, dtype code, shape, strides, contiguous)."""
        return (self.ptr, self.code, list(self.shape), list(self.strides), self.contiguous)

    def view(self, shape: tuple[int, ...], strides: tuple[int, ...], contiguous: bool) -> DevArray:
        return DevArray(self.obj, self.ptr, self.dtype, self.code, tuple(shape), tuple(strides), contiguous,
                        self.device, self.stream, self.lib)


def c_strides(shape) -> tuple[int, ...]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= int(d)
    return tuple(reversed(out))


def is_c_contiguous(shape, strides) -> bool:
    """C-contiguous in elements (axes of extent 1 may have any stride)."""
    return all(d == 1 or s == cs for d, s, cs in zip(shape, strides, c_strides(shape)))


def parse_interface(cai: dict, name: str) -> tuple[int, np.dtype, int, tuple, tuple, bool, int | None]:
    """(ptr, dtype, code, shape, strides in elements, contiguous, stream) from an array interface dict."""
    typestr = str(cai.get("typestr", ""))
    if len(typestr) < 3 or typestr[0] == ">" or typestr[1:] not in _TYPESTR:
        raise ValueError(f"{name} must be float32 or float16, got GPU dtype {typestr!r}")
    dtype, code = _TYPESTR[typestr[1:]]
    shape = tuple(int(d) for d in cai["shape"])
    data = cai.get("data")
    ptr = int(data[0]) if data else 0
    raw = cai.get("strides")
    if raw is None:
        strides = c_strides(shape)
    else:
        if any(int(s) % dtype.itemsize for s in raw):
            raise ValueError(f"{name}: strides {tuple(raw)} are not multiples of the item size {dtype.itemsize}")
        strides = tuple(int(s) // dtype.itemsize for s in raw)
    if cai.get("mask") is not None:
        raise ValueError(f"{name}: masked GPU arrays are not supported")
    stream = cai.get("stream")
    return ptr, dtype, code, shape, strides, is_c_contiguous(shape, strides), (None if stream is None else int(stream))


def _lib_stream(lib: str | None, device: int, fallback: int) -> int:
    """The caller's current stream on ``device`` for arrays of ``lib`` ("torch"/"cupy"), read now;
    ``fallback`` (the array interface's ``stream``, or 0) for other producers."""
    if lib == "torch":
        import torch

        return int(torch.cuda.current_stream(device).cuda_stream)
    if lib == "cupy":
        import cupy

        with cupy.cuda.Device(device):
            return int(cupy.cuda.get_current_stream().ptr)
    return fallback


def _current_stream(a, device: int, cai_stream: int | None) -> int:
    lib = "torch" if _is_torch(a) else ("cupy" if _is_cupy(a) else None)
    return _lib_stream(lib, device, 0 if cai_stream is None else int(cai_stream))


def finish(a: DevArray) -> None:
    """Called after queueing kernels whose outputs go back to the caller.  For torch/CuPy inputs nothing
    is needed (kernels and outputs are on the caller's current stream).  For other producers the kernels
    ran on the producer's interface stream (or the legacy default stream) while the outputs are torch /
    CuPy arrays whose users order work on *their* current stream: synchronize, so those users never see
    unfinished outputs."""
    if a.lib is None:
        _ext._C.cuda_synchronize(a.device, a.stream)


def describe(a, name: str, *, dtypes=("float32", "float16"), ndim: int | tuple[int, ...] | None = None) -> DevArray:
    """Validated :class:`DevArray` of a GPU array (dtype, ndim, non-empty, in device memory)."""
    if _is_torch(a):
        a = a.detach()
    elif not hasattr(a, "__cuda_array_interface__") and is_gpu_array(a):
        try:
            import torch
        except ImportError as exc:
            raise ValueError(f"{name}: DLPack-only GPU arrays need torch (torch.from_dlpack); "
                             "pass a torch or CuPy array") from exc
        a = torch.from_dlpack(a)
    if not hasattr(a, "__cuda_array_interface__"):
        raise ValueError(f"{name} is not a GPU array (type {type(a).__name__})")
    ptr, dtype, code, shape, strides, contiguous, cai_stream = parse_interface(_cuda_array_interface(a, name), name)
    if dtype.name not in dtypes:
        raise ValueError(f"{name} must be {' or '.join(dtypes)}, got dtype {dtype}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else ndim
        if len(shape) not in dims:
            raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {shape}")
    if 0 in shape:
        raise ValueError(f"{name} is empty (shape {shape})")
    device = int(_ext._C.cuda_pointer_device(ptr))
    if device < 0:
        n, why = _ext._C.cuda_device_count()
        if n == 0 and _is_torch(a):  # torch sees a GPU that this module's CUDA runtime cannot use
            raise RuntimeError(f"the CUDA engine of claspe._C cannot use the GPU ({why}); it was built with "
                               f"CUDA {_ext.build_info().get('cuda_runtime_version')}, which needs a driver at "
                               "least as new")
        raise ValueError(f"{name}: pointer {ptr:#x} is not CUDA device memory")
    lib = "torch" if _is_torch(a) else ("cupy" if _is_cupy(a) else None)
    return DevArray(a, ptr, dtype, code, shape, strides, contiguous, device, _current_stream(a, device, cai_stream), lib)


def same_device(arrays: list[DevArray], names: list[str]) -> None:
    dev0 = arrays[0].device
    for a, n in zip(arrays[1:], names[1:]):
        if a.device != dev0:
            raise ValueError(f"{n} is on cuda:{a.device} but {names[0]} is on cuda:{dev0}; put them on the same GPU")


# ----------------------------------------------------------------------------------------------
# routing (called by claspe.ops)
# ----------------------------------------------------------------------------------------------


def wants(backend: str, *arrays) -> bool:
    """Whether an ops call goes to the CUDA backend; raises the ops errors for bad combinations."""
    from claspe.ops import BACKENDS

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    present = [a for a in arrays if a is not None]
    on_gpu = [is_gpu_array(a) for a in present]
    if any(on_gpu) and not all(on_gpu):
        raise ValueError("inputs mix CPU and GPU arrays; put them on the same device")
    if not any(on_gpu):
        if backend == "cuda" and present:
            raise ValueError("backend 'cuda' needs GPU arrays (torch CUDA tensors, CuPy arrays, "
                             "__cuda_array_interface__), got host arrays")
        return False
    if backend not in ("auto", "cuda"):
        raise ValueError(f"backend {backend!r} cannot take GPU arrays; use backend='cuda' or 'auto'")
    if not _ext.HAS_CUDA:
        raise ValueError("GPU arrays need the CUDA part of claspe._C, which was not built (no nvcc at build "
                         "time; rebuild with CLASPE_CUDA=1)")
    return True


# ----------------------------------------------------------------------------------------------
# allocation
# ----------------------------------------------------------------------------------------------

_NP_TO_TORCH = {"float32": "float32", "float64": "float64", "float16": "float16", "uint64": "uint64"}


def empty(like: DevArray, shape, dtype) -> tuple[object, int]:
    """An uninitialised C-contiguous GPU array on ``like``'s device, from ``like``'s library.

    Returns (array, device pointer).
    """
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    libs = [like.lib] if like.lib else ["torch", "cupy"]
    errors = []
    for lib in libs:
        try:
            if lib == "torch":
                import torch

                if not torch.cuda.is_available():  # a CPU-only torch: try CuPy for other producers' arrays
                    raise ImportError(f"torch {torch.__version__} cannot use CUDA here")
                t = torch.empty(shape, dtype=getattr(torch, _NP_TO_TORCH[dtype.name]),
                                device=torch.device("cuda", like.device))
                return t, int(t.data_ptr())
            import cupy

            with cupy.cuda.Device(like.device):
                c = cupy.empty(shape, dtype=dtype)
            return c, int(c.data.ptr)
        except ImportError as exc:
            errors.append(f"{lib}: {exc}")
    kind = type(like.obj).__name__ if like.obj is not None else "this producer"
    raise ValueError("cannot allocate GPU outputs for arrays of type " + kind
                     + ": install torch or cupy (" + "; ".join(errors) + ")")


def _contig_desc(ptr: int, shape, dtype_code: int = 0) -> tuple:
    shape = [int(d) for d in shape]
    return (ptr, dtype_code, shape, list(c_strides(shape)), True)


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------


def check_finite(a: DevArray, name: str) -> None:
    r = _ext._C.cuda_check(a.desc(), -math.inf, math.inf, False, a.device, a.stream)
    if r["nan"] or r["posinf"] or r["neginf"]:
        raise ValueError(f"{name} contains NaN or Inf")


def prob_bounds(dtype) -> tuple[float, float, float]:
    """(tol, lo, hi) of the probability checks: ops.prob_tolerance, thresholds as float32 like the CPU engine."""
    from claspe.ops import prob_tolerance

    tol = prob_tolerance(dtype)
    return tol, float(np.float32(-tol)), float(np.float32(1 + tol))


def raise_probability_checks(r: dict, name: str, tol: float) -> None:
    """The ValueErrors of ops._check_probabilities from the flags of a check kernel."""
    if r["nan"] or r["posinf"] or r["neginf"]:
        raise ValueError(f"{name} contains NaN or Inf")
    if r["below"] or r["above"]:
        raise ValueError(f"{name}: probabilities outside [0, 1] (are these logits? pass logits=True)")
    err = float(r["max_sum_dev"])
    if err > tol:
        raise ValueError(
            f"{name}: probabilities do not sum to 1 over the class axis (max deviation {err:.3g} > "
            f"{tol}); pass logits=True for logits"
        )


def check_probabilities(a: DevArray, name: str) -> None:
    """ops._check_probabilities on the GPU: finite, in [-tol, 1+tol], channel sums within tol of 1."""
    tol, lo, hi = prob_bounds(a.dtype)
    raise_probability_checks(_ext._C.cuda_check(a.desc(), lo, hi, True, a.device, a.stream), name, tol)


def _kind(score: str) -> int:
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; valid: {SCORES}")
    return SCORES.index(score)


def _pad4(a: DevArray) -> DevArray:
    """[X, Y, Z] -> [1, X, Y, Z] view."""
    if a.ndim == 4:
        return a
    pad = 4 - a.ndim
    return a.view((1,) * pad + a.shape, (0,) * pad + a.strides, a.contiguous)


# ----------------------------------------------------------------------------------------------
# fold accumulation and score maps
# ----------------------------------------------------------------------------------------------


class CudaFoldAccumulator:
    """GPU state of :class:`claspe.ops.FoldAccumulator` (float32 sum [C, X, Y, Z] on the fold's device)."""

    def __init__(self, *, track_fold_entropy: bool = False) -> None:
        self.track_fold_entropy = bool(track_fold_entropy)
        self.shape: tuple[int, ...] | None = None
        self.n_folds = 0
        self._like: DevArray | None = None
        self.sum = self.ent = None
        self._sum_ptr = self._ent_ptr = 0

    def add(self, fold, *, logits: bool = False) -> None:
        if not is_gpu_array(fold):
            raise ValueError("inputs mix CPU and GPU arrays; put them on the same device "
                             "(the accumulator holds GPU folds)")
        a = describe(fold, "fold", ndim=4)
        if self.shape is not None:
            if a.shape != self.shape:
                if a.shape[0] != self.shape[0]:
                    raise ValueError(f"fold has {a.shape[0]} classes, earlier folds had {self.shape[0]}")
                raise ValueError(f"fold shape {a.shape} differs from earlier folds {self.shape}")
            if a.device != self._like.device:
                raise ValueError(f"fold is on cuda:{a.device} but the accumulator is on cuda:{self._like.device}")
        # out of place: new = old + fold, checked in the same pass; on a failed check the new buffers are
        # dropped and the accumulator is unchanged, and each fold is read from memory once
        new_sum, sptr = empty(a, a.shape, np.float32)
        new_ent, eptr = empty(a, a.shape[1:], np.float32) if self.track_fold_entropy else (None, 0)
        tol, lo, hi = prob_bounds(a.dtype)
        r = _ext._C.cuda_accumulate(a.desc(), self._sum_ptr, sptr, self._ent_ptr, eptr, bool(logits), lo, hi,
                                    a.device, a.stream)
        if logits:
            if r["nan"] or r["posinf"] or r["neginf"]:
                raise ValueError("fold logits contains NaN or Inf")
        else:
            raise_probability_checks(r, "fold", tol)
        if self.sum is None:
            self.shape = a.shape
        # keep the fold's library, device and stream, not the fold itself (a reference here would keep
        # the first fold's memory alive for the accumulator's lifetime)
        self._like = dataclasses.replace(a, obj=None)
        self.sum, self._sum_ptr, self.ent, self._ent_ptr = new_sum, sptr, new_ent, eptr
        self.n_folds += 1

    def _now(self) -> DevArray:
        """``_like`` with the stream current *now* (torch/CuPy folds): mean/maps are queued on the caller's
        stream of this call, not the one that was current when the folds were added."""
        like = self._like
        return dataclasses.replace(like, stream=_lib_stream(like.lib, like.device, like.stream))

    def _divided(self, ptr: int, shape) -> object:
        like = self._now()
        out, optr = empty(like, shape, np.float32)
        _ext._C.cuda_divide(ptr, float(self.n_folds), optr, math.prod(shape), like.device, like.stream)
        finish(like)
        return out

    def mean(self):
        return self._divided(self._sum_ptr, self.shape)

    def mean_fold_entropy(self):
        return self._divided(self._ent_ptr, self.shape[1:])

    def score_maps(self, score: str, classes: list[int]):
        like = self._now()
        kind = _kind(score)
        K = len(classes) + 1 if score == "class_pe" else 1
        out, optr = empty(like, (K,) + self.shape[1:], np.float32)
        mfe = _contig_desc(self._ent_ptr, (1,) + self.shape[1:]) if score in ("bald", "expected_entropy") else None
        _ext._C.cuda_score_maps(_contig_desc(self._sum_ptr, self.shape), float(self.n_folds), kind, list(classes),
                                mfe, float(self.n_folds), optr, like.device, like.stream)
        finish(like)
        return out

    def box_scores(self, score: str, classes: list[int], patch, stride):
        """box_mean(score_maps(...)) on the device (the maps are a temporary of the caller's library)."""
        maps = self.score_maps(score, classes)
        return box_mean(maps, patch, stride, _validated=True)


def score_maps(mean, score: str, classes, mean_fold_entropy=None):
    """ops.score_maps on the GPU: mean [C, X, Y, Z] -> float32 [K, X, Y, Z] on the same device."""
    from claspe.ops import _check_score_classes

    kind = _kind(score)
    m = describe(mean, "mean", ndim=4)
    classes = _check_score_classes(score, classes, m.shape[0])
    check_probabilities(m, "mean")
    mfe = None
    if score in ("bald", "expected_entropy"):
        if mean_fold_entropy is None:
            raise ValueError(f"score {score!r} needs mean_fold_entropy (track_fold_entropy=True)")
        if not is_gpu_array(mean_fold_entropy):
            raise ValueError("inputs mix CPU and GPU arrays; put them on the same device")
        e = describe(mean_fold_entropy, "mean_fold_entropy", ndim=3)
        if e.shape != m.shape[1:]:
            raise ValueError(f"mean_fold_entropy shape {e.shape} != spatial shape {m.shape[1:]}")
        same_device([m, e], ["mean", "mean_fold_entropy"])
        check_finite(e, "mean_fold_entropy")
        mfe = _pad4(e).desc()
    classes = list(classes) if score == "class_pe" else []
    K = len(classes) + 1 if score == "class_pe" else 1
    out, optr = empty(m, (K,) + m.shape[1:], np.float32)
    _ext._C.cuda_score_maps(m.desc(), 1.0, kind, classes, mfe, 1.0, optr, m.device, m.stream)
    finish(m)
    return out


# ----------------------------------------------------------------------------------------------
# box mean, noise, selection
# ----------------------------------------------------------------------------------------------


def box_mean(maps, patch, stride, *, _validated: bool = False):
    """ops.box_mean on the GPU: maps [K, X, Y, Z] or [X, Y, Z] -> float32 [K, nx, ny, nz] (or 3-D)."""
    from claspe.ops import _triple

    patch = _triple(patch, "patch")
    stride = _triple(stride, "stride")
    a = describe(maps, "maps", ndim=(3, 4))
    squeeze = a.ndim == 3
    a4 = _pad4(a)
    if not _validated:
        check_finite(a4, "maps")
    K, X, Y, Z = a4.shape
    pe = [min(p, d) for p, d in zip(patch, (X, Y, Z))]
    nx, ny, nz = ((d - q) // s + 1 for d, q, s in zip((X, Y, Z), pe, stride))
    t1, p1 = empty(a4, (K, X, Y, nz), np.float64)
    t2, p2 = empty(a4, (K, X, ny, nz), np.float64)
    out, optr = empty(a4, (nx, ny, nz) if squeeze else (K, nx, ny, nz), np.float32)
    _ext._C.cuda_box_mean(a4.desc(), list(patch), list(stride), p1, p2, optr, a4.device, a4.stream)
    finish(a4)  # other producers: scratch and output came from torch/CuPy's stream, the kernels ran on another
    del t1, t2  # torch/CuPy caching allocators are stream-ordered: the blocks are reused only after the kernels
    return out


def power_noise(scores, beta, *, seed: int, loop: int, image: int, key: int, noise=None):
    """ops.power_noise on the GPU: float32 array of the scores' shape on the same device."""
    from claspe.ops import _check_seed_fields

    s = describe(scores, "scores", ndim=(1, 2, 3, 4))
    r = _ext._C.cuda_check(s.desc(), 0.0, math.inf, False, s.device, s.stream)
    if r["nan"] or r["posinf"] or r["neginf"]:
        raise ValueError("scores contains NaN or Inf")
    if r["below"]:
        raise ValueError("scores must be >= 0 for log-scale power noising")
    if s.size >= 2**32:
        raise ValueError(f"scores has {s.size} elements; the noise stream is indexed by 32-bit positions")
    nz_desc = None
    if noise is None:
        if beta is None or not np.isfinite(beta) or beta <= 0:
            raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
        _check_seed_fields(seed, loop, image, key)
    else:
        if not is_gpu_array(noise):
            raise ValueError("inputs mix CPU and GPU arrays; put them on the same device")
        z = describe(noise, "noise", dtypes=("float32", "float16", "float64"))
        if z.shape != s.shape:
            raise ValueError(f"noise shape {z.shape} != scores shape {s.shape}")
        same_device([s, z], ["scores", "noise"])
        check_finite(z, "noise")
        nz_desc = z.desc()
        beta = 1.0
    out, optr = empty(s, s.shape, np.float32)
    _ext._C.cuda_power_noise(s.desc(), float(beta), int(seed), int(loop), int(image), int(key) & 0xFFFFFFFF,
                             nz_desc, optr, s.device, s.stream)
    finish(s)
    return out


def select_patches(scores, *, patch, stride, volume_shape, quotas, blocked=(), first_chunk: int = 0):
    """ops.select_patches on the GPU: ranking on the device, greedy walk on the host (see
    csrc/cuda/bindings_cuda.cpp for why).  Returns host NumPy arrays like the CPU path."""
    from claspe.ops import _check_select_args

    a = describe(scores, "scores", ndim=(3, 4))
    a4 = _pad4(a)
    patch, stride, volume_shape, quotas, blocked = _check_select_args(
        a4.shape, patch=patch, stride=stride, volume_shape=volume_shape, quotas=quotas, blocked=blocked
    )
    expect = tuple(a4.shape[1:])
    n = math.prod(expect)
    if n >= 2**31:
        raise ValueError(f"candidate grid {expect} is too large for the GPU ranking (>= 2**31 positions)")
    keys, kptr = empty(a4, (a4.shape[0], n), np.uint64)
    boxes = [tuple(b[0]) + tuple(b[1]) for b in blocked]
    res = _ext._C.cuda_select(a4.desc(), kptr, list(volume_shape), list(patch), list(stride),
                              [int(q) for q in quotas], boxes, int(first_chunk), a4.device, a4.stream)
    del keys
    return [(st, sc) for st, sc in res]


def gpu_folds(folds, backend: str) -> list | None:
    """The fold items when an ops.fold_box_scores call goes to the GPU, else None.

    GPU routing applies to an [M, C, X, Y, Z] GPU array or a list/tuple of GPU arrays; other
    iterables (which ops consumes itself) and paths stay on the host path.
    """
    if is_gpu_array(folds):
        d = describe(folds, "folds")
        if d.ndim != 5:
            raise ValueError(f"folds array must be [M, C, X, Y, Z], got shape {d.shape}")
        items = [folds[m] for m in range(d.shape[0])]
    elif isinstance(folds, (list, tuple)):
        items = list(folds)
    else:
        return None
    return items if wants(backend, *items) else None


def fold_box_scores(arrays, *, score: str, classes, patch, stride, logits: bool):
    """ops.fold_box_scores for GPU folds: stream the folds through the accumulator, then maps + box mean."""
    from claspe.ops import _check_score_classes, _triple

    if not arrays:
        raise ValueError("folds is empty: need at least one fold")
    patch = _triple(patch, "patch")
    stride = _triple(stride, "stride")
    first = describe(arrays[0], "fold 0", ndim=4)
    classes = _check_score_classes(score, classes, first.shape[0])
    acc = CudaFoldAccumulator(track_fold_entropy=score in ("bald", "expected_entropy"))
    for m, f in enumerate(arrays):
        if m > 0:  # the CPU path's rule and message: all folds of one image share a dtype
            dm = describe(f, f"fold {m}", ndim=4).dtype
            if dm != first.dtype:
                raise ValueError(f"fold {m} dtype {dm} differs from fold 0 {first.dtype}")
        try:
            acc.add(f, logits=logits)
        except ValueError as exc:
            raise ValueError(f"fold {m}: {exc}") from exc
    return acc.box_scores(score, list(classes), patch, stride)


def synchronize(a) -> None:
    """Waits for the work queued on ``a``'s stream (benchmarks)."""
    d = describe(a, "array", dtypes=("float32", "float16", "float64"))
    _ext._C.cuda_synchronize(d.device, d.stream)
