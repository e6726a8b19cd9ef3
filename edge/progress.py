"""A dependency-free progress line for the edge commands (base install: no tqdm).

On a terminal, one line on stderr rewritten in place at most every
``interval_s``: done/total, the rate and a caller's note. Not on a terminal
(a service's log), nothing: the commands print their own summary at the end.
The commands of the train extra use tqdm instead (``medge.train.progress``).
"""
from __future__ import annotations

import sys
import time


class ProgressLine:
    """``update()`` once per item done; ``close()`` ends the line."""

    def __init__(self, total: int, unit: str = "items", interval_s: float = 0.2, stream=None):
        self.total, self.unit, self.interval_s = total, unit, interval_s
        self.stream = stream or sys.stderr
        self.show = self.stream.isatty()
        self.done, self.shown = 0, False
        self.t0 = self.last = time.perf_counter()

    def update(self, note: str = "", n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.show or (now - self.last < self.interval_s and self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        print(f"\r{self.done}/{self.total} {self.unit}, {rate:.1f}/s" + (f", {note}" if note else ""), end="",
              file=self.stream, flush=True)
        self.shown = True

    def close(self) -> None:
        if self.shown:
            print(file=self.stream, flush=True)
