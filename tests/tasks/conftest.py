"""Real Celery workers on the test Redis: the broker is the next database of the same server.

``worker`` is an in-process worker (threads pool, 2 threads) shared by a test
module; fault tests start ``celery worker`` subprocesses instead. After each
test the broker must be idle again, so no message leaks into the next test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from tasks import app
from tasks.config import default_broker_url
from tasks.testing import broker_idle, use_test_broker, wait_until


@pytest.fixture(scope="session")
def broker_url(redis_url: str) -> str:
    return default_broker_url(redis_url)


@pytest.fixture(scope="session")
def broker(broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def celery_app(broker_url: str) -> Any:
    """The project's Celery app on the test broker, with results stored there."""
    return use_test_broker(app, broker_url)


@pytest.fixture(scope="module")
def worker(celery_app: Any, broker: redis.Redis) -> Iterator[Any]:
    """An in-process worker (2 threads) consuming both queues."""
    broker.flushdb()
    with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=20) as w:
        yield w
    broker.flushdb()


@pytest.fixture
def idle_after(broker: redis.Redis) -> Iterator[None]:
    """Fail the test if it leaves queued or unacked messages behind."""
    yield
    wait_until(lambda: broker_idle(broker), timeout=20, message="broker idle after test")


@pytest.fixture
def subprocess_env(redis_url: str, broker_url: str) -> dict[str, str]:
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
        "POPOTO_MODEL_MODULES": "ops.example_models",
        "POPOTO_LOG_FORMAT": "json",
    }
