"""The Celery application, configured from the environment (see :mod:`tasks.config`).

``celery -A tasks worker`` / ``celery -A tasks beat`` use :data:`app`. An
application with its own Celery app can instead import the task modules and
apply our settings to its app::

    from tasks.app import configure_app
    configure_app(my_app)          # queues, routes, policy, beat schedule

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
and leases (:mod:`tasks.jobs`) stay with the data, next to what they describe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from celery import Celery, signals
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

import popoto
from popoto.exceptions import ConnectionConfigError
from popoto.redis_db import current_url, is_cluster, mask_url

from . import logconfig, stats
from .base import settings
from .config import Settings, default_broker_url
from .schedule import build_schedule

TASK_MODULES = ("tasks.maintenance", "workers.tasks")
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


def configure_app(app: Celery, conf: Settings | None = None) -> Celery:
    """Apply the broker, queues, routes, task policy and beat schedule to ``app``."""
    conf = conf or settings
    config = conf.celery_config()
    config["broker_url"] = broker_url(conf)
    if conf.result_backend and is_cluster_url(conf.result_backend):
        raise ConnectionConfigError(
            f"CELERY_RESULT_BACKEND={mask_url(conf.result_backend)!r} is a Redis Cluster: the "
            "result backend must be a standalone Redis")
    app.conf.update(config)
    app.conf.beat_schedule = build_schedule(conf)
    app.conf.include = tuple(dict.fromkeys((*app.conf.include, *TASK_MODULES)))
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

app = configure_app(Celery("popoto"))
