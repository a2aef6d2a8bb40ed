"""A console progress bar for loading a model, fed by ExLlamaV2's per-module load callback.

On a terminal it redraws one line on stderr; otherwise (a service, a log file) it logs every quarter, so a
journal is not flooded with carriage returns.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger(__name__)


class LoadProgress:
    """Callable as ``callback(done, total)``: ``done`` modules of ``total`` are loaded."""

    def __init__(self, label: str, *, stream: TextIO | None = None, width: int = 30, tty: bool | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.monotonic()
        self._last_quarter = -1
        self._finished = False

    def render(self, done: int, total: int) -> str:
        total = max(total, 1)
        done = min(max(done, 0), total)
        filled = self.width * done // total
        bar = "#" * filled + "." * (self.width - filled)
        return f"{self.label} [{bar}] {done}/{total} modules {100 * done // total:3d}%"

    def __call__(self, done: int, total: int) -> None:
        if self._finished:
            return
        if self.tty:
            end = "\n" if done >= total else ""
            self.stream.write("\r" + self.render(done, total) + end)
            self.stream.flush()
        else:
            quarter = 4 * min(done, total) // max(total, 1)
            if quarter > self._last_quarter:
                self._last_quarter = quarter
                log.info("%s: %d/%d modules loaded", self.label, done, total)
        if done >= total:
            self._finished = True
            log.info("%s: loaded in %.1f s", self.label, time.monotonic() - self.started)
