"""Progress of long operator commands, with rate and ETA (tqdm).

On a terminal: one live bar per phase, redrawn in place. Anywhere else (a pipe, a
file, cron, CI logs): plain lines, one every few seconds and one at the end, the
same text without colour or carriage returns. Both go to stderr, so ``--json``
output on stdout stays machine-readable.
"""

from __future__ import annotations

import os
import time
from typing import Any, TextIO

from tqdm import tqdm

from popoto.models.base import Model
from popoto.models.maintenance import class_set_size

#: ``CliPart reindex:  40%|####      | 100/250 [2,312 obj/s, elapsed 00:00, ETA 00:00]``
BAR_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
              "[{rate_fmt}, elapsed {elapsed}, ETA {remaining}{postfix}]")


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _width(stream: Any) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class Progress:
    """One phase of work: ``update(done, total)`` as it advances, ``close()`` at the end."""

    def __init__(self, stream: TextIO, label: str, unit: str = "obj",
                 every: float = 2.0) -> None:
        self.stream = stream
        self.label = label
        self.unit = unit
        self.every = every
        self.tty = is_terminal(stream)
        self._started = time.monotonic()
        self._last = 0.0
        self._bar: tqdm[Any] | None = None
        if self.tty:
            sized = _width(stream) > 0  # a terminal that reports no size gets 100 columns
            self._bar = tqdm(total=0, desc=label, unit=unit, file=stream, leave=True,
                             dynamic_ncols=sized, ncols=None if sized else 100,
                             nrows=None if sized else 24,
                             bar_format=BAR_FORMAT, mininterval=0.1, colour=None)

    def update(self, done: int, total: int, note: str = "", force: bool = False) -> None:
        """``done`` of ``total`` (absolute counts); ``note`` is shown after the ETA.
        Off a terminal a line is written every ``every`` seconds, or when ``force``."""
        total = max(total, done, 1)
        if self._bar is not None:
            self._bar.total = total
            self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(done - self._bar.n)
            if force:
                self._bar.refresh()
            return
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        line = tqdm.format_meter(done, total, now - self._started, prefix=self.label,
                                 unit=self.unit, ascii=True, postfix=note or None,
                                 bar_format=BAR_FORMAT)
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Phases:
    """Progress of a command that runs in phases, one bar each: ``phases(phase, done,
    total, note)`` as it advances (the signature of ``check_indexes(progress=...)``);
    ``finish()`` (or leaving the ``with`` block) writes the last state of the bar."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.phase: str | None = None
        self.bar: Progress | None = None
        self.last: tuple[int, int, str] = (0, 0, "")

    def __call__(self, phase: str, done: int, total: int, note: str = "") -> None:
        if phase != self.phase or self.bar is None:
            self.finish()
            self.phase, self.bar = phase, Progress(self.stream, f"{self.label} {phase}")
        self.last = (done, total, note)
        self.bar.update(done, total, note)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.update(*self.last, force=True)
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Phases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


def check_with_progress(model: type[Model], batch_size: int, err: TextIO) -> dict[str, Any]:
    """``model.check_indexes()`` with a bar for its index keys, then its instances."""
    with Phases(err, f"{model.__name__} check") as phases:
        return model.check_indexes(batch_size=batch_size, progress=phases)


def clean_index_keys(model: type[Model], index_keys: list[str], batch_size: int,
                     phases: Phases) -> int:
    """Clean every one of ``index_keys`` (phase ``clean``); returns the entries removed."""
    removed = 0
    phases("clean", 0, len(index_keys), "removed=0")
    for position, index_key in enumerate(index_keys, 1):
        removed += model.clean_index_key(index_key, batch_size)
        phases("clean", position, len(index_keys), f"removed={removed}")
    return removed


def clean_with_progress(model: type[Model], batch_size: int, err: TextIO) -> int:
    """``model.clean_indexes()`` through the chunk API, with a bar over its index keys."""
    with Phases(err, model.__name__) as phases:
        return clean_index_keys(model, model.index_keys(batch_size), batch_size, phases)


def rebuild_with_progress(model: type[Model], batch_size: int, err: TextIO) -> int:
    """The chunk API driven here: reindex every instance hash, then clean every index key.

    A sharded model's scan covers every tag group (reindex_keys works group by
    group); every group is reindexed before any index key is cleaned. Returns the
    number of instances reindexed.
    """
    total = class_set_size(model)
    cursor, done = 0, 0
    with Phases(err, model.__name__) as phases:
        phases("reindex", 0, total)
        while True:
            cursor, found = model.scan_instance_keys(cursor, batch_size)
            if found:
                done += model.reindex_keys(found)
                phases("reindex", done, total)
            if cursor == 0:
                break
        clean_index_keys(model, model.index_keys(), batch_size, phases)
    return done
