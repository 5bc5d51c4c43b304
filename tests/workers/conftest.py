"""Fixtures for stream consumer tests: a clean handler registry, a real Celery worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.celery_fixtures import (  # noqa: F401  (fixtures)
    broker,
    broker_url,
    celery_app,
    idle_after,
    worker,
)
from popoto.workers.registry import registry


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """Handlers registered by one test never see another test's events."""
    registry.clear()
    yield
    registry.clear()


