"""ClaSP PE: Class-stratified Scheduled Power Predictive Entropy for 3D active learning.

Public entry points: :class:`claspe.Patch`, :mod:`claspe.ops` (the query engine),
:mod:`claspe.strategies` (query strategies), :mod:`claspe.protocol` (the nnActive protocol),
:mod:`claspe.metrics` and the ``claspe`` command line (:mod:`claspe.cli`).
"""

from claspe._version import __version__
from claspe.types import Patch

__all__ = ["Patch", "__version__"]
