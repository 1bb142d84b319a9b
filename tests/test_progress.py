"""Progress in a log file is whole lines, not a redrawn bar's carriage-return fragments."""
from __future__ import annotations

import io
import sys

from edgeq.util import progress


def test_a_bar_into_a_file_writes_whole_lines(monkeypatch):
    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    for _ in progress.progress_bar(range(3), desc="quantize", unit="block"):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines and all(line.startswith("quantize:") for line in lines)
    assert "3/3" in lines[-1]


def test_a_disabled_bar_writes_nothing(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert list(progress.progress_bar(range(3), enabled=False)) == [0, 1, 2] and log.getvalue() == ""
