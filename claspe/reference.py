"""Plain NumPy implementation of every kernel of the query engine.

This module is the *specification* of the compiled engine (``claspe._C``, CPU and CUDA) and its test
oracle.  It is also the fallback backend when the extension is not built (slow, but correct).

Bit-exactness contract
----------------------
The compiled kernels reproduce the arithmetic written here operation by operation, in the same
order, in IEEE single/double precision without fused multiply-add (C++ ``-ffp-contract=off``,
nvcc ``--fmad=false``).  Transcendental functions are *not* taken from libm/CUDA (whose last-ulp
results differ between platforms) but from the portable polynomial versions below
(:func:`logf_portable`, :func:`expf_portable`, :func:`log_portable`), which use only ``+ - * /``,
``floor`` and bit manipulation.  Therefore the CPU engine, the CUDA engine and this reference give
identical score maps, identical noise and identical selections for the same inputs and seed.

Conventions
-----------
* Volumes are ``[C, X, Y, Z]`` (channels first, C-order); candidate grids ``[nx, ny, nz]``.
* ``plogp(p) = p * log(p)`` for ``p >= FLT_MIN`` and ``0`` otherwise (so ``0 * log 0 = 0``; the
  contribution of subnormal probabilities, below 1e-36 in magnitude, is dropped).
* Channel sums run sequentially over ``c = 0 .. C-1``; fold sums run sequentially over folds.
* Philox4x32-10 counter-based random numbers (Salmon et al., SC'11): key = the 64-bit seed split in
  (low, high) 32-bit words, counter = (flat candidate position, image, loop, key) as uint32 words
  (key -1 is 0xFFFFFFFF).  A uniform ``u = (2*(bits >> 12) + 1) * 2**-53`` in (0, 1) is made from
  the 64 bits ``(r0 << 32) | r1`` of the first two output words, and the Gumbel variate is
  ``g = -log(-log(u))`` with the portable double log.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FLT_MIN = np.float32(np.finfo(np.float32).tiny)  # 1.17549435e-38

# ----------------------------------------------------------------------------------------------
# portable transcendental functions (bit-identical on every backend)
# ----------------------------------------------------------------------------------------------

_F = np.float32
_LN2_F = _F(0.693147182464599609375)  # float32(ln 2)
_SQRT2_F = _F(1.41421353816986083984375)  # float32(sqrt 2)
_INV3_F, _INV5_F, _INV7_F, _INV9_F = _F(1 / 3), _F(1 / 5), _F(1 / 7), _F(1 / 9)


def logf_portable(x: np.ndarray) -> np.ndarray:
    """Natural log in float32 for normal positive ``x`` (callers guarantee ``x >= FLT_MIN``).

    x = m * 2**e with m in [sqrt(1/2), sqrt(2)); log(m) = 2*atanh(s), s = (m-1)/(m+1), by the
    series 2s(1 + z/3 + z^2/5 + z^3/7 + z^4/9), z = s*s.  Result: e*ln2 + log(m).
    Relative error below 3e-7 over the normal range.
    """
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.int32)
    e = ((bits >> 23) & 0xFF) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).view(np.float32)
    big = m > _SQRT2_F
    m = np.where(big, m * _F(0.5), m).astype(np.float32)
    e = np.where(big, e + 1, e)
    f = m - _F(1.0)
    s = f / (_F(2.0) + f)
    z = s * s
    poly = _F(1.0) + z * (_INV3_F + z * (_INV5_F + z * (_INV7_F + z * _INV9_F)))
    return (e.astype(np.float32) * _LN2_F + (_F(2.0) * s) * poly).astype(np.float32)


_LOG2E_F = _F(1.44269502162933349609375)
_LN2_HI_F = _F(0.693145751953125)  # ln2 split for Cody-Waite reduction (hi has 12 bits)
_LN2_LO_F = _F(1.428606765330187045e-06)
_EXP_C = [_F(1.0 / math.factorial(k)) for k in range(8)]


def expf_portable(y: np.ndarray) -> np.ndarray:
    """exp(y) in float32 for ``y <= 0`` (softmax after subtracting the max).

    n = floor(y*log2(e) + 0.5), r = (y - n*ln2_hi) - n*ln2_lo, exp(r) by a degree-7 Taylor
    polynomial in Horner form, scaled by 2**n built from bits.  y < -87 gives 0.
    """
    y = np.asarray(y, dtype=np.float32)
    small = y < _F(-87.0)
    yc = np.where(small, _F(0.0), y).astype(np.float32)
    n = np.floor(yc * _LOG2E_F + _F(0.5)).astype(np.float32)
    r = (yc - n * _LN2_HI_F) - n * _LN2_LO_F
    p = _EXP_C[7]
    for k in range(6, -1, -1):
        p = _EXP_C[k] + r * p
    scale = ((n.astype(np.int32) + 127) << 23).view(np.float32)
    out = (p * scale).astype(np.float32)
    return np.where(small, _F(0.0), out).astype(np.float32)


_LN2_HI_D = 6.93147180369123816490e-01  # fdlibm split of ln 2
_LN2_LO_D = 1.90821492927058770002e-10
_SQRT2_D = 1.4142135623730951
_LOG_COEF_D = [1.0 / (2 * k + 1) for k in range(13)]  # 1, 1/3, ..., 1/25


def log_portable(x: np.ndarray) -> np.ndarray:
    """Natural log in float64 for positive finite ``x`` (0 gives -inf).

    frexp range reduction to m in [sqrt(1/2), sqrt(2)), then 2*atanh(s) by 13 series terms in
    Horner form; result (e*ln2_hi + (e*ln2_lo + 2*s*poly)).  Relative error ~1e-16.
    """
    x = np.asarray(x, dtype=np.float64)
    zero = x == 0.0
    xs = np.where(zero, 1.0, x)
    m, e = np.frexp(xs)  # m in [0.5, 1)
    m = m * 2.0
    e = e - 1  # m in [1, 2)
    big = m > _SQRT2_D
    m = np.where(big, m * 0.5, m)
    e = np.where(big, e + 1, e).astype(np.float64)
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    poly = _LOG_COEF_D[12]
    for k in range(11, -1, -1):
        poly = _LOG_COEF_D[k] + z * poly
    out = e * _LN2_HI_D + (e * _LN2_LO_D + (2.0 * s) * poly)
    return np.where(zero, -np.inf, out)


def plogp(p: np.ndarray) -> np.ndarray:
    """p*log(p) in float32 with 0 for p < FLT_MIN (0*log 0 = 0)."""
    p = np.asarray(p, dtype=np.float32)
    ok = p >= FLT_MIN
    safe = np.where(ok, p, _F(1.0)).astype(np.float32)
    return np.where(ok, safe * logf_portable(safe), _F(0.0)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Philox4x32-10
# ----------------------------------------------------------------------------------------------

_PHILOX_M0 = np.uint64(0xD2511F53)
_PHILOX_M1 = np.uint64(0xCD9E8D57)
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter: Sequence[np.ndarray], key: tuple[int, int]) -> list[np.ndarray]:
    """Philox4x32 with 10 rounds. ``counter``: 4 arrays of uint32 (broadcastable); key: 2 ints."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _MASK32 for c in counter)
    c0, c1, c2, c3 = np.broadcast_arrays(c0, c1, c2, c3)
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for _ in range(10):
        p0 = _PHILOX_M0 * c0
        p1 = _PHILOX_M1 * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK32
        c0, c1, c2, c3 = (
            hi1 ^ c1 ^ np.uint64(k0),
            lo1,
            hi0 ^ c3 ^ np.uint64(k1),
            lo0,
        )
        k0 = (k0 + _PHILOX_W0) & 0xFFFFFFFF
        k1 = (k1 + _PHILOX_W1) & 0xFFFFFFFF
    return [c.astype(np.uint32) for c in (c0, c1, c2, c3)]


def _u32(v: int, name: str) -> int:
    v = int(v)
    if v < -(2**31) or v >= 2**32:
        raise ValueError(f"{name}={v} does not fit in 32 bits")
    return v & 0xFFFFFFFF


def gumbel_noise(shape: Sequence[int], *, seed: int, loop: int, image: int, key: int) -> np.ndarray:
    """Standard Gumbel(0, 1) variates (float64) for a candidate grid of ``shape``.

    The value at flat position i depends only on (seed, loop, image, key, i).
    """
    seed = int(seed)
    if seed < 0 or seed >= 2**64:
        raise ValueError(f"seed={seed} must be an integer in [0, 2**64)")
    n = int(np.prod(shape, dtype=np.int64))
    if n >= 2**32:
        raise ValueError(f"candidate grid {tuple(shape)} has more than 2**32 positions")
    pos = np.arange(n, dtype=np.uint64)
    r0, r1, _, _ = philox4x32_10(
        (pos, _u32(image, "image"), _u32(loop, "loop"), _u32(key, "key")),
        (seed & 0xFFFFFFFF, seed >> 32),
    )
    bits = (r0.astype(np.uint64) << np.uint64(32)) | r1.astype(np.uint64)
    x = bits >> np.uint64(12)
    u = ((x << np.uint64(1)) + np.uint64(1)).astype(np.float64) * 2.0**-53
    g = -log_portable(-log_portable(u))
    return g.reshape(tuple(shape))


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 of a [C, ...] array: e_c = expf(x_c - max), p_c = e_c / sum_c e_c."""
    x = np.asarray(logits).astype(np.float32)
    mx = x[0].copy()
    for c in range(1, x.shape[0]):
        mx = np.maximum(mx, x[c])
    e = np.empty_like(x)
    s = np.zeros_like(mx)
    for c in range(x.shape[0]):
        e[c] = expf_portable(x[c] - mx)
        s = (s + e[c]).astype(np.float32)
    return (e / s).astype(np.float32)


def entropy(p: np.ndarray) -> np.ndarray:
    """H = -(sum_c plogp(p_c)) of a [C, ...] float32 array, summed sequentially over c."""
    h = np.zeros(p.shape[1:], np.float32)
    for c in range(p.shape[0]):
        h = (h + plogp(p[c])).astype(np.float32)
    return (-h).astype(np.float32)


class FoldAccumulator:
    """Reference accumulator: running float32 sum of fold probabilities (and per-fold entropies)."""

    def __init__(self, *, track_fold_entropy: bool = False):
        self.track_fold_entropy = bool(track_fold_entropy)
        self.sum: np.ndarray | None = None
        self.entropy_sum: np.ndarray | None = None
        self.n_folds = 0

    def add(self, fold: np.ndarray, *, logits: bool = False) -> None:
        p = softmax(fold) if logits else np.asarray(fold).astype(np.float32)
        if self.sum is None:
            self.sum = np.zeros(p.shape, np.float32)
            if self.track_fold_entropy:
                self.entropy_sum = np.zeros(p.shape[1:], np.float32)
        self.sum = (self.sum + p).astype(np.float32)
        if self.track_fold_entropy:
            self.entropy_sum = (self.entropy_sum + entropy(p)).astype(np.float32)
        self.n_folds += 1

    def mean(self) -> np.ndarray:
        return (self.sum / np.float32(self.n_folds)).astype(np.float32)

    def mean_fold_entropy(self) -> np.ndarray:
        return (self.entropy_sum / np.float32(self.n_folds)).astype(np.float32)


def score_maps(
    mean: np.ndarray,
    score: str,
    classes: Sequence[int] | None = None,
    mean_fold_entropy: np.ndarray | None = None,
) -> np.ndarray:
    """Score maps [K, X, Y, Z] float32 from the fold-mean probabilities ``mean`` [C, X, Y, Z].

    * ``pe``: [PE], PE = -(sum_c plogp(mean_c))
    * ``class_pe``: [PE*mean_c for c in classes] + [PE]  (PE last)
    * ``bald``: [max(PE - mean_fold_entropy, 0)]
    * ``expected_entropy``: [mean_fold_entropy]
    """
    pe = entropy(mean)
    if score == "pe":
        return pe[None]
    if score == "class_pe":
        maps = [(pe * mean[c]).astype(np.float32) for c in classes]
        return np.stack(maps + [pe]).astype(np.float32)
    if score == "bald":
        return np.maximum(pe - mean_fold_entropy, _F(0.0)).astype(np.float32)[None]
    if score == "expected_entropy":
        return np.asarray(mean_fold_entropy, np.float32)[None]
    raise ValueError(f"unknown score {score!r}")


def grid_shape(volume_shape: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> tuple:
    """Candidate grid: per axis (dim - min(patch, dim)) // stride + 1."""
    return tuple((d - min(p, d)) // s + 1 for d, p, s in zip(volume_shape, patch, stride))


def box_mean(maps: np.ndarray, patch: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """Valid-mode box mean of [K, X, Y, Z] maps at stride positions -> [K, nx, ny, nz] float32.

    Per axis in the order Z, Y, X: prefix sums P (P[0] = 0, P[i+1] = P[i] + v[i], float64,
    sequential), window sums P[i*s + p] - P[i*s].  Finally divide by the (clipped) patch volume
    as float64 and round to float32.
    """
    a = np.asarray(maps, dtype=np.float32).astype(np.float64)
    spatial = a.shape[1:]
    p_eff = [min(p, d) for p, d in zip(patch, spatial)]
    for axis in (3, 2, 1):
        d, p, s = a.shape[axis], p_eff[axis - 1], stride[axis - 1]
        n = (d - p) // s + 1
        pref = np.zeros(a.shape[:axis] + (d + 1,) + a.shape[axis + 1 :], np.float64)
        idx = [slice(None)] * a.ndim
        run = np.zeros(a.shape[:axis] + a.shape[axis + 1 :], np.float64)
        for i in range(d):  # sequential prefix sum
            idx[axis] = i
            run = run + a[tuple(idx)]
            idx[axis] = i + 1
            pref[tuple(idx)] = run
        starts = np.arange(n) * s
        a = np.take(pref, starts + p, axis=axis) - np.take(pref, starts, axis=axis)
    vol = float(p_eff[0] * p_eff[1] * p_eff[2])
    return (a / vol).astype(np.float32)


def power_noise(
    scores: np.ndarray,
    beta: float | None = None,
    *,
    seed: int = 0,
    loop: int = 0,
    image: int = 0,
    key: int = 0,
    noise: np.ndarray | None = None,
) -> np.ndarray:
    """log(score) + Gumbel(0, 1/beta) as float32: float32(log_portable(s) + g / beta).

    With ``noise`` given (already scaled, e.g. ``rng.gumbel(0, 1/beta, shape)``), the result is
    float32(log_portable(s) + noise).  Zero scores give -inf.
    """
    s = np.asarray(scores, dtype=np.float32).astype(np.float64)
    ls = log_portable(s)
    if noise is None:
        g = gumbel_noise(s.shape, seed=seed, loop=loop, image=image, key=key)
        return (ls + g / float(beta)).astype(np.float32)
    return (ls + np.asarray(noise, dtype=np.float64)).astype(np.float32)


def select_patches(
    scores: np.ndarray,
    *,
    patch: Sequence[int],
    stride: Sequence[int],
    volume_shape: Sequence[int],
    quotas: Sequence[int],
    blocked: Sequence[tuple[Sequence[int], Sequence[int]]] = (),
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Greedy non-overlapping top-n per key, keys in the order of axis 0 of ``scores``.

    ``scores`` [K, nx, ny, nz]; key k takes up to ``quotas[k]`` boxes.  Candidates are ranked by
    higher score, then lower flat index.  A candidate is skipped if its box (start = index*stride,
    size = min(patch, dim)) overlaps (intersects by >= 1 voxel on every axis) a box in ``blocked``
    (start, size) or any box taken before, for this or an earlier key.  Returns per key
    (starts int64 [n_k, 3], scores float32 [n_k]); n_k < quota when candidates run out.
    """
    scores = np.asarray(scores, dtype=np.float32)
    p_eff = [min(p, d) for p, d in zip(patch, volume_shape)]
    taken: list[tuple[tuple[int, ...], tuple[int, ...]]] = [
        (tuple(int(v) for v in b[0]), tuple(int(v) for v in b[1])) for b in blocked
    ]

    def overlaps(s0, s1, b0, b1):
        return all(a < c + d and c < a + b for a, b, c, d in zip(s0, s1, b0, b1))

    out = []
    grid = scores.shape[1:]
    for k in range(scores.shape[0]):
        flat = scores[k].ravel()
        order = np.lexsort((np.arange(flat.size), -flat.astype(np.float64)))
        starts, vals = [], []
        for i in order:
            if len(starts) >= quotas[k]:
                break
            gi = np.unravel_index(i, grid)
            st = tuple(int(g) * int(s) for g, s in zip(gi, stride))
            if any(overlaps(st, p_eff, b0, b1) for b0, b1 in taken):
                continue
            taken.append((st, tuple(p_eff)))
            starts.append(st)
            vals.append(flat[i])
        out.append((np.asarray(starts, np.int64).reshape(-1, 3), np.asarray(vals, np.float32)))
    return out
