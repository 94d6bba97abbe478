"""The only part of ClaSP PE that imports nnunetv2 (pinned 2.8.1).

* :mod:`claspe.nnunet.trainers` — the AL trainers (``nnActiveTrainer_200epochs`` and friends, and the
  tiny ``nnActiveTrainer_tiny`` for tests/demo), resolved through our own table
  :data:`claspe.nnunet.trainers.TRAINERS`, never through nnU-Net's name lookup (which imports every
  trainer module, some of them needing torchvision).
* :mod:`claspe.nnunet.plan` — fingerprint + experiment planning (in a child process, see below),
  in-process preprocessing and resampling of single cases.
* :mod:`claspe.nnunet.predict` — fold-wise sliding-window prediction (softmax per fold, handed to the
  query engine one fold at a time) and the fold-ensemble segmentation of the held-out split.
* :mod:`claspe.nnunet.evaluate` — per-case, per-class Dice exactly as nnU-Net's ``compute_metrics``.

No environment mutation: nnU-Net v2 reads ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results``
from ``os.environ``. Training, preprocessing and prediction here take explicit folders and never
consult those variables (the trainer's folder attributes are overwritten right after construction,
``nnUNet_n_proc_DA`` and ``nnUNet_compile`` are replaced by explicit arguments). Fingerprint
extraction and experiment planning have no such entry point, so :func:`claspe.nnunet.plan.plan_resample_plan`
runs them in a child process whose environment (only) carries the paths. Several experiments can
therefore run at the same time in different processes, and one process can run several in sequence.

Nothing here is imported by ``import claspe``; import the sub-modules when needed (they import torch).
"""
