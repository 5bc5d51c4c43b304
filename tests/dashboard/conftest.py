"""Dashboard tests: a real Celery worker (threads, in-process) on the test Redis."""

from __future__ import annotations

from tests.celery_fixtures import (  # noqa: F401  (fixtures)
    broker,
    broker_url,
    celery_app,
    idle_after,
    worker,
)
