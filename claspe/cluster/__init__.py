"""Experiment grids: datasets x label regimes x strategies x seeds, run locally or on SLURM.

``claspe grid SPEC`` (see :mod:`claspe.cluster.spec` for the file format and the precedence rule,
:mod:`claspe.cluster.runner` for the grid folder layout).  Python::

    from claspe.cluster import run_grid, load_spec, expand
    result = run_grid("grid.yaml", executor="local")
    result.failed   # outcomes of the tasks that failed, with their log paths

Importing this package is light (no submitit, torch or nnunetv2); the runner is loaded on use.
"""

from __future__ import annotations

from claspe.cluster.cli import register
from claspe.cluster.spec import GridEntry, GridSpec, expand, experiment_status, load_spec, parse_spec

__all__ = ["register", "GridEntry", "GridSpec", "expand", "experiment_status", "load_spec", "parse_spec",
           "run_grid", "plan", "LocalOptions", "SlurmOptions"]


def __getattr__(name):  # lazy: the runner imports submitit
    if name in ("run_grid", "plan", "GridResult"):
        from claspe.cluster import driver

        return getattr(driver, name)
    if name in ("LocalOptions", "SlurmOptions", "SlurmUnavailableError", "ExperimentTask"):
        from claspe.cluster import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'claspe.cluster' has no attribute {name!r}")
