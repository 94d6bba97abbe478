"""The resumable AL driver: :func:`run_experiment` (METHOD.md §3.1 step 4 - §3.6).

Experiment folder ``<exp_root>/<config.name>/`` (contract in :mod:`claspe.protocol.config`), plus
our working files under ``work/``::

    work/dataset.json            prepared dataset.json + the ``ignore`` label (max label + 1)
    work/plans.json              the prepared dataset's nnU-Net plans
    work/labelsTr/               partial labels of the current loop (ground truth in boxes, ignore elsewhere)
    work/preprocessed/loop_XXX/  nnU-Net preprocessed training set + splits_final.json (deleted after training)
    work/preprocessed_cache/     preprocessed cases keyed by their annotation (see ``_Run.preprocess``;
                                 deleted after the last loop's training)
    work/models/loop_XXX/        fold models (deleted after the loop's evaluation and query unless
                                 ``config.extra["keep_models"]``)
    work/predictions/loop_XXX/   fold-ensemble predictions of the held-out split

Steps, each recorded in ``state.json`` only after its outputs are in place::

    setup -> loop_000 (starting budget) -> for k in 0..query_steps-1:
        annotate_k -> preprocess_k (+ class-aware CV split) -> train_k_fold{f} for each fold
        -> evaluate_k (results/loop_k.json) -> query_{k+1} (loop_{k+1}.json, not after the last loop)

Fold training is seeded from ``(config.seed, k, fold)`` (see :mod:`claspe.nnunet.trainers`): on the
CPU without data-augmentation workers, two experiments whose loop-``k`` annotations are equal (e.g.
the same starting budget) train bit-identical loop-``k`` models.

Re-running resumes at the first unrecorded step (a fold whose training was cut resumes from its
``checkpoint_latest.pth``); a finished experiment returns at once. The run holds an exclusive lock
on the folder. No global state: nnU-Net gets explicit folders (see :mod:`claspe.nnunet`), logging
goes to ``log.txt`` through a handler attached for the duration of the call, and different
experiments can run concurrently in different processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from claspe.protocol.config import ExperimentConfig, is_finished, result_path
from claspe.protocol.loops import loop_path, read_loop, write_loop
from claspe.protocol.state import ExperimentLock, State

log = logging.getLogger(__name__)

#: test hook: ``CLASPE_TEST_PAUSE="<stage>[,<stage>...]:<marker dir>"`` makes the run write
#: ``<dir>/<stage>`` and sleep when it reaches ``stage`` (``train``: after a training epoch,
#: ``predict``: inside the query's fold prediction, ``annotate``: after the first label file) for the
#: first time (no marker yet), so a test can SIGKILL it exactly there. Unset in normal use.
_PAUSE_ENV = "CLASPE_TEST_PAUSE"


def _pause_point(stage: str) -> None:
    spec = os.environ.get(_PAUSE_ENV)
    if not spec or ":" not in spec:
        return
    want, folder = spec.rsplit(":", 1)
    if stage not in want.split(","):
        return
    marker = Path(folder) / stage
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    time.sleep(600)


class GroundTruth(Mapping):
    """Lazy mapping file name -> full ground-truth label array of the pool (the oracle).

    Every access reads the label file; nothing is cached, so the pool's labels are in memory only
    while a step uses them (the starting budget, a label-based random query, one image at a time in
    the annotation) and not during training and prediction. The cost is one NIfTI read per image and
    use, small next to a training.
    """

    def __init__(self, labels_dir: Path, files: list[str]) -> None:
        self._dir = Path(labels_dir)
        self._files = list(files)
        self._known = frozenset(self._files)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._known:
            raise KeyError(key)
        from claspe.data.io import read_image

        return read_image(self._dir / key).array

    def __contains__(self, key) -> bool:  # no file read (Mapping's default would load the array)
        return key in self._known

    def __iter__(self):
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no extra disk; nnU-Net only reads its preprocessed files), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _nan_to_none(x):
    """NaN -> None (JSON ``null``), recursively through dicts."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    return x


class _Run:
    def __init__(self, config: ExperimentConfig, data_root: Path, exp: Path, progress: bool) -> None:
        from claspe.protocol.prepare import load_prepared

        self.cfg = config
        self.exp = exp
        self.progress = progress
        self.ds_dir, self.meta = load_prepared(data_root, config.dataset)
        self.work = exp / "work"
        self.state = State(exp)
        self.fe = self.meta["file_ending"]
        self.pool_files = sorted(self.meta["shapes"].keys() & {c + self.fe for c in self.meta["split"]["train"]})
        self.val_cases = list(self.meta["split"]["val"])
        self.shapes = {f: tuple(s) for f, s in self.meta["shapes"].items()}
        dj = json.loads((self.ds_dir / "dataset.json").read_text())
        labels = {k: v for k, v in dj["labels"].items()}
        self.fg_classes = sorted(int(v) for k, v in labels.items() if k != "background")
        self.ignore_label = max(int(v) for v in labels.values()) + 1
        self.gt = GroundTruth(self.ds_dir / "labelsTr", self.pool_files)
        self.n_channels = len(dj["channel_names"])
        from claspe.nnunet.trainers import get_trainer_class
        from claspe.strategies import get_strategy

        get_strategy(config.strategy)  # unknown names fail now, not after the first training
        get_trainer_class(config.trainer)
        folds = int(config.folds)
        if folds > len(self.pool_files) or folds > max(1, int(config.starting_budget_size)):
            raise ValueError(f"too few cases for {folds}-fold cross-validation: the pool of {config.dataset} has "
                             f"{len(self.pool_files)} images and the starting budget {config.starting_budget_size} "
                             f"boxes (each fold needs >= 1 annotated image); use fewer folds")

    # ---- helpers -----------------------------------------------------------------------------------
    def case(self, file: str) -> str:
        return file[: -len(self.fe)]

    def images(self, folder: str, case: str) -> list[str]:
        return [str(self.ds_dir / folder / f"{case}_{c:04d}{self.fe}") for c in range(self.n_channels)]

    def read_loop(self, k: int):
        return read_loop(loop_path(self.exp, k), shape_of=lambda f: self.shapes[f], known_files=self.pool_files)

    def patches_upto(self, k: int):
        out = []
        for j in range(k + 1):
            out.extend(self.read_loop(j))
        return out

    def model_dir(self, k: int) -> Path:
        return self.work / "models" / f"loop_{k:03d}"

    def pre_dir(self, k: int) -> Path:
        return self.work / "preprocessed" / f"loop_{k:03d}"

    def plans(self) -> dict:
        return json.loads((self.work / "plans.json").read_text())

    def dataset_json(self) -> dict:
        return json.loads((self.work / "dataset.json").read_text())

    # ---- steps -------------------------------------------------------------------------------------
    def setup(self) -> None:
        from claspe.data.io import write_json

        if self.state.done("setup"):
            return
        dj = json.loads((self.ds_dir / "dataset.json").read_text())
        dj["labels"] = {**dj["labels"], "ignore": self.ignore_label}
        write_json(self.work / "dataset.json", dj)
        plans = json.loads((self.ds_dir / "nnUNetPlans.json").read_text())
        if self.cfg.configuration not in plans["configurations"]:
            raise ValueError(f"the plans of {self.cfg.dataset} have no configuration {self.cfg.configuration!r}")
        write_json(self.work / "plans.json", plans)
        pool_fg = int(self.meta["pool_fg_voxels"])
        self.state.mark("setup", pool_files=len(self.pool_files), heldout=len(self.val_cases),
                        pool_fg_voxels=pool_fg, ignore_label=self.ignore_label)

    def starting_budget(self) -> None:
        from claspe.strategies import starting_budget

        if self.state.done("loop_000"):
            return
        p = loop_path(self.exp, 0)
        if p.is_file():  # written before a crash: validate and keep
            patches = self.read_loop(0)
        else:
            patches = starting_budget(self.gt, size=int(self.cfg.starting_budget_size), patch_size=self.cfg.patch_size,
                                      seed=int(self.cfg.seed), classes=self.fg_classes)
            write_loop(self.exp, 0, patches, strategy="random-label2-all-classes", seed=int(self.cfg.seed))
        self.state.mark("loop_000", n_patches=len(patches))

    def annotate(self, k: int) -> dict:
        from claspe.data.io import write_image
        from claspe.protocol.oracle import annotate

        step = f"annotate_{k:03d}"
        if self.state.done(step):
            return self.state.get(step)
        patches = self.patches_upto(k)
        out_dir = self.work / "labelsTr"
        if out_dir.exists():  # labels of the previous loop: rewrite all
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)

        def write(path: Path, arr: np.ndarray, file: str) -> None:
            from claspe.data.io import read_header

            hdr = read_header(self.ds_dir / "labelsTr" / file)
            write_image(path, arr, spacing=hdr.spacing, origin=hdr.origin, direction=hdr.direction)

        stats = annotate(patches, ground_truth=self.gt, out_dir=out_dir, ignore_label=self.ignore_label, write=write,
                         after_each=lambda f: _pause_point("annotate"))
        case_classes = {self.case(f): s["classes"] for f, s in stats["cases"].items()}
        self.state.mark(step, n_patches=len(patches), annotated_voxels=stats["annotated_voxels"],
                        annotated_fg_voxels=stats["annotated_fg_voxels"], case_classes=case_classes)
        return self.state.get(step)

    def cache_dir(self) -> Path:
        return self.work / "preprocessed_cache"

    def use_cache(self) -> bool:
        return bool(self.cfg.extra.get("preprocess_cache", True))

    def case_keys(self, k: int, cases) -> dict[str, str]:
        """Per case, a hash of everything its nnU-Net preprocessing depends on that can change: the
        boxes annotated in it up to loop ``k`` (its partial label is a function of them), the ignore
        label, dataset.json, the plans and the configuration.  The images never change."""
        import hashlib

        boxes: dict[str, list] = {c: [] for c in cases}
        for p in self.patches_upto(k):
            c = self.case(p.file)
            if c in boxes:
                boxes[c].append([list(p.coords), list(p.size)])
        common = hashlib.sha256()
        for part in ((self.work / "dataset.json").read_bytes(), (self.work / "plans.json").read_bytes(),
                     self.cfg.configuration.encode(), str(self.ignore_label).encode()):
            common.update(hashlib.sha256(part).digest())
        base = common.hexdigest()
        return {c: hashlib.sha256(json.dumps([base, sorted(b)]).encode()).hexdigest() for c, b in boxes.items()}

    def preprocess(self, k: int) -> None:
        """nnU-Net preprocessing of the annotated cases for loop ``k`` into ``pre_dir(k)``.

        With the cache (default; ``config.extra["preprocess_cache"] = False`` turns it off) each
        case is preprocessed once per change of its annotation: ``work/preprocessed_cache/<case>/``
        keeps its preprocessed files with the key of :meth:`case_keys`; a later loop links (or
        copies) them when the key is unchanged, so a loop preprocesses only the cases its query
        touched.  Entries are replaced atomically (temp folder + rename), so a kill leaves either the
        old or the new entry.  The cache is deleted after the last loop's training.
        """
        from claspe.data.io import write_json
        from claspe.nnunet.plan import plans_manager, preprocess_cases
        from claspe.protocol.splits import cv_splits

        step = f"preprocess_{k:03d}"
        if self.state.done(step):
            return
        case_classes = self.state.get(f"annotate_{k:03d}")["case_classes"]
        splits = cv_splits(case_classes, folds=int(self.cfg.folds), seed=12345)
        pre = self.pre_dir(k)
        if pre.exists():
            shutil.rmtree(pre)
        cases = sorted(case_classes)
        kw = dict(images_dir=self.ds_dir / "imagesTr", labels_dir=self.work / "labelsTr", plans=self.plans(),
                  dataset_json=self.dataset_json(), configuration=self.cfg.configuration)
        if not self.use_cache():
            preprocess_cases(cases, out_dir=pre, progress=self.progress, **kw)
            todo = cases
        else:
            ident = plans_manager(kw["plans"]).get_configuration(self.cfg.configuration).data_identifier
            folder = pre / ident
            folder.mkdir(parents=True)
            cache = self.cache_dir()
            cache.mkdir(parents=True, exist_ok=True)
            keys = self.case_keys(k, cases)

            def cached(case: str) -> bool:
                key_file = cache / case / "key.txt"
                return key_file.is_file() and key_file.read_text() == keys[case]

            todo = [c for c in cases if not cached(c)]
            if todo:
                from tqdm import tqdm

                for case in tqdm(todo, desc=f"loop {k}: preprocess", disable=not self.progress, leave=False):
                    tmp = cache / f".tmp_{case}"
                    if tmp.exists():
                        shutil.rmtree(tmp)
                    out = preprocess_cases([case], out_dir=tmp, progress=False, **kw)
                    out.rename(tmp / "files")
                    (tmp / "key.txt").write_text(keys[case])
                    entry = cache / case
                    if entry.exists():
                        shutil.rmtree(entry)
                    os.replace(tmp, entry)
            for case in cases:
                for f in (cache / case / "files").iterdir():
                    _link_or_copy(f, folder / f.name)
        log.info("loop %d: preprocessed %d case(s), %d reused from the cache", k, len(todo), len(cases) - len(todo))
        shutil.copyfile(self.ds_dir / "dataset_fingerprint.json", pre / "dataset_fingerprint.json")
        write_json(pre / "splits_final.json", splits)
        self.state.mark(step, n_cases=len(case_classes), splits=splits, preprocessed=len(todo),
                        reused=len(cases) - len(todo))

    def train(self, k: int, fold: int) -> None:
        from claspe.nnunet.trainers import train_fold

        step = f"train_{k:03d}_fold{fold}"
        if self.state.done(step):
            return
        t0 = time.time()
        out = self.model_dir(k)
        log.info("loop %d: training fold %d/%d (%s)", k, fold + 1, self.cfg.folds, self.cfg.trainer)
        train_fold(self.cfg.trainer, plans=self.plans(), dataset_json=self.dataset_json(),
                   configuration=self.cfg.configuration, fold=fold, preprocessed_dir=self.pre_dir(k), output_dir=out,
                   device=self.cfg.device, n_proc_da=int(self.cfg.extra.get("n_proc_da", 0)),
                   compile=bool(self.cfg.extra.get("compile", False)), progress=self.progress,
                   epoch_hook=lambda e: _pause_point("train"), seed=(int(self.cfg.seed), k, fold))
        self.state.mark(step, seconds=round(time.time() - t0, 2))

    def evaluate(self, k: int) -> None:
        from tqdm import tqdm

        from claspe.data.io import read_header, write_image, write_json
        from claspe.nnunet.evaluate import aggregate, case_dice
        from claspe.nnunet.predict import FoldModels

        step = f"evaluate_{k:03d}"
        if self.state.done(step) and result_path(self.exp, k).is_file():
            return
        t0 = time.time()
        pred_dir = self.work / "predictions" / f"loop_{k:03d}"
        models = None
        per_case = {}
        for case in tqdm(self.val_cases, desc=f"evaluate loop {k}", disable=not self.progress, leave=False):
            ref = self.ds_dir / "labelsVal" / f"{case}{self.fe}"
            pred = pred_dir / f"{case}{self.fe}"
            if not pred.is_file():
                if models is None:
                    models = FoldModels(self.model_dir(k), folds=range(int(self.cfg.folds)), trainer=self.cfg.trainer,
                                        configuration=self.cfg.configuration, device=self.cfg.device,
                                        tile_step_size=float(self.cfg.extra.get("eval_tile_step_size", 0.5)),
                                        use_mirroring=bool(self.cfg.extra.get("eval_tta", True)))
                seg, _ = models.ensemble_segmentation(self.images("imagesVal", case))
                hdr = read_header(ref)
                write_image(pred, seg.astype(np.uint8), spacing=hdr.spacing, origin=hdr.origin, direction=hdr.direction)
            per_case[case] = case_dice(ref, pred, self.fg_classes)
        per_class, mean = aggregate(per_case, self.fg_classes)
        ann = self.state.get(f"annotate_{k:03d}")
        pool_fg = int(self.state.get("setup")["pool_fg_voxels"])
        res = {
            "loop": k, "n_patches": int(ann["n_patches"]), "annotated_voxels": int(ann["annotated_voxels"]),
            "annotated_fg_voxels": int(ann["annotated_fg_voxels"]), "pool_fg_voxels": pool_fg,
            "fg_fraction": float(ann["annotated_fg_voxels"]) / pool_fg if pool_fg else 0.0,
            "dice_per_class": _nan_to_none(per_class), "mean_dice": _nan_to_none(mean),
            "per_case": {c: _nan_to_none(v) for c, v in per_case.items()},
            "dataset": self.cfg.dataset, "strategy": self.cfg.strategy, "seed": int(self.cfg.seed),
            "label_regime": self.cfg.label_regime, "query_size": int(self.cfg.query_size),
            "trainer": self.cfg.trainer, "folds": int(self.cfg.folds),
        }
        write_json(result_path(self.exp, k), res)
        self.state.mark(step, mean_dice=res["mean_dice"], seconds=round(time.time() - t0, 2))
        log.info("loop %d: %d patches, mean Dice %s", k, res["n_patches"], res["mean_dice"])

    def query(self, k: int) -> None:
        """Query of AL loop ``k`` with the loop-``k`` models -> ``loop_{k+1}.json``."""
        from tqdm import tqdm

        from claspe.nnunet.predict import FoldModels
        from claspe.strategies import RandomStrategy, get_strategy

        step = f"query_{k + 1:03d}"
        if self.state.done(step):
            return
        t0 = time.time()
        p = loop_path(self.exp, k + 1)
        if p.is_file():  # written before a crash: validate and keep
            patches = self.read_loop(k + 1)
        else:
            strategy = get_strategy(self.cfg.strategy)
            annotated = self.patches_upto(k)
            needs_probs = not isinstance(strategy, RandomStrategy)
            probs: dict = {}
            bar = tqdm(total=len(self.pool_files), desc=f"query loop {k}", disable=not self.progress, leave=False)
            if needs_probs:
                models = FoldModels(self.model_dir(k), folds=range(int(self.cfg.folds)), trainer=self.cfg.trainer,
                                    configuration=self.cfg.configuration, device=self.cfg.device,
                                    tile_step_size=0.75, use_mirroring=False)
                for i, f in enumerate(self.pool_files):
                    probs[f] = _Progress(models.lazy_probabilities(self.images("imagesTr", self.case(f))), bar,
                                         pause=i == 1)
            else:
                probs = {f: () for f in self.pool_files}
            npi = self.cfg.n_patch_per_image
            patches = strategy.query(probs, query_size=int(self.cfg.query_size), patch_size=self.cfg.patch_size,
                                     stride=self.cfg.agg_stride, n_patch_per_image=npi, loop=k,
                                     num_loops=int(self.cfg.query_steps), seed=int(self.cfg.seed), annotated=annotated,
                                     labels=self.gt, classes=self.fg_classes)
            bar.close()
            write_loop(self.exp, k + 1, patches, strategy=self.cfg.strategy, seed=int(self.cfg.seed), al_loop=k)
        self.state.mark(step, n_patches=len(patches), seconds=round(time.time() - t0, 2))

    def cleanup(self, k: int, *, after_training: bool) -> None:
        if after_training:
            shutil.rmtree(self.pre_dir(k), ignore_errors=True)
            if k == int(self.cfg.query_steps) - 1:  # no later loop reads the cache
                shutil.rmtree(self.cache_dir(), ignore_errors=True)
        elif not self.cfg.extra.get("keep_models", False):
            shutil.rmtree(self.model_dir(k), ignore_errors=True)

    def run(self) -> None:
        self.setup()
        self.starting_budget()
        for k in range(int(self.cfg.query_steps)):
            last = k == int(self.cfg.query_steps) - 1
            if self.state.done(f"evaluate_{k:03d}") and (last or self.state.done(f"query_{k + 1:03d}")):
                self.cleanup(k, after_training=True)
                self.cleanup(k, after_training=False)
                continue
            self.annotate(k)
            self.preprocess(k)
            for f in range(int(self.cfg.folds)):
                self.train(k, f)
            self.cleanup(k, after_training=True)
            self.evaluate(k)
            if not last:
                self.query(k)
            self.cleanup(k, after_training=False)


class _Progress:
    """Wraps a lazy fold sequence: advances the bar after the last fold; optional test pause."""

    def __init__(self, seq, bar, pause: bool) -> None:
        self._seq, self._bar, self._pause = seq, bar, pause

    def __len__(self) -> int:
        return len(self._seq)

    def __getitem__(self, i):
        if self._pause and i == 0:
            _pause_point("predict")
        out = self._seq[i]
        if (i if i >= 0 else i + len(self)) == len(self) - 1:
            self._bar.update(1)
        return out

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def check_config_matches(exp: Path, config: ExperimentConfig) -> None:
    from claspe.protocol.config import load_config

    existing = load_config(exp)
    if existing != config:
        raise ValueError(f"{exp} holds an experiment with other settings; refusing to mix "
                         f"(existing: {existing.to_json()}, requested: {config.to_json()})")


def run_experiment(config: ExperimentConfig, *, data_root: str | os.PathLike, exp_root: str | os.PathLike,
                   progress: bool = True) -> Path:
    """Creates or resumes the experiment ``config`` under ``exp_root``; returns its folder.

    ``data_root`` holds prepared datasets (``claspe prepare``; ``<data_root>/<config.dataset>/``).
    Safe to call again on the same folder (resumes; a finished experiment returns immediately) and
    from several processes on different experiments at the same time. Raises RuntimeError when
    another process runs the same experiment, ValueError for settings that do not fit the folder
    or the dataset.
    """
    from claspe.data.io import write_json

    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}")
    exp = Path(exp_root) / config.name
    exp.mkdir(parents=True, exist_ok=True)
    with ExperimentLock(exp):
        if (exp / "experiment.json").is_file():
            check_config_matches(exp, config)
        if is_finished(exp):
            return exp
        handler = logging.FileHandler(exp / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger("claspe")
        old_level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        root.addHandler(handler)
        try:
            run = _Run(config, Path(data_root), exp, progress)
            if not (exp / "experiment.json").is_file():
                write_json(exp / "experiment.json", config.to_json())
            log.info("experiment %s: %s", config.name, "resuming" if run.state.steps else "starting")
            run.run()
            log.info("experiment %s finished", config.name)
        finally:
            root.removeHandler(handler)
            handler.close()
            root.setLevel(old_level)
    return exp
