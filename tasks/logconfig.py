"""structlog, configured once for the library, the web app and the workers.

* ``configure_logging()`` installs one pipeline: context variables, log level,
  logger name, ISO UTC timestamp, then JSON lines (``POPOTO_LOG_FORMAT=json``,
  the default) or the coloured console renderer (``console``, for development).
  Standard-library records (the ORM core logs through ``logging``, Celery and
  kombu too) go through the same formatter, so every line of a process has the
  same shape.
* Celery signals carry request context into tasks: ``before_task_publish``
  copies the bound context variables named in :data:`PROPAGATED_KEYS` (e.g.
  ``request_id`` bound by the web request that enqueued the task) into a task
  header; ``task_prerun`` binds ``task_id``, ``task_name``, ``retries`` and
  that header in the worker; ``task_postrun`` clears them, so nothing leaks
  into the next task run by the same process or thread.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from celery import signals

from .config import Settings

#: Context variables that travel from the publisher to the task in a header.
PROPAGATED_KEYS = ("request_id", "correlation_id")
#: Name of the task message header that carries them.
CONTEXT_HEADER = "popoto_log_context"

_HANDLER_NAME = "popoto-structlog"


def shared_processors() -> list[Any]:
    """Processors applied to structlog events and foreign (stdlib) records alike."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def renderer(fmt: str) -> list[Any]:
    """Final processors: JSON lines (with structured tracebacks) or the console renderer."""
    if fmt == "console":
        return [structlog.dev.ConsoleRenderer()]
    return [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]


def configure_logging(fmt: str | None = None, level: str | None = None,
                      stream: Any = None) -> None:
    """Configure structlog and the root stdlib logger (idempotent; re-running reconfigures).

    ``fmt`` and ``level`` default to ``POPOTO_LOG_FORMAT`` / ``POPOTO_LOG_LEVEL``.
    """
    settings = Settings.from_env() if fmt is None or level is None else None
    fmt = fmt or (settings.log_format if settings else "json")
    level = (level or (settings.log_level if settings else "INFO")).upper()
    shared = shared_processors()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: structlog.testing.capture_logs() must see every logger.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer(fmt)],
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)


def get_logger(name: str) -> Any:
    """A structlog logger whose events carry ``logger`` = ``name``."""
    return structlog.stdlib.get_logger(name)


# --- Celery signal handlers ---------------------------------------------------

def _on_setup_logging(**_: Any) -> None:
    """Celery asks whether anyone configures logging: we do, so it leaves the root alone."""
    configure_logging()


def _on_before_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None:
        return
    bound = structlog.contextvars.get_contextvars()
    carried = {k: bound[k] for k in PROPAGATED_KEYS if k in bound}
    if carried and CONTEXT_HEADER not in headers:
        headers[CONTEXT_HEADER] = carried


def _on_task_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    structlog.contextvars.clear_contextvars()
    request = task.request if task is not None else None
    carried = getattr(request, CONTEXT_HEADER, None) or {}
    if not isinstance(carried, dict):
        carried = {}
    structlog.contextvars.bind_contextvars(
        **{k: v for k, v in carried.items() if k in PROPAGATED_KEYS},
        task_id=task_id,
        task_name=getattr(task, "name", None),
        retries=getattr(request, "retries", 0) or 0,
    )


def _on_task_postrun(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


def connect_signals() -> None:
    """Connect the handlers above (safe to call more than once: Celery dedupes by uid)."""
    signals.setup_logging.connect(_on_setup_logging, weak=False, dispatch_uid="popoto-setup")
    signals.before_task_publish.connect(_on_before_publish, weak=False,
                                        dispatch_uid="popoto-publish")
    signals.task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid="popoto-prerun")
    signals.task_postrun.connect(_on_task_postrun, weak=False, dispatch_uid="popoto-postrun")
