"""Prediction with the fold models of one AL loop (nnU-Net v2 ``nnUNetPredictor``, explicit init).

* :class:`FoldModels` loads ``checkpoint_final.pth`` of every fold from a model folder written by
  :func:`claspe.nnunet.trainers.train_fold`, builds the network through *our* trainer class (no name
  lookup) with deep supervision disabled, and predicts with nnU-Net's sliding window.
* :meth:`FoldModels.lazy_probabilities` returns a Sequence whose item ``f`` runs fold ``f``'s
  sliding-window prediction of one image and returns its softmax ``[C, z, y, x]`` (float32, image
  array order and shape) — the query engine reads each item exactly once, so each fold's softmax goes
  straight into its accumulator and no full-pool probability file is ever written. The image is
  read and preprocessed once per image, not once per fold.
* :meth:`FoldModels.ensemble_segmentation` is nnU-Net's fold ensemble (logits averaged over the
  folds, then argmax), used for the held-out evaluation.

Query predictions follow nnActive (tile step 0.75, Gaussian, no mirroring); evaluation predictions
follow nnActive's ``step_performance`` (tile step 0.5, Gaussian, mirroring TTA), configurable.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from claspe.nnunet.trainers import get_trainer_class

log = logging.getLogger(__name__)


class FoldModels:
    """The fold models of one loop. ``model_dir`` holds ``plans.json``, ``dataset.json`` and
    ``fold_<f>/checkpoint_final.pth`` for each ``f`` in ``folds``."""

    def __init__(self, model_dir: str | os.PathLike, *, folds: Sequence[int], trainer: str,
                 configuration: str = "3d_fullres", device: str = "cpu", tile_step_size: float = 0.75,
                 use_gaussian: bool = True, use_mirroring: bool = False,
                 checkpoint: str = "checkpoint_final.pth") -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.model_dir = Path(model_dir)
        plans = json.loads((self.model_dir / "plans.json").read_text())
        self.dataset_json = json.loads((self.model_dir / "dataset.json").read_text())
        self.plans_manager = PlansManager(plans)
        self.configuration_manager = self.plans_manager.get_configuration(configuration)
        self.label_manager = self.plans_manager.get_label_manager(self.dataset_json)
        cls = get_trainer_class(trainer)
        n_in = determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)
        network = cls.build_network_architecture(self.plans_manager, self.configuration_manager, n_in,
                                                 self.label_manager.num_segmentation_heads, False)
        self.params = []
        mirror_axes = None
        for f in folds:
            ck = self.model_dir / f"fold_{f}" / checkpoint
            if not ck.is_file():
                raise FileNotFoundError(f"model checkpoint {ck} not found")
            state = torch.load(ck, map_location="cpu", weights_only=False)
            self.params.append(state["network_weights"])
            mirror_axes = state.get("inference_allowed_mirroring_axes", mirror_axes)
        self.device = torch.device(device)
        with contextlib.redirect_stdout(io.StringIO()):
            self.predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=use_gaussian,
                                             use_mirroring=use_mirroring and mirror_axes is not None,
                                             perform_everything_on_device=self.device.type == "cuda",
                                             device=self.device, verbose=False, verbose_preprocessing=False,
                                             allow_tqdm=False)
        self.predictor.manual_initialization(network.to(self.device), self.plans_manager, self.configuration_manager,
                                             self.params, self.dataset_json, trainer, mirror_axes)
        self.predictor.network.eval()

    @property
    def n_folds(self) -> int:
        return len(self.params)

    def preprocess(self, image_files: Sequence[str]) -> tuple[torch.Tensor, dict]:
        """Reads and preprocesses one case (nnU-Net ``DefaultPreprocessor``)."""
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

        pp = DefaultPreprocessor(verbose=False)
        data, _, props = pp.run_case([str(p) for p in image_files], None, self.plans_manager,
                                     self.configuration_manager, self.dataset_json)
        return torch.from_numpy(data), props

    def _load(self, fold_index: int) -> None:
        net = self.predictor.network
        net = getattr(net, "_orig_mod", net)
        net.load_state_dict(self.params[fold_index])

    def fold_probabilities(self, data: torch.Tensor, props: dict, fold_index: int) -> np.ndarray:
        """Softmax of fold ``fold_index`` at the image's shape: ``[C, z, y, x]`` float32."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        self._load(fold_index)
        with torch.no_grad():
            logits = self.predictor.predict_sliding_window_return_logits(data).to("cpu")
        _, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, self.label_manager, props,
            return_probabilities=True, num_threads_torch=torch.get_num_threads())
        return np.ascontiguousarray(probs, dtype=np.float32)

    def lazy_probabilities(self, image_files: Sequence[str]) -> LazyFoldProbabilities:
        return LazyFoldProbabilities(self, image_files)

    def ensemble_segmentation(self, image_files: Sequence[str]) -> tuple[np.ndarray, dict]:
        """nnU-Net's fold ensemble (mean logits over folds) as a label array in image array order."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        data, props = self.preprocess(image_files)
        with torch.no_grad():
            logits = self.predictor.predict_logits_from_preprocessed_data(data).to("cpu")
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, self.label_manager, props,
            return_probabilities=False, num_threads_torch=torch.get_num_threads())
        return np.asarray(seg), props


class LazyFoldProbabilities(Sequence):
    """Item ``f`` = fold ``f``'s softmax of one image, computed when accessed (never cached)."""

    def __init__(self, models: FoldModels, image_files: Sequence[str]) -> None:
        self._models = models
        self._files = list(image_files)
        self._pre: tuple[torch.Tensor, dict] | None = None
        self.accessed: list[int] = []

    def __len__(self) -> int:
        return self._models.n_folds

    def __getitem__(self, f):
        if isinstance(f, slice):
            return [self[i] for i in range(*f.indices(len(self)))]
        f = int(f)
        if f < 0:
            f += len(self)
        if not 0 <= f < len(self):
            raise IndexError(f"fold index {f} out of range (0..{len(self) - 1})")
        if self._pre is None:
            self._pre = self._models.preprocess(self._files)
        self.accessed.append(f)
        out = self._models.fold_probabilities(self._pre[0], self._pre[1], f)
        if f == len(self) - 1:
            self._pre = None  # last fold: free the preprocessed image
        return out
