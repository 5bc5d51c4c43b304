"""/metrics (Prometheus text format) and the dashboard's view of real work: a real Celery
worker runs check jobs and a periodic task; a consumer dead-letters an event."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

import popoto.dashboard.metrics as metrics
from popoto.ops.examples.models import Note
from popoto.dashboard import create_dashboard
from popoto.redis_db import get_client
from popoto.tasks import app, jobs
from popoto.tasks.testing import wait_until
from tests.dashboard.helpers import TOKEN, csrf_of, log_in, make_dead_letter

NOTE = "popoto.ops.examples.models.Note"
CHECK = "popoto.maintenance.check_indexes"


@pytest.fixture
def client(worker: Any, idle_after: None) -> Iterator[TestClient]:
    with TestClient(create_dashboard(TOKEN)) as test_client:
        yield test_client


def samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def check_now(client: TestClient, runs: int) -> None:
    """Click "check now" (as a logged-in operator); wait for the job to finish and for the
    worker to record its task's run (after the task returned: task_postrun), the
    ``runs``-th of check_indexes."""
    csrf = csrf_of(client.get("/").text)
    client.post(f"/actions/check/{NOTE}", data={"csrf": csrf})
    job_id = jobs.recent(1)[0]["id"]
    wait_until(lambda: (s := jobs.get(job_id)) and s["status"] == "done",
               timeout=30, message="check job done")
    wait_until(lambda: value(samples(client), "popoto_tasks_total", task=CHECK,
                             state="SUCCESS") == runs, timeout=30, message="run recorded")


def test_check_now_records_index_health_and_task_metrics(client: TestClient) -> None:
    for i in range(5):
        Note.create(title=f"n{i}", tag="t", score=i)
    log_in(client)
    check_now(client, runs=1)
    found = samples(client)
    assert value(found, "popoto_index_problems", model=NOTE, kind="total") == 0
    assert value(found, "popoto_model_instances", model=NOTE) == 5
    assert value(found, "popoto_tasks_total", task=CHECK, state="SUCCESS") == 1
    assert value(found, "popoto_task_duration_seconds_count", task=CHECK, state="SUCCESS") == 1
    assert value(found, "popoto_task_duration_seconds_bucket", task=CHECK, state="SUCCESS",
                 le="+Inf") == 1
    assert value(found, "popoto_task_duration_seconds_sum", task=CHECK, state="SUCCESS") > 0
    assert value(found, "popoto_task_last_run_timestamp_seconds", task=CHECK) > 0
    assert value(found, "popoto_index_last_check_timestamp_seconds", model=NOTE) > 0
    assert value(found, "popoto_jobs", kind="check", status="done") == 1
    assert '<span class="badge ok">ok</span>' in client.get(f"/models/{NOTE}").text

    get_client().delete(Note.query.all()[0].db_key)  # behind the ORM's back: orphans
    check_now(client, runs=2)
    found = samples(client)
    problems = value(found, "popoto_index_problems", model=NOTE, kind="total")
    assert problems and problems > 0
    assert value(found, "popoto_index_problems", model=NOTE, kind="orphans") == problems
    assert value(found, "popoto_tasks_total", task=CHECK, state="SUCCESS") == 2
    assert f"{problems:.0f} problems" in client.get("/").text


def test_stream_and_job_metrics(client: TestClient) -> None:
    make_dead_letter()
    jobs.create_queued("job-waiting", "rebuild", NOTE)  # a job no worker has started
    found = samples(client)
    assert value(found, "popoto_stream_length", stream="stream:orders") == 1
    assert value(found, "popoto_stream_dead_letters", stream="stream:orders") == 1
    group = {"stream": "stream:orders", "group": "projections"}
    assert value(found, "popoto_stream_group_consumers", **group) == 1
    assert value(found, "popoto_stream_group_pending", **group) == 0
    assert value(found, "popoto_stream_group_lag", **group) == 0
    assert value(found, "popoto_stream_group_oldest_pending_idle_seconds", **group) == 0
    job = {"job_id": "job-waiting", "kind": "rebuild", "model": NOTE, "phase": "",
           "status": "queued"}
    assert value(found, "popoto_job_progress_ratio", **job) == 0
    assert value(found, "popoto_job_total", **job) == 0
    assert value(found, "popoto_jobs", kind="rebuild", status="queued") == 1


def test_schedule_shows_when_each_periodic_job_last_ran(client: TestClient) -> None:
    """Beat's entries; the one whose task a worker ran shows when, the others not yet."""
    page = client.get("/").text
    assert page.count("not run yet") >= 4
    app.send_task("popoto.maintenance.resume_stalled_jobs")
    wait_until(lambda: value(samples(client), "popoto_task_last_run_timestamp_seconds",
                             task="popoto.maintenance.resume_stalled_jobs"),
               timeout=30, message="periodic task ran")
    page = client.get("/").text
    row = page.split('data-entry="popoto-resume-stalled-jobs"', 1)[1].split("</tr>", 1)[0]
    assert "UTC" in row and "SUCCESS" in row and "not run yet" not in row


def test_metrics_unavailable_is_503(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def down() -> Any:
        raise redis.ConnectionError("Redis is down")

    monkeypatch.setattr(metrics.stats, "task_stats", down)
    response = client.get("/metrics")
    assert response.status_code == 503 and "ConnectionError" in response.text
