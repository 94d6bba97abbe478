"""The demo's budget curve is drawn in matplotlib's default style even after nnU-Net's progress plot
ran ``seaborn.set(font_scale=2.5)`` in the same process, and leaves the global rcParams alone."""

from __future__ import annotations

import pytest

ROWS = [{"strategy": s, "n_patches": n, "mean_dice": d}
        for s, pts in (("clasp_pe", ((16, 0.1), (32, 0.3))), ("random_fg66", ((16, 0.1), (32, None))))
        for n, d in pts]


def _title_size_at_save(monkeypatch, path):
    from matplotlib.figure import Figure

    from claspe.protocol.demo import budget_curve_png

    seen = {}
    save = Figure.savefig

    def spy(fig, *a, **kw):
        ax = fig.axes[0]
        seen["title"] = ax.title.get_fontsize()
        seen["xtick"] = ax.get_xticklabels()[0].get_fontsize()
        seen["facecolor"] = ax.get_facecolor()
        return save(fig, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", spy)
    png = budget_curve_png(ROWS, path, title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return seen


def test_budget_curve_ignores_seaborn_global_style(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg", force=False)
    sns = pytest.importorskip("seaborn")  # an nnU-Net dependency
    reference = _title_size_at_save(monkeypatch, tmp_path / "ref.png")
    with matplotlib.rc_context():  # what nnU-Net's logger does to the process, undone after the test
        sns.set(font_scale=2.5)
        styled = dict(matplotlib.rcParams)
        assert matplotlib.rcParams["axes.titlesize"] != matplotlib.rcParamsDefault["axes.titlesize"]
        after_seaborn = _title_size_at_save(monkeypatch, tmp_path / "after.png")
        assert dict(matplotlib.rcParams) == styled  # the global style is left as it was
    assert after_seaborn == reference
    assert reference["title"] == pytest.approx(12.0)  # matplotlib default: 'large' of 10 pt
    assert reference["facecolor"] == (1.0, 1.0, 1.0, 1.0)  # not seaborn's grey
