"""Fixtures shared by the ops tests (CLI and web app)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from popoto.tasks import app
from popoto.tasks.config import default_broker_url
from popoto.tasks.testing import use_test_broker


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    """The Celery app pointed at the test broker (the next db), its queues emptied around
    the test."""
    url = default_broker_url(redis_url)
    use_test_broker(app, url)
    client = redis.Redis.from_url(url)
    client.delete("maintenance", "events")
    yield client
    client.delete("maintenance", "events")
    client.close()
