"""Clear errors at the strategy API boundary."""

from __future__ import annotations

import numpy as np
import pytest
from strategies_data import make_probs, one_engine_thread  # noqa: F401 (autouse fixture)

from claspe import Patch
from claspe.strategies import get_strategy

PROBS = make_probs(3, n_images=2, folds=2, classes=4, shape=(10, 9, 8))
KW = dict(query_size=4, patch_size=3, stride=1, n_patch_per_image=4, loop=0, num_loops=5, seed=1)


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown strategy 'clasp'.*Valid names: random, random_fg33.*clasp_pe"):
        get_strategy("clasp")
    with pytest.raises(ValueError, match="starting_budget"):
        get_strategy("random-label2-all-classes")
    with pytest.raises(ValueError, match="must be a string"):
        get_strategy(3)


@pytest.mark.parametrize("name", ["pred_entropy", "clasp_pe", "softrank_bald"])
def test_query_larger_than_selectable(name):
    probs = {"only": PROBS[sorted(PROBS)[0]]}
    with pytest.raises(ValueError, match="larger than what can be selected"):
        get_strategy(name).query(probs, **{**KW, "query_size": 30, "n_patch_per_image": 2})


def test_class_ids_absent_from_probabilities():
    s = get_strategy("clasp_pe")
    with pytest.raises(ValueError, match=r"class ids \[5\] are absent.*C=4"):
        s.query(PROBS, classes=[1, 5], **KW)
    with pytest.raises(ValueError, match=r"class ids \[0\] are absent"):
        s.query(PROBS, classes=[0, 1], **KW)
    with pytest.raises(ValueError, match="duplicates"):
        s.query(PROBS, classes=[1, 1], **KW)


def test_annotated_image_not_in_pool():
    ann = [Patch(file="elsewhere.nii.gz", coords=(0, 0, 0), size=(2, 2, 2))]
    for name in ("clasp_pe", "random"):
        with pytest.raises(ValueError, match="not in the pool.*elsewhere"):
            get_strategy(name).query(PROBS, annotated=ann, **KW)
    with pytest.raises(ValueError, match="lacks the key 'size'"):
        get_strategy("clasp_pe").query(PROBS, annotated=[{"file": sorted(PROBS)[0], "coords": [0, 0, 0]}], **KW)


def test_labels_missing():
    with pytest.raises(ValueError, match="random_fg66.*needs labels"):
        get_strategy("random-label").query(PROBS, **KW)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(loop=5), "loop must be in 0..num_loops-1"),
        (dict(num_loops=0), "num_loops must be >= 1"),
        (dict(rng="torch"), "rng must be one of"),
        (dict(seed=-1), "seed must be >= 0"),
        (dict(query_size=0), "query_size must be >= 1"),
        (dict(patch_size=(3, 3)), "patch_size must have 3 entries"),
        (dict(stride=0), "stride must be positive"),
        (dict(n_patch_per_image=0), "n_patch_per_image must be >= 1"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(patch_size="333"), "patch_size must be an int or 3 ints"),  # was (3, 3, 3), one per character
        (dict(patch_size=(3.5, 3, 3)), "patch_size must be an int or 3 ints"),  # was truncated to 3
        (dict(stride=(True, 1, 1)), "stride must be an int or 3 ints"),
    ],
)
def test_bad_arguments(change, match):
    with pytest.raises(ValueError, match=match):
        get_strategy("clasp_pe").query(PROBS, **{**KW, **change})


def test_bad_probabilities(tmp_path):
    s = get_strategy("clasp_pe")
    a = PROBS[sorted(PROBS)[0]]
    cases = [
        (None, "needs probabilities"),
        ([a], "must be a mapping"),
        ({}, "empty"),
        ({"x": a[0, 0]}, r"must be \[M, C, X, Y, Z\] or \[C, X, Y, Z\]"),
        ({"x": a * 2}, "do not sum to 1|outside"),
        ({"x": np.log(a)}, "logits|outside"),
        ({"x": a.astype(np.int32)}, "floating point"),
        ({"x": [a[0], a[1][:, :5]]}, "fold 1.*differs"),
        ({"x": a, "y": a[:, :3] / a[:, :3].sum(1, keepdims=True)}, "has C=3 channels"),
        ({"x": []}, "fold sequence is empty"),
        ({"x": np.ones_like(a[:, :1])}, "C=1"),
    ]
    for probs, match in cases:
        with pytest.raises(ValueError, match=match):
            s.query(probs, **{**KW, "query_size": 1})
    nan = a.copy()
    nan[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="image 'x' fold 0.*NaN"):
        s.query({"x": nan}, **{**KW, "query_size": 1})
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        s.query({"x": [tmp_path / "missing.npz"]}, **{**KW, "query_size": 1})
    np.savez(tmp_path / "two.npz", a=a[0], b=a[1])
    with pytest.raises(ValueError, match="no array 'probabilities' and holds 2 arrays"):
        s.query({"x": [tmp_path / "two.npz"]}, **{**KW, "query_size": 1})
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a .npy nor a .npz"):
        s.query({"x": [tmp_path / "f.txt"]}, **{**KW, "query_size": 1})


def test_bad_labels():
    s = get_strategy("random_fg66")
    with pytest.raises(ValueError, match="3D array"):
        s.query(None, labels={"a": np.zeros((4, 4), int)}, **KW)
    with pytest.raises(ValueError, match="integer class ids"):
        s.query(None, labels={"a": np.full((4, 4, 4), 0.5)}, **KW)


def test_damaged_probability_files_name_the_file(tmp_path):
    """Truncated, empty or non-zip .npz/.npy files give a ValueError naming the file (numpy raises
    BadZipFile, EOFError, TokenError ... or a ValueError without the path), for every entry form."""
    a = PROBS[sorted(PROBS)[0]]
    np.savez_compressed(tmp_path / "ok.npz", probabilities=a[0])
    np.save(tmp_path / "ok.npy", a[0])
    raw_npz, raw_npy = (tmp_path / "ok.npz").read_bytes(), (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw_npz[: len(raw_npz) // 2])
    (tmp_path / "trunc.npy").write_bytes(raw_npy[: len(raw_npy) // 2])
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all")
    kw = {**KW, "query_size": 1}
    for name in ("trunc.npz", "trunc.npy", "empty.npz", "empty.npy", "garbage.npz"):
        bad = tmp_path / name
        for value in ([bad], [tmp_path / "ok.npy", bad], str(bad)):
            with pytest.raises(ValueError, match=f"cannot read .*{name}"):
                get_strategy("clasp_pe").query({"x": value}, **kw)
        with pytest.raises(ValueError, match=f"cannot read .*{name}"):  # reads the shape of fold 0 only
            get_strategy("random").query({"x": [bad]}, **kw)


def test_annotated_entries_validated_and_loop_documents_accepted():
    """Patch coordinates must be integers (``0.5`` was truncated to 0 silently; ``"abc"`` gave
    int()'s message without the field); a whole nnActive loop document ``{"patches": [...]}`` is
    accepted as ``annotated`` and blocks its boxes."""
    first = sorted(PROBS)[0]
    s = get_strategy("pred_entropy")
    for coords, match in [([0.5, 0, 0], "Patch.coords must hold integers"),
                          ("abc", "Patch.coords must be a sequence of 3 integers"),
                          ([True, 0, 0], "Patch.coords must be a sequence of 3 integers")]:
        with pytest.raises(ValueError, match=match):
            s.query(PROBS, annotated=[{"file": first, "coords": coords, "size": [3, 3, 3]}], **KW)
    assert Patch(file="a", coords=[1.0, 2, 3], size=np.array([3, 3, 3])).coords == (1, 2, 3)
    shape = PROBS[first].shape[2:]
    whole = {"file": first, "coords": [0, 0, 0], "size": list(shape)}
    as_list = s.query(PROBS, annotated=[whole], **KW)
    for doc in ({"patches": [whole]}, [{"patches": [whole]}, {"patches": []}]):
        got = s.query(PROBS, annotated=doc, **KW)
        assert got == as_list and all(p.file != first for p in got)


def test_patch_entries_that_are_not_objects_or_lack_a_file():
    """``Patch.from_json`` of a list/int/None was a TypeError; ``file=None`` became the image 'None'."""
    for d in ([1, 2], 1, None):
        with pytest.raises(ValueError, match="a patch entry is a"):
            Patch.from_json(d)
    for f in (None, ""):
        with pytest.raises(ValueError, match="Patch.file must name an image"):
            Patch.from_json({"file": f, "coords": [0, 0, 0], "size": [1, 1, 1]})


@pytest.mark.parametrize("name", ["random", "random_fg33", "random_fg66"])
def test_random_baselines_need_labels_for_every_probability_image(name):
    """Labels for only part of the probabilities' pool: the other images were silently never sampled."""
    ids = sorted(PROBS)
    labels = {ids[0]: np.argmax(PROBS[ids[0]].mean(0), 0)}
    with pytest.raises(ValueError, match=r"labels are missing for 1 pool image\(s\)"):
        get_strategy(name).query(PROBS, labels=labels, **KW)
    full = {k: np.argmax(v.mean(0), 0) for k, v in PROBS.items()}
    assert len(get_strategy(name).query(PROBS, labels=full, **KW)) == KW["query_size"]


def test_annotated_loop_file_paths(tmp_path):
    """``annotated="loop_000.json"`` was iterated character by character ("entries must be
    claspe.Patch ..., got 'l'"); a loop file path (or a list of them) now contributes its patches."""
    import json

    first = sorted(PROBS)[0]
    whole = {"file": first, "coords": [0, 0, 0], "size": list(PROBS[first].shape[2:])}
    (tmp_path / "loop_000.json").write_text(json.dumps({"patches": [whole]}))
    s = get_strategy("pred_entropy")
    expect = s.query(PROBS, annotated=[whole], **KW)
    assert s.query(PROBS, annotated=str(tmp_path / "loop_000.json"), **KW) == expect
    assert s.query(PROBS, annotated=[tmp_path / "loop_000.json"], **KW) == expect
    with pytest.raises(FileNotFoundError, match="nope.json"):
        s.query(PROBS, annotated=tmp_path / "nope.json", **KW)
    (tmp_path / "other.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="other.json is not a loop file"):
        s.query(PROBS, annotated=tmp_path / "other.json", **KW)


def test_npy_folds_of_mixed_float_dtypes_match_arrays(tmp_path):
    """float32 and float16 folds: arrays were accepted but the same folds as .npy files raised
    'fold 1 dtype float16 differs from fold 0 float32' (the fused path needs one dtype)."""
    mixed, paths = {}, {}
    for k, v in PROBS.items():
        mixed[k] = [v[0], v[1].astype(np.float16)]
        paths[k] = []
        for f, a in enumerate(mixed[k]):
            p = tmp_path / f"{k}_{f}.npy"
            np.save(p, a)
            paths[k].append(p)
    s = get_strategy("bald")
    assert s.query(paths, **KW) == s.query(mixed, **KW)
