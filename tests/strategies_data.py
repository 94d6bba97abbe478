"""Synthetic pools for the strategy tests (imported by tests/test_strategies_*.py)."""

from __future__ import annotations

import numpy as np
import pytest

from claspe import ops
from claspe.types import Patch


@pytest.fixture(autouse=True)
def one_engine_thread():
    """The strategy tests run thousands of tiny queries, where OpenMP start-up costs dominate on a
    loaded 2-core machine; results never depend on the thread count (tested explicitly)."""
    with ops.threads(1):
        yield


def softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def make_probs(seed: int, *, n_images: int = 4, folds: int = 3, classes: int = 4, shape=(14, 12, 10),
               scale: float = 2.0, prefix: str = "case_") -> dict[str, np.ndarray]:
    """{id: float32 [M, C, X, Y, Z]} with class structure (a smooth per-image 'anatomy') plus
    fold-specific noise so BALD is not zero; ids ``case_000.nii.gz`` ..."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n_images):
        sh = tuple(s + (i % 2) for s in shape)  # images of different shapes
        base = rng.normal(size=(classes, *sh)) * scale
        base[0] += 1.5  # background dominant
        folds_l = []
        for _ in range(folds):
            lg = base + rng.normal(size=base.shape) * scale * 0.7
            folds_l.append(softmax(lg, 0).astype(np.float32))
        out[f"{prefix}{i:03d}.nii.gz"] = np.stack(folds_l)
    return out


def labels_from_probs(probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.argmax(v.mean(0), axis=0).astype(np.int16) for k, v in probs.items()}


def check_valid(patches: list[Patch], *, query_size: int, shapes: dict, patch_size, annotated=()) -> None:
    """Exact size, inside the image, clipped size, no overlap among themselves or with annotated."""
    assert len(patches) == query_size
    for p in patches:
        shape = shapes[p.file]
        want = tuple(min(a, b) for a, b in zip(patch_size, shape))
        assert p.size == want, (p, want)
        assert all(0 <= c and c + s <= d for c, s, d in zip(p.coords, p.size, shape)), (p, shape)
    for i, a in enumerate(patches):
        for b in patches[i + 1 :]:
            assert not a.overlaps(b), (a, b)
        for b in annotated:
            assert not a.overlaps(b), (a, b)


def shapes_of(probs) -> dict:
    return {k: tuple(v.shape[-3:]) for k, v in probs.items()}
