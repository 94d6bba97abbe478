"""Small value types shared across the package."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _triple(value: Any, name: str) -> tuple[int, int, int]:
    """3 integers; integer-valued floats (``3.0`` from a JSON file) are accepted, anything else
    (``0.5``, ``"a"``, ``True``, a scalar) is a ``ValueError`` naming the field."""
    try:
        items = list(value)
    except TypeError as exc:
        raise ValueError(f"{name} must be a sequence of 3 integers, got {value!r}") from exc
    if isinstance(value, (str, bytes)) or any(isinstance(v, (bool, str, bytes)) for v in items):
        raise ValueError(f"{name} must be a sequence of 3 integers, got {value!r}")
    try:
        t = tuple(int(v) for v in items)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be a sequence of 3 integers, got {value!r}") from exc
    if any(t_i != v for t_i, v in zip(t, items)):
        raise ValueError(f"{name} must hold integers, got {value!r}")
    if len(t) != 3:
        raise ValueError(f"{name} must have 3 entries, got {value!r}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True, order=True)
class Patch:
    """An axis-aligned 3D box of one image: ``file`` (image file name, e.g. ``case_001.nii.gz``),
    ``coords`` (start corner, voxel indices) and ``size`` (extent per axis, voxels).

    The box covers ``coords[i] <= v < coords[i] + size[i]`` on every axis ``i``.
    """

    file: str
    coords: tuple[int, int, int]
    size: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.file is None or str(self.file) == "":
            raise ValueError(f"Patch.file must name an image, got {self.file!r}")
        object.__setattr__(self, "file", str(self.file))
        object.__setattr__(self, "coords", _triple(self.coords, "Patch.coords"))
        object.__setattr__(self, "size", _triple(self.size, "Patch.size"))
        if any(c < 0 for c in self.coords):
            raise ValueError(f"Patch.coords must be >= 0, got {self.coords} for {self.file}")
        if any(s <= 0 for s in self.size):
            raise ValueError(f"Patch.size must be > 0, got {self.size} for {self.file}")

    def overlaps(self, other: Patch) -> bool:
        """True when both boxes belong to the same file and intersect by >= 1 voxel per axis."""
        if self.file != other.file:
            return False
        return all(
            a < c + d and c < a + b
            for a, b, c, d in zip(self.coords, self.size, other.coords, other.size)
        )

    def to_json(self) -> dict:
        """nnActive's loop-file entry: ``{"file": ..., "coords": [...], "size": [...]}``."""
        return {"file": self.file, "coords": list(self.coords), "size": list(self.size)}

    @classmethod
    def from_json(cls, d: dict) -> Patch:
        if not isinstance(d, Mapping):
            raise ValueError(f"a patch entry is a {{'file', 'coords', 'size'}} object, got {d!r}")
        try:
            return cls(file=d["file"], coords=d["coords"], size=d["size"])
        except KeyError as exc:
            raise ValueError(f"patch entry {d!r} lacks the key {exc.args[0]!r}") from exc
