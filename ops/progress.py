"""The progress bar of ``popoto-ops`` (rebuilds here, ``--wait`` on a job)."""

from __future__ import annotations

import time
from typing import TextIO


class Progress:
    """A one-line progress bar on a terminal, periodic plain lines otherwise."""

    def __init__(self, stream: TextIO, label: str, width: int = 30,
                 every: float = 2.0) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        self.every = every
        self.tty = stream.isatty()
        self._last = 0.0
        self._started = time.monotonic()

    def update(self, done: int, total: int, note: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and not self.tty and now - self._last < self.every:
            return
        self._last = now
        total = max(total, done, 1)
        filled = int(self.width * done / total)
        bar = "#" * filled + "." * (self.width - filled)
        rate = done / max(now - self._started, 1e-9)
        text = (f"{self.label} [{bar}] {100 * done / total:5.1f}% {done}/{total} "
                f"{rate:,.0f}/s {note}".rstrip())
        if self.tty:
            self.stream.write("\r" + text.ljust(100))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
