"""Real Celery workers on the test Redis: the broker is the next database of the same server.

``worker`` is an in-process worker (threads pool, 2 threads) shared by a test
module; fault tests start ``celery worker`` subprocesses instead. After each
test the broker must be idle again, so no message leaks into the next test.
"""

from __future__ import annotations

import pytest

from tests.celery_fixtures import (  # noqa: F401  (fixtures)
    broker,
    broker_url,
    celery_app,
    idle_after,
    worker,
)


@pytest.fixture
def subprocess_env(redis_url: str, broker_url: str) -> dict[str, str]:  # noqa: F811
    """Environment for ``celery worker`` subprocesses: quick redelivery, quick retries."""
    return {
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_VISIBILITY_TIMEOUT": "6",
        "CELERY_RESTORE_INTERVAL": "1",
        "POPOTO_TASK_SOFT_TIME_LIMIT": "4",
        "POPOTO_TASK_TIME_LIMIT": "5",
        "POPOTO_TASK_RETRY_BACKOFF": "1",
        "POPOTO_TASK_RETRY_BACKOFF_MAX": "2",
        "POPOTO_TASK_MAX_RETRIES": "20",
        "POPOTO_JOB_STEP_SECONDS": "2",
        "POPOTO_DRAIN_MAX_SECONDS": "2",
        "POPOTO_JOB_STALL_SECONDS": "10",
        "POPOTO_REDIS_RETRIES": "0",
        "POPOTO_MODEL_MODULES": "popoto.ops.examples.models",
        "POPOTO_LOG_FORMAT": "json",
    }
