"""Grid runner pieces that need no cluster: the driver lock, failure messages, options checks."""

from __future__ import annotations

import pytest

from claspe.cluster.driver import grid_lock
from claspe.cluster.runner import LocalOptions, _short_error, run_local


def test_two_drivers_never_share_a_grid_folder(tmp_path):
    with grid_lock(tmp_path):
        with pytest.raises(ValueError, match=r"another `claspe grid` runs on .*held by: pid \d+"):
            with grid_lock(tmp_path):
                pass
    with grid_lock(tmp_path):  # released again
        pass


def test_short_error_takes_the_exception_line_of_a_submitit_trace():
    text = ("Job (task=0) failed during processing with trace:\n----------------------\n"
            "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
            "ValueError: starting budget size=3 is smaller than 2 boxes x 3 classes\n\n"
            "----------------------\nYou can check full logs with 'job.stderr(0)'")
    assert _short_error(RuntimeError(text)) == "ValueError: starting budget size=3 is smaller than 2 boxes x 3 classes"
    assert _short_error(RuntimeError("plain message\nmore")) == "plain message"


@pytest.mark.parametrize("opts, message", [
    (LocalOptions(max_parallel=0), "--max-parallel must be >= 1"),
    (LocalOptions(max_parallel=3, gpus=(0, 1)), "exceeds the 2 GPUs given with --gpus"),
])
def test_local_options_are_checked(tmp_path, opts, message):
    with pytest.raises(ValueError, match=message):
        run_local([], tmp_path, tmp_path / "run", opts)
