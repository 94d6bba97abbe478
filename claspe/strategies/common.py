"""Argument validation shared by all strategies (one message style, raised at the API boundary)."""

from __future__ import annotations

import numpy as np

from claspe.ops import _triple


def check_int(value, name: str, *, minimum: int | None = None, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def triple(value, name: str) -> tuple[int, int, int]:
    """An int or 3 ints, all positive (a float or bool is rejected, not truncated)."""
    return _triple(value, name, ints_only=True, axes="one per axis")


def check_common(*, query_size, patch_size, stride, n_patch_per_image, loop, num_loops, seed):
    """Validates the arguments every ``query`` takes; returns them normalised."""
    query_size = check_int(query_size, "query_size", minimum=1)
    patch_size = triple(patch_size, "patch_size")
    stride = triple(1 if stride is None else stride, "stride")
    n_patch_per_image = check_int(n_patch_per_image, "n_patch_per_image", minimum=1, allow_none=True)
    num_loops = check_int(num_loops, "num_loops", minimum=1)
    loop = check_int(loop, "loop", minimum=0)
    if loop >= num_loops:
        raise ValueError(f"loop must be in 0..num_loops-1 = 0..{num_loops - 1}, got {loop}")
    seed = check_int(seed, "seed", minimum=0)
    if seed >= 2**64:
        raise ValueError(f"seed must be < 2**64, got {seed}")
    return query_size, patch_size, stride, n_patch_per_image, loop, num_loops, seed


def check_classes(classes, n_channels: int | None, what: str = "probabilities") -> list[int] | None:
    """Foreground class ids: distinct ints >= 1 (and < C when the channel count is known)."""
    if classes is None:
        return None
    try:
        out = [int(c) for c in classes]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"classes must be a list of integer class ids, got {classes!r}") from exc
    if not out:
        raise ValueError("classes must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"classes contain duplicates: {out}")
    bad = [c for c in out if c < 1 or (n_channels is not None and c >= n_channels)]
    if bad:
        rng = f"1..{n_channels - 1}" if n_channels is not None else ">= 1"
        raise ValueError(
            f"class ids {bad} are absent from the {what} (foreground classes must be in {rng}"
            + (f"; the {what} have C={n_channels} channels incl. background)" if n_channels is not None else ")")
        )
    return out


def overlaps(a_start, a_size, b_start, b_size) -> bool:
    """Axis-aligned boxes intersect by >= 1 voxel on every axis."""
    return all(s0 < t0 + t1 and t0 < s0 + s1 for s0, s1, t0, t1 in zip(a_start, a_size, b_start, b_size))
