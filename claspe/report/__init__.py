"""Report and comparison with the paper (tables, figures, HTML; claims; published numbers).

Kept light at import (the CLI imports :mod:`claspe.report.cli` for ``claspe --help``): the heavy parts
live in submodules and are imported by the functions below.

* :func:`write_report` — ``claspe report``: CSV + Markdown tables, PNG figures, one HTML page.
* :func:`compare` — ``claspe compare``: settings vs ``paper_results/``, per-claim verdicts.
* :func:`collect_runs` — the finished/partial experiments under a folder as long tables.
"""

from __future__ import annotations

from pathlib import Path


def write_report(exp_root, out_dir=None, **kwargs) -> Path:
    """Write the report of every experiment under ``exp_root``; returns the HTML page's path.

    See :func:`claspe.report.report.write_report` for the options.
    """
    from claspe.report.report import write_report as _write

    return _write(exp_root, out_dir, **kwargs)


def compare(exp_root, **kwargs):
    """Compare the experiments under ``exp_root`` with ``paper_results/``; see :mod:`claspe.report.compare`."""
    from claspe.report.compare import compare as _compare

    return _compare(exp_root, **kwargs)


def collect_runs(exp_root):
    """Load the experiments under ``exp_root``; see :func:`claspe.report.collect.collect_runs`."""
    from claspe.report.collect import collect_runs as _collect

    return _collect(exp_root)


__all__ = ["collect_runs", "compare", "write_report"]
