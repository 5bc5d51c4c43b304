"""The example web app under hostile input: bad values, bad JSON, bad Content-Length.

Every bad value is a 400 whose JSON error names the field; bodies are bounded
(413), need a valid Content-Length (411/400), and nothing answers 500. An unknown
job id is a 404 (not "queued").
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
import redis

import ops.web as web
from ops.example_models import Note, Order
from ops.web import application, serve
from tasks import app
from tasks.config import default_broker_url
from tasks.testing import use_test_broker


def call(method: str, path: str, raw: bytes = b"", query: str = "",
         length: str | None = None) -> tuple[int, dict[str, Any]]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path,
                               "QUERY_STRING": query, "wsgi.input": io.BytesIO(raw),
                               "CONTENT_LENGTH": str(len(raw)) if length is None else length}
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"] = int(status.split()[0])

    payload = b"".join(application(environ, start_response))
    return seen["status"], json.loads(payload)


def post(path: str, body: Any) -> tuple[int, dict[str, Any]]:
    return call("POST", path, body if isinstance(body, bytes) else json.dumps(body).encode())


BAD_NOTES = [
    ({"score": [1]}, "score"),
    ({"score": None}, "score"),
    ({"score": {"a": 1}}, "score"),
    ({"score": True}, "score"),
    ({"score": "abc"}, "score"),
    ({"score": "nan"}, "score"),
    (b'{"score": ' + b"1" * 401 + b"}", "score"),  # 10**400: no float holds it
    (b'{"score": 1e400}', "score"),  # infinity
    ({"title": ["x"]}, "title"),
    ({"tag": {"x": 1}}, "tag"),
]

BAD_ORDERS = [
    ({"total": "abc"}, "total"),
    ({"total": "NaN"}, "total"),
    ({"total": "sNaN"}, "total"),
    ({"total": "Infinity"}, "total"),
    ({"total": "-inf"}, "total"),
    ({"total": [1]}, "total"),
    ({"total": None}, "total"),
    ({"total": True}, "total"),
    ({"order_id": {"a": 1}}, "order_id"),
    ({"customer": [1, 2]}, "customer"),
]


@pytest.mark.parametrize(("body", "field"), BAD_NOTES)
def test_bad_note_values_are_400_naming_the_field(body: Any, field: str) -> None:
    status, payload = post("/notes", body)
    assert status == 400, payload
    assert payload["field"] == field and field in payload["error"]
    assert Note.query.count() == 0


@pytest.mark.parametrize(("body", "field"), BAD_ORDERS)
def test_bad_order_values_are_400_naming_the_field(body: Any, field: str) -> None:
    status, payload = post("/orders", {"order_id": "o1", **body})
    assert status == 400, payload
    assert payload["field"] == field and field in payload["error"]
    assert Order.query.count() == 0


def test_good_values_still_pass() -> None:
    """Numbers as numbers or numeric strings; totals exact; text fields as text."""
    assert post("/notes", {"title": "a", "tag": "t", "score": "2.5"})[0] == 201
    assert post("/notes", {"title": "b", "tag": "t", "score": 7})[0] == 201
    status, order = post("/orders", {"order_id": "o2", "customer": "ann", "total": "19.99"})
    assert status == 201 and order["total"] == "19.99"
    assert Order.query.get(order_id="o2").total == Decimal("19.99")
    status, order = post("/orders", {"order_id": "o3", "total": 5})
    assert status == 201 and Decimal(order["total"]) == 5


def test_bad_status_and_query_values_are_400() -> None:
    assert post("/orders", {"order_id": "o4", "total": "1.00"})[0] == 201
    status, payload = post("/orders/o4/status", {"status": ["paid"]})
    assert status == 400 and payload["field"] == "status"
    assert Order.query.get(order_id="o4").status == "new"
    for query, field in [("min_score=abc", "min_score"), ("min_score=nan", "min_score"),
                         ("min_score=inf", "min_score"), ("limit=abc", "limit"),
                         ("limit=-1", "limit"), ("limit=0", "limit"),
                         ("limit=" + "9" * 30, "limit")]:
        status, payload = call("GET", "/notes", query=query)
        assert status == 400 and payload["field"] == field, (query, payload)


@pytest.mark.parametrize("raw", [
    b"{", b'{"score": NaN}', b'{"score": -Infinity}', b"\xff\xfe{}", b"[1]", b'"text"',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100 + b"1" + b"}" * 100,  # parses, but deeper than the app accepts
])
def test_malformed_or_too_deep_json_is_400(raw: bytes) -> None:
    status, payload = post("/notes", raw)
    assert status == 400, payload
    assert Note.query.count() == 0


def test_content_length_checked_in_the_app() -> None:
    assert call("POST", "/notes", b'{"title": "x"}', length="")[0] == 411
    assert call("POST", "/notes", b"{}", length="-1")[0] == 400
    assert call("POST", "/notes", b"{}", length="abc")[0] == 400
    assert call("POST", "/notes", b"{}", length=str(web.MAX_BODY_BYTES + 1))[0] == 413
    assert call("POST", "/notes", b"{}", length="99999999999999")[0] == 413
    assert Note.query.count() == 0


def test_body_limit_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web, "MAX_BODY_BYTES", 64)
    assert post("/notes", {"title": "x" * 100})[0] == 413
    assert post("/notes", {"title": "x" * 10})[0] == 201


# --- over real HTTP: nothing blocks a thread, nothing is read past the limit --------

@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    monkeypatch.setattr(web.QuietHandler, "timeout", 2)  # a stalled client is dropped
    srv = serve("127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", srv.server_port
    srv.shutdown()
    srv.server_close()


def raw_request(address: tuple[str, int], head: str, body: bytes = b"",
                timeout: float = 10) -> tuple[int, bytes]:
    """Send a request as given; the status code and the body of the answer."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    answer = b"".join(chunks)
    assert answer, "no answer"
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


def head(length: str | None, extra: str = "") -> str:
    lines = ["POST /notes HTTP/1.1", "Host: t", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return "\n".join(lines) + "\n" + extra


def test_huge_or_negative_content_length_answers_at_once(server: tuple[str, int]) -> None:
    """99999999999999: 413 without reading (no MemoryError); -1 or junk: 400, no thread
    left waiting for the client."""
    status, body = raw_request(server, head("99999999999999"))
    assert status == 413 and json.loads(body)["error"]
    assert raw_request(server, head(str(2 << 20)), b"x" * 1000)[0] == 413
    assert raw_request(server, head("-1"), b'{"title": "x"}')[0] == 400
    assert raw_request(server, head("1e3"), b'{"title": "x"}')[0] == 400
    assert Note.query.count() == 0


def test_missing_content_length_is_411(server: tuple[str, int]) -> None:
    assert raw_request(server, head(None), b'{"title": "x"}')[0] == 411
    assert raw_request(server, head(None, "Transfer-Encoding: chunked\n"),
                       b'e\r\n{"title": "x"}\r\n0\r\n\r\n')[0] == 411
    assert Note.query.count() == 0


def test_stalled_body_does_not_hold_a_thread(server: tuple[str, int]) -> None:
    """Fewer bytes than announced, then silence: answered (400) after the server's
    timeout instead of waiting for the client forever."""
    status, _ = raw_request(server, head("100"), b'{"ti', timeout=15)
    assert status in (400, 408)
    status, body = raw_request(server, head("16"), b'{"title": "ok"} ')
    assert status == 201, body



@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    url = default_broker_url(redis_url)
    use_test_broker(app, url)
    client = redis.Redis.from_url(url)
    client.delete("maintenance")
    yield client
    client.delete("maintenance")
    client.close()


def test_unknown_job_is_404_and_enqueued_job_is_queued(broker: redis.Redis) -> None:
    """GET /jobs/<id>: 404 for an id nobody enqueued (it used to answer "queued")."""
    status, payload = call("GET", "/jobs/no-such-job")
    assert status == 404 and "no-such-job" in payload["error"]
    status, payload = call("POST", "/jobs/rebuild/ops.example_models.Note")
    assert status == 202 and broker.llen("maintenance") == 1
    status, job = call("GET", f"/jobs/{payload['job_id']}")
    assert status == 200 and job["status"] == "queued" and job["model"] == payload["model"]
