"""medge.edge.progress: one line rewritten in place on a terminal, nothing in a log."""
import io
import re

from medge.edge import progress
from medge.edge.progress import ProgressLine


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    """A perf_counter that the test moves."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


def test_nothing_is_written_where_the_stream_is_not_a_terminal():
    log = io.StringIO()
    line = ProgressLine(3, stream=log)
    for _ in range(3):
        line.update("a.png")
    line.close()
    assert log.getvalue() == ""


def test_on_a_terminal_the_line_shows_count_rate_and_note(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress, "time", clock)
    term = Terminal()
    line = ProgressLine(4, unit="images", interval_s=0, stream=term)
    clock.now += 2
    line.update("a.png", n=2)
    clock.now += 2
    line.update()
    line.close()
    assert term.getvalue() == "\r2/4 images, 1.0/s, a.png\r3/4 images, 0.8/s\n"


def test_updates_closer_than_the_interval_are_skipped_but_the_last_is_shown(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress, "time", clock)
    term = Terminal()
    line = ProgressLine(3, interval_s=1.0, stream=term)
    for _ in range(3):
        clock.now += 0.1
        line.update()
    line.close()
    assert re.findall(r"\r(\d)/3 items", term.getvalue()) == ["3"]
    assert term.getvalue().endswith("\n")


def test_close_without_a_line_writes_nothing():
    term = Terminal()
    ProgressLine(2, stream=term).close()
    assert term.getvalue() == ""
