"""Fault tests with real ``celery worker`` / ``celery beat`` subprocesses.

The worker environment (``subprocess_env``) uses a 6 s visibility timeout with
1 s restore sweeps, so a message lost with a killed worker is redelivered
within seconds instead of an hour.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import popoto
from popoto.ops.examples.models import Note
from popoto.redis_db import current_url
from popoto.testing.server import EmbeddedRedis
from popoto.tasks import jobs
from popoto.tasks.testing import spawn_beat, spawn_worker, wait_until

pytestmark = pytest.mark.usefixtures("celery_app")


def make_notes(n: int) -> None:
    Note.bulk_create([Note(title=f"n{i}", tag=f"t{i % 5}", score=float(i)) for i in range(n)],
                     batch_size=2000)


def damage_indexes(r: redis.Redis) -> None:
    """Lose every tag index and the sorted index (e.g. a bad manual clean-up)."""
    for key in r.scan_iter(match="$IndexF:Note:tag:*"):
        r.delete(key)
    r.delete("$SortedF:Note:score")


def enqueue_rebuild(celery_app: Any, chunk_size: int) -> str:
    return celery_app.send_task("popoto.maintenance.rebuild_indexes", ("Note",),
                                {"chunk_size": chunk_size}).id


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


@pytest.mark.slow
def test_kill_9_worker_mid_rebuild_then_new_worker_completes(
        r: redis.Redis, celery_app: Any, subprocess_env: dict[str, str]) -> None:
    """kill -9 of a worker mid-rebuild: a new worker gets the lost chunks, the job finishes."""
    make_notes(12_000)
    damage_indexes(r)
    assert Note.check_indexes()["total"] > 0
    first = spawn_worker(subprocess_env, concurrency=1, name="doomed")
    with first:
        job_id = enqueue_rebuild(celery_app, chunk_size=100)
        wait_until(lambda: (jobs.get(job_id) or {}).get("done", 0) >= 1000, timeout=60,
                   message="rebuild under way")
        first.kill9()
    state = jobs.get(job_id)
    assert state is not None and state["status"] == "running"
    assert state["done"] < state["total"] or state["phase"] == "reindex"
    second = spawn_worker(subprocess_env, concurrency=1, name="rescuer")
    with second:

        def finished() -> dict[str, Any] | None:
            # what beat does every POPOTO_STALL_CHECK_INTERVAL: the broker may have lost
            # the message the killed worker was taking off the queue at that instant
            celery_app.send_task("popoto.maintenance.resume_stalled_jobs")
            state = jobs.get(job_id)
            return state if state and state["status"] != "running" else None

        final = wait_until(finished, timeout=90, interval=2.0,
                           message="rebuild finished after the kill")
        second.terminate()
    assert final["status"] == "done"
    assert final["done"] == final["total"]  # redelivered chunks were not counted twice
    assert Note.check_indexes()["total"] == 0
    assert Note.query.filter(tag="t3").count() == 2400
    assert Note.query.filter(score__gte=11_990).count() == 10
    rescued = json_lines(second.output())
    assert any(e.get("event") == "chunk done" for e in rescued)


class StoppableRedis:
    """A Redis with an append-only file: stop() and start() keep its port and its data."""

    def __init__(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="popoto-aof-")
        self.args = ["--appendonly", "yes", "--appendfsync", "always", "--dir", self.workdir]
        self.server = EmbeddedRedis(extra_args=self.args).start()
        self.port = self.server.port
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server = EmbeddedRedis(extra_args=self.args, port=self.port).start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture
def data_server() -> Iterator[StoppableRedis]:
    """A second Redis holding the data (the broker stays on the session server)."""
    server = StoppableRedis()
    saved = current_url()
    popoto.configure(url=server.url)
    try:
        yield server
    finally:
        popoto.configure(url=saved)
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.mark.slow
def test_data_redis_stopped_mid_task_retries_with_backoff_and_succeeds(
        data_server: StoppableRedis, celery_app: Any, subprocess_env: dict[str, str]) -> None:
    """Data Redis down for ~3 s mid-rebuild: tasks retry with back-off, the job completes."""
    make_notes(6000)
    client = data_server.client()
    damage_indexes(client)
    env = {**subprocess_env, "REDIS_URL": data_server.url}
    worker = spawn_worker(env, concurrency=2, name="outage")
    with worker:
        job_id = enqueue_rebuild(celery_app, chunk_size=100)
        wait_until(lambda: int(client.hget(jobs.job_key(job_id), "done") or 0) > 0,
                   timeout=60, message="rebuild under way")
        data_server.stop()
        wait_until(lambda: "Retry in" in worker.output(), timeout=30,
                   message="a task retried during the outage")
        time.sleep(2)  # stay down across several back-off periods
        data_server.start()
        final = wait_until(
            lambda: (s := jobs.get(job_id)) and s["status"] != "running" and s,
            timeout=90, message="rebuild finished after the outage")
        worker.terminate()
    assert final["status"] == "done" and final["done"] == final["total"]
    assert Note.check_indexes()["total"] == 0
    assert Note.query.filter(tag="t1").count() == 1200
    lines = json_lines(worker.output())
    retried = [e for e in lines if "Retry in" in str(e.get("event", ""))]
    assert retried and all("ConnectionError" in e["event"] or "BusyLoadingError" in e["event"]
                           for e in retried)
    done_after_retry = [e for e in lines if e.get("event") == "chunk done" and e["retries"] > 0]
    assert done_after_retry  # the same task succeeded on a later attempt


@pytest.mark.slow
def test_beat_schedules_the_ttl_cleanup_that_removes_expired_entries(
        r: redis.Redis, celery_app: Any, subprocess_env: dict[str, str]) -> None:
    """celery beat + a worker: entries of expired instances disappear without anyone asking."""
    for i in range(20):
        Note(title=f"short{i}", tag="ephemeral", _ttl=1).save()
    Note(title="stays", tag="durable").save()
    env = {**subprocess_env, "POPOTO_TTL_CLEANUP_INTERVAL": "1", "POPOTO_CHECK_INTERVAL": "0",
           "POPOTO_CLEAN_INTERVAL": "0"}
    schedule_file = os.path.join(tempfile.mkdtemp(prefix="popoto-beat-"), "schedule")
    worker = spawn_worker(env, concurrency=1, name="beatworker")
    beat = spawn_beat(env, schedule_file)
    with worker, beat:
        wait_until(lambda: r.exists("$IndexF:Note:tag:ephemeral") == 0, timeout=60,
                   message="expired entries cleaned by the beat-scheduled job")
        beat.terminate()
        worker.terminate()
    assert r.scard("$Class:Note") == 1
    assert Note.query.filter(tag="durable").count() == 1
    assert any(e.get("event") == "expired index clean-up scheduled"
               for e in json_lines(worker.output()))
