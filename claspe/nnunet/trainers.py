"""Active-learning trainers on upstream nnU-Net v2 (METHOD.md §3.5) and the fold-training entry point.

``nnActiveTrainer_200epochs`` = nnU-Net's default trainer with

* 200 epochs x 250 iterations (nnU-Net defaults otherwise: SGD 1e-2 poly, weight decay 3e-5,
  deep supervision, foreground oversampling 0.33),
* Dice + CE with the ignore label masked, **Dice smooth 0** (``noSmooth``), background excluded
  from Dice,
* "better ignore sampling": a random (not foreground-forced) crop of a partially labelled case is
  centred on a random *annotated* voxel plus a uniform random offset of up to half the patch size
  per axis (clamped so the crop stays inside nnU-Net's padded sampling range), so crops concentrate
  on, but are not pinned to, the labelled boxes.

Variants: ``nnActiveTrainer_500epochs``, ``nnActiveTrainer_NoMirroring_200epochs`` (no mirroring in
training or inference) and ``nnActiveTrainer_tiny`` (tests and demo: 2 epochs x 3 iterations, batch 2,
a narrow network — features per stage /4, capped at 32 — and patch at most 48 voxels per axis; it
exercises every code path of the big one in seconds on a CPU).

Seeding (``seed=`` of :func:`create_trainer` / :func:`train_fold`; the protocol passes
``(experiment seed, loop, fold)``): before the network is built, and again at the start of every
epoch, Python's ``random``, numpy's global RNG and torch (``torch.manual_seed``, which also seeds
CUDA) are seeded from ``SeedSequence([*seed, stage])`` (stage = initialisation or epoch number).
nnU-Net 2.8.1 draws everything of training from these global generators: network initialisation
(torch), case choice, foreground oversampling and crop positions of the data loader (numpy; our
better-ignore sampling too) and the batchgeneratorsv2 augmentations (numpy and torch). What that gives:

* **CPU, ``n_proc_da=0``** (the augmentation runs in the training process): the same seed, data and
  torch thread count give bit-identical weights, and a fold resumed from ``checkpoint_latest.pth``
  ends bit-identical to an uninterrupted one (the per-epoch reseed replays the same batches; weights,
  optimizer and logger come from the checkpoint). Different thread counts may round differently.
* **``n_proc_da>0``**: nnU-Net's ``NonDetMultiThreadedAugmenter`` would seed each worker with
  ``np.random.seed(None)`` (OS entropy) and leave torch unseeded; we give every worker a seed derived
  from ``(*seed, worker)``, so each worker's stream of batches is reproducible, but which worker's
  batch the trainer receives next depends on process timing: training is **not** reproducible then
  (nor across a resume, which restarts the workers' streams).
* **GPU**: the seeds are set, but cuDNN/CUDA kernels (e.g. atomics in convolution backward passes)
  are not deterministic unless ``torch.use_deterministic_algorithms(True)`` (and
  ``CUBLAS_WORKSPACE_CONFIG``) is set; we do not force that (it is slower and some kernels would
  raise), so GPU training is seeded but not bit-reproducible. cuDNN flags are left as they are.
* ``seed=None``: nothing is seeded (nnU-Net's own behaviour).

Trainers are looked up in :data:`TRAINERS`, never by nnU-Net's recursive name search.
Folders are explicit (``create_trainer(..., preprocessed_dir=, output_dir=)``); nnU-Net's
environment variables are not read. ``nnUNet_n_proc_DA`` and ``nnUNet_compile`` are replaced by the
``n_proc_da`` and ``compile`` arguments (compile is always off on the CPU).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

log = logging.getLogger(__name__)
_CPU = torch.device("cpu")


_STAGE_INIT, _STAGE_EPOCH, _STAGE_DA_TRAIN, _STAGE_DA_VAL = 0, 1, 2, 3


def _seed_key(seed: int | Sequence[int] | None) -> tuple[int, ...] | None:
    """``seed`` as a tuple of non-negative ints (``SeedSequence`` entropy); None stays None."""
    if seed is None:
        return None
    if isinstance(seed, (int, np.integer)):
        items = (seed,)
    elif isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
        items = tuple(seed)
    else:
        items = ()
    if not items or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in items):
        raise ValueError(f"seed must be an int or a non-empty sequence of ints, got {seed!r}")
    return tuple(int(x) % 2**64 for x in items)


def derive_seed(key: Sequence[int], *stage: int) -> int:
    """A 32-bit seed from ``key`` and ``stage`` (``numpy.random.SeedSequence``), valid for
    ``random.seed``, ``np.random.seed`` and ``torch.manual_seed``."""
    return int(np.random.SeedSequence([*key, *stage]).generate_state(1, dtype=np.uint32)[0])


def seed_everything(seed: int) -> None:
    """Seeds Python's ``random``, numpy's global RNG and torch (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class BetterIgnoreSamplingDataLoader(nnUNetDataLoader):
    """nnU-Net's loader; non-forced crops of ignore-labelled cases start near a random annotated
    voxel with a random offset of up to half the patch size (nnActive's betterIgnoreSampling)."""

    def get_bbox(self, data_shape, force_fg, class_locations, overwrite_class=None, verbose=False):
        if force_fg or not self.has_ignore or class_locations is None:
            return super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)
        locs = class_locations.get(self.annotated_classes_key, [])
        if len(locs) == 0:
            return super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)
        dim = len(data_shape)
        need_to_pad = self.need_to_pad.copy()
        for d in range(dim):
            if need_to_pad[d] + data_shape[d] < self.patch_size[d]:
                need_to_pad[d] = self.patch_size[d] - data_shape[d]
        lbs = [-need_to_pad[i] // 2 for i in range(dim)]
        ubs = [data_shape[i] + need_to_pad[i] // 2 + need_to_pad[i] % 2 - self.patch_size[i] for i in range(dim)]
        voxel = locs[np.random.choice(len(locs))]
        bbox_lbs = []
        for i in range(dim):
            half = int(self.patch_size[i]) // 2
            offset = np.random.randint(-half, half + 1) if half > 0 else 0
            start = int(voxel[i + 1]) - half + offset
            bbox_lbs.append(int(min(max(start, lbs[i]), ubs[i])))
        bbox_ubs = [bbox_lbs[i] + self.patch_size[i] for i in range(dim)]
        return bbox_lbs, bbox_ubs


_FOLDER_ATTRS = ("preprocessed_dataset_folder_base", "preprocessed_dataset_folder", "output_folder_base",
                 "output_folder")


def _folder_property(name: str):
    def get(self):
        explicit = self.__dict__.get("_claspe_folders", {})
        if name in explicit:
            return explicit[name]
        return self.__dict__.get("_nnunet_" + name)

    def set_(self, value):
        self.__dict__["_nnunet_" + name] = value

    return property(get, set_)


class nnActiveTrainer(nnUNetTrainer):  # noqa: N801 - nnU-Net naming
    """Base AL trainer: ignore label, Dice smooth 0, better ignore sampling, explicit folders."""

    NUM_EPOCHS = 200
    ITERATIONS = 250
    VAL_ITERATIONS = 50
    MIRRORING = True
    PLOT_EVERY = 10
    PLOT_LAST = True

    preprocessed_dataset_folder_base = _folder_property("preprocessed_dataset_folder_base")
    preprocessed_dataset_folder = _folder_property("preprocessed_dataset_folder")
    output_folder_base = _folder_property("output_folder_base")
    output_folder = _folder_property("output_folder")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = _CPU):
        plans = self.adapt_plans(plans, configuration)
        with contextlib.redirect_stdout(io.StringIO()):
            super().__init__(plans, configuration, fold, dataset_json, device)
        if device.type == "cuda" and not self.is_ddp:
            self.device = device  # nnU-Net would force cuda:0; we honour cuda:N
        self.num_epochs = self.NUM_EPOCHS
        self.num_iterations_per_epoch = self.ITERATIONS
        self.num_val_iterations_per_epoch = self.VAL_ITERATIONS
        self.n_proc_da = int(self.__dict__.get("_claspe_n_proc_da", 0))
        self.compile_network = bool(self.__dict__.get("_claspe_compile", False))
        #: seed key (``(experiment seed, loop, fold)`` in the protocol) or None (unseeded)
        self.seed_key: tuple[int, ...] | None = _seed_key(self.__dict__.get("_claspe_seed"))
        self.epoch_hook: Callable[[int], None] | None = None
        self.progress = False
        # nnU-Net redraws a large progress.png after every epoch (seconds on a CPU); we draw it every
        # PLOT_EVERY epochs and after the last one
        plot = self.logger.plot_progress_png

        def plot_sometimes(folder):
            e = self.current_epoch
            if (e + 1) % self.PLOT_EVERY == 0 or (self.PLOT_LAST and e >= self.num_epochs - 1):
                plot(folder)

        self.logger.plot_progress_png = plot_sometimes

    # --- configuration -------------------------------------------------------------------------------
    @classmethod
    def adapt_plans(cls, plans: dict, configuration: str) -> dict:
        """Plans as this trainer trains them (a deep copy; the tiny trainer shrinks the network)."""
        import copy

        plans = copy.deepcopy(plans)
        plans.setdefault("continue_training", False)  # nnU-Net 2.8 pops this key in __init__
        return plans

    def _do_i_compile(self):
        return self.compile_network and self.device.type == "cuda" if hasattr(self, "compile_network") else False

    def print_to_log_file(self, *args, also_print_to_console=False, add_timestamp=True):
        if self.output_folder is None:
            return
        super().print_to_log_file(*args, also_print_to_console=False, add_timestamp=add_timestamp)

    def _build_loss(self):
        loss = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 0.0, "do_bg": False,
                               "ddp": self.is_ddp}, {}, weight_ce=1, weight_dice=1,
                              ignore_label=self.label_manager.ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
        if self.enable_deep_supervision:
            scales = self._get_deep_supervision_scales()
            weights = np.array([1 / (2**i) for i in range(len(scales))])
            weights[-1] = 0
            loss = DeepSupervisionWrapper(loss, weights / weights.sum())
        return loss

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):  # noqa: N802 - nnU-Net name
        rot, dummy2d, initial, mirror = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.MIRRORING:
            mirror = None
            self.inference_allowed_mirroring_axes = None
        return rot, dummy2d, initial, mirror

    def get_dataloaders(self):
        from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
        from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch_size = self.configuration_manager.patch_size
        ds_scales = self._get_deep_supervision_scales()
        rot, dummy2d, initial_patch_size, mirror_axes = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        lm = self.label_manager
        regions = lm.foreground_regions if lm.has_regions else None
        tr_transforms = self.get_training_transforms(
            patch_size, rot, ds_scales, mirror_axes, dummy2d, use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            is_cascaded=self.is_cascaded, foreground_labels=lm.foreground_labels, regions=regions,
            ignore_label=lm.ignore_label)
        val_transforms = self.get_validation_transforms(ds_scales, is_cascaded=self.is_cascaded,
                                                        foreground_labels=lm.foreground_labels, regions=regions,
                                                        ignore_label=lm.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        dl_tr = BetterIgnoreSamplingDataLoader(dataset_tr, self.batch_size, initial_patch_size, patch_size, lm,
                                               oversample_foreground_percent=self.oversample_foreground_percent,
                                               transforms=tr_transforms,
                                               probabilistic_oversampling=self.probabilistic_oversampling)
        dl_val = BetterIgnoreSamplingDataLoader(dataset_val, self.batch_size, patch_size, patch_size, lm,
                                                oversample_foreground_percent=self.oversample_foreground_percent,
                                                transforms=val_transforms,
                                                probabilistic_oversampling=self.probabilistic_oversampling)
        n = self.n_proc_da
        if n == 0:
            gen_tr, gen_val = SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
        else:
            pin = self.device.type == "cuda"
            n_val = max(1, n // 2)
            seeds_tr = seeds_val = None  # nnU-Net: np.random.seed(None) in each worker
            if self.seed_key is not None:  # reproducible per worker; the interleaving is not (see module doc)
                seeds_tr = [derive_seed(self.seed_key, _STAGE_DA_TRAIN, i) for i in range(n)]
                seeds_val = [derive_seed(self.seed_key, _STAGE_DA_VAL, i) for i in range(n_val)]
            gen_tr = NonDetMultiThreadedAugmenter(dl_tr, None, n, max(6, n // 2), seeds_tr, pin_memory=pin,
                                                  wait_time=0.002)
            gen_val = NonDetMultiThreadedAugmenter(dl_val, None, n_val, max(3, n // 4), seeds_val, pin_memory=pin,
                                                   wait_time=0.002)
        next(gen_tr)
        next(gen_val)
        return gen_tr, gen_val

    def _seed(self, *stage: int) -> None:
        if self.seed_key is not None:
            seed_everything(derive_seed(self.seed_key, *stage))

    def plot_network_architecture(self):  # hiddenlayer is not a dependency; skip quietly
        return None

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written atomically (temp file + os.replace)."""
        tmp = f"{filename}.tmp-{os.getpid()}"
        super().save_checkpoint(tmp)
        if os.path.isfile(tmp):
            os.replace(tmp, filename)

    def run_training(self):
        from tqdm import tqdm

        self._seed(_STAGE_INIT)  # network initialisation (a resumed run loads its weights instead)
        self.on_train_start()
        for epoch in tqdm(range(self.current_epoch, self.num_epochs), desc=f"train fold {self.fold}",
                          disable=not self.progress, leave=False, initial=self.current_epoch, total=self.num_epochs):
            self._seed(_STAGE_EPOCH, epoch)  # same batches whether or not the run was resumed
            self.on_epoch_start()
            self.on_train_epoch_start()
            outs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                vouts = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(vouts)
            self.on_epoch_end()
            if self.epoch_hook is not None:
                self.epoch_hook(epoch)
        self.on_train_end()


class nnActiveTrainer_200epochs(nnActiveTrainer):  # noqa: N801
    NUM_EPOCHS = 200


class nnActiveTrainer_500epochs(nnActiveTrainer):  # noqa: N801
    NUM_EPOCHS = 500


class nnActiveTrainer_NoMirroring_200epochs(nnActiveTrainer):  # noqa: N801
    NUM_EPOCHS = 200
    MIRRORING = False


class nnActiveTrainer_tiny(nnActiveTrainer):  # noqa: N801
    """For tests and the demo: 2 epochs x 3 iterations (1 validation iteration), batch 2, a narrow
    network, patch <= 48 voxels per axis, checkpoint every epoch, no progress.png."""

    NUM_EPOCHS = 2
    ITERATIONS = 3
    VAL_ITERATIONS = 1
    MAX_PATCH = 48
    PLOT_EVERY = 10**9  # no progress.png (it costs more than the training)
    PLOT_LAST = False

    def __init__(self, plans, configuration, fold, dataset_json, device=_CPU):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1

    @classmethod
    def adapt_plans(cls, plans: dict, configuration: str) -> dict:
        plans = super().adapt_plans(plans, configuration)
        cfg = plans["configurations"][configuration]
        if cfg.get("_claspe_tiny"):
            return plans
        kw = cfg["architecture"]["arch_kwargs"]
        kw["features_per_stage"] = [max(4, min(32, int(f) // 4)) for f in kw["features_per_stage"]]
        strides = np.array(kw["strides"], dtype=int)
        total = np.prod(strides, axis=0)
        cfg["patch_size"] = [int(max(t, (min(int(p), cls.MAX_PATCH) // t) * t)) for p, t in zip(cfg["patch_size"], total)]
        cfg["batch_size"] = 2
        cfg["_claspe_tiny"] = True
        return plans


#: our trainer table (name -> class); the only way trainers are resolved
TRAINERS: dict[str, type[nnActiveTrainer]] = {
    "nnActiveTrainer_200epochs": nnActiveTrainer_200epochs,
    "nnActiveTrainer_500epochs": nnActiveTrainer_500epochs,
    "nnActiveTrainer_NoMirroring_200epochs": nnActiveTrainer_NoMirroring_200epochs,
    "nnActiveTrainer_tiny": nnActiveTrainer_tiny,
}


def get_trainer_class(name: str) -> type[nnActiveTrainer]:
    try:
        return TRAINERS[name]
    except KeyError:
        raise ValueError(f"unknown trainer {name!r}; known: {sorted(TRAINERS)}") from None


def create_trainer(name: str, *, plans: dict, dataset_json: dict, configuration: str, fold: int,
                   preprocessed_dir: str | os.PathLike, output_dir: str | os.PathLike, device: str = "cpu",
                   n_proc_da: int = 0, compile: bool = False,
                   seed: int | Sequence[int] | None = None) -> nnActiveTrainer:
    """Builds trainer ``name`` with explicit folders: ``preprocessed_dir`` holds
    ``dataset_fingerprint.json``, ``splits_final.json`` and ``<data_identifier>/``; the model goes to
    ``output_dir/fold_<fold>/`` (plans.json and dataset.json to ``output_dir``). ``seed`` (an int or
    a tuple of ints, e.g. ``(experiment seed, loop, fold)``) seeds the training; what that makes
    reproducible is in the module docstring. None: unseeded."""
    cls = get_trainer_class(name)
    _seed_key(seed)  # a bad seed fails before any folder is made
    cm_id = plans["configurations"][configuration]["data_identifier"]
    trainer = cls.__new__(cls)
    trainer._claspe_folders = {
        "preprocessed_dataset_folder_base": str(preprocessed_dir),
        "preprocessed_dataset_folder": str(Path(preprocessed_dir) / cm_id),
        "output_folder_base": str(output_dir),
        "output_folder": str(Path(output_dir) / f"fold_{fold}"),
    }
    trainer._claspe_n_proc_da = int(n_proc_da)
    trainer._claspe_compile = bool(compile)
    trainer._claspe_seed = seed
    trainer.__init__(plans, configuration, fold, dataset_json, torch.device(device))
    return trainer


def train_fold(name: str, *, plans: dict, dataset_json: dict, configuration: str, fold: int,
               preprocessed_dir: str | os.PathLike, output_dir: str | os.PathLike, device: str = "cpu",
               n_proc_da: int = 0, compile: bool = False, progress: bool = False,
               epoch_hook: Callable[[int], None] | None = None, seed: int | Sequence[int] | None = None) -> Path:
    """Trains one fold; resumes from ``checkpoint_latest.pth`` when a previous run was interrupted.
    ``seed``: see :func:`create_trainer` (the protocol passes ``(experiment seed, loop, fold)``).

    Returns the path of ``checkpoint_final.pth`` (already there: nothing is done).
    """
    final = Path(output_dir) / f"fold_{fold}" / "checkpoint_final.pth"
    if final.is_file():
        return final
    trainer = create_trainer(name, plans=plans, dataset_json=dataset_json, configuration=configuration, fold=fold,
                             preprocessed_dir=preprocessed_dir, output_dir=output_dir, device=device,
                             n_proc_da=n_proc_da, compile=compile, seed=seed)
    trainer.progress = progress
    trainer.epoch_hook = epoch_hook
    latest = Path(output_dir) / f"fold_{fold}" / "checkpoint_latest.pth"
    if latest.is_file():
        try:
            trainer.load_checkpoint(str(latest))
            log.info("fold %d: resuming from epoch %d", fold, trainer.current_epoch)
        except Exception as exc:  # a checkpoint from another version/trainer: start over
            log.warning("fold %d: cannot resume from %s (%s); training from scratch", fold, latest, exc)
            trainer = create_trainer(name, plans=plans, dataset_json=dataset_json, configuration=configuration,
                                     fold=fold, preprocessed_dir=preprocessed_dir, output_dir=output_dir,
                                     device=device, n_proc_da=n_proc_da, compile=compile, seed=seed)
            trainer.progress = progress
            trainer.epoch_hook = epoch_hook
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.run_training()
    if not final.is_file():
        raise RuntimeError(f"training of fold {fold} finished without {final}")
    return final
