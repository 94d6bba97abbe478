"""``loop_XXX.json`` files in nnActive's format: ``{"patches": [{"file", "coords", "size"}, ...]}``.

``loop_000.json`` is the starting budget, ``loop_k.json`` the query of AL loop ``k-1``. ``file`` is
the pool image's label file name (``case_001.nii.gz``); ``coords``/``size`` are voxel indices in
image array order at the protocol's (resampled) resolution (see :mod:`claspe.data.io`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from claspe.data.io import read_json, write_json
from claspe.types import Patch

_LOOP_RE = re.compile(r"^loop_(\d{3})\.json$")


def loop_path(exp_dir: str | os.PathLike, loop: int) -> Path:
    return Path(exp_dir) / f"loop_{int(loop):03d}.json"


def existing_loops(exp_dir: str | os.PathLike) -> list[int]:
    return sorted(int(m.group(1)) for f in Path(exp_dir).iterdir() if (m := _LOOP_RE.match(f.name)))


def write_loop(exp_dir: str | os.PathLike, loop: int, patches: Sequence[Patch], **extra) -> Path:
    """Writes ``loop_XXX.json`` atomically (extra keys, e.g. ``"strategy"``, go beside ``patches``)."""
    doc = {"patches": [p.to_json() for p in patches], **extra}
    return write_json(loop_path(exp_dir, loop), doc)


def read_loop(path: str | os.PathLike, *, shape_of: Callable[[str], Sequence[int]] | None = None,
              known_files: Iterable[str] | None = None) -> list[Patch]:
    """Reads and validates one loop file.

    ``known_files``: the pool's file names; ``shape_of(file)``: the image shape (array order).
    Raises ValueError naming the file for: bad JSON/format, a ``file`` entry that is a path (``/``,
    ``..``: would point outside the dataset), an unknown case, a box outside the image.
    """
    p = Path(path)
    doc = read_json(p, missing=f"loop file {p} not found")
    if not isinstance(doc, dict) or not isinstance(doc.get("patches"), list):
        raise ValueError(f"{p}: a loop file is {{\"patches\": [{{\"file\", \"coords\", \"size\"}}, ...]}}")
    known = set(known_files) if known_files is not None else None
    out = []
    for i, entry in enumerate(doc["patches"]):
        if not isinstance(entry, dict):
            raise ValueError(f"{p}: patch {i} is not an object: {entry!r}")
        try:
            patch = Patch.from_json(entry)
        except ValueError as exc:
            raise ValueError(f"{p}: patch {i}: {exc}") from exc
        name = patch.file
        if name != os.path.basename(name) or name in ("", ".", "..") or "\\" in name or os.path.isabs(name):
            raise ValueError(f"{p}: patch {i} names the path {name!r}, which points outside the dataset "
                             "(loop files name pool images by file name only)")
        if known is not None and name not in known:
            raise ValueError(f"{p}: patch {i} names the unknown case {name!r} (not in the training pool)")
        if shape_of is not None:
            shape = tuple(int(s) for s in shape_of(name))
            if any(c + s > d for c, s, d in zip(patch.coords, patch.size, shape)):
                raise ValueError(f"{p}: patch {i} box coords={list(patch.coords)} size={list(patch.size)} lies "
                                 f"outside the image {name} of shape {list(shape)}")
        out.append(patch)
    return out


def read_loops(exp_dir: str | os.PathLike, upto: int, **kw) -> list[list[Patch]]:
    """Loop files 0..upto (inclusive), validated; FileNotFoundError when one is missing."""
    return [read_loop(loop_path(exp_dir, k), **kw) for k in range(int(upto) + 1)]
