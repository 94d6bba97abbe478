"""The example grids in examples/grids/ reproduce the paper's settings table (paper_results/)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from claspe.cluster.spec import expand, load_spec

ROOT = Path(__file__).resolve().parents[1]


def _triple(s: str) -> tuple[int, int, int]:
    return tuple(int(x) for x in s.split("x"))


@pytest.mark.parametrize("group, file, n_methods", [("main", "nnactive_main.yaml", 12),
                                                     ("patch_half", "nnactive_patch_half.yaml", 9)])
def test_example_grid_matches_paper_settings(group, file, n_methods):
    rows = [r for r in csv.DictReader((ROOT / "paper_results" / "settings.csv").open()) if r["setting_group"] == group]
    methods = [r for r in csv.DictReader((ROOT / "paper_results" / "methods.csv").open()) if r[group] == "1"]
    entries = expand(load_spec(ROOT / "examples" / "grids" / file), check_data=False)
    assert len(rows) == 12 and len(methods) == n_methods
    assert len(entries) == len(rows) * len(methods) * 4
    cells: dict = {}
    for e in entries:
        c = e.config
        cells.setdefault((c.dataset, c.label_regime), set()).add(
            (c.patch_size, c.agg_stride, c.query_size, c.starting_budget_size, c.n_patch_per_image, c.query_steps,
             c.trainer, c.folds))
    assert len(cells) == len(rows)
    for r in rows:
        want = (_triple(r["patch_size"]), _triple(r["agg_stride"]), int(r["query_size"]),
                int(r["starting_budget_size"]), int(r["n_patch_per_image"]), int(r["query_steps"]), r["trainer"], 5)
        assert cells[(r["dataset"], r["label_regime"])] == {want}, r["setting_id"]
    assert {e.config.strategy for e in entries} == {m["claspe_name"] for m in methods}
    assert {e.config.seed for e in entries} == {int(s) for s in rows[0]["seeds"].split(";")}
