"""A one-line progress bar for the command-line tools (``demo``, ``check``).

On a terminal the line is redrawn in place, at most ten times a second; on anything else (a pipe,
a CI log) only the finished line is printed, so logs stay one line per bar.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 width: int = 30) -> None:
        self.label = label
        self.total = max(0, int(total))
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.t0 = time.perf_counter()
        self._last_draw = 0.0
        self._closed = False
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty())
        if self.live:
            self._draw(end="")

    def update(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        if self.live and now - self._last_draw >= 0.1:
            self._draw(end="")

    def close(self, done: int | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        if done is not None:
            self.done = done
        self._draw(end="\n")

    def _draw(self, end: str) -> None:
        self._last_draw = time.perf_counter()
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = self._last_draw - self.t0
        rate = f"  {self.done / elapsed:,.0f}/s" if elapsed > 0 and self.done else ""
        line = f"  {self.label:<18} [{bar}] {self.done}/{self.total}{rate}  {elapsed:.1f} s"
        prefix = "\r" if self.live else ""
        self.stream.write(f"{prefix}{line}\x1b[K{end}" if self.live else line + end)
        self.stream.flush()
