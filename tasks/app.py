"""The Celery application, configured from the environment (see :mod:`popoto.tasks.config`).

``celery -A popoto.tasks worker`` / ``celery -A popoto.tasks beat`` use :data:`app`, Popoto's own
app, with the defaults of :meth:`Settings.celery_config` (broker, serializer, task
policy, UTC, task events for Flower). An application with its own Celery app adds
Popoto to it instead, after configuring it::

    from popoto.tasks import configure_app
    configure_app(my_app)     # adds Popoto's tasks, queues, routes and beat entries

:func:`configure_app` leaves everything else as the application set it: broker,
result backend, default queue, timezone, serializers, events, its own routes and
beat entries (an entry of the same name as one of Popoto's wins).

The broker (and a result backend, if any) is always a **standalone** Redis,
also when Popoto's data lives in a Redis Cluster (kombu has no cluster
transport, and a cluster has no database numbers). :func:`broker_url` picks:

1. ``CELERY_BROKER_URL`` when set (a cluster URL there is an error);
2. else the server of ``REDIS_URL``, next database number, unless ``REDIS_URL``
   is the cluster Popoto talks to (then it is skipped);
3. else the server Popoto uses, next database number, when Popoto is not in
   cluster mode.

With only a cluster available (e.g. just ``REDIS_CLUSTER_URL``) it raises
``ConnectionConfigError`` asking for ``CELERY_BROKER_URL``. A URL counts as a
cluster URL when it has ``?cluster=true``, or names the host and port of
``REDIS_CLUSTER_URL`` or of the cluster Popoto is configured for. Job progress
and leases (:mod:`popoto.tasks.jobs`) stay with the data, next to what they describe.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from celery import Celery, signals
from kombu import Exchange, Queue
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

import popoto
from popoto.exceptions import ConnectionConfigError
from popoto.redis_db import current_url, is_cluster, mask_url

from . import logconfig, stats
from .base import settings
from .config import (
    TASK_ROUTES,
    Settings,
    SettingsError,
    default_broker_url,
    popoto_queues,
)
from .schedule import build_schedule

TASK_MODULES = ("popoto.tasks.maintenance", "popoto.workers.tasks")
_TRUE = ("1", "true", "yes", "on")


def _server(url: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of a redis:// or rediss:// URL (None for unix sockets)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return None
    return (parts.hostname or "", parts.port or 6379)


def is_cluster_url(url: str, env: Mapping[str, str] | None = None) -> bool:
    """True when ``url`` points at a Redis Cluster Popoto knows of (see the module doc)."""
    env = os.environ if env is None else env
    flags = [v for k, v in parse_qsl(urlsplit(url).query) if k == "cluster"]
    if flags and flags[-1].lower() in _TRUE:
        return True
    server = _server(url)
    if server is None:
        return False
    clusters = [env["REDIS_CLUSTER_URL"]] if env.get("REDIS_CLUSTER_URL") else []
    if is_cluster():
        clusters.append(current_url())
    return any(_server(c) == server for c in clusters)


def broker_url(conf: Settings | None = None, env: Mapping[str, str] | None = None) -> str:
    """The standalone Redis URL for the Celery broker (see the module doc for the order)."""
    conf = conf or settings
    env = os.environ if env is None else env
    explicit = env.get("CELERY_BROKER_URL", "").strip()
    if not explicit and conf.broker_url != default_broker_url(conf.redis_url):
        explicit = conf.broker_url  # set in code: Settings(broker_url=...)
    if explicit:
        if is_cluster_url(explicit, env):
            raise ConnectionConfigError(
                f"CELERY_BROKER_URL={mask_url(explicit)!r} is a Redis Cluster: the Celery "
                "broker must be a standalone Redis")
        return explicit
    candidates = []
    if env.get("REDIS_URL"):
        candidates.append(default_broker_url(env["REDIS_URL"]))
    if not is_cluster():
        candidates.append(default_broker_url(current_url()))
    for url in candidates:
        if not is_cluster_url(url, env):
            return url
    raise ConnectionConfigError(
        "Popoto talks to a Redis Cluster and no standalone Redis is configured for the Celery "
        "broker: set CELERY_BROKER_URL (or REDIS_URL) to a standalone Redis")


def create_app(conf: Settings | None = None) -> Celery:
    """Popoto's own Celery app (``celery -A popoto.tasks``): :meth:`Settings.celery_config` with
    the broker of :func:`broker_url`, then :func:`configure_app`."""
    conf = conf or settings
    config = conf.celery_config()
    config["broker_url"] = broker_url(conf)
    if conf.result_backend and is_cluster_url(conf.result_backend):
        raise ConnectionConfigError(
            f"CELERY_RESULT_BACKEND={mask_url(conf.result_backend)!r} is a Redis Cluster: the "
            "result backend must be a standalone Redis")
    app = Celery("popoto")
    app.conf.update(config)
    return configure_app(app, conf)


def _with_default_queue(conf: Any) -> list[Queue]:
    """The app's declared queues; when it declares none, the default queue Celery would
    have declared for it (so its workers keep consuming it once Popoto's are added)."""
    if conf.task_queues:
        return list(conf.task_queues)
    name = conf.task_default_queue
    exchange = Exchange(conf.task_default_exchange or name, type=conf.task_default_exchange_type)
    return [Queue(name, exchange, routing_key=conf.task_default_routing_key or name)]


def _with_popoto_routes(routes: Any) -> tuple[Any, ...]:
    """Popoto's router first (its patterns match only Popoto's task names), then the app's."""
    ours = dict(TASK_ROUTES)
    if routes is None:
        theirs: tuple[Any, ...] = ()
    elif isinstance(routes, (list, tuple)):
        theirs = tuple(routes)
    else:
        theirs = (routes,)
    return (ours, *(r for r in theirs if r != ours))


def _check_visibility_timeout(app: Celery, conf: Settings) -> None:
    """A Redis broker redelivers a task still running after its visibility timeout: the
    host's must exceed Popoto's time limits and retry back-off (as for our own app)."""
    options = app.conf.broker_transport_options or {}
    timeout = options.get("visibility_timeout", 3600)  # kombu's Redis default
    if not conf.time_limit < timeout or not conf.retry_backoff_max < timeout:
        raise SettingsError(
            f"broker_transport_options visibility_timeout ({timeout}) of app {app.main!r} must "
            f"exceed POPOTO_TASK_TIME_LIMIT ({conf.time_limit}) and "
            f"POPOTO_TASK_RETRY_BACKOFF_MAX ({conf.retry_backoff_max}): otherwise a "
            "running Popoto task is delivered a second time")


def configure_app(app: Celery, conf: Settings | None = None) -> Celery:
    """Add Popoto's tasks, queues, routes and beat entries to ``app``; nothing else changes.

    Imports Popoto's task modules (``include`` lists them for the worker too). Call it
    after the app's own configuration (``config_from_object`` replaces what was set
    before it). Safe to call more than once.
    """
    conf = conf or settings
    _check_visibility_timeout(app, conf)
    c = app.conf
    queues = _with_default_queue(c)
    names = {q.name for q in queues}
    c.task_queues = (*queues, *(q for q in popoto_queues() if q.name not in names))
    c.task_routes = _with_popoto_routes(c.task_routes)
    c.beat_schedule = {**build_schedule(conf), **(c.beat_schedule or {})}
    c.include = tuple(dict.fromkeys((*c.include, *TASK_MODULES)))
    for module in TASK_MODULES:  # registers Popoto's tasks: app.tasks lists them at once
        importlib.import_module(module)
    c.imports = tuple(dict.fromkeys((*c.imports, *conf.model_modules, *conf.handler_modules)))
    logconfig.connect_signals()
    stats.connect_signals()
    return app


def _configure_worker_client(**_: Any) -> None:
    """Workers talk to Redis with explicit timeouts and few in-command retries.

    Short blips are absorbed by redis-py (``POPOTO_REDIS_RETRIES``); longer
    outages surface as ConnectionError and the task retry policy takes over,
    with back-off, instead of one task blocking a pool slot for minutes.
    Cluster mode is kept as configured.
    """
    popoto.configure(
        url=current_url(),
        cluster=True if is_cluster() else None,
        socket_timeout=30,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), settings.redis_retries),
    )


signals.worker_init.connect(_configure_worker_client, weak=False, dispatch_uid="popoto-client")
signals.worker_process_init.connect(_configure_worker_client, weak=False,
                                    dispatch_uid="popoto-client-child")

app = create_app()
