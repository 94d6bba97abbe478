"""Sub-commands ``prepare``, ``plan``, ``run``, ``evaluate`` and ``demo`` (heavy imports inside)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def _triple(text: str) -> list[int]:
    parts = [p for p in text.replace(",", "x").split("x") if p]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or AxBxC (integers), got {text!r}") from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected N or AxBxC, got {text!r}")
    return vals


def _progress(args) -> bool:
    return not getattr(args, "no_progress", False)


def _cmd_prepare(args) -> int:
    from claspe.protocol.prepare import prepare_dataset

    data_root = Path(args.data_root)
    if args.synthetic:
        from claspe.data import make_synthetic_dataset

        raw = make_synthetic_dataset(data_root / ".raw", n_cases=args.synthetic, seed=args.synthetic_seed)
    else:
        if not args.raw:
            raise ValueError("give a raw dataset folder (nnU-Net v2 raw or MSD task) or --synthetic N")
        raw = Path(args.raw)
        dj = raw / "dataset.json"
        if dj.is_file():
            from claspe.data.io import read_json

            doc = read_json(dj)
            if isinstance(doc, dict) and "modality" in doc and "training" in doc:  # MSD task folder
                from claspe.data.importers import import_dataset

                raw = import_dataset(raw, data_root / ".raw", dataset_id=args.dataset_id)
    out = prepare_dataset(raw, data_root, name=args.name, test_size=args.test_size, seed=args.seed,
                          level_separator=args.level_separator, overwrite=args.overwrite, progress=_progress(args))
    meta = json.loads((out / "prepare.json").read_text())
    print(f"prepared {out}: {len(meta['split']['train'])} pool cases, {len(meta['split']['val'])} held-out cases, "
          f"target spacing {meta['target_spacing']}")
    return 0


def _cmd_plan(args) -> int:
    from claspe.protocol.rule import recommend_settings

    s = recommend_settings(Path(args.data_root) / args.dataset)
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        for k in ("patch_size", "query_size", "starting_budget_size", "agg_stride", "n_patch_per_image"):
            print(f"{k:<22} {s[k]}")
        print(f"{'rule':<22} {s['rule']}")
    return 0


def _config_from_args(args):
    from claspe.protocol.config import ExperimentConfig, load_config

    if args.experiment:
        return load_config(args.experiment)
    if args.config:
        from claspe.data.io import read_json

        return ExperimentConfig.from_json(read_json(args.config))
    if not args.dataset or not args.strategy:
        raise ValueError("give --dataset and --strategy (or --config FILE, or an experiment folder to resume)")
    fields = {}
    if args.patch_size is None or args.query_size is None:
        from claspe.protocol.rule import recommend_settings

        rec = recommend_settings(Path(args.data_root) / args.dataset)
        fields.update(patch_size=rec["patch_size"], query_size=rec["query_size"], agg_stride=rec["agg_stride"],
                      starting_budget_size=rec["starting_budget_size"], n_patch_per_image=rec["n_patch_per_image"])
    for name in ("patch_size", "query_size", "agg_stride", "starting_budget_size", "n_patch_per_image"):
        v = getattr(args, name)
        if v is not None:
            fields[name] = v
    extra = {}
    if args.keep_models:
        extra["keep_models"] = True
    if args.no_eval_tta:
        extra["eval_tta"] = False
    return ExperimentConfig(dataset=args.dataset, strategy=args.strategy, seed=args.seed,
                            label_regime=args.label_regime, query_steps=args.steps, trainer=args.trainer,
                            folds=args.folds, device=args.device, extra=extra, **fields)


def _cmd_run(args) -> int:
    from claspe.protocol.experiment import run_experiment

    cfg = _config_from_args(args)
    exp_root = Path(args.experiment).parent if args.experiment else Path(args.exp_root)
    exp = run_experiment(cfg, data_root=args.data_root, exp_root=exp_root, progress=_progress(args))
    from claspe.protocol.demo import format_table, results_table

    print(format_table(results_table([exp])))
    print(f"experiment folder: {exp}")
    return 0


def _cmd_evaluate(args) -> int:
    from claspe.protocol.demo import format_table, results_table

    if args.predictions:
        from claspe.nnunet.evaluate import aggregate, case_dice

        if not args.labels or not args.dataset_json:
            raise ValueError("--predictions needs --labels (the reference label folder) and --dataset-json")
        from claspe.data.io import read_json

        dj = read_json(args.dataset_json)
        fe = dj["file_ending"]
        classes = sorted(int(v) for k, v in dj["labels"].items() if k not in ("background", "ignore"))
        preds = sorted(p for p in Path(args.predictions).iterdir() if p.name.endswith(fe))
        if not preds:
            raise FileNotFoundError(f"no *{fe} predictions in {args.predictions}")
        per_case = {}
        for p in preds:
            ref = Path(args.labels) / p.name
            if not ref.is_file():
                raise FileNotFoundError(f"reference {ref} for prediction {p} not found")
            per_case[p.name[: -len(fe)]] = case_dice(ref, p, classes)
        per_class, mean = aggregate(per_case, classes)
        from claspe.protocol.experiment import _nan_to_none

        doc = {"dice_per_class": per_class, "mean_dice": mean, "per_case": per_case}
        print(json.dumps(_nan_to_none(doc), indent=2))
        return 0
    if not args.experiments:
        raise ValueError("give experiment folders (or --predictions/--labels/--dataset-json)")
    rows = results_table([Path(e) for e in args.experiments])
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0


def _cmd_demo(args) -> int:
    import time

    from claspe.protocol.demo import run_demo

    t0 = time.time()
    res = run_demo(args.out, n_cases=args.cases, loops=args.loops, folds=args.folds, seed=args.seed,
                   strategies=tuple(args.strategies), device=args.device, eval_tta=args.eval_tta,
                   progress=_progress(args))
    s = res["settings"]
    print(f"settings from `claspe plan` rule: patch {s['patch_size']}, query size {s['query_size']}, "
          f"starting budget {s['starting_budget_size']}, stride {s['agg_stride']}, "
          f"n_patch_per_image {s['n_patch_per_image']}")
    print(res["table"])
    print(f"budget curve: {res['png']}")
    if res["report"] is not None:
        print(f"report: {res['report']}")
    print(f"demo finished in {time.time() - t0:.0f} s; outputs in {args.out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare", help="prepare a dataset: held-out split, nnU-Net plan, resampling to the 3d_fullres spacing",
        description="Validates a nnU-Net v2 raw dataset (or imports an MSD task folder), splits off the held-out "
                    "set (sorted case list, seeded, optional patient grouping), plans it with nnU-Net and resamples "
                    "every case to the 3d_fullres target spacing into DATA_ROOT/NAME (see "
                    "claspe.protocol.prepare for the layout).")
    p.add_argument("raw", nargs="?", help="nnU-Net v2 raw dataset folder or MSD task folder")
    p.add_argument("--data-root", required=True, help="folder receiving prepared datasets")
    p.add_argument("--name", help="prepared dataset name (default: the raw folder's name)")
    p.add_argument("--test-size", type=float, default=0.25, help="held-out fraction (default 0.25)")
    p.add_argument("--seed", type=int, default=12345, help="split seed (default 12345)")
    p.add_argument("--level-separator", help="group cases by the prefix before this string (patients)")
    p.add_argument("--dataset-id", type=int, help="nnU-Net id for an imported MSD task")
    p.add_argument("--synthetic", type=int, metavar="N", help="generate a synthetic dataset with N cases instead")
    p.add_argument("--synthetic-seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a prepared dataset with other settings")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_prepare)

    p = subparsers.add_parser(
        "plan", help="AL settings for a prepared dataset from the documented rule",
        description="Derives patch size, query size, starting budget, aggregation stride and n_patch_per_image "
                    "from the nnU-Net plan and the label statistics (rule: claspe.protocol.rule; ours, the "
                    "paper's guidelines are unknown).")
    p.add_argument("dataset", help="prepared dataset name")
    p.add_argument("--data-root", required=True)
    p.add_argument("--json", action="store_true", help="print JSON with the statistics")
    p.set_defaults(func=_cmd_plan)

    p = subparsers.add_parser(
        "run", help="create or resume an AL experiment (nnActive protocol, real nnU-Net)",
        description="Runs (or resumes) one experiment: starting budget, then per loop annotate, preprocess, "
                    "train the folds, evaluate the fold ensemble on the held-out split, query. Settings not "
                    "given come from the `claspe plan` rule. Resume with the same arguments or the folder.")
    p.add_argument("experiment", nargs="?", help="an existing experiment folder to resume")
    p.add_argument("--data-root", required=True)
    p.add_argument("--exp-root", default="experiments", help="parent of experiment folders (default ./experiments)")
    p.add_argument("--config", help="ExperimentConfig JSON file")
    p.add_argument("--dataset", help="prepared dataset name under --data-root")
    p.add_argument("--strategy", help="e.g. clasp_pe, random_fg66, pred_entropy (see `claspe query --list`)")
    p.add_argument("--query-size", type=int, help="boxes queried per loop (default: plan rule)")
    p.add_argument("--patch-size", type=_triple, help="query box size AxBxC in voxels, array axis order (default: plan rule)")
    p.add_argument("--agg-stride", type=_triple, help="stride of the candidate grid, int or AxBxC (default: plan rule)")
    p.add_argument("--starting-budget-size", type=int, help="boxes of the starting budget (default: query size)")
    p.add_argument("--n-patch-per-image", type=int, help="candidates per image and key (default: plan rule)")
    p.add_argument("--steps", type=int, default=5, help="trainings (queries = steps - 1); default 5")
    p.add_argument("--trainer", default="nnActiveTrainer_200epochs",
                   help="nnActiveTrainer_200epochs (default), _500epochs, _NoMirroring_200epochs, nnActiveTrainer_tiny")
    p.add_argument("--folds", type=int, default=5, help="CV folds = ensemble members (default 5)")
    p.add_argument("--seed", type=int, default=12345, help="experiment seed (starting budget, queries, training)")
    p.add_argument("--label-regime", default="custom", help="a label for the setting, e.g. low/medium/high")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--keep-models", action="store_true", help="keep every loop's fold models")
    p.add_argument("--no-eval-tta", action="store_true", help="no mirroring TTA in the held-out evaluation")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_run)

    p = subparsers.add_parser(
        "evaluate", help="Dice per loop of experiments, or nnU-Net Dice of a prediction folder",
        description="Prints the per-loop results (budget, foreground fraction, Dice per class) of experiment "
                    "folders; with --predictions/--labels/--dataset-json computes nnU-Net's per-class Dice.")
    p.add_argument("experiments", nargs="*")
    p.add_argument("--json", action="store_true")
    p.add_argument("--predictions")
    p.add_argument("--labels")
    p.add_argument("--dataset-json")
    p.set_defaults(func=_cmd_evaluate)

    p = subparsers.add_parser(
        "demo", help="a complete small AL experiment on the CPU (synthetic data, ClaSP PE vs Random 66%% FG)",
        description="Synthetic data, prepare, `claspe plan` settings, ClaSP PE and Random 66% FG for a few loops "
                    "with the tiny nnU-Net trainer on the CPU; prints Dice per loop, writes a budget-curve PNG and "
                    "(when claspe.report is installed) an HTML report.")
    p.add_argument("--out", default="claspe_demo", help="output folder (default ./claspe_demo; resumable)")
    p.add_argument("--cases", type=int, default=12, help="synthetic cases (default 12; 25%% held out)")
    p.add_argument("--loops", type=int, default=3, help="AL loops = trainings (default 3)")
    p.add_argument("--folds", type=int, default=2, help="CV folds per loop (default 2)")
    p.add_argument("--seed", type=int, default=12345, help="experiment seed (default 12345)")
    p.add_argument("--strategies", nargs="+", default=["clasp_pe", "random_fg66"],
                   help="strategies to compare (default: clasp_pe random_fg66)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--eval-tta", action="store_true", help="mirroring TTA in the held-out evaluation (8x slower)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=_cmd_demo)


if __name__ == "__main__":  # pragma: no cover
    from claspe.cli import main

    sys.exit(main(["run", *sys.argv[1:]]))
