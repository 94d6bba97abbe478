"""Grid specs: parsing (YAML/TOML), expansion, naming, precedence/conflicts, folder status."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from claspe.cluster.spec import expand, experiment_status, load_spec, parse_spec
from claspe.protocol.config import ExperimentConfig, result_path

STRATS = ["random", "pred_entropy"]


def _prepared(root: Path, name: str) -> None:
    """A folder that counts as prepared (prepare.json is what `claspe prepare` writes last)."""
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "prepare.json").write_text("{}")


def _spec(tmp_path: Path, **over) -> dict:
    _prepared(tmp_path / "data", "Dataset001_A")
    _prepared(tmp_path / "data", "Dataset002_B")
    d = {
        "data_root": "data",
        "overrides": {"trainer": "nnActiveTrainer_tiny", "folds": 1, "query_steps": 2},
        "datasets": [{"name": "Dataset001_A", "patch_size": [8, 8, 8]},
                     {"name": "Dataset002_B", "patch_size": "4x8x8", "agg_stride": [1, 2, 2]}],
        "label_regimes": {"low": {"query_size": 3}, "high": {"query_size": 6, "starting_budget_size": 4}},
        "strategies": STRATS,
        "seeds": [12345, 12346],
    }
    d.update(over)
    return d


def test_expand_cross_product_order_and_settings(tmp_path):
    spec = parse_spec(_spec(tmp_path), base_dir=tmp_path, name="g")
    entries = expand(spec)
    assert len(entries) == 2 * 2 * 2 * 2
    first = entries[0].config
    assert (first.dataset, first.label_regime, first.strategy, first.seed) == ("Dataset001_A", "low", "random", 12345)
    assert first.patch_size == (8, 8, 8) and first.query_size == 3 and first.starting_budget_size == 3
    assert (first.trainer, first.folds, first.query_steps) == ("nnActiveTrainer_tiny", 1, 2)
    b_high = [e.config for e in entries if e.config.dataset == "Dataset002_B" and e.config.label_regime == "high"]
    assert {c.patch_size for c in b_high} == {(4, 8, 8)}
    assert {(c.query_size, c.starting_budget_size, c.agg_stride) for c in b_high} == {(6, 4, (1, 2, 2))}
    assert all(e.data_root == (tmp_path / "data").resolve() for e in entries)
    # names come from the settings, are unique and equal ExperimentConfig.name
    names = [e.name for e in entries]
    assert len(set(names)) == len(names)
    assert names[0] == ExperimentConfig(dataset="Dataset001_A", strategy="random", seed=12345, label_regime="low",
                                        query_size=3, patch_size=8, trainer="nnActiveTrainer_tiny", folds=1,
                                        query_steps=2).name
    assert "Dataset002_B__high__pred_entropy__patch4x8x8__stride1x2x2__qs6__sbs4" in names[-1]


def test_yaml_and_toml_give_the_same_grid(tmp_path):
    _prepared(tmp_path / "data", "Dataset001_A")
    (tmp_path / "g.yaml").write_text(textwrap.dedent("""
        data_root: data
        defaults: {n_patch_per_image: 5}
        overrides: {folds: 1, query_steps: 2, trainer: nnActiveTrainer_tiny}
        datasets:
          - {name: Dataset001_A, patch_size: [8, 8, 8]}
        label_regimes:
          - {name: low, query_size: 3}
        strategies: [random, pred_entropy]
        seeds: 7
    """))
    (tmp_path / "g.toml").write_text(textwrap.dedent("""
        data_root = "data"
        strategies = ["random", "pred_entropy"]
        seeds = [7]
        [defaults]
        n_patch_per_image = 5
        [overrides]
        folds = 1
        query_steps = 2
        trainer = "nnActiveTrainer_tiny"
        [[datasets]]
        name = "Dataset001_A"
        patch_size = [8, 8, 8]
        [label_regimes.low]
        query_size = 3
    """))
    a = [e.config for e in expand(load_spec(tmp_path / "g.yaml"))]
    b = [e.config for e in expand(load_spec(tmp_path / "g.toml"))]
    assert a == b and len(a) == 2 and a[0].n_patch_per_image == 5 and a[0].seed == 7


def test_precedence_defaults_lose_overrides_win(tmp_path):
    d = _spec(tmp_path, defaults={"n_patch_per_image": 7, "agg_stride": 4})
    entries = expand(parse_spec(d, base_dir=tmp_path))
    a = [e.config for e in entries if e.config.dataset == "Dataset001_A"]
    b = [e.config for e in entries if e.config.dataset == "Dataset002_B"]
    assert {c.agg_stride for c in a} == {(4, 4, 4)}  # default applies
    assert {c.agg_stride for c in b} == {(1, 2, 2)}  # the dataset overrides a default
    assert {c.n_patch_per_image for c in a + b} == {7}


@pytest.mark.parametrize("mutate, message", [
    # dataset and regime have the same rank: different values conflict
    (lambda d: d["label_regimes"]["low"].update(patch_size=[6, 6, 6]), "conflicting settings: patch_size"),
    # an override may not also be set by a dataset or regime
    (lambda d: d["label_regimes"]["high"].update(folds=2), "'folds' is in 'overrides'"),
    (lambda d: d["datasets"][0].update(query_steps=3), "'query_steps' is in 'overrides'"),
    (lambda d: d.update(defaults={"folds": 1}), "both 'defaults' and 'overrides'"),
    (lambda d: d["datasets"][0].update(patch_sise=8), "unknown setting 'patch_sise'.*did you mean 'patch_size'"),
    (lambda d: d["datasets"][0].update(seed=3), "'seed' is a grid axis"),
    (lambda d: d.update(query_size=3), "unknown top-level key 'query_size'.*defaults"),
    (lambda d: d.update(seeds=[1, 1]), "lists a seed twice"),
    (lambda d: d.update(strategies=[]), "non-empty 'strategies'"),
    (lambda d: d["datasets"].append({"name": "Dataset001_A"}), "more than once"),
    (lambda d: d["label_regimes"]["low"].pop("query_size"), "query_size is not set for dataset 'Dataset001_A'"),
    (lambda d: d["label_regimes"]["low"].update(query_size=0), "invalid settings.*query_size must be > 0"),
    (lambda d: d["datasets"][1].update(patch_size="4x8"), "patch_size must be an integer or 3 integers"),
])
def test_bad_specs_raise_clear_errors(tmp_path, mutate, message):
    d = _spec(tmp_path)
    mutate(d)
    with pytest.raises(ValueError, match=message):
        expand(parse_spec(d, base_dir=tmp_path))


def test_same_setting_at_same_value_is_not_a_conflict(tmp_path):
    d = _spec(tmp_path)
    d["label_regimes"]["low"]["patch_size"] = [8, 8, 8]
    d["datasets"] = [d["datasets"][0]]
    assert len(expand(parse_spec(d, base_dir=tmp_path))) == 8


def test_per_dataset_label_regimes_replace_the_top_level_ones(tmp_path):
    d = _spec(tmp_path)
    d["datasets"][1]["label_regimes"] = [{"name": "tiny", "query_size": 2}]
    entries = expand(parse_spec(d, base_dir=tmp_path))
    assert {e.config.label_regime for e in entries if e.config.dataset == "Dataset002_B"} == {"tiny"}
    assert {e.config.label_regime for e in entries if e.config.dataset == "Dataset001_A"} == {"low", "high"}


def test_unknown_dataset_names_the_folder_and_what_exists(tmp_path):
    d = _spec(tmp_path)
    d["datasets"].append({"name": "Dataset003_Missing", "patch_size": 8})
    with pytest.raises(FileNotFoundError, match=r"unknown dataset 'Dataset003_Missing'.*Dataset001_A, Dataset002_B"):
        expand(parse_spec(d, base_dir=tmp_path))
    d = _spec(tmp_path, data_root="nowhere")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand(parse_spec(d, base_dir=tmp_path))
    (tmp_path / "data" / "Dataset003_Raw").mkdir()
    d = _spec(tmp_path)
    d["datasets"].append({"name": "Dataset003_Raw", "patch_size": 8})
    with pytest.raises(FileNotFoundError, match="exists but is not a prepared dataset"):
        expand(parse_spec(d, base_dir=tmp_path))


def test_dataset_sources_are_prepared_later(tmp_path):
    d = _spec(tmp_path)
    d["datasets"].append({"name": "Dataset005_Syn", "patch_size": 8, "synthetic": {"n_cases": 8, "seed": 1},
                          "prepare": {"test_size": 0.25}})
    d["datasets"].append({"name": "Dataset006_Raw", "patch_size": 8, "raw": "raw/Dataset006_Raw"})
    (tmp_path / "raw" / "Dataset006_Raw").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="not an nnU-Net raw dataset"):
        expand(parse_spec(d, base_dir=tmp_path))
    (tmp_path / "raw" / "Dataset006_Raw" / "dataset.json").write_text("{}")
    spec = parse_spec(d, base_dir=tmp_path)
    assert spec.datasets[2].synthetic == {"n_cases": 8, "seed": 1} and spec.datasets[3].raw.is_absolute()
    assert len(expand(spec)) == 4 * 2 * 2 * 2


@pytest.mark.parametrize("entry, message", [
    ({"synthetic": {"n_case": 8}}, "unknown key 'n_case'.*did you mean 'n_cases'"),
    ({"synthetic": {}, "raw": "x"}, "either 'raw' or 'synthetic'"),
    ({"prepare": {"test_size": 0.5}}, "'prepare' settings need a source"),
])
def test_bad_dataset_sources(tmp_path, entry, message):
    d = _spec(tmp_path)
    d["datasets"][0].update(entry)
    with pytest.raises(ValueError, match=message):
        parse_spec(d, base_dir=tmp_path)


def test_unknown_strategy_is_rejected(tmp_path):
    pytest.importorskip("claspe.strategies")
    d = _spec(tmp_path, strategies=["random", "clasp_pee"])
    with pytest.raises(ValueError, match="unknown strategy 'clasp_pee'"):
        expand(parse_spec(d, base_dir=tmp_path))


def test_load_spec_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "g.json").write_text("{}")
    with pytest.raises(ValueError, match="unknown format '.json'"):
        load_spec(tmp_path / "g.json")
    (tmp_path / "g.yaml").write_text("datasets: [a\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_spec(tmp_path / "g.yaml")
    (tmp_path / "e.yaml").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_spec(tmp_path / "e.yaml")


def _write_experiment(folder: Path, cfg: ExperimentConfig, loops: int) -> None:
    folder.mkdir(parents=True)
    (folder / "experiment.json").write_text(json.dumps(cfg.to_json()))
    for k in range(loops):
        p = result_path(folder, k)
        p.parent.mkdir(exist_ok=True)
        p.write_text("{}")


def test_status_new_partial_finished_and_foreign_settings(tmp_path):
    entries = expand(parse_spec(_spec(tmp_path), base_dir=tmp_path))
    root = tmp_path / "grid"
    e0, e1, e2, e3 = entries[:4]
    _write_experiment(root / e0.name, e0.config, loops=2)  # query_steps 2 -> finished
    _write_experiment(root / e1.name, e1.config, loops=1)  # partial -> resume
    assert [experiment_status(e, root) for e in (e0, e1, e2)] == ["finished", "partial", "new"]
    # a folder of that name with other result-changing settings is not silently reused
    cfg = e3.config.to_json()
    cfg.pop("schema_version")
    cfg["configuration"] = "2d"
    _write_experiment(root / e3.name, ExperimentConfig.from_json(cfg), loops=0)
    with pytest.raises(ValueError, match="created with other settings.*configuration"):
        experiment_status(e3, root)
    # like run_experiment, the device counts too (the folder keeps the settings it was made with)
    cfg["configuration"] = e3.config.configuration
    cfg["device"] = "cuda"
    (root / e3.name / "experiment.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="device: folder 'cuda' vs grid 'cpu'"):
        experiment_status(e3, root)
    cfg["device"] = "cpu"
    (root / e3.name / "experiment.json").write_text(json.dumps(cfg))
    assert experiment_status(e3, root) == "partial"
