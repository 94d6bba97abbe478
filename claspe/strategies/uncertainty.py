"""Uncertainty strategies (PE, BALD, PowerPE/BALD, SoftrankBALD, Cla/ClaP/ClaSP PE): a frozen row of
parts (:mod:`claspe.strategies.parts`) run over the pool one image at a time.

Per image (in sorted id order): accumulate the M folds one at a time (``ops.FoldAccumulator``), score
maps (:class:`~claspe.strategies.parts.Scorer`), box mean per candidate
(:class:`~claspe.strategies.parts.BoxMean`), optional power noise with the loop's beta
(:class:`~claspe.strategies.parts.NoiseSchedule`), then greedy non-overlapping selection per key
against the image's annotated boxes and the boxes already taken for earlier keys
(``ops.select_patches``; class-balanced strategies process the keys in a random order).  Finally the
candidates of all images are composed into the query (:class:`~claspe.strategies.parts.Stratifier`,
:class:`~claspe.strategies.parts.Selector`).

Ranking ties (equal scores) are broken by image id, then by the per-image selection order (the
engine ranks equal scores by lower flat index).  The reference sorts with a descending argsort,
which orders ties the other way inside an image; this only matters for exactly equal scores, i.e.
strategies without noise on constant regions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from claspe import ops
from claspe.strategies import _io
from claspe.strategies.common import check_classes, check_common, check_int
from claspe.strategies.parts import (
    KEY_PLAIN,
    BoxMean,
    NoiseSchedule,
    Randomness,
    Scorer,
    Selector,
    Stratifier,
)
from claspe.types import Patch

log = logging.getLogger(__name__)


@dataclass
class Candidates:
    """Per-key candidate boxes of a set of images: ``by_key[k]`` is a list of
    ``(score, image id, position in the image's selection, Patch)``.

    Candidates of disjoint parts of a pool (e.g. computed in several processes with
    ``rng="philox"``) can be merged with :meth:`merge` and composed with
    :meth:`UncertaintyStrategy.compose`; the result equals a query over the whole pool.
    """

    classes: list[int]
    by_key: dict[int, list[tuple[float, str, int, Patch]]] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)

    @classmethod
    def merge(cls, parts: list[Candidates]) -> Candidates:
        if not parts:
            raise ValueError("nothing to merge")
        classes = parts[0].classes
        for p in parts[1:]:
            if p.classes != classes:
                raise ValueError(f"candidates were computed for different classes: {classes} vs {p.classes}")
        seen: set[str] = set()
        out = cls(classes=list(classes))
        for p in parts:
            dup = seen.intersection(p.images)
            if dup:
                raise ValueError(f"images {sorted(dup)[:5]} appear in more than one part")
            seen.update(p.images)
            out.images.extend(p.images)
            for k, items in p.by_key.items():
                out.by_key.setdefault(k, []).extend(items)
        out.images.sort()
        return out

    def sorted_key(self, key: int) -> list[tuple[float, str, int, Patch]]:
        """One key's candidates, best first (ties: image id, then selection position)."""
        return sorted(self.by_key.get(key, []), key=lambda t: (-t[0], t[1], t[2]))


@dataclass(frozen=True, kw_only=True)
class UncertaintyStrategy:
    """A query strategy on model probabilities, composed of parts (a preset is one row)."""

    name: str
    description: str
    scorer: Scorer
    noise: NoiseSchedule = field(default_factory=NoiseSchedule)
    stratifier: Stratifier = field(default_factory=Stratifier)
    selector: Selector = field(default_factory=Selector)
    aggregator: BoxMean = field(default_factory=BoxMean)

    needs_labels = False
    uses_probabilities = True

    def __post_init__(self) -> None:
        if self.stratifier.balanced != self.scorer.stratified:
            raise ValueError("a class-balanced stratifier needs the class_pe scorer and vice versa")
        if self.stratifier.balanced and self.selector.final != "top":
            raise ValueError("class-balanced composition supports only final='top'")

    # ------------------------------------------------------------------------------------------
    def query(
        self,
        probabilities,
        *,
        query_size: int,
        patch_size,
        stride=1,
        n_patch_per_image: int | None = None,
        loop: int = 0,
        num_loops: int = 5,
        seed: int = 0,
        annotated=(),
        rng: str = "philox",
        labels=None,
        classes=None,
    ) -> list[Patch]:
        """Selects exactly ``query_size`` non-overlapping boxes (or raises ``ValueError``).

        ``probabilities``: mapping image id -> [M, C, X, Y, Z] array, a sequence of M per-fold
        [C, X, Y, Z] arrays or ``.npy``/``.npz`` paths, or a path (see :mod:`claspe.strategies._io`).
        ``patch_size``/``stride``: int or 3 ints.  ``n_patch_per_image``: candidates per image
        (None: ``query_size``).  ``loop``/``num_loops`` pick beta from the noise schedule.
        ``seed``: experiment seed (``rng="philox"``) or the reference's query seed
        (``rng="nnactive"``, experiment seed + loop + 1).  ``annotated``: already labelled
        :class:`~claspe.Patch` boxes (or nnActive dicts); new boxes never overlap them.
        ``classes``: foreground class ids to stratify over (default 1..C-1).  ``labels`` is not used.
        """
        query_size, patch, stride, npi, loop, num_loops, seed = check_common(
            query_size=query_size, patch_size=patch_size, stride=stride, n_patch_per_image=n_patch_per_image,
            loop=loop, num_loops=num_loops, seed=seed,
        )
        randomness = Randomness(mode=rng, seed=seed, loop=loop)
        cands = self._candidates(
            probabilities, patch=patch, stride=stride, n_per_image=npi if npi is not None else query_size,
            loop=loop, num_loops=num_loops, annotated=annotated, randomness=randomness, classes=classes,
        )
        return self._compose(cands, query_size=query_size, randomness=randomness, n_per_image=npi or query_size)

    def candidates(
        self,
        probabilities,
        *,
        query_size: int,
        patch_size,
        stride=1,
        n_patch_per_image: int | None = None,
        loop: int = 0,
        num_loops: int = 5,
        seed: int = 0,
        annotated=(),
        classes=None,
    ) -> Candidates:
        """The per-image candidates of (a part of) the pool, with ``rng="philox"`` (split queries)."""
        query_size, patch, stride, npi, loop, num_loops, seed = check_common(
            query_size=query_size, patch_size=patch_size, stride=stride, n_patch_per_image=n_patch_per_image,
            loop=loop, num_loops=num_loops, seed=seed,
        )
        randomness = Randomness(mode="philox", seed=seed, loop=loop)
        return self._candidates(
            probabilities, patch=patch, stride=stride, n_per_image=npi if npi is not None else query_size,
            loop=loop, num_loops=num_loops, annotated=annotated, randomness=randomness, classes=classes,
            check_pool=False,
        )

    def compose(self, candidates: Candidates, *, query_size: int, loop: int = 0, seed: int = 0) -> list[Patch]:
        """The final query from (merged) candidates, ``rng="philox"``."""
        query_size = check_int(query_size, "query_size", minimum=1)
        randomness = Randomness(mode="philox", seed=seed, loop=check_int(loop, "loop", minimum=0))
        return self._compose(candidates, query_size=query_size, randomness=randomness, n_per_image=None)

    # ------------------------------------------------------------------------------------------
    def _candidates(self, probabilities, *, patch, stride, n_per_image, loop, num_loops, annotated, randomness,
                    classes, check_pool: bool = True) -> Candidates:
        if probabilities is None:
            raise ValueError(f"strategy {self.name!r} needs probabilities (mapping image id -> fold probabilities)")
        if not isinstance(probabilities, Mapping):
            raise ValueError(
                f"probabilities must be a mapping image id -> probabilities, got {type(probabilities).__name__}"
            )
        if len(probabilities) == 0:
            raise ValueError("probabilities is empty: no pool images")
        ids = sorted(probabilities, key=str)
        if len({str(i) for i in ids}) != len(ids):
            raise ValueError("image ids must be distinct as strings")
        annotated = _io.as_patches(annotated)
        if check_pool:
            by_image = _io.check_annotated_in_pool(annotated, [str(i) for i in ids])
        else:
            by_image = {}
            for p in annotated:
                by_image.setdefault(p.file, []).append(p)
        beta = self.noise.beta_at(loop, num_loops)
        n_cand = n_per_image * self.selector.candidate_factor
        classes = check_classes(classes, None)
        n_channels = None
        keys = None
        out = None
        image_keys: dict[int, str] = {}
        for image_id in tqdm(ids, desc=f"query {self.name}", unit="image", disable=None, leave=False):
            sid = str(image_id)
            ikey = _io.image_key(sid)
            if ikey in image_keys:
                log.warning("images %r and %r share the noise id %d (crc32 collision)", image_keys[ikey], sid, ikey)
            image_keys[ikey] = sid
            value = probabilities[image_id]  # looked up exactly once
            npy = _io.npy_fold_paths(value)
            acc = None
            if npy is not None:  # .npy folds: the fused, memory-mapped path
                shape = _io.npy_shape(npy[0])
                if len(shape) != 4:
                    raise ValueError(f"image {sid!r} fold 0: expected [C, X, Y, Z], got shape {shape} in {npy[0]}")
            else:
                acc = ops.FoldAccumulator(track_fold_entropy=self.scorer.needs_fold_entropy)
                for f, fold in enumerate(_io.iter_folds(value, sid)):
                    try:
                        acc.add(fold)
                    except ValueError as exc:
                        raise ValueError(f"image {sid!r} fold {f}: {exc}") from exc
                shape = tuple(acc.shape)
            C = int(shape[0])
            if n_channels is None:
                n_channels = C
                if C < 2:
                    raise ValueError(f"image {sid!r}: probabilities have C={C} channel(s); need background + >= 1 class")
                classes = check_classes(classes, C) if classes is not None else list(range(1, C))
                keys = self.scorer.keys(classes)
                out = Candidates(classes=list(classes))
            elif C != n_channels:
                raise ValueError(f"image {sid!r} has C={C} channels, earlier images had {n_channels}")
            volume = tuple(int(s) for s in shape[1:])
            if acc is not None:
                agg = self.aggregator.from_accumulator(acc, self.scorer, classes, patch, stride)
                del acc
            else:
                try:
                    agg = self.aggregator.from_npy_folds(npy, self.scorer, classes, patch, stride)
                except ValueError as exc:
                    raise ValueError(f"image {sid!r}: {exc}") from exc
            if beta is not None:
                agg = [randomness.noised(agg[i], beta, image=ikey, key=k) for i, k in enumerate(keys)]
            else:
                agg = [agg[i] for i in range(len(keys))]
            order = randomness.shuffle_keys(keys, image=ikey) if self.stratifier.balanced else list(keys)
            quotas = self.stratifier.per_image_quotas(n_cand, keys)
            stack = np.stack([_io.to_numpy(agg[keys.index(k)]) for k in order]).astype(np.float32, copy=False)
            sel = ops.select_patches(
                stack, patch=patch, stride=stride, volume_shape=volume, quotas=[quotas[k] for k in order],
                blocked=by_image.get(sid, ()),
            )
            size = tuple(min(p, d) for p, d in zip(patch, volume))
            pos = 0
            for k, (starts, scores) in zip(order, sel):
                lst = out.by_key.setdefault(k, [])
                for st, sc in zip(np.asarray(starts), np.asarray(scores)):
                    lst.append((float(sc), sid, pos, Patch(file=sid, coords=tuple(int(v) for v in st), size=size)))
                    pos += 1
            out.images.append(sid)
        return out

    def _compose(self, cands: Candidates, *, query_size: int, randomness: Randomness, n_per_image) -> list[Patch]:
        quotas = self.stratifier.global_quotas(query_size, cands.classes, randomness)
        n_images = len(cands.images)

        def too_few(key, have, need):
            what = "plain (non-stratified) part" if key == KEY_PLAIN else f"class {key}"
            per = f"{n_per_image} per image, " if n_per_image else ""
            return ValueError(
                f"query_size={query_size} is larger than what can be selected: the {what} needs {need} boxes "
                f"but only {have} non-overlapping candidates exist ({n_images} image(s), {per}"
                f"strategy {self.name!r}); lower query_size, raise n_patch_per_image or use a smaller patch"
            )

        if self.selector.final == "softrank":
            allc = cands.sorted_key(KEY_PLAIN)
            if len(allc) < query_size:
                raise too_few(KEY_PLAIN, len(allc), query_size)
            n = len(allc)
            soft = -np.log(np.arange(1, n + 1, dtype=np.float64)) + np.asarray(randomness.softrank_gumbel(n))
            order = np.lexsort((np.arange(n), -soft))[:query_size]
            return [allc[i][3] for i in order]
        result: list[Patch] = []
        for key in [*cands.classes, KEY_PLAIN] if self.stratifier.balanced else [KEY_PLAIN]:
            need = quotas[key]
            items = cands.sorted_key(key)
            if len(items) < need:
                raise too_few(key, len(items), need)
            result.extend(t[3] for t in items[:need])
        if len(result) != query_size:  # pragma: no cover - guaranteed by the quotas
            raise ValueError(f"internal error: composed {len(result)} boxes for query_size={query_size}")
        return result

    def describe(self) -> str:
        return self.description
