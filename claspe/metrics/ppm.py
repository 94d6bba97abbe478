"""Pairwise penalty matrix (PPM; after Ash et al., BADGE; METHOD.md §5).

Within one setting, for every budget step and every pair of methods (i, j), the seed values are
paired by row order (truncated to the shorter list) and the differences are tested against 0 with
a one-sample two-sided t-test. If significant, the better method (sign of the mean difference)
gets ``1 / n_budgets``; so ``matrix[i, j]`` is the share of budget steps at which method i
significantly beats method j (at most 1 per pair and setting). Summed over settings it counts
settings; row = significant wins, column = significant losses.

``correction="holm"`` corrects all pair × budget p-values of the setting jointly (Holm-Bonferroni,
``statsmodels.stats.multitest.multipletests``), as the reference's ``PairwisePenaltyMatrix_holms``.
Each unordered pair is tested once per budget step (the test of (j, i) is the same test as (i, j)),
so the Holm family has ``n_pairs · n_budgets`` members.

Decisions where the reference is silent or odd (documented here):

* a NaN value (a missing run) removes only its own pair: rows stay paired by row index (seed),
  so a gap in one method's table never shifts its later seeds onto another method's earlier ones;
* a pair with fewer than 2 paired seeds at a step is not tested (contributes nothing, like the
  reference's ``len(exp) <= 1`` skip); :func:`pairwise_tests` reports p = NaN for it;
* if all paired differences are exactly 0 scipy returns p = NaN: not significant;
* identical non-zero differences give t = ±inf, p = 0: significant (scipy's behaviour).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairTest:
    """One paired test: methods i < j (indices into ``methods``) at budget step ``step``."""

    i: int
    j: int
    step: int
    n: int  # paired seeds used
    mean_diff: float  # mean of (i - j)
    t: float
    p: float
    p_adj: float  # Holm-adjusted p (== p when no correction)
    significant: bool


def _check_results(results: Mapping[str, object]) -> tuple[list[str], list[np.ndarray]]:
    if not isinstance(results, Mapping) or len(results) < 2:
        raise ValueError("results must map at least 2 method names to arrays [n_seeds, n_budgets]")
    methods = [str(m) for m in results]
    arrays = []
    n_b = None
    for m, v in results.items():
        a = np.asarray(v, dtype=float)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[1] == 0:
            raise ValueError(f"results[{m!r}] must be a 2-D array [n_seeds, n_budgets], got shape {a.shape}")
        if n_b is None:
            n_b = a.shape[1]
        elif a.shape[1] != n_b:
            raise ValueError(f"results[{m!r}] has {a.shape[1]} budget steps, expected {n_b} (all methods must share budgets)")
        arrays.append(a)
    return methods, arrays


def pairwise_tests(results: Mapping[str, object], alpha: float = 0.05, correction: str | None = None,
                   ) -> tuple[list[str], list[PairTest]]:
    """All paired t-tests of one setting: ``(methods, tests)``; see the module docstring."""
    from scipy import stats

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if correction not in (None, "none", "holm"):
        raise ValueError(f"correction must be None or 'holm', got {correction!r}")
    methods, arrays = _check_results(results)
    n_b = arrays[0].shape[1]
    raw = []
    for i in range(len(methods)):
        for j in range(i + 1, len(methods)):
            for b in range(n_b):
                rows = min(arrays[i].shape[0], arrays[j].shape[0])  # paired by row, truncated
                d = arrays[i][:rows, b] - arrays[j][:rows, b]
                d = d[np.isfinite(d)]  # a NaN (missing run) drops its pair, not the pairing of the rest
                n = d.size
                if n < 2:
                    raw.append((i, j, b, n, math.nan, math.nan, math.nan))
                    continue
                with np.errstate(divide="ignore", invalid="ignore"):
                    res = stats.ttest_1samp(d, 0.0)
                raw.append((i, j, b, n, float(np.mean(d)), float(res.statistic), float(res.pvalue)))
    pvals = np.array([r[6] for r in raw], dtype=float)
    padj = pvals.copy()
    if correction == "holm":
        from statsmodels.stats.multitest import multipletests

        ok = np.isfinite(pvals)
        if np.any(ok):
            padj[ok] = multipletests(pvals[ok], alpha=alpha, method="holm")[1]
    tests = []
    for r, pa in zip(raw, padj):
        i, j, b, n, md, t, p = r
        sig = bool(math.isfinite(pa) and pa < alpha and md != 0.0)
        tests.append(PairTest(i=i, j=j, step=b, n=n, mean_diff=md, t=t, p=p, p_adj=float(pa), significant=sig))
    return methods, tests


def penalty_matrix(results: Mapping[str, object], alpha: float = 0.05, correction: str | None = None,
                   ) -> tuple[list[str], np.ndarray]:
    """Pairwise penalty matrix of one setting.

    Args:
        results: method name -> array ``[n_seeds, n_budgets]`` (e.g. Mean Dice per seed and budget
            step); all methods must have the same number of budget steps.
        alpha: significance level.
        correction: ``None`` (plain per-test alpha) or ``"holm"`` (Holm over all pair × budget
            p-values of the setting jointly).

    Returns:
        ``(methods, matrix)`` with ``matrix[i, j]`` = share of budget steps where method i
        significantly beats method j (in [0, 1]); the diagonal is 0 and for every step at most one
        of (i beats j), (j beats i) is counted.
    """
    methods, tests = pairwise_tests(results, alpha=alpha, correction=correction)
    n_b = np.asarray(next(iter(results.values()))).shape[-1]
    m = np.zeros((len(methods), len(methods)), dtype=float)
    for t in tests:
        if not t.significant:
            continue
        if t.mean_diff > 0:
            m[t.i, t.j] += 1.0 / n_b
        else:
            m[t.j, t.i] += 1.0 / n_b
    return methods, m


def aggregate_ppm(matrices: Sequence[tuple[Sequence[str], np.ndarray]], methods: Sequence[str] | None = None,
                  ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Sum per-setting PPMs over settings.

    Methods missing from a setting simply contribute nothing there. Returns
    ``(methods, summed, n_settings)`` where ``n_settings[i, j]`` is the number of settings that had
    both i and j (the denominator for "% of settings").
    """
    checked = []
    for k, item in enumerate(matrices):
        try:
            ms, mat = item
        except (TypeError, ValueError) as exc:
            raise ValueError(f"matrices[{k}] must be a (methods, matrix) pair as penalty_matrix returns") from exc
        ms = list(ms)
        mat = np.asarray(mat, dtype=float)
        if mat.shape != (len(ms), len(ms)):
            raise ValueError(f"matrices[{k}]: matrix shape {mat.shape} does not fit {len(ms)} methods {ms}")
        checked.append((ms, mat))
    matrices = checked
    if methods is None:
        methods = []
        for ms, _ in matrices:
            for mname in ms:
                if mname not in methods:
                    methods.append(mname)
    methods = list(methods)
    idx = {m: k for k, m in enumerate(methods)}
    total = np.zeros((len(methods), len(methods)))
    count = np.zeros((len(methods), len(methods)))
    for ms, mat in matrices:
        mat = np.asarray(mat, dtype=float)
        for a, ma in enumerate(ms):
            for b, mb in enumerate(ms):
                if a == b or ma not in idx or mb not in idx:
                    continue
                total[idx[ma], idx[mb]] += mat[a, b]
                count[idx[ma], idx[mb]] += 1
    return methods, total, count


def ppm_mean_row(matrix: np.ndarray) -> np.ndarray:
    """The reference's extra "Mean" row: column sums divided by (#methods - 1) (mean loss share)."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a PPM is a square methods × methods matrix, got shape {matrix.shape}")
    n = matrix.shape[0]
    if n < 2:
        raise ValueError("a PPM needs at least 2 methods")
    return matrix.sum(axis=0) / (n - 1)
