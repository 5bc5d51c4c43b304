"""structlog in workers: task context bound per task, request_id carried in task headers."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
import redis
import structlog
from structlog.testing import capture_logs

from popoto.redis_db import get_client
from popoto.tasks import app
from popoto.tasks.base import popoto_task
from popoto.tasks.logconfig import configure_logging

pytestmark = pytest.mark.usefixtures("worker", "idle_after")
log = structlog.stdlib.get_logger("tests.logging")


@app.task(name="tests.logging.emit", ignore_result=False)
def emit(message: str) -> None:
    log.info(message)


@app.task(name="tests.logging.bind_and_emit", ignore_result=False)
def bind_and_emit(message: str) -> None:
    structlog.contextvars.bind_contextvars(leaky="yes")
    log.info(message)


@popoto_task("tests.logging.flaky", ignore_result=False, max_retries=3, retry_backoff=1,
             retry_backoff_max=1)
def flaky(self: Any, counter_key: str) -> int:
    """Fails with a Redis ConnectionError on the first attempt, succeeds on the second."""
    attempt = get_client().incr(counter_key)
    log.info("attempt", attempt=attempt)
    if attempt == 1:
        raise redis.exceptions.ConnectionError("simulated outage")
    return attempt


def merged() -> Any:
    return capture_logs(processors=[structlog.contextvars.merge_contextvars])


def test_task_logs_carry_task_id_name_and_retries() -> None:
    """Every line logged inside a task has task_id, task_name and retries bound."""
    with merged() as logs:
        result = emit.apply_async(("hello",))
        result.get(timeout=20)
    line = next(e for e in logs if e["event"] == "hello")
    assert line["task_id"] == result.id
    assert line["task_name"] == "tests.logging.emit"
    assert line["retries"] == 0
    assert line["log_level"] == "info"


def test_request_id_bound_at_publish_travels_in_headers() -> None:
    """request_id bound in the enqueuing code (a web request) is bound in the worker too."""
    structlog.contextvars.bind_contextvars(request_id="req-42", unrelated="stays-here")
    try:
        with merged() as logs:
            emit.apply_async(("from web",)).get(timeout=20)
    finally:
        structlog.contextvars.clear_contextvars()
    line = next(e for e in logs if e["event"] == "from web" and "task_id" in e)
    assert line["request_id"] == "req-42"
    assert "unrelated" not in line  # only the propagated keys travel


def test_context_is_cleared_after_each_task() -> None:
    """Context bound inside one task does not leak into the next task on the same worker."""
    with merged() as logs:
        bind_and_emit.apply_async(("first",)).get(timeout=20)
        for _ in range(4):  # both worker threads run one
            emit.apply_async(("second",)).get(timeout=20)
    first = next(e for e in logs if e["event"] == "first")
    assert first["leaky"] == "yes"
    seconds = [e for e in logs if e["event"] == "second"]
    assert seconds and all("leaky" not in e for e in seconds)


def test_retry_after_connection_error_logs_retries(r: redis.Redis) -> None:
    """A ConnectionError is retried by the declared policy; the retry logs retries=1."""
    with merged() as logs:
        result = flaky.apply_async(("flaky:counter",))
        assert result.get(timeout=30) == 2
    attempts = [e for e in logs if e["event"] == "attempt"]
    assert [(e["attempt"], e["retries"]) for e in attempts] == [(1, 0), (2, 1)]
    assert all(e["task_id"] == result.id for e in attempts)


def test_json_lines_have_iso_timestamp_level_and_logger() -> None:
    """POPOTO_LOG_FORMAT=json renders one JSON object per line, stdlib records included."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, structlog.get_config())
    try:
        configure_logging("json", "INFO", stream=stream)
        structlog.contextvars.bind_contextvars(task_id="t-1")
        structlog.stdlib.get_logger("popoto.workers").info("structured", model="Note")
        logging.getLogger("popoto.models").warning("from %s", "stdlib")
    finally:
        structlog.contextvars.clear_contextvars()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.configure(**saved[2])
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    first, second = lines
    assert first["event"] == "structured" and first["model"] == "Note"
    assert first["level"] == "info" and first["logger"] == "popoto.workers"
    assert first["task_id"] == "t-1"
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert second["event"] == "from stdlib" and second["logger"] == "popoto.models"
    assert second["level"] == "warning" and second["task_id"] == "t-1"


def test_console_format_is_chosen_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """POPOTO_LOG_FORMAT=console renders human-readable lines instead of JSON."""
    monkeypatch.setenv("POPOTO_LOG_FORMAT", "console")
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, structlog.get_config())
    try:
        configure_logging(stream=stream)
        structlog.stdlib.get_logger("popoto.web").info("pretty", path="/notes")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.configure(**saved[2])
    text = stream.getvalue()
    assert "pretty" in text and "path" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])
