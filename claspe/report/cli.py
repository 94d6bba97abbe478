"""``claspe report``, ``claspe compare`` and ``claspe paper import|show`` (heavy imports inside)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _full_data(path: str | None) -> dict | None:
    if not path:
        return None
    import csv

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--full-data: {p} not found")
    out = {}
    with p.open(newline="") as f:
        for r in csv.DictReader(f):
            if "dataset" not in r or "dice" not in r:
                raise ValueError(f"--full-data {p}: needs columns dataset,dice (optionally class=fg_mean)")
            if r.get("class", "fg_mean") == "fg_mean":
                out[r["dataset"]] = float(r["dice"])
    return out


def _cmd_report(args: argparse.Namespace) -> int:
    from claspe.report.report import write_report

    page = write_report(args.experiments, args.out, alpha=args.alpha, full_data=_full_data(args.full_data))
    print(f"report: {page}")
    print(f"tables: {page.parent}/*.csv, {page.parent}/report.md; figures: {page.parent}/figures/")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from claspe.report.compare import compare

    res = compare(args.experiments, store=Path(args.store) if args.store else None, alpha=args.alpha,
                  full_data=_full_data(args.full_data))
    print(res.to_text())
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(res.to_dict(), indent=2))
        print(f"\nwritten: {args.json}")
    return 0


def _cmd_paper_import(args: argparse.Namespace) -> int:
    from claspe.report.paper import import_files, store_dir

    store = Path(args.store) if args.store else store_dir()
    for dest, kind, n in import_files(args.files, store):
        print(f"imported {n} {kind} rows -> {dest}")
    return 0


def _cmd_paper_show(args: argparse.Namespace) -> int:
    from claspe.report.paper import load_claims, load_settings, paper_dir

    print(f"paper_results: {paper_dir()}")
    print("settings:")
    for s in load_settings():
        print(f"  {s['setting_id']:<30} {s['dataset']:<30} {s['label_regime']:<8} patch {'x'.join(map(str, s['patch_size']))} "
              f"stride {'x'.join(map(str, s['agg_stride']))} qs {s['query_size']} sbs {s['starting_budget_size']} "
              f"npi {s['n_patch_per_image']} {s['trainer']} [{s['confidence']}]")
    print("claims:")
    for c in load_claims():
        print(f"  {c['id']} ({c['source']}, {c['rule']['kind']}): {c['interpretation'].strip()}")
    return 0


IMPORT_HELP = """Load published per-run results exports into a local store (default $CLASPE_PAPER_STORE or
~/.local/share/claspe/paper_store) so that `claspe compare` also compares numbers.

Accepted CSV formats (header row; names case-insensitive):
  per-run:  dataset,label_regime,method,seed,loop|budget,mean_dice[,fg_fraction][,setting_group]
            one row per run and loop; mean_dice in [0,1] (or percent)
  summary:  dataset,label_regime,method,AUBC[,AUBC_std,FinalDice,FinalDice_std,FG_Eff,FG_Eff_std][,setting_group]
            the reference's main_results_tables.py layout (x100)
setting_group is main (default), patch_half or rollout. Datasets as Dataset004_Hippocampus, 4 or Hippocampus;
methods as paper names (ClaSP PE), nnActive names (class_power_pe66_exp) or claspe names (clasp_pe)."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="tables, figures and one HTML page from a folder of experiments",
        description="Collect the experiments under EXPERIMENTS_DIR (any mix of datasets, regimes, strategies, "
                    "seeds; partial results allowed) and write CSV + Markdown tables, PNG figures (budget curves, "
                    "PPM heatmaps, FG-Eff curves, rank plot) and one self-contained HTML page.")
    p.add_argument("experiments", metavar="EXPERIMENTS_DIR")
    p.add_argument("--out", default=None, help="output folder (default EXPERIMENTS_DIR/report)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the PPM t-tests")
    p.add_argument("--full-data", default=None, metavar="CSV",
                   help="full-data Dice for FG-Eff (columns dataset,dice[,class]); default paper_results/")
    p.set_defaults(func=_cmd_report)

    p = subparsers.add_parser(
        "compare", help="check runs against the paper: identical settings? claims reproduced?",
        description="Compare the experiments under EXPERIMENTS_DIR with paper_results/: which settings are "
                    "identical to published ones, and a verdict per claim of the papers' abstracts with the "
                    "statistics behind it (PPM wins/losses, sign tests, ranks, Friedman/Nemenyi). With imported "
                    "published results (claspe paper import) it also compares the numbers.")
    p.add_argument("experiments", metavar="EXPERIMENTS_DIR")
    p.add_argument("--store", default=None, help="store of imported published results")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--full-data", default=None, metavar="CSV")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the comparison as JSON")
    p.set_defaults(func=_cmd_compare)

    p = subparsers.add_parser("paper", help="the paper's settings and claims; import published results",
                              description="paper_results/ tools: `show` lists the published settings and the "
                                          "claims; `import` loads published per-run results.")
    sub = p.add_subparsers(dest="paper_command", metavar="ACTION")
    pi = sub.add_parser("import", help="import published results exports (CSV)", description=IMPORT_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pi.add_argument("files", nargs="+", metavar="FILE")
    pi.add_argument("--store", default=None, help="store folder")
    pi.set_defaults(func=_cmd_paper_import)
    ps = sub.add_parser("show", help="list the published settings and the claims")
    ps.set_defaults(func=_cmd_paper_show)

    def _paper_usage(_args, _p=p) -> int:
        _p.print_help()
        return 2

    p.set_defaults(func=_paper_usage)

