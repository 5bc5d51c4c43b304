"""Settings of the background layer, read from the environment once.

Every knob has a default that suits a single-host deployment; the values that
must hold together (time limits and retry back-off below the broker's
visibility timeout) are checked here, so a bad combination fails at start-up
instead of as a duplicated task in production.

Variables (default in brackets):

* ``REDIS_URL`` data Redis, the ORM's [redis://127.0.0.1:6379/0]
* ``CELERY_BROKER_URL`` broker [REDIS_URL's server, next db number]
* ``CELERY_RESULT_BACKEND`` result backend ["": none, progress lives in job hashes]
* ``CELERY_SERIALIZER`` ``json`` or ``msgpack`` [json]
* ``CELERY_VISIBILITY_TIMEOUT`` seconds before an unacked message is redelivered [3600]
* ``CELERY_RESTORE_INTERVAL`` seconds between sweeps that redeliver them [60]
* ``POPOTO_TASK_SOFT_TIME_LIMIT`` / ``POPOTO_TASK_TIME_LIMIT`` per task, seconds [300 / 360]
* ``POPOTO_TASK_MAX_RETRIES`` retries on Redis connection errors [8]
* ``POPOTO_TASK_RETRY_BACKOFF`` back-off factor: countdown = random(0, f * 2**retry) [2]
* ``POPOTO_TASK_RETRY_BACKOFF_MAX`` back-off cap, seconds [300]
* ``POPOTO_CHUNK_SIZE`` keys per chunk task [1000]
* ``POPOTO_JOB_STEP_SECONDS`` a coordinator re-enqueues itself after this long [30]
* ``POPOTO_LOCK_TTL`` job lease, renewed by every chunk, seconds [2 * stall]
* ``POPOTO_JOB_STALL_SECONDS`` a running job without progress for this long is
  repaired (lost messages re-enqueued) [visibility timeout + 2 sweeps + time limit]
* ``POPOTO_STALL_CHECK_INTERVAL`` beat: look for stalled jobs every N s, 0 = off [60]
* ``POPOTO_MODEL_MODULES`` / ``POPOTO_HANDLER_MODULES`` comma-separated modules the
  worker imports: models (for labels) and stream handlers [""]
* ``POPOTO_REDIS_RETRIES`` redis-py retries inside one command, in workers [1]
* ``POPOTO_CHECK_INTERVAL`` / ``POPOTO_CLEAN_INTERVAL`` / ``POPOTO_TTL_CLEANUP_INTERVAL``
  beat intervals in seconds, 0 = off [3600 / 21600 / 300]
* ``POPOTO_DRAIN_STREAMS`` ``stream:group`` pairs drained by beat [""], every
  ``POPOTO_DRAIN_INTERVAL`` s [10], at most ``POPOTO_DRAIN_MAX_ENTRIES`` entries [1000]
  and ``POPOTO_DRAIN_MAX_SECONDS`` s [8] per run
* ``POPOTO_LOG_FORMAT`` ``json`` or ``console`` [json]; ``POPOTO_LOG_LEVEL`` [INFO]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from kombu import Exchange, Queue

from popoto.exceptions import ConnectionConfigError
from popoto.redis_db import DEFAULT_URL, mask_url

class SettingsError(ConnectionConfigError):
    """A setting of the background layer is invalid; the message is one line naming the
    variable (a ConnectionConfigError, as before, for code that catches that)."""


MAINTENANCE_QUEUE = "maintenance"
EVENTS_QUEUE = "events"
SERIALIZERS = ("json", "msgpack")
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


#: where Popoto's tasks go (patterns match Popoto's task names only)
TASK_ROUTES = {
    "popoto.maintenance.*": {"queue": MAINTENANCE_QUEUE},
    "popoto.events.*": {"queue": EVENTS_QUEUE},
}


def popoto_queues() -> tuple[Queue, ...]:
    """Popoto's queues: one direct exchange per queue, bound by the queue's own name, so a
    message routed to one queue never lands in the other."""
    return tuple(Queue(q, Exchange(q, type="direct"), routing_key=q)
                 for q in (MAINTENANCE_QUEUE, EVENTS_QUEUE))


def check_log_settings(fmt: str, level: str) -> None:
    """SettingsError naming the valid values for a bad log format or level."""
    if fmt not in LOG_FORMATS:
        raise SettingsError(f"POPOTO_LOG_FORMAT={fmt!r} is not a log format: use one of "
                            f"{', '.join(LOG_FORMATS)}")
    if level not in (*LOG_LEVELS, "WARN", "FATAL"):  # the stdlib's aliases work too
        raise SettingsError(f"POPOTO_LOG_LEVEL={level!r} is not a log level: use one of "
                            f"{', '.join(LOG_LEVELS)}")


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def url_db(url: str) -> int:
    """The database number of a redis://, rediss:// or unix:// URL (0 when absent)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        raw = dict(parse_qsl(parts.query)).get("db", "0")
    else:
        raw = parts.path.lstrip("/") or "0"
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(
            f"Redis URL {mask_url(url)!r} has a non-numeric database {raw!r}"
        ) from None


def with_db(url: str, db: int) -> str:
    """``url`` pointing at database ``db`` of the same server."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"]
        query.append(("db", str(db)))
        return f"unix://{parts.netloc}{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(path=f"/{db}"))


def default_broker_url(redis_url: str) -> str:
    """The data server with the next database number (db 15 wraps to db 14)."""
    db = url_db(redis_url)
    return with_db(redis_url, db + 1 if db < 15 else db - 1)


@dataclass(frozen=True)
class Settings:
    """Everything the Celery app, the beat schedule and the consumers read from env."""

    redis_url: str = DEFAULT_URL
    broker_url: str = ""
    result_backend: str = ""
    serializer: str = "json"
    visibility_timeout: int = 3600
    restore_interval: int = 60
    soft_time_limit: int = 300
    time_limit: int = 360
    max_retries: int = 8
    retry_backoff: int = 2
    retry_backoff_max: int = 300
    chunk_size: int = 1000
    job_step_seconds: float = 30.0
    lock_ttl: int = 0
    stall_seconds: int = 0
    stall_check_interval: int = 60
    model_modules: tuple[str, ...] = ()
    handler_modules: tuple[str, ...] = ()
    redis_retries: int = 1
    check_interval: int = 3600
    clean_interval: int = 21600
    ttl_cleanup_interval: int = 300
    drain_streams: tuple[tuple[str, str], ...] = ()
    drain_interval: int = 10
    drain_max_entries: int = 1000
    drain_max_seconds: float = 8.0
    log_format: str = "json"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not self.broker_url:
            object.__setattr__(self, "broker_url", default_broker_url(self.redis_url))
        if not self.stall_seconds:
            # a lost message is redelivered after the visibility timeout (plus a sweep);
            # a running chunk takes at most the hard time limit
            object.__setattr__(self, "stall_seconds", self.visibility_timeout
                               + 2 * self.restore_interval + self.time_limit)
        if not self.lock_ttl:
            object.__setattr__(self, "lock_ttl", 2 * self.stall_seconds)
        self.validate()

    def validate(self) -> None:
        """Raise SettingsError (one line, naming the variable) when values do not fit together."""
        if self.serializer not in SERIALIZERS:
            raise SettingsError(f"CELERY_SERIALIZER={self.serializer!r} is not a serializer: "
                                f"use one of {', '.join(SERIALIZERS)}")
        check_log_settings(self.log_format, self.log_level)
        if not 0 < self.soft_time_limit < self.time_limit < self.visibility_timeout:
            raise SettingsError(
                "time limits must satisfy 0 < POPOTO_TASK_SOFT_TIME_LIMIT "
                f"({self.soft_time_limit}) < POPOTO_TASK_TIME_LIMIT ({self.time_limit}) < "
                f"CELERY_VISIBILITY_TIMEOUT ({self.visibility_timeout}); otherwise a task "
                "still running is redelivered to a second worker"
            )
        if self.retry_backoff_max >= self.visibility_timeout:
            raise SettingsError(
                f"POPOTO_TASK_RETRY_BACKOFF_MAX ({self.retry_backoff_max}) must be below "
                f"CELERY_VISIBILITY_TIMEOUT ({self.visibility_timeout}): a retry waiting "
                "longer is redelivered while it waits"
            )
        if self.job_step_seconds >= self.soft_time_limit:
            raise SettingsError(
                f"POPOTO_JOB_STEP_SECONDS ({self.job_step_seconds}) must be below "
                f"POPOTO_TASK_SOFT_TIME_LIMIT ({self.soft_time_limit})"
            )
        if self.stall_seconds <= self.time_limit:
            raise SettingsError(
                f"POPOTO_JOB_STALL_SECONDS ({self.stall_seconds}) must exceed "
                f"POPOTO_TASK_TIME_LIMIT ({self.time_limit}): a running chunk is not a stall"
            )
        if self.lock_ttl <= self.stall_seconds:
            raise SettingsError(
                f"POPOTO_LOCK_TTL ({self.lock_ttl}) must exceed POPOTO_JOB_STALL_SECONDS "
                f"({self.stall_seconds}): a stalled job must keep its lease until repaired"
            )
        if self.drain_max_seconds >= self.soft_time_limit:
            raise SettingsError(
                f"POPOTO_DRAIN_MAX_SECONDS ({self.drain_max_seconds}) must be below "
                f"POPOTO_TASK_SOFT_TIME_LIMIT ({self.soft_time_limit})"
            )
        for name in ("chunk_size", "max_retries", "retry_backoff", "lock_ttl",
                     "drain_max_entries", "job_step_seconds", "restore_interval"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the variables listed in the module docstring (missing ones use defaults)."""
        env = os.environ if env is None else env

        def num(name: str, default: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return int(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r}: expected an integer") from None

        def real(name: str, default: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return float(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r}: expected a number") from None

        drains = []
        for pair in _split(env.get("POPOTO_DRAIN_STREAMS", "")):
            stream, sep, group = pair.partition(":")
            if not sep or not stream or not group:
                raise SettingsError(
                    f"POPOTO_DRAIN_STREAMS entry {pair!r}: expected 'stream:group'"
                )
            drains.append((stream, group))
        return cls(
            redis_url=env.get("REDIS_URL") or DEFAULT_URL,
            broker_url=env.get("CELERY_BROKER_URL", ""),
            result_backend=env.get("CELERY_RESULT_BACKEND", ""),
            serializer=env.get("CELERY_SERIALIZER", "json").strip().lower(),
            visibility_timeout=num("CELERY_VISIBILITY_TIMEOUT", 3600),
            restore_interval=num("CELERY_RESTORE_INTERVAL", 60),
            soft_time_limit=num("POPOTO_TASK_SOFT_TIME_LIMIT", 300),
            time_limit=num("POPOTO_TASK_TIME_LIMIT", 360),
            max_retries=num("POPOTO_TASK_MAX_RETRIES", 8),
            retry_backoff=num("POPOTO_TASK_RETRY_BACKOFF", 2),
            retry_backoff_max=num("POPOTO_TASK_RETRY_BACKOFF_MAX", 300),
            chunk_size=num("POPOTO_CHUNK_SIZE", 1000),
            job_step_seconds=real("POPOTO_JOB_STEP_SECONDS", 30.0),
            lock_ttl=num("POPOTO_LOCK_TTL", 0),
            stall_seconds=num("POPOTO_JOB_STALL_SECONDS", 0),
            stall_check_interval=num("POPOTO_STALL_CHECK_INTERVAL", 60),
            model_modules=_split(env.get("POPOTO_MODEL_MODULES", "")),
            handler_modules=_split(env.get("POPOTO_HANDLER_MODULES", "")),
            redis_retries=num("POPOTO_REDIS_RETRIES", 1),
            check_interval=num("POPOTO_CHECK_INTERVAL", 3600),
            clean_interval=num("POPOTO_CLEAN_INTERVAL", 21600),
            ttl_cleanup_interval=num("POPOTO_TTL_CLEANUP_INTERVAL", 300),
            drain_streams=tuple(drains),
            drain_interval=num("POPOTO_DRAIN_INTERVAL", 10),
            drain_max_entries=num("POPOTO_DRAIN_MAX_ENTRIES", 1000),
            drain_max_seconds=real("POPOTO_DRAIN_MAX_SECONDS", 8.0),
            log_format=env.get("POPOTO_LOG_FORMAT", "json").strip().lower(),
            log_level=env.get("POPOTO_LOG_LEVEL", "INFO").strip().upper(),
        )

    def celery_config(self) -> dict[str, Any]:
        """The settings of Popoto's own Celery app (``celery -A popoto.tasks``; lower-case names).

        An application's own app keeps its settings: :func:`popoto.tasks.app.configure_app`
        adds only Popoto's tasks, queues, routes and beat entries to it.
        """
        transport = {
            "visibility_timeout": self.visibility_timeout,
            "unacked_restore_interval": self.restore_interval,
            "unacked_restore_throttle": 1,
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
            "health_check_interval": 25,
        }
        config: dict[str, Any] = {
            "broker_url": self.broker_url,
            "broker_transport_options": transport,
            "broker_connection_retry_on_startup": True,
            "task_serializer": self.serializer,
            "result_serializer": self.serializer,
            "accept_content": [self.serializer],
            "task_default_queue": MAINTENANCE_QUEUE,
            # one direct exchange per queue, bound by the queue's own name: a message
            # routed to one queue never lands in the other
            "task_queues": popoto_queues(),
            "task_routes": dict(TASK_ROUTES),
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "task_soft_time_limit": self.soft_time_limit,
            "task_time_limit": self.time_limit,
            "task_track_started": False,
            "task_ignore_result": not self.result_backend,
            "worker_prefetch_multiplier": 1,
            "worker_hijack_root_logger": False,
            # task events, so Flower (and `celery events`) show Popoto's tasks
            "worker_send_task_events": True,
            "task_send_sent_event": True,
            "enable_utc": True,
            "timezone": "UTC",
            "imports": (*self.model_modules, *self.handler_modules),
        }
        if self.result_backend:
            config["result_backend"] = self.result_backend
            config["result_backend_transport_options"] = dict(transport)
            config["result_expires"] = 3600
        return config

    def describe(self) -> dict[str, Any]:
        """The settings with passwords masked, for start-up logs and ``popoto-ops``."""
        return {
            "redis_url": mask_url(self.redis_url),
            "broker_url": mask_url(self.broker_url),
            "result_backend": mask_url(self.result_backend) if self.result_backend else "",
            "serializer": self.serializer,
            "visibility_timeout": self.visibility_timeout,
            "soft_time_limit": self.soft_time_limit,
            "time_limit": self.time_limit,
            "model_modules": list(self.model_modules),
            "handler_modules": list(self.handler_modules),
        }


def _celery_command() -> bool:
    """True inside the ``celery`` command line (``celery ...`` or ``python -m celery ...``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and (spec.name or "").partition(".")[0] == "celery":
        return True
    return bool(sys.argv) and os.path.basename(sys.argv[0]) == "celery"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """:meth:`Settings.from_env`, read once when the background layer is imported.

    A bad value raises SettingsError (one line naming the variable). Inside the
    ``celery`` command line, which would print the import's traceback, it is printed
    as that one line instead (``popoto: ...``) and the command exits with status 2.
    """
    try:
        return Settings.from_env(env)
    except SettingsError as exc:
        if not _celery_command():
            raise
        sys.stderr.write(f"popoto: {exc}\n")
        raise SystemExit(2) from None
