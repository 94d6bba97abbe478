"""paper_results/ schema, claspe paper import, claim rules and claspe compare."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from claspe.cli import main
from claspe.report import paper
from claspe.report.compare import compare
from claspe.report.fixtures import make_experiments

PAPER = Path(__file__).resolve().parents[1] / "paper_results"
CLAIM_IDS = [c["id"] for c in yaml.safe_load((PAPER / "claims.yaml").read_text())["claims"]]


# ---------------------------------------------------------------- schema
def test_settings_schema_and_published_values():
    s = paper.load_settings(PAPER)
    groups = Counter(r["setting_group"] for r in s)
    assert groups == {"main": 12, "patch_half": 12, "rollout": 4}  # 24 benchmark settings + 4 unseen datasets
    by = {r["setting_id"]: r for r in s}
    assert [by[f"main-kits-{g}"]["query_size"] for g in ("low", "medium", "high")] == [40, 200, 500]
    assert by["main-acdc-low"]["agg_stride"] == (1, 8, 8) and by["main-amos-low"]["patch_size"] == (32, 74, 74)
    assert by["rollout-toothfairy2"]["n_patch_per_image"] == 50
    assert by["rollout-toothfairy2"]["trainer"] == "nnActiveTrainer_NoMirroring_200epochs"
    for r in s:
        assert r["starting_budget_size"] == r["query_size"] and r["query_steps"] == 5
        assert r["seeds"] == [12345, 12346, 12347, 12348]
        if r["setting_group"] == "main":
            assert r["n_patch_per_image"] == 20
        if r["setting_group"] == "patch_half":
            assert r["agg_stride"] == (8, 8, 8) and r["n_patch_per_image"] == r["query_size"]
            main_patch = by[r["setting_id"].replace("patchhalf", "main")]["patch_size"]
            assert all(h <= m for h, m in zip(r["patch_size"], main_patch))


def test_methods_and_full_data_schema():
    m = paper.load_methods(PAPER)
    assert len({r["paper_name"] for r in m}) == 12
    assert sum(r["main"] == "1" for r in m) == 12 and sum(r["patch_half"] == "1" for r in m) == 9
    assert {r["paper_name"] for r in m if r["rollout"] == "1"} == {"Random", "Random 66% FG", "PE", "ClaSP PE"}
    rows = paper.load_full_data(PAPER)
    assert len(rows) == 251
    # the foreground mean is the mean of the per-class values (consistency of the copied data)
    groups = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["trainer"]), {})[r["class"]] = r["dice"]
    for key, d in groups.items():
        classes = [v for k, v in d.items() if k != "fg_mean"]
        assert d["fg_mean"] == pytest.approx(np.mean(classes), abs=6e-4), key
    assert groups[("Dataset135_KiTS2021", "nnUNetTrainer_200epochs")]["fg_mean"] == 0.7052
    assert paper.full_data_dice("KiTS2021", "nnActiveTrainer_200epochs", PAPER)[0] == 0.7052
    hip = paper.full_data_dice("Dataset004_Hippocampus", "nnActiveTrainer_200epochs", PAPER)
    assert hip[0] == 0.8950 and "fallback" in hip[1]


def test_claims_load_and_validate(tmp_path):
    claims = paper.load_claims(PAPER)
    assert {c["rule"]["kind"] for c in claims} <= set(paper.CLAIM_KINDS)
    assert any(c["id"] == "P2-beats-fg-random" for c in claims)
    assert all(c["source"].startswith(("P1 ", "P2 ")) for c in claims)
    bad = tmp_path / "pr"
    shutil.copytree(PAPER, bad)
    data = yaml.safe_load((bad / "claims.yaml").read_text())
    data["claims"][0]["rule"]["baselines"] = ["Random 50% FG"]
    (bad / "claims.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="unknown methods"):
        paper.load_claims(bad)
    data["claims"][0]["rule"] = {"kind": "vibes"}
    (bad / "claims.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="unknown rule kind"):
        paper.load_claims(bad)
    with (bad / "settings.csv").open("a") as f:
        f.write("x,main,NotADataset,x,low,1x1x1,1x1x1,1,1,1,5,t,s,1,main,src,code\n")
    with pytest.raises(ValueError, match="nnU-Net dataset name"):
        paper.load_settings(bad)


def test_match_setting_reports_differences():
    cfg = {"dataset": "Dataset027_ACDC", "label_regime": "medium", "patch_size": (4, 40, 40), "agg_stride": (1, 8, 8),
           "query_size": 60, "starting_budget_size": 60, "n_patch_per_image": 20, "query_steps": 5,
           "trainer": "nnActiveTrainer_200epochs"}
    assert paper.match_setting(cfg, PAPER)["match"] == "main-acdc-medium"
    m = paper.match_setting({**cfg, "query_size": 30, "agg_stride": (1, 1, 1)}, PAPER)
    assert m["match"] is None and m["closest"] == "main-acdc-medium"
    assert set(m["differences"]) == {"query_size", "agg_stride"}
    assert paper.match_setting({**cfg, "dataset": "Dataset999_Mine"}, PAPER)["closest"] is None


# ---------------------------------------------------------------- compare + import
@pytest.fixture(scope="module")
def exps(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    make_experiments(root, regimes=("low", "medium"), seeds=(12345, 12346, 12347, 12348),
                     methods={"clasp_pe": (9.0, 1.3), "random_fg66": (5.5, 1.1), "random_fg33": (5.0, 0.9),
                              "pred_entropy": (5.2, 1.6)})
    return root


def test_compare_on_paper_settings_gives_per_claim_verdicts(exps):
    res = compare(exps, store=exps / "nostore")
    assert res.matches["paper_setting"].tolist().count(None) == 0
    by = {c.id: c for c in res.claims}
    assert list(by) == CLAIM_IDS
    # the fixture makes ClaSP PE clearly better than both foreground-aware random baselines
    c = by["P2-beats-fg-random"]
    assert c.verdict == "reproduced" and c.comparable
    pair = c.stats["pairs"][0]
    assert pair["wins"] > pair["losses"] and pair["n_settings"] == 2 and "sign_test_p" in pair
    assert by["P1-pe-best"].verdict == "insufficient data"  # BALD etc. never ran
    assert by["P1-task-dependent"].verdict == "not checkable"
    assert by["P2-rollout-generalises"].comparable is False  # no roll-out runs: evaluated out of scope
    text = res.to_text()
    for cid in CLAIM_IDS:
        assert cid in text
    assert "IDENTICAL to main-hippocampus-low" in text


def test_compare_claim_fails_when_method_loses(tmp_path):
    make_experiments(tmp_path, regimes=("low",), seeds=(1, 2, 3, 4),
                     methods={"clasp_pe": (3.0, 0.8), "random_fg66": (8.0, 1.2), "random_fg33": (7.0, 1.0)})
    res = compare(tmp_path, store=tmp_path / "nostore")
    by = {c.id: c for c in res.claims}
    assert by["P2-beats-fg-random"].verdict == "not reproduced"
    assert by["P2-annotation-efficient"].verdict == "not reproduced"
    assert by["P2-annotation-efficient"].stats["comparisons"][0]["sig_lower"] >= 1


def _export_runs(root: Path, dest: Path, shift: float = 0.0):
    """Our runs written in the per-run import format with nnActive names (a stand-in for an export)."""
    rows = []
    for exp in root.rglob("experiment.json"):
        cfg = json.loads(exp.read_text())
        for p in sorted((exp.parent / "results").glob("loop_*.json")):
            d = json.loads(p.read_text())
            rows.append({"Dataset": "Hippocampus", "label_regime": cfg["label_regime"].capitalize(),
                         "Query Method": {"clasp_pe": "class_power_pe66_exp", "random_fg66": "random-label",
                                          "random_fg33": "random-label2", "pred_entropy": "pred_entropy"}[cfg["strategy"]],
                         "seed": cfg["seed"], "num_samples": d["n_patches"], "mean_dice": 100 * (d["mean_dice"] + shift),
                         "fg_fraction": d["fg_fraction"]})
    with dest.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return dest


def test_paper_import_extends_compare_to_numbers(exps, tmp_path, capsys):
    export = _export_runs(exps, tmp_path / "export.csv", shift=0.01)
    store = tmp_path / "store"
    assert main(["paper", "import", str(export), "--store", str(store)]) == 0
    assert "imported" in capsys.readouterr().out
    res = compare(exps, store=store)
    assert not res.numbers.empty
    row = res.numbers[(res.numbers.method == "ClaSP PE") & (res.numbers.metric == "AUBC")].iloc[0]
    assert row["diff"] == pytest.approx(-1.0, abs=1e-6)  # exports shifted by +1 Dice point
    assert row["paper_n"] == 4 and row["p_welch"] < 0.05
    assert [c.id for c in res.paper_claims] == CLAIM_IDS
    assert {c.id: c for c in res.paper_claims}["P2-beats-fg-random"].verdict == "reproduced"
    # summary format too
    summ = tmp_path / "table.csv"
    summ.write_text("dataset,label_regime,method,AUBC,AUBC_std,FinalDice,FinalDice_std\n"
                    "Dataset004_Hippocampus,low,ClaSP PE,50.0,1.0,70.0,1.0\n")
    kind, rows = paper.read_import(summ, PAPER)
    assert kind == "summary" and rows[0]["method"] == "ClaSP PE"


@pytest.mark.parametrize("content,msg", [
    ("dataset,label_regime,method,seed,loop,mean_dice\nHippocampus,low,magic,1,0,0.5\n", "unknown method"),
    ("dataset,label_regime,method,seed,loop,mean_dice\nNowhere,low,random,1,0,0.5\n", "unknown dataset"),
    ("dataset,foo\nx,y\n", "neither"),
    ("dataset,label_regime,method,seed,loop,mean_dice\nHippocampus,low,random,x,0,0.5\n", "line 2"),
])
def test_paper_import_rejects_bad_files(tmp_path, content, msg):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(ValueError, match=msg):
        paper.import_files([f], tmp_path / "store", PAPER)
    with pytest.raises(FileNotFoundError):
        paper.import_files([tmp_path / "none.csv"], tmp_path / "store", PAPER)


def test_cli_compare_prints_verdicts_and_json(tmp_path, capsys):
    make_experiments(tmp_path / "e", regimes=("low",), seeds=(1, 2), paper_settings=False,
                     methods={"clasp_pe": (9.0, 1.3), "random_fg66": (5.5, 1.1)})
    out = tmp_path / "c.json"
    assert main(["compare", str(tmp_path / "e"), "--store", str(tmp_path / "s"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "NOT a published setting" in text and "patch_size" in text
    for cid in CLAIM_IDS:
        assert cid in text
    assert "not comparable" in text
    doc = json.loads(out.read_text())
    assert [c["id"] for c in doc["claims"]] == CLAIM_IDS
