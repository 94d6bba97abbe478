"""The nnActive protocol end to end with real nnU-Net v2 on the CPU (tiny trainer).

One synthetic dataset is prepared per module (real nnU-Net planning + resampling); then
* a 3-loop ClaSP PE experiment (2 folds): labels, budgets, Dice per loop, resume-is-a-no-op;
* a run killed with SIGKILL during training, during the query's prediction and during annotation,
  resumed each time, which completes with every loop file exactly once and no finished step redone;
* clear errors for bad loop files and too many CV folds, the plan rule, the prepared layout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from claspe.data import make_synthetic_dataset, read_image
from claspe.protocol.config import ExperimentConfig, is_finished, result_path
from claspe.protocol.loops import loop_path, read_loop
from claspe.protocol.oracle import box_mask
from claspe.protocol.prepare import prepare_dataset

pytestmark = pytest.mark.nnunet

TINY = "nnActiveTrainer_tiny"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    raw = make_synthetic_dataset(root / "raw", n_cases=10, seed=0, shape=(20, 32, 32))
    from claspe.cli import main  # through the CLI: `claspe prepare RAW --data-root DIR`

    assert main(["prepare", str(raw), "--data-root", str(root / "data"), "--no-progress"]) == 0
    return root / "data" / raw.name


def _cfg(prepared, **kw):
    base = dict(dataset=prepared.name, strategy="clasp_pe", query_size=8, patch_size=(4, 10, 10),
                agg_stride=(1, 2, 2), n_patch_per_image=20, query_steps=3, trainer=TINY, folds=2,
                extra={"eval_tta": False})
    base.update(kw)
    return ExperimentConfig(**base)


def test_prepared_layout(prepared):
    meta = json.loads((prepared / "prepare.json").read_text())
    assert len(meta["split"]["val"]) == 3 and len(meta["split"]["train"]) == 7
    for sub in ("imagesTr", "labelsTr", "imagesVal", "labelsVal", "imagesTr_original", "labelsVal_original"):
        assert (prepared / sub).is_dir()
    plans = json.loads((prepared / "nnUNetPlans.json").read_text())
    target = plans["configurations"]["3d_fullres"]["spacing"]
    for case in meta["split"]["train"][:2]:
        img = read_image(prepared / "imagesTr" / f"{case}_0000.nii.gz")
        lab = read_image(prepared / "labelsTr" / f"{case}.nii.gz")
        assert img.array.shape == lab.array.shape == tuple(meta["shapes"][case + ".nii.gz"])
        assert np.allclose(lab.spacing, target) and np.allclose(meta["target_spacing"], target)
        assert set(np.unique(lab.array)) <= {0, 1, 2, 3}
    assert meta["pool_fg_voxels"] > 0
    # preparing again with the same settings reuses the folder
    t0 = time.time()
    assert prepare_dataset(meta["settings"]["source"], prepared.parent, progress=False) == prepared
    assert time.time() - t0 < 30


def test_plan_rule_gives_sensible_values(prepared, capsys):
    from claspe.protocol.rule import recommend_settings

    s = recommend_settings(prepared)
    shapes = json.loads((prepared / "prepare.json").read_text())["shapes"]
    shape = np.min(np.array(list(shapes.values())), axis=0)
    patch = np.array(s["patch_size"])
    assert np.all(patch >= 1) and np.all(patch <= shape)
    assert np.all(patch <= np.ceil(np.array(s["statistics"]["nnunet_patch_size"]) / 2))
    K = 3
    assert s["query_size"] % (K + 1) == 0 and s["query_size"] >= 2 * (K + 1)
    assert s["starting_budget_size"] >= 2 * K
    assert 0.005 < s["statistics"]["fraction_of_pool_per_query"] < 0.1
    assert all(1 <= a <= 8 for a in s["agg_stride"])
    assert s["n_patch_per_image"] >= 20
    from claspe.cli import main

    assert main(["plan", prepared.name, "--data-root", str(prepared.parent), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["patch_size"] == s["patch_size"]


def test_end_to_end_clasp_pe(prepared, tmp_path, capsys):
    from claspe.protocol.experiment import run_experiment

    cfg = _cfg(prepared, extra={"eval_tta": False, "keep_models": True})
    def nnunet_env():
        return {k: v for k, v in os.environ.items() if k.startswith("nnUNet")}

    env_before = nnunet_env()
    exp = run_experiment(cfg, data_root=prepared.parent, exp_root=tmp_path, progress=False)
    assert exp == tmp_path / cfg.name and is_finished(exp)
    assert nnunet_env() == env_before  # nnU-Net got its folders explicitly (torch/blosc2 imports set others)
    meta = json.loads((prepared / "prepare.json").read_text())
    shapes = {f: tuple(s) for f, s in meta["shapes"].items()}
    pool = sorted(f for f in shapes if f[: -len(".nii.gz")] in meta["split"]["train"])
    all_patches = []
    for k in range(cfg.query_steps):
        ps = read_loop(loop_path(exp, k), known_files=pool, shape_of=shapes.get)
        assert len(ps) == cfg.query_size  # starting budget = query size, then one query per loop
        for p in ps:
            assert not any(p.overlaps(q) for q in all_patches)
        all_patches += ps
        r = json.loads(result_path(exp, k).read_text())
        assert r["loop"] == k and r["n_patches"] == cfg.query_size * (k + 1)
        assert set(r["dice_per_class"]) == {"1", "2", "3"}
        assert set(r["per_case"]) == set(meta["split"]["val"])
        for v in r["dice_per_class"].values():
            assert v is None or 0.0 <= v <= 1.0
        assert r["mean_dice"] is None or 0.0 <= r["mean_dice"] <= 1.0
        assert r["pool_fg_voxels"] == meta["pool_fg_voxels"]
        assert r["fg_fraction"] == pytest.approx(r["annotated_fg_voxels"] / r["pool_fg_voxels"])
        assert 0 < r["annotated_fg_voxels"] <= r["annotated_voxels"]
    assert not loop_path(exp, cfg.query_steps).exists()
    # the last loop's labels: ground truth inside the queried boxes, the ignore label elsewhere
    ignore = json.loads((exp / "work" / "dataset.json").read_text())["labels"]["ignore"]
    assert ignore == 4
    labelled = sorted(p.name for p in (exp / "work" / "labelsTr").glob("*.nii.gz"))
    assert labelled == sorted({p.file for p in all_patches})
    n_annot = 0
    for f in labelled:
        lab = read_image(exp / "work" / "labelsTr" / f).array
        gt = read_image(prepared / "labelsTr" / f).array
        m = box_mask(gt.shape, [p for p in all_patches if p.file == f])
        assert np.array_equal(lab[m], gt[m])
        assert np.all(lab[~m] == ignore)
        n_annot += int(m.sum())
    last = json.loads(result_path(exp, cfg.query_steps - 1).read_text())
    assert last["annotated_voxels"] == n_annot
    # ensemble predictions of the held-out split exist; no probability files anywhere
    assert len(list((exp / "work" / "predictions" / "loop_002").glob("*.nii.gz"))) == 3
    assert not [p for p in exp.rglob("*") if p.suffix in (".npy", ".npz", ".pkl")]
    assert not list((exp / "work" / "preprocessed").iterdir())  # removed after each loop's training
    assert not (exp / "work" / "preprocessed_cache").exists()  # removed after the last training
    state = json.loads((exp / "state.json").read_text())["steps"]
    for k in range(cfg.query_steps):
        st = state[f"preprocess_{k:03d}"]
        assert st["preprocessed"] + st["reused"] == st["n_cases"]
    assert state["preprocess_000"]["reused"] == 0
    # the fold models: each fold's softmax is computed when its item is read, one image at a time
    from claspe.nnunet.predict import FoldModels

    models = FoldModels(exp / "work" / "models" / "loop_002", folds=[0, 1], trainer=TINY)
    case = meta["split"]["train"][0]
    lazy = models.lazy_probabilities([str(prepared / "imagesTr" / f"{case}_0000.nii.gz")])
    assert len(lazy) == 2 and lazy.accessed == []
    p0 = lazy[0]
    p1 = lazy[1]
    assert lazy.accessed == [0, 1]
    assert p0.shape == (4, *shapes[case + ".nii.gz"]) and p0.dtype == np.float32
    assert np.allclose(p0.sum(0), 1, atol=1e-4) and np.allclose(p1.sum(0), 1, atol=1e-4)
    assert not np.allclose(p0, p1)  # two different fold models
    assert np.array_equal(lazy[0], p0)  # deterministic recomputation
    assert "finished" in (exp / "log.txt").read_text()
    # resume of a finished experiment is a no-op (API and `claspe run <folder>`)
    before = (exp / "state.json").read_text()
    t0 = time.time()
    run_experiment(cfg, data_root=prepared.parent, exp_root=tmp_path, progress=False)
    assert time.time() - t0 < 5 and (exp / "state.json").read_text() == before
    from claspe.cli import main

    capsys.readouterr()
    assert main(["run", str(exp), "--data-root", str(prepared.parent), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert (exp / "state.json").read_text() == before and "clasp_pe" in out and str(exp) in out
    # `claspe evaluate`: the table, and nnU-Net Dice of a prediction folder equal to the stored result
    assert main(["evaluate", str(exp), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["loop"] for r in rows] == [0, 1, 2] and [r["n_patches"] for r in rows] == [8, 16, 24]
    assert main(["evaluate", "--predictions", str(exp / "work" / "predictions" / "loop_002"),
                 "--labels", str(prepared / "labelsVal"), "--dataset-json", str(prepared / "dataset.json")]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["per_case"].keys() == last["per_case"].keys()
    for k, v in last["dice_per_class"].items():
        assert (v is None and ev["dice_per_class"][k] is None) or ev["dice_per_class"][k] == pytest.approx(v)


def test_preprocessing_cache_reuses_unchanged_cases_bit_for_bit(prepared, tmp_path):
    """A loop preprocesses only the cases whose annotation changed; the others come from the cache
    and are byte-identical to preprocessing them again."""
    import pickle

    from claspe import Patch
    from claspe.data.io import write_json
    from claspe.nnunet.plan import preprocess_cases
    from claspe.protocol.experiment import _Run
    from claspe.protocol.loops import write_loop

    cfg = _cfg(prepared)
    exp = tmp_path / cfg.name
    exp.mkdir(parents=True)
    write_json(exp / "experiment.json", cfg.to_json())
    run = _Run(cfg, prepared.parent, exp, progress=False)
    run.setup()
    run.starting_budget()
    run.annotate(0)
    run.preprocess(0)
    st0 = run.state.get("preprocess_000")
    cases0 = sorted(run.state.get("annotate_000")["case_classes"])
    assert st0["preprocessed"] == len(cases0) and st0["reused"] == 0
    # loop 1 adds one box to one already annotated case
    first = [p for p in run.read_loop(0) if run.case(p.file) == cases0[0]]
    shape = run.shapes[first[0].file]
    taken = run.read_loop(0)
    new = None
    for x in range(0, shape[0] - cfg.patch_size[0] + 1):
        cand = Patch(file=first[0].file, coords=(x, 0, 0), size=cfg.patch_size)
        if not any(cand.overlaps(q) for q in taken):
            new = cand
            break
    assert new is not None
    write_loop(exp, 1, [new], strategy="test", seed=0)
    run.annotate(1)
    run.preprocess(1)
    st1 = run.state.get("preprocess_001")
    assert st1["preprocessed"] == 1 and st1["reused"] == len(cases0) - 1
    got = run.pre_dir(1)
    fresh = preprocess_cases(cases0, images_dir=prepared / "imagesTr", labels_dir=exp / "work" / "labelsTr",
                             out_dir=tmp_path / "fresh", plans=run.plans(), dataset_json=run.dataset_json(),
                             configuration=cfg.configuration)
    ours = got / fresh.name
    names = sorted(p.name for p in fresh.iterdir())
    assert names == sorted(p.name for p in ours.iterdir()) and len(names) >= 3 * len(cases0)
    for n in names:
        a, b = (fresh / n).read_bytes(), (ours / n).read_bytes()
        if n.endswith(".pkl"):
            assert str(pickle.loads(a)) == str(pickle.loads(b)), n
        else:
            assert a == b, n
    # a case key changes with its boxes only
    keys0 = run.case_keys(0, cases0)
    keys1 = run.case_keys(1, cases0)
    assert [c for c in cases0 if keys0[c] != keys1[c]] == [cases0[0]]


_RUN = ("import json, sys; from claspe.protocol.config import ExperimentConfig; "
        "from claspe.protocol.experiment import run_experiment; "
        "run_experiment(ExperimentConfig.from_json(json.loads(sys.argv[1])), data_root=sys.argv[2], "
        "exp_root=sys.argv[3], progress=False)")


def test_resume_after_sigkill_in_annotate_train_predict(prepared, tmp_path):
    cfg = _cfg(prepared, query_steps=2, seed=7)
    markers = tmp_path / "markers"
    env = {**os.environ, "CLASPE_TEST_PAUSE": f"train,predict,annotate:{markers}", "OMP_NUM_THREADS": "1"}
    exp = tmp_path / "exps" / cfg.name
    args = [sys.executable, "-c", _RUN, json.dumps(cfg.to_json()), str(prepared.parent), str(tmp_path / "exps")]
    killed, snapshots = [], []
    deadline = time.time() + 850
    while True:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        seen = set(os.listdir(markers)) if markers.exists() else set()
        while proc.poll() is None and time.time() < deadline:
            now = set(os.listdir(markers)) if markers.exists() else set()
            if now - seen:
                stage = (now - seen).pop()
                time.sleep(0.2)
                if stage == "train":
                    ck = list((exp / "work" / "models").rglob("checkpoint_latest.pth"))
                    assert ck, "training paused before its first checkpoint"
                if stage == "predict":
                    assert not loop_path(exp, 1).exists()
                if stage == "annotate":
                    assert len(list((exp / "work" / "labelsTr").glob("*.nii.gz"))) == 1
                state = json.loads((exp / "state.json").read_text())["steps"]
                snapshots.append({k: v["finished_at"] for k, v in state.items()})
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed.append(stage)
                break
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            pytest.fail("resume test timed out")
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-3000:]
    assert killed == ["annotate", "train", "predict"]  # annotate_000 comes before the first training
    assert is_finished(exp)
    final = json.loads((exp / "state.json").read_text())["steps"]
    for snap in snapshots:  # finished steps were not redone
        for step, t in snap.items():
            assert final[step]["finished_at"] == t, step
    assert sorted(p.name for p in exp.glob("loop_*.json")) == ["loop_000.json", "loop_001.json"]
    p0, p1 = read_loop(loop_path(exp, 0)), read_loop(loop_path(exp, 1))
    assert len(p0) == len(p1) == cfg.query_size
    assert not any(a.overlaps(b) for a in p0 for b in p1)
    assert [json.loads(result_path(exp, k).read_text())["n_patches"] for k in range(2)] == [8, 16]
    assert not list(exp.rglob("*.tmp-*")) and not list(exp.rglob(".claspe-tmp"))
    assert not (exp / "work" / "models" / "loop_000").exists()  # models removed after their loop


def _fresh_exp(prepared, tmp_path, entry, **kw):
    from claspe.data.io import write_json
    from claspe.protocol.experiment import run_experiment

    cfg = _cfg(prepared, **kw)
    exp = tmp_path / cfg.name
    exp.mkdir(parents=True)
    write_json(exp / "experiment.json", cfg.to_json())
    if entry is not None:
        write_json(loop_path(exp, 0), {"patches": [entry]})
    return lambda: run_experiment(cfg, data_root=prepared.parent, exp_root=tmp_path, progress=False)


@pytest.mark.parametrize("entry,match", [
    ({"file": "nope.nii.gz", "coords": [0, 0, 0], "size": [2, 2, 2]}, "unknown case"),
    ({"file": "../labelsVal/x.nii.gz", "coords": [0, 0, 0], "size": [2, 2, 2]}, "outside the dataset"),
    (None, None),  # placeholder replaced below: box outside the image of a real pool case
])
def test_bad_loop_files_are_rejected(prepared, tmp_path, entry, match):
    meta = json.loads((prepared / "prepare.json").read_text())
    if entry is None:
        f = meta["split"]["train"][0] + ".nii.gz"
        shape = meta["shapes"][f]
        entry = {"file": f, "coords": [0, 0, shape[2] - 3], "size": [2, 2, 6]}
        match = "outside the image"
    run = _fresh_exp(prepared, tmp_path, entry)
    with pytest.raises(ValueError, match=match):
        run()


def test_too_many_folds_is_a_clear_error(prepared, tmp_path):
    run = _fresh_exp(prepared, tmp_path, None, folds=8)
    with pytest.raises(ValueError, match="too few cases for 8-fold"):
        run()


@pytest.mark.parametrize("kw,match", [({"strategy": "no_such_strategy"}, "no_such_strategy"),
                                      ({"trainer": "nnUNetTrainer"}, "unknown trainer")])
def test_unknown_strategy_or_trainer_fails_before_training(prepared, tmp_path, kw, match):
    run = _fresh_exp(prepared, tmp_path, None, **kw)
    with pytest.raises(ValueError, match=match):
        run()
    assert not list(tmp_path.rglob("loop_000.json"))


def test_unprepared_dataset_is_a_clear_error(tmp_path):
    from claspe.protocol.experiment import run_experiment

    cfg = ExperimentConfig(dataset="Dataset000_None", strategy="clasp_pe", query_size=4, patch_size=4)
    with pytest.raises(FileNotFoundError, match="claspe prepare"):
        run_experiment(cfg, data_root=tmp_path, exp_root=tmp_path / "e", progress=False)


def test_concurrent_experiments_and_exclusive_lock(prepared, tmp_path):
    """Two different experiments run at the same time in two processes; a third process asking for
    an experiment that is being run gets a clear error instead of corrupting it."""
    from claspe.protocol.experiment import run_experiment

    a = _cfg(prepared, strategy="random_fg66", query_steps=1, folds=1, seed=1)
    b = _cfg(prepared, strategy="random_fg66", query_steps=1, folds=1, seed=2,
             extra={"eval_tta": True, "n_proc_da": 1})  # also: TTA evaluation, a data-augmentation worker
    markers = tmp_path / "markers"
    exps = tmp_path / "exps"

    def start(cfg, pause):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("CLASPE_TEST_PAUSE", None)
        if pause:
            env["CLASPE_TEST_PAUSE"] = f"train:{markers}"
        return subprocess.Popen([sys.executable, "-c", _RUN, json.dumps(cfg.to_json()), str(prepared.parent),
                                 str(exps)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    pa, pb = start(a, True), start(b, False)
    try:
        deadline = time.time() + 600
        while not (markers / "train").exists():
            assert pa.poll() is None, pa.stdout.read().decode()[-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
        with pytest.raises(RuntimeError, match="another process"):
            run_experiment(a, data_root=prepared.parent, exp_root=exps, progress=False)
        assert pb.wait(timeout=600) == 0, pb.stdout.read().decode()[-3000:]
        assert is_finished(exps / b.name)
        assert not is_finished(exps / a.name)
    finally:
        for p in (pa, pb):
            if p.poll() is None:
                p.kill()
                p.wait()
    # once the holder is gone the experiment resumes and finishes here
    run_experiment(a, data_root=prepared.parent, exp_root=exps, progress=False)
    assert is_finished(exps / a.name)
    ra = json.loads(result_path(exps / a.name, 0).read_text())
    rb = json.loads(result_path(exps / b.name, 0).read_text())
    assert ra["n_patches"] == rb["n_patches"] == 8
    la, lb = read_loop(loop_path(exps / a.name, 0)), read_loop(loop_path(exps / b.name, 0))
    assert la != lb  # different seeds, different starting budgets, separate folders
