"""Loads the compiled engine ``claspe._C``.

``HAS_EXT`` tells whether the extension was imported, ``HAS_CUDA`` whether its CUDA part was built
(not whether a GPU is present: see ``build_info()["cuda_device_count"]``).  Without the extension the
package falls back to the NumPy reference (``claspe.reference``) with a warning at first use.
"""

from __future__ import annotations

import logging
import warnings

log = logging.getLogger(__name__)

try:  # pragma: no cover - depends on the build
    from claspe import _C  # type: ignore[attr-defined]

    HAS_EXT = True
    IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the build
    _C = None
    HAS_EXT = False
    IMPORT_ERROR = str(exc)

HAS_CUDA = bool(HAS_EXT and getattr(_C, "HAS_CUDA", False))

_warned = False


def warn_fallback() -> None:
    """Warn once that the slow NumPy path is used because the extension is missing."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "claspe._C is not built (" + str(IMPORT_ERROR) + "); using the NumPy reference, "
            "which is correct but slow. Build it with `pip install -e .` (needs g++).",
            RuntimeWarning,
            stacklevel=3,
        )


def build_info() -> dict:
    """What was built: extension, CUDA part, archs, compiler flags, OpenMP threads."""
    if not HAS_EXT:
        return {"extension": False, "import_error": IMPORT_ERROR, "cuda_built": False}
    info = dict(_C.build_info())
    info["extension"] = True
    return info
