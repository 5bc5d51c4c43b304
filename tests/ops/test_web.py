"""The example WSGI app: saves and queries per request, request_id into logs and task headers."""

from __future__ import annotations

import io
import json
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
import redis
import structlog
from structlog.testing import capture_logs

from ops.example_models import Note, Order
from ops.web import application, serve
from tasks import app
from tasks.config import default_broker_url
from tasks.testing import use_test_broker


def call(method: str, path: str, body: Any = None, query: str = "",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    raw = json.dumps(body).encode() if body is not None else b""
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path,
                               "QUERY_STRING": query, "CONTENT_LENGTH": str(len(raw)),
                               "wsgi.input": io.BytesIO(raw)}
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
        seen["status"] = int(status.split()[0])
        seen["headers"] = dict(response_headers)

    payload = b"".join(application(environ, start_response))
    return seen["status"], seen["headers"], json.loads(payload)


def test_notes_are_saved_and_queried_per_request() -> None:
    """POST /notes saves; GET /notes filters by tag and score, best first."""
    for title, tag, score in [("a", "x", 1), ("b", "x", 5), ("c", "y", 9)]:
        status, _, body = call("POST", "/notes", {"title": title, "tag": tag, "score": score})
        assert status == 201 and body["key"].startswith("Note:")
    assert Note.query.count() == 3
    status, _, body = call("GET", "/notes", query="tag=x")
    assert status == 200 and [n["title"] for n in body["notes"]] == ["b", "a"]
    _, _, body = call("GET", "/notes", query="min_score=4")
    assert [n["title"] for n in body["notes"]] == ["c", "b"]


def test_orders_write_events_and_validation_errors_are_400() -> None:
    """Order saves go to the event stream; a duplicate key is a 400 naming it."""
    status, _, body = call("POST", "/orders", {"order_id": "o1", "customer": "ann",
                                               "total": "9.90"})
    assert status == 201 and body["status"] == "new"
    status, _, body = call("POST", "/orders/o1/status", {"status": "paid"})
    assert status == 200 and body["status"] == "paid"
    assert [e["op"] for _, e in Order.stream_range()] == ["create", "update"]
    status, _, body = call("POST", "/orders", {"order_id": "o1", "customer": "bob"})
    assert status == 400 and "o1" in body["error"]
    assert call("GET", "/orders/nope")[0] == 404
    assert call("DELETE", "/orders/o1")[0] == 405
    assert call("POST", "/notes", query="")[0] == 201  # empty body: defaults
    assert call("GET", "/nowhere")[0] == 404


def test_request_id_is_bound_for_the_request_and_echoed() -> None:
    """Every log line of a request carries its request_id; the response echoes it."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        status, headers, _ = call("POST", "/notes", {"title": "t", "tag": "z"},
                                  headers={"X-Request-ID": "abc-123"})
        _, other, _ = call("GET", "/health")
    assert status == 201 and headers["X-Request-ID"] == "abc-123"
    mine = [e for e in logs if e.get("request_id") == "abc-123"]
    assert {e["event"] for e in mine} == {"note saved", "request"}
    assert other["X-Request-ID"] != "abc-123" and len(other["X-Request-ID"]) == 32
    assert structlog.contextvars.get_contextvars() == {}


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    url = default_broker_url(redis_url)
    use_test_broker(app, url)
    client = redis.Redis.from_url(url)
    client.delete("maintenance")
    yield client
    client.delete("maintenance")
    client.close()


def test_enqueued_task_carries_the_request_id_in_its_headers(broker: redis.Redis) -> None:
    """POST /jobs/rebuild/<label> publishes the task with request_id in a header."""
    status, _, body = call("POST", "/jobs/rebuild/ops.example_models.Note",
                          headers={"X-Request-ID": "req-77"})
    assert status == 202 and body["model"] == "ops.example_models.Note"
    (raw,) = broker.lrange("maintenance", 0, -1)
    headers = json.loads(raw)["headers"]
    assert headers["id"] == body["job_id"]
    assert headers["popoto_log_context"] == {"request_id": "req-77"}
    status, _, job = call("GET", f"/jobs/{body['job_id']}")
    assert status == 200 and job["status"] == "queued"


def test_served_over_http_by_the_threaded_server() -> None:
    """serve() answers real HTTP requests (the Procfile's web process)."""
    server = serve("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        request = urllib.request.Request(f"{url}/notes", method="POST",
                                         data=json.dumps({"title": "h", "tag": "w"}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
        with urllib.request.urlopen(f"{url}/notes?tag=w", timeout=10) as response:
            assert [n["title"] for n in json.load(response)["notes"]] == ["h"]
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            assert json.load(response) == {"ok": True}
    finally:
        server.shutdown()
        server.server_close()
