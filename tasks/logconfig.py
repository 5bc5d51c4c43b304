"""structlog, configured once for the library, the web app and the workers.

* ``configure_logging()`` installs one pipeline: context variables, log level,
  logger name, ISO UTC timestamp, then JSON lines (``POPOTO_LOG_FORMAT=json``,
  the default) or the console renderer (``console``, for development; coloured
  only on a terminal without ``NO_COLOR``). A bad ``POPOTO_LOG_FORMAT`` or
  ``POPOTO_LOG_LEVEL`` is one line naming the valid values.
  Standard-library records (the ORM core logs through ``logging``, Celery and
  kombu too) go through the same formatter, so every line of a process has the
  same shape.
* Celery signals carry request context into tasks: ``before_task_publish``
  copies the bound context variables named in :data:`PROPAGATED_KEYS` (e.g.
  ``request_id`` bound by the web request that enqueued the task) into a task
  header; ``task_prerun`` binds ``task_id``, ``task_name``, ``retries`` and
  that header in the worker; ``task_postrun`` clears them, so nothing leaks
  into the next task run by the same process or thread.
* No secret reaches a log line: :func:`scrub_secrets`, the last processor before
  the renderer (after tracebacks were turned into data, frame locals included),
  masks the password of every ``scheme://user:password@`` URL, the value of every
  field, dict key or local whose name contains PASSWORD, SECRET, TOKEN or KEY
  (any case; also ``name=value`` / ``'name': 'value'`` inside text such as a
  repr), and any occurrence of a secret the process knows of (passwords of the
  URLs in the environment and of the Redis URL in use, values of environment
  variables named like secrets). The console renderer gets plain-text tracebacks
  (no locals) for the same reason.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import structlog
from celery import signals

from popoto.redis_db import current_url

from .config import check_log_settings

#: Context variables that travel from the publisher to the task in a header.
PROPAGATED_KEYS = ("request_id", "correlation_id")
#: Name of the task message header that carries them.
CONTEXT_HEADER = "popoto_log_context"

_HANDLER_NAME = "popoto-structlog"

# --- secrets ------------------------------------------------------------------

#: what a masked value becomes
MASK = "***"
#: a field, key, local or variable whose name contains one of these holds a secret
SECRET_NAME = re.compile(r"password|passwd|secret|token|key", re.IGNORECASE)
#: names that contain KEY but, in this project's logs and frames, hold Redis key
#: names or counts (never credentials): left readable. Their values are still
#: scrubbed as text (URLs, known secrets).
NOT_SECRET_NAMES = frozenset({"key", "keys", "index_key", "index_keys"})
#: a known secret shorter than this is not masked wherever it appears (it would
#: mangle ordinary text); it is still masked in URLs and under secret names
MIN_LITERAL = 4

# scheme://user:PASSWORD@ (the password may hold '@'; it ends at the last '@' before
# the host), or a URL rich truncated in a traceback's locals: 'scheme://user:PASSWO'+25
_URL_PASSWORD = re.compile(
    r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:'\"]*:)(?P<pw>[^\s/]*@|[^\s/@'\"]+(?=['\"]\+\d))")
# name=value / name: value / 'name': 'value' inside text (reprs, messages)
_NAMED_VALUE = re.compile(
    r"""(?P<q>['"]?)(?P<name>[\w.-]*(?:password|passwd|secret|token|key)[\w.-]*)(?P=q)"""
    r"""(?P<sep>\s*[:=]\s*)(?:(?P<vq>['"])(?P<qval>.*?)(?P=vq)|(?P<val>[^\s,;&)}\]'"]+))""",
    re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:'\"]*:([^\s/]*)@")


def is_secret_name(name: str) -> bool:
    """True for a name (field, key, variable) whose value must not be logged."""
    return bool(SECRET_NAME.search(name)) and name.lower() not in NOT_SECRET_NAMES


def known_secrets() -> list[str]:
    """Secrets this process holds: URL passwords in the environment and in the Redis URL
    in use, values of environment variables named like secrets (longest first)."""
    found: set[str] = set()
    texts = []
    for name, value in os.environ.items():
        if is_secret_name(name):
            found.add(value)
        if "://" in value:
            texts.append(value)
    try:
        texts.append(current_url())
    except Exception:  # noqa: BLE001 - a bad URL is reported elsewhere, not while logging
        pass
    for text in texts:
        for password in _URL_IN_TEXT.findall(text):
            found.update((password, unquote(password)))
    return sorted((s for s in found if len(s) >= MIN_LITERAL), key=len, reverse=True)


def _mask_named(match: re.Match[str]) -> str:
    if match["name"].lower() in NOT_SECRET_NAMES:
        return match[0]
    value = f"{match['vq']}{MASK}{match['vq']}" if match["vq"] else MASK
    return f"{match['q']}{match['name']}{match['q']}{match['sep']}{value}"


def _mask_url(match: re.Match[str]) -> str:
    return match["pre"] + MASK + ("@" if match["pw"].endswith("@") else "")


def scrub_text(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with URL passwords, ``name=value`` secrets and known secrets masked."""
    for secret in known_secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _URL_PASSWORD.sub(_mask_url, text)
    return _NAMED_VALUE.sub(_mask_named, text)


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, dict):
        return {(scrub_text(k, secrets) if isinstance(k, str) else k):
                (MASK if isinstance(k, str) and is_secret_name(k) else _scrub(v, secrets))
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_scrub(v, secrets) for v in value]
        return items if hasattr(value, "_fields") else type(value)(items)  # namedtuple: list
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "backslashreplace")
        clean = scrub_text(text, secrets)
        return value if clean == text else clean
    shown = repr(value)  # what the renderer would print for it
    clean = scrub_text(shown, secrets)
    return value if clean == shown else clean


def scrub_secrets(logger: Any, method_name: str, event_dict: Any) -> Any:
    """structlog processor: mask secrets everywhere in the event (see the module doc).

    Runs after ``dict_tracebacks`` / ``format_exc_info``, so the traceback (its
    messages and its frames' locals) is scrubbed like every other value.
    """
    return _scrub(event_dict, known_secrets())


def shared_processors() -> list[Any]:
    """Processors applied to structlog events and foreign (stdlib) records alike."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def use_colour(stream: Any, env: Mapping[str, str] | None = None) -> bool:
    """Colours only for a terminal, and never with ``NO_COLOR`` set (https://no-color.org)."""
    env = os.environ if env is None else env
    if env.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def renderer(fmt: str, colours: bool = False) -> list[Any]:
    """Final processors: JSON lines (with structured tracebacks) or the console renderer,
    each after :func:`scrub_secrets` (the console gets plain-text tracebacks: its rich ones
    would print frame locals unscrubbed). ``colours``: ANSI colours in console lines."""
    if fmt == "console":
        return [structlog.processors.format_exc_info, scrub_secrets,
                structlog.dev.ConsoleRenderer(colors=colours)]
    return [structlog.processors.dict_tracebacks, scrub_secrets,
            structlog.processors.JSONRenderer()]


def log_settings(fmt: str | None = None, level: str | None = None,
                 env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(format, level)``: the arguments, else ``POPOTO_LOG_FORMAT`` / ``POPOTO_LOG_LEVEL``
    (json / INFO); SettingsError, one line naming the valid values, for a bad one."""
    env = os.environ if env is None else env
    fmt = (fmt or env.get("POPOTO_LOG_FORMAT", "").strip() or "json").lower()
    level = (level or env.get("POPOTO_LOG_LEVEL", "").strip() or "INFO").upper()
    check_log_settings(fmt, level)
    return fmt, level


def configure_logging(fmt: str | None = None, level: str | None = None,
                      stream: Any = None) -> None:
    """Configure structlog and the root stdlib logger (idempotent; re-running reconfigures).

    ``fmt`` and ``level`` default to ``POPOTO_LOG_FORMAT`` / ``POPOTO_LOG_LEVEL``; a bad
    value raises SettingsError before anything changes. Console lines are coloured only
    on a terminal without ``NO_COLOR``.
    """
    fmt, level = log_settings(fmt, level)
    stream = stream or sys.stderr
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
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *renderer(fmt, colours=use_colour(stream))],
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
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
