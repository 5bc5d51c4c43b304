"""The example app on FastAPI: saves and queries per request (async and sync ORM API),
request_id into logs and task headers; and the app served by uvicorn in a process."""

from __future__ import annotations

import inspect
import json
import os
import signal
from collections.abc import Iterator

import pytest
import redis
import structlog
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

import popoto.ops.examples.web.routes as web_app
from popoto.ops.examples.models import Note, Order
from popoto.ops.examples.web import create_app
from popoto.tasks.testing import wait_until
from tests.ops.web_helpers import http, uvicorn_process


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def test_notes_are_saved_and_queried_per_request(client: TestClient) -> None:
    """POST /notes saves (async_create); GET /notes filters by tag and score, best first."""
    for title, tag, score in [("a", "x", 1), ("b", "x", 5), ("c", "y", 9)]:
        response = client.post("/notes", json={"title": title, "tag": tag, "score": score})
        assert response.status_code == 201 and response.json()["key"].startswith("Note:")
    assert Note.query.count() == 3
    response = client.get("/notes", params={"tag": "x"})
    assert response.status_code == 200
    assert [n["title"] for n in response.json()["notes"]] == ["b", "a"]
    body = client.get("/notes", params={"min_score": 4}).json()
    assert [n["title"] for n in body["notes"]] == ["c", "b"]
    body = client.get("/notes", params={"limit": 1}).json()
    assert [n["title"] for n in body["notes"]] == ["c"]


def test_orders_write_events_and_errors(client: TestClient) -> None:
    """Order saves go to the event stream (the status change through the sync API in the
    threadpool); a duplicate key is a 409 naming it; unknown order 404, wrong method 405."""
    response = client.post("/orders", json={"order_id": "o1", "customer": "ann",
                                            "total": "9.90"})
    assert response.status_code == 201 and response.json()["status"] == "new"
    response = client.post("/orders/o1/status", json={"status": "paid"})
    assert response.status_code == 200 and response.json()["status"] == "paid"
    assert [e["op"] for _, e in Order.stream_range()] == ["create", "update"]
    assert client.get("/orders/o1").json()["status"] == "paid"
    response = client.post("/orders", json={"order_id": "o1", "customer": "bob"})
    assert response.status_code == 409 and "o1" in response.json()["error"]
    assert client.get("/orders/nope").status_code == 404
    assert client.post("/orders/nope/status", json={"status": "x"}).status_code == 404
    assert client.delete("/orders/o1").status_code == 405
    assert client.post("/notes").status_code == 201  # empty body: defaults
    assert client.get("/nowhere").status_code == 404
    assert client.get("/orders/projection").json() == {"events": {}, "latest_status": {}}


def test_async_endpoints_and_one_in_the_threadpool() -> None:
    """Reads and creates await the async ORM API; the status change is a plain def (the
    sync API, run in FastAPI's threadpool), like the job endpoints."""
    for endpoint in (web_app.health, web_app.create_note, web_app.list_notes,
                     web_app.create_order, web_app.show_order, web_app.order_projection):
        assert inspect.iscoroutinefunction(endpoint), endpoint.__name__
    for endpoint in (web_app.set_order_status, web_app.enqueue_rebuild, web_app.show_job):
        assert not inspect.iscoroutinefunction(endpoint), endpoint.__name__


def test_request_id_is_bound_for_the_request_and_echoed(client: TestClient) -> None:
    """Every log line of a request carries its request_id; the response echoes it."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        response = client.post("/notes", json={"title": "t", "tag": "z"},
                               headers={"X-Request-ID": "abc-123"})
        other = client.get("/health")
        bad = client.get("/health", headers={"X-Request-ID": "no spaces <allowed>"})
    assert response.status_code == 201 and response.headers["X-Request-ID"] == "abc-123"
    mine = [e for e in logs if e.get("request_id") == "abc-123"]
    assert {e["event"] for e in mine} == {"note saved", "request"}
    assert other.headers["X-Request-ID"] != "abc-123"
    assert len(other.headers["X-Request-ID"]) == 32
    assert len(bad.headers["X-Request-ID"]) == 32  # a malformed id is replaced
    assert structlog.contextvars.get_contextvars() == {}



def test_enqueued_task_carries_the_request_id_in_its_headers(
        client: TestClient, broker: redis.Redis) -> None:
    """POST /jobs/rebuild/<label> (a def endpoint: the threadpool copies the request's
    context) publishes the task with request_id in a header."""
    response = client.post("/jobs/rebuild/popoto.ops.examples.models.Note",
                           headers={"X-Request-ID": "req-77"})
    body = response.json()
    assert response.status_code == 202 and body["model"] == "popoto.ops.examples.models.Note"
    (raw,) = broker.lrange("maintenance", 0, -1)
    headers = json.loads(raw)["headers"]
    assert headers["id"] == body["job_id"]
    assert headers["popoto_log_context"] == {"request_id": "req-77"}
    response = client.get(f"/jobs/{body['job_id']}")
    assert response.status_code == 200 and response.json()["status"] == "queued"


def test_served_by_uvicorn_in_a_process(redis_url: str) -> None:
    """End to end: ``python -m popoto.ops.examples.web`` (the Procfile's web process) is
    uvicorn; the API,
    the dashboard at /ops/ and its metrics answer over HTTP; SIGTERM stops it cleanly."""
    with uvicorn_process(redis_url) as (proc, url):
        status, headers, body = http("POST", f"{url}/notes", {"title": "h", "tag": "w"},
                                     headers={"X-Request-ID": "e2e-1"})
        assert status == 201 and headers["x-request-id"] == "e2e-1"
        status, _, body = http("GET", f"{url}/notes?tag=w")
        assert [n["title"] for n in json.loads(body)["notes"]] == ["h"]
        assert json.loads(http("GET", f"{url}/health")[2]) == {"ok": True}
        status, _, body = http("POST", f"{url}/notes", {"score": "nan"})
        assert status == 422 and json.loads(body)["field"] == "score"
        status, headers, body = http("GET", f"{url}/ops/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b"popoto.ops.examples.models.Note" in body
        status, _, body = http("GET", f"{url}/ops/metrics")
        assert status == 200
        assert b'popoto_model_instances{model="popoto.ops.examples.models.Note"} 1.0' in body
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.popen.wait(timeout=20) == 0
    lines = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    events = [e["event"] for e in lines]
    assert "web app stopped" in events
    mine = [e for e in lines if e.get("request_id") == "e2e-1"]
    assert {e["event"] for e in mine} == {"note saved", "request"}
    wait_until(lambda: not proc.alive(), timeout=5)
