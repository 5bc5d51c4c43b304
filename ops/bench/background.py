"""Throughput of the background layer: a chunked index rebuild and the stream consumer.

``python -m popoto.testing.server run -- python -m popoto.ops.bench.background`` (an
embedded Redis is started when ``REDIS_URL`` is unset; the database is
flushed). Measures, with real processes:

* rebuild: N ``Note`` instances (indexes damaged first), a ``rebuild_indexes``
  job run by one ``celery worker`` with ``--concurrency`` prefork processes;
* consumer: M ``Order`` events consumed by ``python -m popoto.workers consume`` with
  the example handlers (two scripts per event: ``apply_once`` +
  ``apply_if_newer``), and with a no-op handler.

Prints one JSON document (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any

import redis

import popoto
from popoto.redis_db import get_client
from popoto.tasks.config import default_broker_url
from popoto.tasks.testing import spawn_consumer, spawn_worker, wait_until

NOOP_HANDLERS = """
from popoto.workers import handler

@handler("Order")
def ignore(event):
    pass
"""


def bench_rebuild(url: str, objects: int, chunk_size: int, concurrency: int) -> dict[str, Any]:
    from popoto.ops.examples.models import Note
    from popoto.tasks import app, jobs

    client = get_client()
    started = time.perf_counter()
    batch = 5000
    for start in range(0, objects, batch):
        Note.bulk_create([Note(title=f"n{i}", tag=f"t{i % 50}", score=float(i))
                          for i in range(start, min(objects, start + batch))], batch_size=batch)
    create_s = time.perf_counter() - started
    for key in client.scan_iter(match="$IndexF:Note:tag:*", count=1000):
        client.delete(key)
    client.delete("$SortedF:Note:score")
    broker_url = default_broker_url(url)
    redis.Redis.from_url(broker_url).flushdb()
    env = {"REDIS_URL": url, "CELERY_BROKER_URL": broker_url,
           "POPOTO_MODEL_MODULES": "popoto.ops.examples.models", "POPOTO_LOG_LEVEL": "INFO"}
    app.conf.update(broker_url=broker_url)
    with spawn_worker(env, concurrency=concurrency, name="bench") as worker:
        started = time.perf_counter()
        job_id = app.send_task("popoto.maintenance.rebuild_indexes", ("Note",),
                               {"chunk_size": chunk_size}).id
        reindexed_at: list[float] = []

        def finished() -> dict[str, Any] | None:
            state = jobs.get(job_id) or {}
            if not reindexed_at and state.get("phase") == "clean":
                reindexed_at.append(time.perf_counter())
            return state if state.get("status") in ("done", "failed") else None

        state = wait_until(finished, timeout=1800, interval=0.05, message="rebuild job done")
        seconds = time.perf_counter() - started
        worker.terminate()
    problems = Note.check_indexes()["total"]
    reindex_s = (reindexed_at[0] - started) if reindexed_at else seconds
    return {
        "objects": objects, "chunk_size": chunk_size, "worker_processes": concurrency,
        "status": state["status"], "chunks": state["chunks"],
        "create_seconds": round(create_s, 2),
        "rebuild_seconds": round(seconds, 2),
        "reindex_phase_seconds": round(reindex_s, 2),
        "objects_per_second": round(objects / seconds),
        "check_indexes_total_after": problems,
    }


def bench_consumer(url: str, events: int, handlers: str, label: str,
                   extra_path: str = "") -> dict[str, Any]:
    client = get_client()
    stream = "stream:orders"
    client.delete(stream, "dead:" + stream)
    pipe = client.pipeline(transaction=False)
    for i in range(events):
        pipe.xadd(stream, {"model": "Order", "pk": f"Order:{i}", "op": "create",
                           "ts": repr(time.time()), "changed_fields": '["status"]',
                           "status": '"new"', "total": '"9.90"'})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    group = f"bench-{label}"
    env = {"REDIS_URL": url, "POPOTO_LOG_LEVEL": "WARNING",
           "PYTHONPATH": os.pathsep.join(p for p in (extra_path, os.environ.get("PYTHONPATH", ""))
                                         if p)}
    args = ["--stream", "orders", "--group", group, "--consumer", "bench",
            "--handlers", handlers, "--batch-size", "200", "--block-ms", "100",
            "--max-entries", str(events)]
    started = time.perf_counter()
    with spawn_consumer({**env, "POPOTO_LOG_LEVEL": "INFO"}, args) as proc:
        proc.popen.wait(timeout=1800)
    seconds = time.perf_counter() - started
    pending = client.xpending(stream, group)["pending"]
    return {"events": events, "handlers": handlers, "seconds": round(seconds, 2),
            "events_per_second": round(events / seconds), "pending_after": pending,
            "exit_code": proc.popen.returncode}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m popoto.ops.bench.background")
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    url = os.environ.get("REDIS_URL")
    if not url:
        print("REDIS_URL is not set: run through `python -m popoto.testing.server run --`",
              file=sys.stderr)
        return 2
    popoto.configure(url=url)
    client = get_client()
    client.flushdb()
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "redis": client.info("server")["redis_version"]},
        "rebuild": bench_rebuild(url, args.objects, args.chunk_size, args.concurrency),
    }
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "bench_noop_handlers.py"), "w") as fh:
            fh.write(NOOP_HANDLERS)
        result["consumer_noop"] = bench_consumer(url, args.events, "bench_noop_handlers",
                                                 "noop", tmp)
    result["consumer_example_handlers"] = bench_consumer(url, args.events,
                                                         "popoto.ops.examples.handlers", "example")
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
