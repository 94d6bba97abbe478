"""The AL trainers (no training here; the end-to-end test trains): lookup table, loss, sampling,
tiny plan adaptation, explicit folders without environment variables."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.nnunet

# nnU-Net 2.8.1 ExperimentPlanner output for the synthetic data (3d_fullres only)
PLANS = json.loads("""{"dataset_name": "Dataset999_plan", "plans_name": "nnUNetPlans",
 "original_median_spacing_after_transp": [2.5, 1.0, 1.0], "original_median_shape_after_transp": [32, 48, 48],
 "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
 "configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
 "batch_size": 2, "patch_size": [32, 48, 48], "median_image_size_in_voxels": [32.0, 48.0, 48.0], "spacing": [2.5, 1.0, 1.0],
 "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [false],
 "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
 "resampling_fn_data_kwargs": {"is_seg": false, "order": 3, "order_z": 0, "force_separate_z": null},
 "resampling_fn_seg_kwargs": {"is_seg": true, "order": 1, "order_z": 0, "force_separate_z": null},
 "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
 "resampling_fn_probabilities_kwargs": {"is_seg": false, "order": 1, "order_z": 0, "force_separate_z": null},
 "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
 "arch_kwargs": {"n_stages": 4, "features_per_stage": [32, 64, 128, 256], "conv_op": "torch.nn.modules.conv.Conv3d",
 "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
 "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2], "conv_bias": true,
 "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": true},
 "dropout_op": null, "dropout_op_kwargs": null, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": true}},
 "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}, "batch_dice": false}},
 "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
 "foreground_intensity_properties_per_channel": {"0": {"max": 4.9, "mean": 1.59, "median": 1.61, "min": -0.87,
 "percentile_00_5": 0.14, "percentile_99_5": 3.09, "std": 0.52}}}""")
DATASET_JSON = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "organ": 1, "lesion": 2, "vessel": 3,
                                                          "ignore": 4}, "numTraining": 9, "file_ending": ".nii.gz"}


def test_trainer_table():
    from claspe.nnunet.trainers import TRAINERS, get_trainer_class, nnActiveTrainer

    for name in ("nnActiveTrainer_200epochs", "nnActiveTrainer_500epochs", "nnActiveTrainer_NoMirroring_200epochs",
                 "nnActiveTrainer_tiny"):
        assert issubclass(TRAINERS[name], nnActiveTrainer) and get_trainer_class(name).__name__ == name
    assert get_trainer_class("nnActiveTrainer_200epochs").NUM_EPOCHS == 200
    assert get_trainer_class("nnActiveTrainer_500epochs").NUM_EPOCHS == 500
    with pytest.raises(ValueError, match="unknown trainer 'nnUNetTrainer'"):
        get_trainer_class("nnUNetTrainer")


def test_al_trainer_settings_explicit_folders_no_env(tmp_path):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from claspe.nnunet.trainers import create_trainer

    env_before = {k: v for k, v in os.environ.items() if k.startswith("nnUNet")}
    t = create_trainer("nnActiveTrainer_200epochs", plans=copy.deepcopy(PLANS), dataset_json=DATASET_JSON,
                       configuration="3d_fullres", fold=1, preprocessed_dir=tmp_path / "pre",
                       output_dir=tmp_path / "out")
    assert {k: v for k, v in os.environ.items() if k.startswith("nnUNet")} == env_before
    assert t.output_folder == str(tmp_path / "out" / "fold_1")
    assert t.preprocessed_dataset_folder == str(tmp_path / "pre" / "nnUNetPlans_3d_fullres")
    assert (tmp_path / "out" / "fold_1").is_dir()
    assert (t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch) == (200, 250, 50)
    assert t.initial_lr == 1e-2 and t.weight_decay == 3e-5 and t.oversample_foreground_percent == 0.33
    assert t.enable_deep_supervision and not t._do_i_compile()
    assert t.label_manager.ignore_label == 4
    loss = t._build_loss()
    assert isinstance(loss, DeepSupervisionWrapper)
    inner = loss.loss
    assert inner.ignore_label == 4 and inner.dc.smooth == 0.0 and inner.dc.do_bg is False
    # plans are not modified for the full trainer
    assert t.configuration_manager.patch_size == [32, 48, 48]


def test_tiny_trainer_shrinks_network_and_patch():
    from claspe.nnunet.trainers import get_trainer_class

    cls = get_trainer_class("nnActiveTrainer_tiny")
    p = cls.adapt_plans(PLANS, "3d_fullres")
    assert PLANS["configurations"]["3d_fullres"]["patch_size"] == [32, 48, 48]  # input untouched
    c = p["configurations"]["3d_fullres"]
    assert c["architecture"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 32]
    strides = np.prod(np.array(c["architecture"]["arch_kwargs"]["strides"]), axis=0)
    assert all(s % t == 0 and s <= cls.MAX_PATCH for s, t in zip(c["patch_size"], strides))
    assert c["batch_size"] == 2 and p["continue_training"] is False
    assert cls.adapt_plans(p, "3d_fullres") == p  # idempotent
    assert (cls.NUM_EPOCHS, cls.ITERATIONS) == (2, 3)


def _loader():
    from claspe.nnunet.trainers import BetterIgnoreSamplingDataLoader

    dl = BetterIgnoreSamplingDataLoader.__new__(BetterIgnoreSamplingDataLoader)
    dl.patch_size = (8, 16, 16)
    dl.need_to_pad = np.array([0, 0, 0])
    dl.has_ignore = True
    dl.annotated_classes_key = (-1, 0, 1, 2, 3)
    return dl


def test_better_ignore_sampling_is_near_annotated_voxels():
    dl = _loader()
    shape = (20, 40, 40)
    voxel = np.array([10, 20, 5])
    locs = {dl.annotated_classes_key: np.array([[0, *voxel]]), 1: np.array([[0, 12, 30, 30]])}
    np.random.seed(0)
    starts = []
    for _ in range(400):
        lbs, ubs = dl.get_bbox(shape, False, locs)
        lbs = np.array(lbs)
        assert np.all(lbs >= 0) and np.all(lbs + dl.patch_size <= shape)  # inside the sampling range
        assert np.all(np.array(ubs) - lbs == dl.patch_size)
        starts.append(lbs)
    starts = np.array(starts)
    half = np.array(dl.patch_size) // 2
    # centre = start + half lies within half a patch of the annotated voxel (before clamping to the image)
    centres = starts + half
    unclamped = (starts > 0) & (starts + dl.patch_size < shape)
    assert np.all(np.abs(centres - voxel)[unclamped] <= half[np.nonzero(unclamped)[1]])
    assert all(len(np.unique(starts[:, a])) > 3 for a in range(3))  # random offsets, not pinned to the voxel
    # nnU-Net's own rule for foreground-forced crops is kept: centred exactly on a class voxel
    lbs, _ = dl.get_bbox(shape, True, {1: np.array([[0, 12, 30, 30]]), dl.annotated_classes_key: []},
                         overwrite_class=1)
    assert list(lbs) == [12 - 4, 30 - 8, 30 - 8]


def test_better_ignore_sampling_falls_back_without_annotations():
    dl = _loader()
    np.random.seed(1)
    with pytest.warns(UserWarning, match="No annotated pixels"):
        lbs, ubs = dl.get_bbox((20, 40, 40), False, {dl.annotated_classes_key: [], 1: []})
    assert np.all(np.array(ubs) - np.array(lbs) == dl.patch_size)
