"""claspe report: files written, numbers equal to claspe.metrics on the raw result files, partial runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from claspe import metrics
from claspe.cli import main
from claspe.protocol.config import ExperimentConfig
from claspe.report import write_report
from claspe.report.collect import collect_runs
from claspe.report.fixtures import make_experiments, write_experiment

METHODS = {"clasp_pe": (9.0, 1.3), "random_fg66": (6.0, 1.1), "random_fg33": (5.0, 0.9)}


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("exps")
    make_experiments(root, regimes=("low", "high"), methods=METHODS, seeds=(12345, 12346, 12347),
                     unfinished=[("random_fg33", 12347)])
    page = write_report(root, root / "out")
    return root, page


def _raw_runs(root: Path):
    """Read the result files directly (independent of claspe.report.collect)."""
    runs = {}
    for exp in root.rglob("experiment.json"):
        cfg = json.loads(exp.read_text())
        res = sorted((exp.parent / "results").glob("loop_*.json"))
        docs = [json.loads(p.read_text()) for p in res]
        key = (cfg["label_regime"], cfg["strategy"], cfg["seed"])
        runs[key] = (cfg, docs)
    return runs


def test_writes_tables_figures_and_self_contained_html(report_dir):
    root, page = report_dir
    out = page.parent
    assert page.name == "report.html" and page.is_file()
    for name in ("runs.csv", "status.csv", "summary.csv", "run_metrics.csv", "ppm_none.csv", "ppm_holm.csv",
                 "ppm_tests.csv", "ranks_AUBC.csv", "friedman.csv", "mean_table.csv", "loso.csv", "report.md",
                 "per_class_dice.csv"):
        assert (out / name).is_file(), name
    pngs = sorted((out / "figures").glob("*.png"))
    kinds = {p.name.split("_")[0] for p in pngs}
    assert {"curves", "fg", "ppm", "ranks.png"} <= kinds | {p.name for p in pngs}
    assert len([p for p in pngs if p.name.startswith("curves_")]) == 2
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    import matplotlib.image as mpimg

    h, w = mpimg.imread(pngs[0]).shape[:2]
    assert h > 300 and w > 500
    text = page.read_text()
    assert text.count("data:image/png;base64,") == len(pngs)
    assert not re.search(r'src="(?!data:)', text)  # nothing external
    assert "ClaSP PE" in text and "What is missing" in text


def test_summary_numbers_equal_metrics_functions(report_dir):
    root, page = report_dir
    out = page.parent
    raw = _raw_runs(root)
    summ = pd.read_csv(out / "summary.csv")
    rm = pd.read_csv(out / "run_metrics.csv")
    names = {"clasp_pe": "ClaSP PE", "random_fg66": "Random 66% FG", "random_fg33": "Random 33% FG"}
    for regime in ("low", "high"):
        for strat, name in names.items():
            aubcs, finals = [], []
            for (reg, st, seed), (cfg, docs) in raw.items():
                if reg != regime or st != strat or len(docs) < cfg["query_steps"]:
                    continue
                y = [d["mean_dice"] for d in docs]
                aubcs.append(metrics.aubc(y))
                finals.append(metrics.final_dice(y))
                row = rm[(rm.method == name) & (rm.seed == seed) & rm.setting.str.contains(f"-{regime}-")]
                assert row["AUBC"].item() == pytest.approx(aubcs[-1], abs=1e-12)
            s = summ[(summ.method == name) & summ.setting.str.contains(f"-{regime}-")]
            assert s["n_seeds"].item() == len(aubcs)
            assert s["AUBC"].item() == pytest.approx(100 * np.mean(aubcs))
            assert s["AUBC_std"].item() == pytest.approx(100 * np.std(aubcs, ddof=1))
            assert s["FinalDice"].item() == pytest.approx(100 * np.mean(finals))


def test_ppm_and_fg_eff_tables_equal_metrics_functions(report_dir):
    root, page = report_dir
    out = page.parent
    raw = _raw_runs(root)
    names = {"clasp_pe": "ClaSP PE", "random_fg66": "Random 66% FG", "random_fg33": "Random 33% FG"}
    mats = []
    summ = pd.read_csv(out / "summary.csv")
    for regime in ("low", "high"):
        res, pts = {}, {}
        for strat, name in names.items():
            rows = sorted((seed, docs) for (reg, st, seed), (cfg, docs) in raw.items()
                          if reg == regime and st == strat and len(docs) == cfg["query_steps"])
            res[name] = np.array([[d["mean_dice"] for d in docs] for _, docs in rows])
            pts[name] = (np.array([d["fg_fraction"] for _, docs in rows for d in docs]),
                         np.array([d["mean_dice"] for _, docs in rows for d in docs]))
        mats.append(metrics.penalty_matrix(res, correction="holm"))
        # FG-Eff: c = Hippocampus full-data Dice (1000-epoch fallback), x0/a from the whole setting
        x_all = np.concatenate([p[0] for p in pts.values()])
        y_all = np.concatenate([p[1] for p in pts.values()])
        x0 = x_all.min()
        a = 0.8950 - y_all[np.isclose(x_all, x0)].mean()
        for name, (x, y) in pts.items():
            g, se = metrics.foreground_efficiency(x, y, 0.8950, x0=x0, a=a)
            s = summ[(summ.method == name) & summ.setting.str.contains(f"-{regime}-")]
            assert s["FG_Eff"].item() == pytest.approx(g, rel=1e-6)
            assert s["FG_Eff_SE"].item() == pytest.approx(se, rel=1e-4)
            assert s["FG_Eff_c"].item() == pytest.approx(0.8950)
    methods, total, count = metrics.aggregate_ppm(mats)
    ppm = pd.read_csv(out / "ppm_holm.csv", index_col=0)
    for i, mi in enumerate(methods):
        for j, mj in enumerate(methods):
            if i != j:
                assert ppm.loc[mi, mj] == pytest.approx(100 * total[i, j] / count[i, j])
    plain = pd.read_csv(out / "ppm_none.csv", index_col=0)
    assert plain.loc["ClaSP PE", "Random 66% FG"] > 50  # the fixture's strongest method wins most steps
    assert plain.loc["Random 66% FG", "ClaSP PE"] == 0
    assert plain.loc["Mean"].tolist() == pytest.approx(plain.drop(index="Mean").sum(axis=0) / 2)
    # ranks per setting and their means follow from the seed-mean AUBC of the summary
    per = pd.read_csv(out / "ranks_per_setting_AUBC.csv", index_col=0)
    for sid, row in per.iterrows():
        s = summ[summ.setting == sid].set_index("method")["AUBC"]
        assert row.to_dict() == {m: float(1 + (s > s[m]).sum()) for m in s.index}
    mr = pd.read_csv(out / "ranks_AUBC.csv").set_index("method")["mean_rank"]
    assert mr.to_dict() == pytest.approx(per.mean(axis=0).to_dict())


def test_partial_results_are_reported(report_dir):
    root, page = report_dir
    status = pd.read_csv(page.parent / "status.csv")
    bad = status[~status.complete]
    assert len(bad) == 2 and set(bad.method) == {"Random 33% FG"} and set(bad.missing_loops) == {"3,4"}
    md = (page.parent / "report.md").read_text()
    assert "unfinished: Random 33% FG seed 12347" in md
    runs = pd.read_csv(page.parent / "runs.csv")
    assert len(runs[(runs.method == "Random 33% FG") & (runs.seed == 12347)]) == 2 * 3  # in the curves
    per_class = pd.read_csv(page.parent / "per_class_dice.csv")
    assert len(per_class) == 2 * len(runs)  # two classes per loop result
    merged = per_class.groupby(["setting", "method", "seed", "loop"])["dice"].mean().reset_index().merge(
        runs, on=["setting", "method", "seed", "loop"])
    np.testing.assert_allclose(merged["dice"], merged["mean_dice"], atol=1e-12)  # Mean Dice = class mean


def test_report_single_run_and_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        write_report(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no experiment"):
        write_report(tmp_path)
    cfg = ExperimentConfig(dataset="Dataset900_Synth", strategy="clasp_pe", query_size=5, patch_size=8)
    write_experiment(tmp_path, cfg, [0.2, 0.4, 0.5, 0.55, 0.6], [0.01, 0.05, 0.1, 0.14, 0.2])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "experiment.json").write_text("{not json")
    col = collect_runs(tmp_path)
    assert len(col.runs) == 1 and len(col.problems) == 1 and "unreadable" in col.problems[0][1]
    # a result with Dice null (NaN) keeps its loop but the run gets no AUBC; a corrupt result is missing
    cfg2 = ExperimentConfig(dataset="Dataset900_Synth", strategy="random", query_size=5, patch_size=8)
    e2 = write_experiment(tmp_path, cfg2, [0.2, 0.3, 0.4, 0.45, 0.5], [0.01, 0.03, 0.05, 0.07, 0.09])
    doc = json.loads((e2 / "results" / "loop_001.json").read_text())
    (e2 / "results" / "loop_001.json").write_text(json.dumps({**doc, "mean_dice": None}))
    (e2 / "results" / "loop_004.json").write_text("{")
    col = collect_runs(tmp_path)
    st = col.status_df.set_index("method").loc["Random"]
    assert st["missing_loops"] == "4" and not st["complete"]
    assert any("null" in m for _, m in col.problems) and any("unreadable" in m for _, m in col.problems)
    page = write_report(tmp_path)  # one run: no PPM, no ranks, FG-Eff with fitted c; must still work
    md = (page.parent / "report.md").read_text()
    assert "unreadable" in md and "fitted" in md
    assert "Pairwise penalty matrix\n\n_Not computed" in md  # one seed: no t-tests, said so
    assert not list((page.parent / "figures").glob("ppm_*.png"))
    assert (page.parent / "figures").glob("curves_*.png")


def test_cli_report(tmp_path, capsys):
    make_experiments(tmp_path / "e", regimes=("low",), methods=dict(list(METHODS.items())[:2]), seeds=(1, 2))
    assert main(["report", str(tmp_path / "e"), "--out", str(tmp_path / "r")]) == 0
    assert "report.html" in capsys.readouterr().out
    assert (tmp_path / "r" / "report.html").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2
    # a user-supplied full-data Dice replaces the paper's value (and the fitted fallback)
    fd = tmp_path / "full.csv"
    fd.write_text("dataset,class,dice\nDataset004_Hippocampus,fg_mean,0.9\n")
    assert main(["report", str(tmp_path / "e"), "--out", str(tmp_path / "r2"), "--full-data", str(fd)]) == 0
    summ = pd.read_csv(tmp_path / "r2" / "summary.csv")
    assert (summ["FG_Eff_c"] == 0.9).all() and (summ["FG_Eff_c_source"] == "given").all()


def test_figures_ignore_global_style_changes(tmp_path):
    """nnU-Net's training calls seaborn.set(font_scale=2.5) in the same process (the demo); figures must
    look the same regardless."""
    import matplotlib
    import matplotlib.image as mpimg

    from claspe.report import figures

    make_experiments(tmp_path / "e", regimes=("low",), methods=dict(list(METHODS.items())[:2]), seeds=(1, 2))
    col = collect_runs(tmp_path / "e")
    sid = col.runs_df["setting"].iloc[0]
    clean = figures.budget_curves(col.runs_df, sid, tmp_path / "a.png")
    with matplotlib.rc_context({"font.size": 30, "axes.facecolor": "#eaeaf2", "lines.linewidth": 6}):
        dirty = figures.budget_curves(col.runs_df, sid, tmp_path / "b.png")
    np.testing.assert_array_equal(mpimg.imread(clean), mpimg.imread(dirty))
