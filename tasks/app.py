"""The Celery application, configured from the environment (see :mod:`tasks.config`).

``celery -A tasks worker`` / ``celery -A tasks beat`` use :data:`app`. An
application with its own Celery app can instead import the task modules and
apply our settings to its app::

    from tasks.app import configure_app
    configure_app(my_app)          # queues, routes, policy, beat schedule
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

import popoto
from popoto.redis_db import current_url

from . import logconfig
from .base import settings
from .config import Settings
from .schedule import build_schedule

TASK_MODULES = ("tasks.maintenance", "workers.tasks")


def configure_app(app: Celery, conf: Settings | None = None) -> Celery:
    """Apply the broker, queues, routes, task policy and beat schedule to ``app``."""
    conf = conf or settings
    app.conf.update(conf.celery_config())
    app.conf.beat_schedule = build_schedule(conf)
    app.conf.include = tuple(dict.fromkeys((*app.conf.include, *TASK_MODULES)))
    logconfig.connect_signals()
    return app


def _configure_worker_client(**_: Any) -> None:
    """Workers talk to Redis with explicit timeouts and few in-command retries.

    Short blips are absorbed by redis-py (``POPOTO_REDIS_RETRIES``); longer
    outages surface as ConnectionError and the task retry policy takes over,
    with back-off, instead of one task blocking a pool slot for minutes.
    """
    popoto.configure(
        url=current_url(),
        socket_timeout=30,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), settings.redis_retries),
    )


signals.worker_init.connect(_configure_worker_client, weak=False, dispatch_uid="popoto-client")
signals.worker_process_init.connect(_configure_worker_client, weak=False,
                                    dispatch_uid="popoto-client-child")

app = configure_app(Celery("popoto"))
