"""A progress bar on standard error, drawn only when that is a terminal (never in a log or
a pipe), redrawn at most ten times a second."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
REDRAW_EVERY_S = 0.1


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self.enabled = self._stream.isatty()
        self._total = max(total, 1)
        self._started = time.monotonic()
        self._drawn_at = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._drawn_at < REDRAW_EVERY_S):
            return
        self._drawn_at = now
        share = min(done / self._total, 1.0)
        filled = int(share * WIDTH)
        rate = done / max(now - self._started, 1e-9)
        bar = "#" * filled + "." * (WIDTH - filled)
        self._stream.write(f"\r[{bar}] {done:,}/{self._total:,} rows {rate:,.0f} rows/s ")
        self._stream.flush()

    def finish(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            self._stream.write("\n")
            self._stream.flush()
