"""Celery integration that respects the host: ``configure_app`` adds Popoto's tasks,
queues, routes and beat entries to an application's own Celery app and leaves the
rest as the application set it; Popoto's tasks then run on that app's real workers.
Popoto's own app sends task events, so Flower shows its tasks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from popoto import Field, KeyField, Model
from popoto.registry import label_of
from popoto.tasks import configure_app
from popoto.tasks.config import Settings, SettingsError, url_db, with_db
from popoto.tasks.testing import wait_until

pytestmark = pytest.mark.standalone_only

HOST_SCHEDULE = {"shop-nightly-report": {"task": "shop.report",
                                         "schedule": timedelta(hours=24)}}


class HostNote(Model):
    slug = KeyField()
    text = Field(type=str, null=True)


def free_dbs(*used: str, count: int = 2) -> list[int]:
    taken = {url_db(u) for u in used}
    return [db for db in range(16) if db not in taken][:count]


@pytest.fixture
def host_urls(redis_url: str, broker_url: str) -> Iterator[tuple[str, str]]:
    """A broker and a result backend of the host's own (two other databases), emptied after."""
    urls = [with_db(redis_url, db) for db in free_dbs(redis_url, broker_url)]
    yield urls[0], urls[1]
    for url in urls:
        with redis.Redis.from_url(url) as client:
            client.flushdb()


def host_app(broker: str, backend: str) -> Celery:
    """An application's Celery app with its own settings, then Popoto added to it."""
    app = Celery("shop", set_as_current=False)
    app.conf.update(
        broker_url=broker, result_backend=backend, task_default_queue="shop",
        timezone="Europe/Paris", enable_utc=False, beat_schedule=dict(HOST_SCHEDULE),
        task_routes={"shop.*": {"queue": "shop"}}, task_serializer="json",
        task_ignore_result=False, worker_send_task_events=False,
        broker_transport_options={"visibility_timeout": 7200},
    )

    @app.task(name="shop.report", shared=False)
    def report(n: int) -> str:
        return f"report {n}"

    return configure_app(app)


def test_configure_app_keeps_the_hosts_settings(host_urls: tuple[str, str]) -> None:
    """Schedule, default queue, timezone, broker, result backend, routes, serializer and
    events survive; Popoto's tasks, queues, routes and beat entries are added."""
    broker, backend = host_urls
    app = host_app(broker, backend)
    conf = app.conf
    assert (conf.broker_url, conf.result_backend) == (broker, backend)
    assert (conf.task_default_queue, conf.timezone, conf.enable_utc) == \
        ("shop", "Europe/Paris", False)
    assert conf.task_ignore_result is False and conf.worker_send_task_events is False
    assert conf.broker_transport_options == {"visibility_timeout": 7200}
    assert conf.beat_schedule["shop-nightly-report"] == HOST_SCHEDULE["shop-nightly-report"]
    assert {"popoto-check-indexes", "popoto-resume-stalled-jobs"} <= set(conf.beat_schedule)
    assert [q.name for q in conf.task_queues] == ["shop", "maintenance", "events"]
    router = app.amqp.router
    assert router.route({}, "shop.report")["queue"].name == "shop"
    assert router.route({}, "popoto.maintenance.check_indexes")["queue"].name == "maintenance"
    assert router.route({}, "popoto.events.drain_stream")["queue"].name == "events"
    assert {"popoto.maintenance.rebuild_indexes", "popoto.events.drain_stream",
            "shop.report"} <= set(app.tasks)
    configure_app(app)  # a second call adds nothing twice
    assert [q.name for q in app.conf.task_queues] == ["shop", "maintenance", "events"]
    assert len(app.conf.task_routes) == 2


def test_a_host_entry_of_the_same_name_wins(host_urls: tuple[str, str]) -> None:
    """The host may replace one of Popoto's beat entries by defining it under its name."""
    app = Celery("shop", set_as_current=False)
    mine = {"task": "popoto.maintenance.check_all_indexes", "schedule": timedelta(minutes=5)}
    app.conf.update(broker_url=host_urls[0], beat_schedule={"popoto-check-indexes": mine})
    configure_app(app)
    assert app.conf.beat_schedule["popoto-check-indexes"] == mine


def test_a_host_visibility_timeout_below_the_task_limits_is_refused() -> None:
    """A visibility timeout that would redeliver running Popoto tasks is a one-line error."""
    app = Celery("shop", set_as_current=False)
    app.conf.broker_transport_options = {"visibility_timeout": 60}
    with pytest.raises(SettingsError, match=r"visibility_timeout \(60\).*POPOTO_TASK_TIME"):
        configure_app(app, Settings())


def test_popoto_tasks_run_on_a_worker_of_the_host_app(host_urls: tuple[str, str],
                                                      r: redis.Redis) -> None:
    """A real worker of the host app consumes its own queue and Popoto's; results come
    back through the host's result backend."""
    broker, backend = host_urls
    app = host_app(broker, backend)
    HostNote.create(slug="a", text="x")
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=20):
        mine = app.tasks["shop.report"].apply_async((7,))
        check = app.tasks["popoto.maintenance.check_indexes"].apply_async(
            (label_of(HostNote),))
        assert mine.get(timeout=30) == "report 7"
        report = check.get(timeout=30)
    assert report["total"] == 0 and report["instances"] == 1
    assert check.backend.url == backend


class EventLog:
    """Task events seen on the broker, as Flower receives them (a thread)."""

    def __init__(self, app: Celery) -> None:
        self.events: list[dict[str, Any]] = []
        self.app = app
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self.receiver = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> EventLog:
        self.thread.start()
        wait_until(lambda: self.receiver is not None, timeout=10, message="receiver")
        time.sleep(0.5)  # its subscription is made on the first read
        return self

    def __exit__(self, *exc: object) -> None:
        self.receiver.should_stop = True
        self.thread.join(timeout=10)

    def types_of(self, task_id: str) -> set[str]:
        return {e["type"] for e in list(self.events) if e.get("uuid") == task_id}


@pytest.mark.usefixtures("worker", "idle_after")
@pytest.mark.slow
def test_popoto_workers_send_task_events_for_flower(celery_app: Any, r: redis.Redis) -> None:
    """Popoto's own app: the publisher sends task-sent, the worker task-received,
    task-started and task-succeeded, which is what Flower and ``celery events`` show."""
    assert celery_app.conf.worker_send_task_events is True
    assert celery_app.conf.task_send_sent_event is True
    HostNote.create(slug="b")
    wanted = {"task-sent", "task-received", "task-started", "task-succeeded"}
    with EventLog(celery_app) as log:
        result = celery_app.send_task("popoto.maintenance.check_indexes",
                                      (label_of(HostNote),))
        assert result.get(timeout=30)["total"] == 0
        wait_until(lambda: wanted <= log.types_of(result.id), timeout=20,
                   message="task events")
    sent = next(e for e in log.events if e["type"] == "task-sent" and e["uuid"] == result.id)
    assert sent["name"] == "popoto.maintenance.check_indexes" and sent["queue"] == "maintenance"
