"""Celery fixtures shared by tests/tasks and tests/workers (imported by their conftests).

Real Celery workers on the test Redis: the broker is the next database of the same
server. ``worker`` is an in-process worker (threads pool, 2 threads) shared by a test
module; after each test using ``idle_after`` the broker must be idle again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from popoto.tasks import app
from popoto.tasks.config import default_broker_url
from popoto.tasks.testing import broker_idle, use_test_broker, wait_until


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
