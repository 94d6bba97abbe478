"""claspe report / compare on the output of the real `claspe demo` (nnU-Net training: slow)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from claspe import metrics
from claspe.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.nnunet]


def test_report_and_compare_on_demo_output(tmp_path, capsys):
    from claspe.protocol.demo import run_demo

    res = run_demo(tmp_path / "demo", n_cases=8, loops=2, folds=2, progress=False)
    assert res["report"] is not None and res["report"].is_file()  # the demo calls write_report itself
    exps = tmp_path / "demo" / "experiments"
    assert main(["report", str(exps), "--out", str(tmp_path / "rep")]) == 0
    summ = pd.read_csv(tmp_path / "rep" / "summary.csv")
    for e in res["experiments"]:
        cfg = json.loads((e / "experiment.json").read_text())
        y = [json.loads((e / "results" / f"loop_{k:03d}.json").read_text())["mean_dice"]
             for k in range(cfg["query_steps"])]
        row = summ[summ.method.isin([cfg["strategy"], {"clasp_pe": "ClaSP PE", "random_fg66": "Random 66% FG"}
                                     .get(cfg["strategy"])])]
        assert row["AUBC"].item() == pytest.approx(100 * metrics.aubc(y))
    assert list((tmp_path / "rep" / "figures").glob("curves_*.png"))
    capsys.readouterr()
    assert main(["compare", str(exps)]) == 0
    text = capsys.readouterr().out
    assert "NOT a published setting" in text and "P2-beats-fg-random" in text
