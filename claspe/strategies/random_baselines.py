"""Random baselines (Random, Random 33% FG, Random 66% FG) and the starting budget
``random-label2-all-classes`` (METHOD.md 2 and 3.2).

Random draws come from one ``numpy.random.Generator`` used sequentially in the reference's order:
shuffle of the image list, then per box the placement mode, the class, and per try the location.
``rng="nnactive"``: ``numpy.random.default_rng(seed)`` (``seed`` = the reference's query seed);
``rng="philox"``: ``numpy.random.default_rng([seed, loop])`` (experiment seed and loop index).
These baselines are cheap and inherently sequential (round robin over the images), so they do not
use the engine's counter-based stream.

Placement (per box): the image list (sorted ids, then shuffled) is cycled round robin, one box per
image per pass.  Modes: ``all`` -- start uniform per axis in ``[0, dim - patch - 1]`` (the
reference's range; the patch is clipped to the image where it is larger); ``seg`` -- centred on a
uniformly drawn voxel of one foreground class; ``border`` -- centred on a voxel of that class's
boundary (mask minus its binary erosion with the radius-1 ball, voxels outside the image count as
background).  The class is drawn uniformly from the foreground classes present in the image (by
rejection of background draws, as in the reference).  Centred boxes are clamped so they lie inside
the image (``start = clip(centre - patch//2, 0, dim - patch)``; the reference's clamp lets an
odd-sized box stick out by one voxel at the upper border -- we keep boxes inside).  A box that
overlaps an annotated box or one chosen before is rejected and a new location drawn; after
``tries_per_image`` (600) failed tries of a uniform box the image is dropped from the rotation
(after failed seg/border tries the turn just passes to the next image; the reference's Random
66%/33% FG never drops an image and can loop forever when the pool is full).  An image without any
foreground class falls back to ``all`` for its seg/border draws (the reference raises).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from claspe.strategies import _io
from claspe.strategies.common import check_common, check_int, overlaps, triple
from claspe.types import Patch

log = logging.getLogger(__name__)

AREAS_RANDOM = ("all",)
AREAS_FG66 = ("all", "seg", "border")
AREAS_FG33 = ("all", "all", "all", "all", "seg", "border")
TRIES_QUERY = 600
TRIES_STARTING_BUDGET = 6000


def uniform_start(gen: np.random.Generator, shape, patch) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Uniform start per axis in [0, dim - patch - 1]; a patch >= the image is clipped, start 0."""
    start, size = [], []
    for d, p in zip(shape, patch):
        if p >= d:
            start.append(0)
            size.append(d)
        else:
            start.append(int(gen.choice(d - p)))
            size.append(p)
    return tuple(start), tuple(size)


def centred_start(centre, shape, patch) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Box of ``patch`` (clipped to the image) centred on ``centre``, clamped inside the image."""
    start, size = [], []
    for c, d, p in zip(centre, shape, patch):
        p = min(p, d)
        start.append(int(min(max(int(c) - p // 2, 0), d - p)))
        size.append(p)
    return tuple(start), tuple(size)


def class_border(mask: np.ndarray) -> np.ndarray:
    """mask minus its binary erosion with the radius-1 ball (6-neighbourhood)."""
    from scipy import ndimage

    ball1 = ndimage.generate_binary_structure(3, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=ball1, border_value=0)


def _free(start, size, taken) -> bool:
    return not any(overlaps(start, size, b.coords, b.size) for b in taken)


class _Pool:
    """Round-robin placement state shared by the random baselines and the starting budget."""

    def __init__(self, *, gen, ids, shapes, labels, patch, taken, tries, classes_in, fg_classes=None):
        self.gen = gen
        self.shapes = shapes
        self.labels = labels
        self.classes_in = classes_in  # id -> set of class ids in the image (LabelView.scan)
        self.patch = patch
        self.taken = taken  # id -> list[Patch]
        self.tries = tries
        self.fg_classes = None if fg_classes is None else set(fg_classes)
        self._present: dict[str, np.ndarray] = {}
        self.last_area = "all"

    def present(self, image_id) -> np.ndarray:
        """Class ids present in an image (>= 0), background 0 included, sorted."""
        if image_id not in self._present:
            u = sorted(c for c in self.classes_in[image_id] if c >= 0)
            if self.fg_classes is not None:
                u = [c for c in u if c == 0 or c in self.fg_classes]
            self._present[image_id] = np.array(u, dtype=np.int64)
        return self._present[image_id]

    def try_place(self, image_id: str, area: str) -> Patch | None:
        """One box in ``image_id`` with placement mode ``area``, or None after ``tries`` failures."""
        shape = self.shapes[image_id]
        locs = None
        self.last_area = area
        if area in ("seg", "border"):
            present = self.present(image_id)
            if not np.any(present > 0):
                area = self.last_area = "all"
            else:
                cls = 0
                while cls == 0:  # the reference draws until it hits a non-background class
                    cls = int(self.gen.choice(present, 1).item())
                mask = self.labels[image_id] == cls
                if area == "border":
                    mask = class_border(mask)
                locs = np.flatnonzero(mask)
        taken = self.taken.setdefault(image_id, [])
        for _ in range(self.tries):
            if locs is None:
                start, size = uniform_start(self.gen, shape, self.patch)
            else:
                centre = np.unravel_index(locs[int(self.gen.choice(len(locs)))], shape)
                start, size = centred_start(centre, shape, self.patch)
            if _free(start, size, taken):
                p = Patch(file=image_id, coords=start, size=size)
                taken.append(p)
                return p
        return None

    def round_robin(self, order: list[str], n: int, areas) -> list[Patch]:
        """``n`` boxes, one image per turn in ``order``.

        A failed ``all`` (uniform) placement drops the image from the rotation (no box of this size
        fits any more, practically); a failed ``seg``/``border`` placement only passes the turn to
        the next image (the image's foreground may be covered while uniform boxes still fit).
        """
        active = list(order)
        out: list[Patch] = []
        i = 0
        stalls = 0
        while len(out) < n:
            if not active or stalls > 1000 * len(active):
                raise ValueError(
                    f"only {len(out)} of {n} boxes could be placed: no image has room for another "
                    f"non-overlapping box of size {self.patch} within {self.tries} tries "
                    f"(query larger than what can be selected)"
                )
            i %= len(active)
            image_id = active[i]
            area = str(self.gen.choice(list(areas))) if len(areas) > 1 else areas[0]
            p = self.try_place(image_id, area)
            if p is not None:
                out.append(p)
                stalls = 0
                i += 1
            elif self.last_area == "all":
                log.info("could not place a box in %s after %d tries; dropping the image", image_id, self.tries)
                active.pop(i)
                stalls = 0
            else:
                stalls += 1
                i += 1
        return out


@dataclass(frozen=True, kw_only=True)
class RandomStrategy:
    """Random box placement; ``areas`` is the list the placement mode is drawn from uniformly."""

    name: str
    description: str
    areas: tuple[str, ...] = AREAS_RANDOM
    tries_per_image: int = TRIES_QUERY

    uses_probabilities = False

    @property
    def needs_labels(self) -> bool:
        return any(a != "all" for a in self.areas)

    def query(
        self,
        probabilities=None,
        *,
        query_size: int,
        patch_size,
        stride=None,
        n_patch_per_image: int | None = None,
        loop: int = 0,
        num_loops: int = 5,
        seed: int = 0,
        annotated=(),
        rng: str = "philox",
        labels=None,
        classes=None,
    ) -> list[Patch]:
        """``query_size`` random non-overlapping boxes (see the module docstring).

        Pool = the ids of ``labels`` (mapping id -> int label array [X, Y, Z]); when
        ``probabilities`` is given too, each of its ids must have labels.  Plain ``random``
        also works without labels, taking the image shapes from ``probabilities`` (it reads one
        fold per image).  ``stride`` and ``n_patch_per_image`` are not used.  ``classes``: restrict
        the foreground classes a seg/border box may be centred on (default: every class > 0).
        """
        query_size, patch, _, _, loop, num_loops, seed = check_common(
            query_size=query_size, patch_size=patch_size, stride=stride, n_patch_per_image=n_patch_per_image,
            loop=loop, num_loops=num_loops, seed=seed,
        )
        if rng not in ("philox", "nnactive"):
            raise ValueError(f"rng must be 'philox' or 'nnactive', got {rng!r}")
        if self.needs_labels or labels is not None:
            # with probabilities as well, every image of that pool needs its labels (else it would
            # silently never be sampled)
            pool = [str(k) for k in probabilities] if isinstance(probabilities, Mapping) and probabilities else None
            lab = _io.check_labels(labels, pool, self.name)
            ids = sorted(lab)
            shapes, present_by_image = lab.scan()  # one label in memory at a time
        else:
            if probabilities is None:
                raise ValueError(f"strategy {self.name!r} needs labels= or probabilities= to know the image shapes")
            if not isinstance(probabilities, Mapping) or not probabilities:
                raise ValueError("probabilities must be a non-empty mapping image id -> probabilities")
            ids = sorted(str(k) for k in probabilities)
            shapes = {str(k): _io.first_fold_shape(probabilities[k], str(k)) for k in sorted(probabilities, key=str)}
            lab, present_by_image = {}, {}
        if classes is not None:
            classes = [check_int(c, "class id", minimum=1) for c in classes]
            if lab:
                present = set().union(*present_by_image.values())
                absent = sorted(set(classes) - present)
                if absent:
                    raise ValueError(f"class ids {absent} are absent from the labels (present: {sorted(present)})")
        annotated = _io.as_patches(annotated)
        by_image = _io.check_annotated_in_pool(annotated, ids)
        gen = np.random.default_rng(seed) if rng == "nnactive" else np.random.default_rng([seed, loop])
        order = list(ids)
        gen.shuffle(order)
        pool = _Pool(gen=gen, ids=ids, shapes=shapes, labels=lab, patch=patch,
                     taken={k: list(v) for k, v in by_image.items()}, tries=self.tries_per_image, fg_classes=classes,
                     classes_in=present_by_image)
        return pool.round_robin(order, query_size, self.areas)

    def describe(self) -> str:
        return self.description


def starting_budget(
    labels,
    *,
    size: int,
    patch_size,
    seed: int,
    classes=None,
    annotated=(),
    boxes_per_class: int = 2,
    tries_per_image: int = TRIES_STARTING_BUDGET,
) -> list[Patch]:
    """The starting budget ``random-label2-all-classes`` (METHOD.md 3.2), ``size`` boxes.

    1. ``boxes_per_class`` (2) boxes per foreground class, the class present in the fewest images
       first (ties: lower class id first; counts are recomputed after every class); the class's
       images are shuffled and a box is centred on a random voxel of that class (clamped inside the
       image), non-overlapping with ``annotated`` and earlier boxes, up to ``tries_per_image`` tries
       per image; an image that received a box is removed from every class's list.  ``ValueError``
       if a class is present in fewer than ``boxes_per_class`` images or its boxes cannot be placed.
    2. The remaining ``size - boxes_per_class * K`` boxes by Random 33% FG (same generator,
       ``tries_per_image`` tries).

    ``labels``: mapping image id -> integer label array [X, Y, Z] (full ground truth of the pool).
    ``classes``: the classes of phase 1 (default: every class > 0 present in the labels).  The
    reference also lists ``background`` in phase 1 (it appears in every image, so it comes last);
    pass ``classes=[..., 0]`` to reproduce that.  ``seed``: the experiment seed
    (``numpy.random.default_rng(seed)``, as the reference's loop -1 path).  Images are taken in
    sorted id order before shuffling (the reference uses the file-system order).
    """
    lab = _io.check_labels(labels, None, "random-label2-all-classes")
    size = check_int(size, "size", minimum=1)
    patch = triple(patch_size, "patch_size")
    seed = check_int(seed, "seed", minimum=0)
    boxes_per_class = check_int(boxes_per_class, "boxes_per_class", minimum=1)
    tries = check_int(tries_per_image, "tries_per_image", minimum=1)
    ids = sorted(lab)
    shapes, present = lab.scan()  # one label in memory at a time
    all_present = sorted(set().union(*present.values()))
    if classes is None:
        classes = [c for c in all_present if c > 0]
        if not classes:
            raise ValueError("the labels contain no foreground class (> 0)")
    else:
        classes = [check_int(c, "class id", minimum=0) for c in classes]
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes contain duplicates: {classes}")
        absent = sorted(set(classes) - set(all_present))
        if absent:
            raise ValueError(f"class ids {absent} are absent from the labels (present: {all_present})")
    if size < boxes_per_class * len(classes):
        raise ValueError(
            f"starting budget size={size} is smaller than {boxes_per_class} boxes x {len(classes)} classes"
        )
    annotated = _io.as_patches(annotated)
    by_image = _io.check_annotated_in_pool(annotated, ids)
    gen = np.random.default_rng(seed)
    order = list(ids)
    gen.shuffle(order)  # the reference shuffles the image list first (when the strategy is built)
    pool = _Pool(gen=gen, ids=ids, shapes=shapes, labels=lab, patch=patch,
                 taken={k: list(v) for k, v in by_image.items()}, tries=tries, classes_in=present)
    files = {c: [k for k in ids if c in present[k]] for c in classes}  # insertion order = class order
    out: list[Patch] = []
    while files:
        cls = min(files, key=lambda c: len(files[c]))  # first of the rarest, in class order
        if len(files[cls]) < boxes_per_class:
            raise ValueError(
                f"class {cls} is present in {len(files[cls])} image(s) still unused, fewer than {boxes_per_class}: "
                f"not enough to put it into every training fold"
            )
        samples = files.pop(cls)
        gen.shuffle(samples)
        placed = 0
        for sample in samples:
            if placed == boxes_per_class:
                break
            shape = pool.shapes[sample]
            locs = np.flatnonzero(lab[sample] == cls)
            taken = pool.taken.setdefault(sample, [])
            for _ in range(tries):
                centre = np.unravel_index(locs[int(gen.choice(len(locs)))], shape)
                start, sz = centred_start(centre, shape, patch)
                if _free(start, sz, taken):
                    p = Patch(file=sample, coords=start, size=sz)
                    taken.append(p)
                    out.append(p)
                    placed += 1
                    for other in files.values():
                        if sample in other:
                            other.remove(sample)
                    break
            else:
                log.info("could not place a class-%d box in %s after %d tries", cls, sample, tries)
        if placed < boxes_per_class:
            raise ValueError(f"could not place {boxes_per_class} non-overlapping boxes for class {cls}")
    out.extend(pool.round_robin(order, size - len(out), AREAS_FG33))
    return out
