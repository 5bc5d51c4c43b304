"""Tasks for the worker subprocesses of test_log_secrets (imported with ``-I``).

Realistic failures with a secret at hand: an error message naming the URL it
was given, and an error a task logs itself (with its traceback's locals).
"""

from __future__ import annotations

import os

import structlog

from popoto.redis_db import get_client
from popoto.tasks import app

log = structlog.stdlib.get_logger("tests.secret_tasks")


@app.task(name="tests.secrets.raises_with_url")
def raises_with_url() -> None:
    """Raises an error whose message names the data URL, password and all."""
    url = os.environ["REDIS_URL"]
    raise RuntimeError(f"cannot use {url}")


@app.task(name="tests.secrets.logs_failure")
def logs_failure() -> str:
    """Logs a connection failure with its traceback (frame locals hold the URL) and goes on."""
    api_token = os.environ.get("API_TOKEN", "")
    try:
        get_client().ping()
    except Exception:  # noqa: BLE001 - logged, as a task that degrades gracefully would
        log.exception("data Redis unusable", token_length=len(api_token))
        return "degraded"
    return "ok"
