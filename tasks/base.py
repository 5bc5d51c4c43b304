"""The declared task policy shared by every Popoto task.

Retry, acknowledgement and time-limit behaviour are class attributes of
:class:`PopotoTask` (Celery reads them; nothing is decided inside task
bodies). Values come from :class:`~popoto.tasks.config.Settings` read at import.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from celery import Task, shared_task

from popoto.exceptions import ConnectionConfigError, PopotoError

from . import jobs
from .config import load_settings
from .logconfig import scrub_text

#: Errors that mean "Redis is (briefly) unavailable": the task is retried.
RETRYABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)

settings = load_settings()

F = TypeVar("F", bound=Callable[..., Any])


class PopotoTask(Task):
    """Base class: idempotent tasks, acked after they finish, retried on Redis outages."""

    autoretry_for = RETRYABLE
    retry_backoff = settings.retry_backoff  # countdown = random(0, factor * 2**retries)
    retry_backoff_max = settings.retry_backoff_max
    retry_jitter = True
    max_retries = settings.max_retries
    acks_late = True  # a task lost with its worker is redelivered ...
    reject_on_worker_lost = True  # ... also when only the pool process died
    soft_time_limit = settings.soft_time_limit  # both below the broker visibility timeout
    time_limit = settings.time_limit

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        """A job enqueued with a ``queued`` record whose task failed before starting it:
        the record says failed (so ``--wait`` and ``GET /jobs/<id>`` stop waiting)."""
        try:
            jobs.fail_queued(task_id, scrub_text(f"{type(exc).__name__}: {exc}"))
        except (redis.RedisError, PopotoError, OSError):
            pass  # the data Redis is what failed: nothing to record it in


def _unwrap_unreachable(fn: F) -> F:
    """Popoto reports "cannot reach Redis" on first connect as ConnectionConfigError.

    Inside a task that is an outage like any other, so the underlying redis
    ConnectionError is re-raised for the retry policy to see; configuration
    mistakes (bad credentials, bad URL) still fail at once.
    """

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConnectionConfigError as exc:
            if isinstance(exc.__cause__, RETRYABLE):
                raise exc.__cause__ from exc
            raise

    return run  # type: ignore[return-value]


def popoto_task(name: str, **options: Any) -> Callable[[F], Any]:
    """``@popoto_task("popoto.maintenance.x")``: a bound shared task with the policy above.

    Shared, so an application's own Celery app picks the tasks up too once the
    module is imported (``include=["popoto.tasks.maintenance", "popoto.workers.tasks"]``).
    """

    def decorate(fn: F) -> Any:
        return shared_task(name=name, bind=True, base=PopotoTask, **options)(
            _unwrap_unreachable(fn)
        )

    return decorate
