"""The background layer end to end, against real worker processes on one Redis.

``python -m popoto.testing.server run -- python -m popoto.ops.examples.demo_background``:

1. web requests (the example FastAPI app on uvicorn, in a thread) with a request_id;
2. a task-driven index rebuild with a progress bar, run by a ``celery worker``;
3. a beat-scheduled clean-up after TTL expiry (``celery beat`` publishes it);
4. a ``python -m popoto.workers consume`` process projecting the demo's order events.

This is a command-line program, so it prints. It flushes the database.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.request
from typing import Any

import redis

import popoto
from popoto.redis_db import Client
from popoto.tasks.config import default_broker_url
from popoto.tasks.testing import Process, spawn_beat, spawn_consumer, spawn_worker, wait_until


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 60 - len(title)), flush=True)


def show(label: str, value: object) -> None:
    print(f"  {label:<44} {value}", flush=True)


#: where the example app listens (set by main)
SITE: list[str] = []


def web(method: str, path: str, body: Any = None, request_id: str = "") -> Any:
    """Call the example app over HTTP (uvicorn serving it in a thread of this process)."""
    headers = {"Content-Type": "application/json"}
    if request_id:
        headers["X-Request-ID"] = request_id
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(SITE[0] + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def main() -> int:
    url = os.environ.get("REDIS_URL")
    if not url:
        print("run through: python -m popoto.testing.server run -- "
              "python -m popoto.ops.examples.demo_background")
        return 2
    client, env = prepare(url)
    section("Starting a worker (2 processes), beat and a stream consumer")
    schedule = os.path.join(tempfile.mkdtemp(prefix="popoto-demo-"), "beat-schedule")
    processes: list[Process] = []
    from popoto.ops.asgi import ServerThread
    from popoto.ops.examples.web import create_app

    site = ServerThread(create_app()).start()
    SITE[:] = [site.url]
    show("example app (and the dashboard at /ops/)", site.url)
    try:
        start_processes(env, schedule, processes)
        web_saves()
        task_driven_rebuild(client)
        beat_cleanup(client)
        consumer_projection(processes)
    finally:
        section("Stopping (SIGTERM: warm shutdown)")
        for proc in reversed(processes):
            show(f"pid {proc.pid} exit code", proc.terminate())
        site.stop()
    time.sleep(0.1)
    return 0


def prepare(url: str) -> tuple[Client, dict[str, str]]:
    """Configure Popoto, logging and the Celery app; flush both databases.

    Returns the client and the environment of the worker, beat and consumer processes.
    """
    popoto.configure(url=url)
    from popoto.tasks.logconfig import configure_logging

    configure_logging("console", "INFO")  # the web requests' log lines, on stderr
    client = popoto.get_redis()  # Popoto 1.x's name for the configured client
    client.flushdb()
    broker_url = default_broker_url(url)
    redis.Redis.from_url(broker_url).flushdb()
    from popoto.tasks import app

    app.conf.update(broker_url=broker_url)

    env = {"REDIS_URL": url, "CELERY_BROKER_URL": broker_url,
           "POPOTO_MODEL_MODULES": "popoto.ops.examples.models",
           "POPOTO_HANDLER_MODULES": "popoto.ops.examples.handlers",
           "POPOTO_TTL_CLEANUP_INTERVAL": "2", "POPOTO_CHECK_INTERVAL": "0",
           "POPOTO_CLEAN_INTERVAL": "0", "POPOTO_LOG_LEVEL": "INFO"}
    return client, env


def start_processes(env: dict[str, str], schedule: str, processes: list[Process]) -> None:
    """Spawn the worker, beat and consumer, appending each to ``processes`` as it starts."""
    processes.append(spawn_worker(env, concurrency=2, name="demo"))
    processes.append(spawn_beat(env, schedule))
    processes.append(spawn_consumer(env, ["--stream", "orders", "--group", "projections",
                                          "--consumer", "demo-consumer",
                                          "--block-ms", "200"]))
    show("worker, beat, consumer pids", [p.pid for p in processes])


def web_saves() -> None:
    section("1. Web requests (request id demo-req-1)")
    order = web("POST", "/orders", {"order_id": "A-1", "customer": "ann", "total": "30"},
                "demo-req-1")
    show("POST /orders", order)
    show("POST /orders/A-1/status paid",
         web("POST", "/orders/A-1/status", {"status": "paid"}, "demo-req-1")["status"])
    web("POST", "/orders", {"order_id": "B-2", "customer": "bob", "total": "12"})
    show("POST /notes", web("POST", "/notes", {"title": "hello", "tag": "demo"})["key"])


def task_driven_rebuild(client: Client) -> None:
    from popoto.ops.cli import wait_for_job
    from popoto.ops.examples.models import Note

    section("2. A task-driven rebuild with progress")
    Note.bulk_create([Note(title=f"n{i}", tag=f"t{i % 10}", score=float(i))
                      for i in range(20_000)], batch_size=5000)
    for key in client.scan_iter(match="$IndexF:Note:tag:*"):
        client.delete(key)
    show("tag indexes deleted: Note(tag='t3').count()", Note.query.filter(tag="t3").count())
    show("check_indexes()['total']", Note.check_indexes()["total"])
    job = web("POST", "/jobs/rebuild/Note", request_id="demo-req-2")
    show("POST /jobs/rebuild/Note", job["job_id"])
    state = wait_for_job(job["job_id"], sys.stdout, timeout=120, poll=0.2)
    show("job", f"{state.get('status')} {state.get('done')}/{state.get('total')}")
    show("after: Note(tag='t3').count()", Note.query.filter(tag="t3").count())
    show("check_indexes()['total']", Note.check_indexes()["total"])


def beat_cleanup(client: Client) -> None:
    from popoto.ops.examples.models import Session

    section("3. Beat-scheduled clean-up after TTL expiry")
    for i in range(5):
        Session(token=f"s{i}", user="ann", _ttl=1).save()
    show("sessions saved with _ttl=1, index size",
         client.scard("$IndexF:Session:user:ann"))
    wait_until(lambda: not client.exists("$IndexF:Session:user:ann"), timeout=60,
               message="beat-driven TTL clean-up")
    show("after expiry + beat tick, index size", client.scard("$IndexF:Session:user:ann"))


def consumer_projection(processes: list[Process]) -> None:
    from popoto.ops.examples.models import Order

    section("4. The consumer projected the order events")
    wait_until(lambda: web("GET", "/orders/projection")["latest_status"].get("Order:B-2"),
               timeout=30, message="consumer caught up")
    show("GET /orders/projection", web("GET", "/orders/projection"))
    show("stream entries of Order", Order.stream_len())
    worker_log = processes[0].output()
    carried = sum(1 for line in worker_log.splitlines() if '"demo-req-2"' in line)
    show("worker log lines with request_id demo-req-2", carried)


if __name__ == "__main__":
    sys.exit(main())
