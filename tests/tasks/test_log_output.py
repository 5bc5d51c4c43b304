"""Log output for people and pipes: the console renderer colours only a terminal (never
with NO_COLOR), and a bad POPOTO_LOG_FORMAT / POPOTO_LOG_LEVEL is one line naming the
valid values, in-process and from every process entry point (no import traceback)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from popoto.tasks.config import SettingsError
from popoto.tasks.logconfig import configure_logging, log_settings, use_colour
from popoto.tasks.testing import spawn_worker

ESC = "\x1b["


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, structlog.get_config())
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    structlog.configure(**saved[2])


def console_line(stream: Any) -> None:
    configure_logging("console", "INFO", stream=stream)
    structlog.stdlib.get_logger("popoto.web").warning("pretty", path="/notes")
    logging.getLogger("popoto.models").warning("from %s", "stdlib")


@pytest.mark.usefixtures("restore_logging")
def test_console_lines_are_plain_when_not_on_a_terminal() -> None:
    """A pipe or file gets no ANSI escape, structlog and stdlib lines alike."""
    stream = io.StringIO()
    console_line(stream)
    text = stream.getvalue()
    assert "pretty" in text and "from stdlib" in text and ESC not in text


@pytest.mark.usefixtures("restore_logging")
def test_console_lines_are_coloured_on_a_terminal_unless_no_color(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal (a pty) the console renderer colours; NO_COLOR=1 turns that off."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    for no_color, coloured in ((None, True), ("1", False)):
        if no_color:
            monkeypatch.setenv("NO_COLOR", no_color)
        leader, follower = os.openpty()
        with os.fdopen(follower, "w") as tty:
            assert use_colour(tty) is coloured
            console_line(tty)
            tty.flush()
            text = os.read(leader, 65536).decode()
        os.close(leader)
        assert "pretty" in text and (ESC in text) is coloured


def test_use_colour_needs_a_terminal() -> None:
    """Files, pipes and closed streams are never coloured."""
    assert not use_colour(io.StringIO(), {})
    closed = io.StringIO()
    closed.close()
    assert not use_colour(closed, {})


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("env, message", [
    ({"POPOTO_LOG_FORMAT": "xml"},
     "POPOTO_LOG_FORMAT='xml' is not a log format: use one of json, console"),
    ({"POPOTO_LOG_LEVEL": "loud"},
     "POPOTO_LOG_LEVEL='LOUD' is not a log level: use one of DEBUG, INFO, WARNING, "
     "ERROR, CRITICAL"),
])
def test_a_bad_log_setting_is_one_line_naming_the_valid_values(
        env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """configure_logging() raises SettingsError with one line; the logging set-up in
    place is left as it was."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    before = list(logging.getLogger().handlers)
    with pytest.raises(SettingsError) as caught:
        configure_logging()
    assert str(caught.value) == message
    assert logging.getLogger().handlers == before
    assert log_settings("console", "warning", env={}) == ("console", "WARNING")


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


CELERY = str(Path(sys.executable).with_name("celery"))


@pytest.mark.parametrize("cmd, prefix", [
    ([CELERY, "-A", "popoto.tasks", "worker"], "popoto: "),
    ([sys.executable, "-m", "celery", "-A", "popoto.tasks", "beat"], "popoto: "),
    ([sys.executable, "-m", "popoto.workers", "consume", "--stream", "s", "--group", "g"],
     "python -m popoto.workers: "),
    ([sys.executable, "-m", "popoto.ops", "jobs"], "popoto-ops: "),
], ids=["celery-worker", "python-m-celery-beat", "consumer", "popoto-ops"])
def test_a_bad_log_format_stops_every_process_with_one_line(cmd: list[str],
                                                            prefix: str) -> None:
    """Worker, beat, consumer and CLI: exit status 2 and exactly one line on stderr
    naming the variable and the valid values; no traceback."""
    proc = run(cmd, {"POPOTO_LOG_FORMAT": "xml"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"{prefix}POPOTO_LOG_FORMAT='xml' is not a log format: use one of json, console"]


def test_any_bad_setting_stops_the_celery_command_with_one_line() -> None:
    """The same for every other variable the background layer reads at start-up."""
    proc = run([CELERY, "-A", "popoto.tasks", "worker"], {"POPOTO_TASK_TIME_LIMIT": "4000"})
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("popoto: time limits must satisfy")


@pytest.mark.slow
def test_a_worker_logging_to_a_file_writes_no_colour(subprocess_env: dict[str, str]) -> None:
    """A real worker with POPOTO_LOG_FORMAT=console, its output in a file: readable
    console lines, no ANSI escapes (also in Celery's own banner)."""
    with spawn_worker({**subprocess_env, "POPOTO_LOG_FORMAT": "console"}) as worker:
        output = worker.output()
        worker.terminate()
    assert "ready." in output and ESC not in output
