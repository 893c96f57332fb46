"""Progress bars in log files: a shown bar writes a few lines, not one redraw per step."""

from __future__ import annotations

import io
import time

from speakerforge.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _redraws(stream: io.StringIO, steps: int = 400) -> int:
    for _ in progress_bar(range(steps), file=stream, mininterval=0.0, miniters=1, desc="x"):
        time.sleep(0.0005)
    return stream.getvalue().count("\r")


def test_a_log_file_gets_a_start_and_an_end_line_and_a_terminal_gets_live_redraws():
    assert _redraws(io.StringIO()) <= 3
    assert _redraws(_Terminal()) > 50


def test_disable_none_still_hides_the_bar_when_not_on_a_terminal():
    stream = io.StringIO()
    for _ in progress_bar(range(10), file=stream, disable=None):
        pass
    assert stream.getvalue() == ""
