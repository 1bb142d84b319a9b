"""Progress bars that suit where stderr goes: tqdm's redrawn bar on a terminal; in a log file (nohup, CI)
one plain line at most every LOG_INTERVAL seconds, since a redrawn bar leaves thousands of carriage-return
fragments in a file and tqdm's own non-terminal mode (disable=None) would print nothing at all."""
from __future__ import annotations

import sys

LOG_INTERVAL = 30.0  # seconds between progress lines in a log file


class LineWriter:
    """A file for tqdm that turns each redraw ('\\r' + status) into one whole line on stderr."""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            sys.stderr.write(line + "\n")

    def flush(self) -> None:
        sys.stderr.flush()


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    from tqdm.auto import tqdm
    if enabled and not sys.stderr.isatty():
        kwargs = {"file": LineWriter(), "mininterval": LOG_INTERVAL, "maxinterval": LOG_INTERVAL,
                  "ascii": True, **kwargs}
    return tqdm(iterable, disable=not enabled, **kwargs)
