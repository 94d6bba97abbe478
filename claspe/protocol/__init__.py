"""The nnActive protocol: experiment folder, state, splits, starting budget, oracle, loop driver.

Public API (imported lazily, so ``import claspe.protocol`` stays light)::

    from claspe.protocol import ExperimentConfig, run_experiment, is_finished, prepare_dataset
    exp_dir = run_experiment(config, data_root="prepared", exp_root="runs", progress=True)

* :func:`run_experiment` (:mod:`.experiment`) — create or resume one experiment; returns its folder.
* :func:`prepare_dataset` (:mod:`.prepare`) — held-out split, nnU-Net plan, resampling.
* :func:`recommend_settings` (:mod:`.rule`) — the ``claspe plan`` rule.
* :func:`run_demo` (:mod:`.demo`) — the ``claspe demo`` pipeline.
* :mod:`.config` — :class:`ExperimentConfig`, the folder layout, :func:`is_finished`.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ExperimentConfig": "claspe.protocol.config",
    "is_finished": "claspe.protocol.config",
    "load_config": "claspe.protocol.config",
    "result_path": "claspe.protocol.config",
    "run_experiment": "claspe.protocol.experiment",
    "prepare_dataset": "claspe.protocol.prepare",
    "load_prepared": "claspe.protocol.prepare",
    "recommend_settings": "claspe.protocol.rule",
    "run_demo": "claspe.protocol.demo",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'claspe.protocol' has no attribute {name!r}")
