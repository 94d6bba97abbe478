"""The parts a query strategy is composed of, one job each.

* :class:`Scorer` -- per-voxel score maps from the fold accumulator (PE, class-weighted PE, BALD,
  expected entropy), through :mod:`claspe.ops`.
* :class:`BoxMean` -- aggregation of a score map into one score per candidate box (engine box mean).
* :class:`NoiseSchedule` -- the power-noising inverse temperature beta per AL loop (none, constant,
  exponential 1 -> 100, sigmoid with temperature), METHOD.md 1.4-1.5.
* :class:`Stratifier` -- how many boxes each key (foreground class k, or -1 for the plain map) may take
  per image and in the final query: global (one key) or class-balanced with a foreground share
  (METHOD.md 1.6-1.7).
* :class:`Selector` -- per-image greedy non-overlapping top-n (engine), then the global composition
  (top by score, or SoftRank).
* :class:`Randomness` -- every random draw of a query, from the engine's counter-based Philox stream
  (``rng="philox"``) or from one sequential ``numpy.random.Generator`` in the reference's order
  (``rng="nnactive"``).

Philox keys
-----------
Noise on a candidate map uses ``ops.power_noise(seed=seed, loop=loop, image=image_key(id), key=k)``
with ``k`` the class id, or ``-1`` for the plain (non-stratified) map; ``image_key`` is
``zlib.crc32`` of the image id (:func:`claspe.strategies._io.image_key`).  Permutations are made
from the same stream by sorting standard Gumbel variates (a uniformly random permutation):
the per-image key order uses ``key = -2`` (``KEY_ORDER``), the remainder shuffle of the final
composition uses ``image = 0xFFFFFFFF, key = -3`` (``KEY_REMAINDER``) and SoftRank's rank noise
``image = 0xFFFFFFFF, key = -4`` (``KEY_SOFTRANK``).  Class ids are >= 0, so these never collide
with a map's noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from claspe import ops

KEY_PLAIN = -1
KEY_ORDER = -2
KEY_REMAINDER = -3
KEY_SOFTRANK = -4
GLOBAL_IMAGE = 0xFFFFFFFF

RNG_MODES = ("philox", "nnactive")

# ----------------------------------------------------------------------------------------------
# beta schedules
# ----------------------------------------------------------------------------------------------


def exponential_schedule(num_loops: int, start: float = 1.0, end: float = 100.0) -> np.ndarray:
    """``start * (end/start) ** linspace(0, 1, num_loops)``; 5 loops: [1, 3.162, 10, 31.62, 100]."""
    n = _check_num_loops(num_loops)
    return float(start) * (float(end) / float(start)) ** np.linspace(0.0, 1.0, n)


def sigmoid_schedule(num_loops: int, start: float = 1.0, end: float = 100.0, temperature: float = 1.0) -> np.ndarray:
    """``sigmoid(linspace(-6, 6, num_loops) / T)`` min-max scaled to [start, end] (METHOD.md 1.5).

    5 loops: T=2 -> [1, 15.77, 50.5, 85.23, 100]; T=0.5 -> [1, 1.24, 50.5, 99.76, 100].  With one
    loop the schedule is ``[start]``.
    """
    n = _check_num_loops(num_loops)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    x = np.linspace(-6.0, 6.0, n) / float(temperature)
    s = 1.0 / (1.0 + np.exp(-x))
    lo, hi = s.min(), s.max()
    if hi == lo:
        return np.full(n, float(start))
    return float(start) + (float(end) - float(start)) * (s - lo) / (hi - lo)


def _check_num_loops(num_loops) -> int:
    if isinstance(num_loops, bool) or not isinstance(num_loops, (int, np.integer)) or num_loops < 1:
        raise ValueError(f"num_loops must be an integer >= 1, got {num_loops!r}")
    return int(num_loops)


@dataclass(frozen=True, kw_only=True)
class NoiseSchedule:
    """Power-noising beta per loop.  ``kind``: ``none`` (no noise), ``constant`` (``beta``),
    ``exponential`` (``start``..``end``), ``sigmoid`` (``start``..``end``, ``temperature``)."""

    kind: Literal["none", "constant", "exponential", "sigmoid"] = "none"
    beta: float = 1.0
    start: float = 1.0
    end: float = 100.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("none", "constant", "exponential", "sigmoid"):
            raise ValueError(f"unknown noise schedule {self.kind!r}")
        if self.kind == "constant" and not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be finite and > 0, got {self.beta!r}")
        if self.kind in ("exponential", "sigmoid"):
            for name in ("start", "end"):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                    raise ValueError(f"{name} (a beta) must be finite and > 0, got {v!r}")

    @property
    def noisy(self) -> bool:
        return self.kind != "none"

    def values(self, num_loops: int) -> np.ndarray | None:
        """beta for every loop 0..num_loops-1 (None without noise)."""
        n = _check_num_loops(num_loops)
        if self.kind == "none":
            return None
        if self.kind == "constant":
            return np.full(n, float(self.beta))
        if self.kind == "exponential":
            return exponential_schedule(n, self.start, self.end)
        return sigmoid_schedule(n, self.start, self.end, self.temperature)

    def beta_at(self, loop: int, num_loops: int) -> float | None:
        """beta of AL loop ``loop`` (0-based; the reference indexes the schedule by the loop)."""
        n = _check_num_loops(num_loops)
        if isinstance(loop, bool) or not isinstance(loop, (int, np.integer)) or not 0 <= loop < n:
            raise ValueError(f"loop must be an integer in 0..num_loops-1 = 0..{n - 1}, got {loop!r}")
        v = self.values(n)
        if v is None:
            return None
        return float(v[int(loop)])

    def describe(self) -> str:
        if self.kind == "none":
            return "no noise"
        if self.kind == "constant":
            return f"beta={self.beta:g}"
        if self.kind == "exponential":
            return f"beta {self.start:g}->{self.end:g} exponential"
        return f"beta {self.start:g}->{self.end:g} sigmoid T={self.temperature:g}"


# ----------------------------------------------------------------------------------------------
# scorer and aggregator
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Scorer:
    """Voxel score maps.  ``pe``: predictive entropy H(mean_f p_f); ``class_pe``: PE * p_k for every
    foreground class k, plus PE (key -1); ``bald``: PE - mean_f H(p_f); ``expected_entropy``:
    mean_f H(p_f)."""

    kind: Literal["pe", "class_pe", "bald", "expected_entropy"] = "pe"

    def __post_init__(self) -> None:
        if self.kind not in ops.SCORES:
            raise ValueError(f"unknown score {self.kind!r}; valid: {ops.SCORES}")

    @property
    def needs_fold_entropy(self) -> bool:
        return self.kind in ("bald", "expected_entropy")

    @property
    def stratified(self) -> bool:
        return self.kind == "class_pe"

    def keys(self, classes: list[int]) -> list[int]:
        """Map keys in the order of :meth:`__call__`'s output: classes then -1, or just -1."""
        return [*classes, KEY_PLAIN] if self.stratified else [KEY_PLAIN]

    def __call__(self, acc: ops.FoldAccumulator, classes: list[int]):
        return acc.score_maps(self.kind, classes if self.stratified else None)


@dataclass(frozen=True, kw_only=True)
class BoxMean:
    """Mean of the score over every candidate box (size = patch clipped to the image, at stride
    positions, valid mode) -- the engine's ``ops.box_mean``.

    :meth:`from_accumulator` and :meth:`from_npy_folds` are the engine's fused versions
    (bit-identical to ``box_mean(scorer(...))``) that never store the full-size score maps; the
    second reads memory-mapped ``.npy`` folds block-wise (each byte once, below one fold of RAM).
    """

    def __call__(self, maps, patch, stride):
        return ops.box_mean(maps, patch, stride)

    def from_accumulator(self, acc: ops.FoldAccumulator, scorer: Scorer, classes: list[int], patch, stride):
        return acc.box_scores(scorer.kind, classes if scorer.stratified else None, patch=patch, stride=stride)

    def from_npy_folds(self, paths, scorer: Scorer, classes: list[int], patch, stride):
        return ops.fold_box_scores(list(paths), score=scorer.kind, classes=classes if scorer.stratified else None,
                                   patch=patch, stride=stride)


# ----------------------------------------------------------------------------------------------
# stratifier and selector
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Stratifier:
    """``fg_share=None``: global (the single key -1 takes n per image and the query's top).
    ``fg_share=r``: class-balanced, METHOD.md 1.6-1.7 (K foreground classes, keys {1..K} u {-1})."""

    fg_share: float | None = None

    def __post_init__(self) -> None:
        if self.fg_share is not None and not 0.0 < self.fg_share < 1.0:
            raise ValueError(f"fg_share must be in (0, 1), got {self.fg_share!r}")

    @property
    def balanced(self) -> bool:
        return self.fg_share is not None

    def per_image_quotas(self, n: int, keys: list[int]) -> dict[int, int]:
        """Boxes each key may take in one image: ``int(n*(1-r))`` for -1, ``int(n*(r/(K+1)))`` for a
        class (the denominator counts the -1 key), both floored at 1 -- the reference's float
        expressions, so e.g. n=150 gives 50 (not 51) plain boxes.  Global: ``{-1: n}``."""
        if not self.balanced:
            return {KEY_PLAIN: int(n)}
        r = self.fg_share
        out = {}
        for k in keys:
            q = n * (1 - r) if k == KEY_PLAIN else n * (r / len(keys))
            out[k] = max(int(q), 1)
        return out

    def global_quotas(self, query_size: int, classes: list[int], randomness: Randomness) -> dict[int, int]:
        """Final quotas: ``n_cls = int(q*r)``, each class ``n_cls // K``, the remainder
        ``n_cls % K`` one each to the first classes of a random shuffle of the class list, the
        plain key ``q - n_cls``.  The shuffle is drawn even when the remainder is 0 (as the
        reference does, which matters for the nnActive stream).  METHOD.md 1.7's worked examples
        need ``n_cls % K`` (e.g. AMOS q=40: 26 = 15*1 + 11); one stored version of the reference
        computes ``n_cls % (K+1)`` and hands out one box too many when that exceeds ``n_cls % K``
        (ACDC q=90: 91 boxes), so we follow METHOD.md and always return exactly ``q`` boxes."""
        if not self.balanced:
            return {KEY_PLAIN: int(query_size)}
        K = len(classes)
        if K == 0:
            raise ValueError("a class-balanced query needs at least one foreground class")
        n_cls = int(query_size * self.fg_share)
        quotas = {c: n_cls // K for c in classes}
        quotas[KEY_PLAIN] = query_size - n_cls
        order = randomness.shuffle_classes(list(classes))
        for c in order[: n_cls % K]:
            quotas[c] += 1
        return quotas


@dataclass(frozen=True, kw_only=True)
class Selector:
    """Per image: greedy non-overlapping top-n per key (``ops.select_patches``) with
    ``n = candidate_factor * n_patch_per_image``.  Then ``final``: ``top`` (per key, the best
    candidates of all images by score) or ``softrank`` (rank r of the score-sorted candidates gets
    ``-log r + Gumbel(0, 1)``; top by that value)."""

    final: Literal["top", "softrank"] = "top"
    candidate_factor: int = 1

    def __post_init__(self) -> None:
        if self.final not in ("top", "softrank"):
            raise ValueError(f"unknown final selection {self.final!r}")
        if self.candidate_factor < 1:
            raise ValueError(f"candidate_factor must be >= 1, got {self.candidate_factor}")


# ----------------------------------------------------------------------------------------------
# randomness
# ----------------------------------------------------------------------------------------------


class Randomness:
    """Every random draw of one query.

    ``mode="philox"``: noise and permutations from the engine's counter-based stream keyed by
    ``(seed, loop, image key, key, position)`` -- independent of processing order, thread count,
    device and of how the pool is split across processes.

    ``mode="nnactive"``: one ``numpy.random.default_rng(seed)`` consumed sequentially in the
    reference implementation's order (``seed`` is then the reference's query seed, experiment seed
    + loop + 1): per image in sorted id order, first one ``gumbel(0, 1/beta, grid)`` array per key
    map (classes in the given order, then -1), then ``shuffle`` of the key list; after all images
    the ``shuffle`` of the class list that assigns the remainder (class-balanced strategies), or
    SoftRank's ``gumbel(0, 1, n_candidates)``.

    Why Gumbel arrays before the key shuffle: in the reference (nnActive, ``strategies/
    entropy_balanced.py``, ``ClassBalancedEntropy_66FG.query_file_from_dict``) an image's scores are
    computed by ``strategy_per_cls`` -> ``compute_scores_per_cls`` (where the power variants add the
    noise, like ``PowerBALD.compute_scores``) *before* ``self.rng.shuffle(classes)`` is called, and
    the remainder shuffle is in ``_compose_query_of_patches`` after all images.  METHOD.md 1.8
    lists the key shuffle first; that is a different stream and not what the code does (the test
    suite checks both orders against an independent generator).  Noise keys run over the
    ``top_patches`` dict in insertion order: foreground labels in ``dataset.json`` order, then -1
    (pass ``classes`` in that order).  Image order: nnU-Net's iterator sorts the case identifiers
    (``np.unique``); we sort the ids as given, which is the same order for ids ``CASE.nii.gz``
    unless one case name is a prefix of another followed by a character sorting before ``.``
    (e.g. ``a`` and ``a-b``).  The reference adds float64 noise to float32 log scores;
    here the sum is rounded to float32, which can only reorder candidates whose noised scores agree
    to ~1e-7.  PowerPE: the reference calls ``power_noising`` without the strategy's generator, so
    it draws from an unseeded module-level ``default_rng()`` that cannot be reproduced; in this
    mode PowerPE uses the seeded generator exactly like PowerBALD (one array per image).
    """

    def __init__(self, *, mode: str, seed: int, loop: int) -> None:
        if mode not in RNG_MODES:
            raise ValueError(f"rng must be one of {RNG_MODES}, got {mode!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        self.mode = mode
        self.seed = int(seed)
        self.loop = int(loop)
        self.generator = np.random.default_rng(self.seed) if mode == "nnactive" else None

    def noised(self, agg, beta: float, *, image: int, key: int):
        """``log(agg) + Gumbel(0, 1/beta)`` for one key's candidate map."""
        if self.generator is not None:
            g = self.generator.gumbel(0.0, 1.0 / beta, size=tuple(agg.shape))
            return ops.power_noise(agg, noise=g)
        return ops.power_noise(agg, beta, seed=self.seed, loop=self.loop, image=image, key=key)

    def _philox_gumbel(self, n: int, *, image: int, key: int) -> np.ndarray:
        ones = np.ones(max(n, 1), np.float32)
        g = ops.power_noise(ones, 1.0, seed=self.seed, loop=self.loop, image=image, key=key)
        return np.asarray(g, np.float64)[:n]

    def _philox_permutation(self, n: int, *, image: int, key: int) -> np.ndarray:
        g = self._philox_gumbel(n, image=image, key=key)
        return np.lexsort((np.arange(n), -g))

    def shuffle_keys(self, keys: list[int], *, image: int) -> list[int]:
        """Random order of one image's keys (class-balanced strategies)."""
        keys = list(keys)
        if self.generator is not None:
            self.generator.shuffle(keys)
            return keys
        return [keys[i] for i in self._philox_permutation(len(keys), image=image, key=KEY_ORDER)]

    def shuffle_classes(self, classes: list[int]) -> list[int]:
        """Random order of the class list (remainder assignment of the final composition)."""
        classes = list(classes)
        if self.generator is not None:
            self.generator.shuffle(classes)
            return classes
        perm = self._philox_permutation(len(classes), image=GLOBAL_IMAGE, key=KEY_REMAINDER)
        return [classes[i] for i in perm]

    def softrank_gumbel(self, n: int) -> np.ndarray:
        """``n`` standard Gumbel variates for SoftRank."""
        if self.generator is not None:
            return self.generator.gumbel(0.0, 1.0, size=n)
        return self._philox_gumbel(n, image=GLOBAL_IMAGE, key=KEY_SOFTRANK)
