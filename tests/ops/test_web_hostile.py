"""The example app under hostile input: bad values, bad JSON, bad Content-Length.

Every bad value is a 422 whose JSON error names the field (FastAPI's status for a
validation error); a body that is not a JSON object is a 400, one that is not sent
as JSON a 415; bodies are bounded (413), need a valid Content-Length (411/400),
nothing answers 500, and nothing is written. An unknown job id is a 404 (not
"queued"). The same over real HTTP, against uvicorn in its own process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from popoto.ops.examples.models import Note, Order
from popoto.ops.examples.web import create_app
from popoto.ops.examples.web.settings import MAX_BODY_BYTES
from tests.ops.web_helpers import raw_request, uvicorn_process

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(dashboard=False)) as test_client:
        yield test_client


def post(client: TestClient, path: str, body: Any,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(path, content=raw, headers={**JSON, **(headers or {})})
    return response.status_code, response.json()


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
    ({"title": False}, "title"),
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
def test_bad_note_values_are_422_naming_the_field(client: TestClient, body: Any,
                                                  field: str) -> None:
    status, payload = post(client, "/notes", body)
    assert status == 422, payload
    assert payload["field"] == field and field in payload["error"]
    assert payload["detail"][0]["loc"] == ["body", field]
    assert Note.query.count() == 0


@pytest.mark.parametrize(("body", "field"), BAD_ORDERS)
def test_bad_order_values_are_422_naming_the_field(client: TestClient, body: Any,
                                                   field: str) -> None:
    status, payload = post(client, "/orders", {"order_id": "o1", **body})
    assert status == 422, payload
    assert payload["field"] == field and field in payload["error"]
    assert Order.query.count() == 0


def test_good_values_still_pass(client: TestClient) -> None:
    """Numbers as numbers or numeric strings; totals exact; a number as text is text."""
    assert post(client, "/notes", {"title": "a", "tag": "t", "score": "2.5"})[0] == 201
    assert post(client, "/notes", {"title": 7, "tag": "t", "score": 7})[0] == 201
    assert {n.title for n in Note.query.all()} == {"a", "7"}
    status, order = post(client, "/orders", {"order_id": "o2", "customer": "ann",
                                              "total": "19.99"})
    assert status == 201 and order["total"] == "19.99"
    assert Order.query.get(order_id="o2").total == Decimal("19.99")
    status, order = post(client, "/orders", {"order_id": "o3", "total": 5})
    assert status == 201 and Decimal(order["total"]) == 5


def test_bad_status_and_query_values_are_422(client: TestClient) -> None:
    assert post(client, "/orders", {"order_id": "o4", "total": "1.00"})[0] == 201
    status, payload = post(client, "/orders/o4/status", {"status": ["paid"]})
    assert status == 422 and payload["field"] == "status"
    assert Order.query.get(order_id="o4").status == "new"
    for query, field in [("min_score=abc", "min_score"), ("min_score=nan", "min_score"),
                         ("min_score=inf", "min_score"), ("limit=abc", "limit"),
                         ("limit=-1", "limit"), ("limit=0", "limit"), ("limit=1001", "limit"),
                         ("limit=" + "9" * 30, "limit")]:
        response = client.get(f"/notes?{query}")
        payload = response.json()
        assert response.status_code == 422 and payload["field"] == field, (query, payload)
        assert field in payload["error"]


@pytest.mark.parametrize("raw", [
    b"{", b'{"score": NaN}', b'{"score": -Infinity}', b"\xff\xfe{}", b"[1]", b'"text"',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100 + b"1" + b"}" * 100,  # parses, but deeper than the app accepts
])
def test_malformed_or_too_deep_json_is_400(client: TestClient, raw: bytes) -> None:
    status, payload = post(client, "/notes", raw)
    assert status == 400, payload
    assert payload["error"]
    assert Note.query.count() == 0


def test_a_body_that_is_not_json_is_415(client: TestClient) -> None:
    response = client.post("/notes", content=b"title=x",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415 and response.json()["field"] == "Content-Type"
    response = client.post("/notes", content=b'{"title": "x"}')  # no Content-Type at all
    assert response.status_code == 415
    assert Note.query.count() == 0


def test_content_length_checked_in_the_app(client: TestClient) -> None:
    def with_length(length: str, raw: bytes = b"{}") -> int:
        return client.post("/notes", content=raw,
                           headers={**JSON, "Content-Length": length}).status_code

    chunked = client.post("/notes", content=iter([b'{"title": "x"}']), headers=JSON)
    assert chunked.status_code == 411 and chunked.json()["field"] == "Content-Length"
    assert with_length("-1") == 400
    assert with_length("abc") == 400
    assert with_length(str(MAX_BODY_BYTES + 1)) == 413
    assert with_length("99999999999999") == 413
    assert Note.query.count() == 0


def test_body_limit_is_configurable() -> None:
    with TestClient(create_app(max_body=64, dashboard=False)) as small:
        assert post(small, "/notes", {"title": "x" * 100})[0] == 413
        assert post(small, "/notes", {"title": "x" * 10})[0] == 201


def test_unexpected_errors_are_500_and_log_from_the_endpoint_down(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 500 answers the exception's type only; the logged traceback starts at the endpoint,
    so no frame above it (the middleware's, holding the request headers) is logged."""
    async def broken(**kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(Note, "async_create", broken)
    with capture_logs() as logs:
        response = client.post("/notes", json={"title": "x"},
                               headers={"Authorization": "Bearer s3cret-header"})
    assert response.status_code == 500 and response.json() == {"error": "RuntimeError"}
    (failure,) = [e for e in logs if e["event"] == "request failed"]
    tb = failure["exc_info"].__traceback__
    assert tb.tb_frame.f_code.co_name == "create_note"
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    assert not any("scope" in f.f_locals or "headers" in f.f_locals for f in frames)


# --- over real HTTP, against uvicorn in its own process ------------------------------

@pytest.fixture(scope="module")
def server(redis_url: str) -> Iterator[tuple[str, int]]:
    """A stalled client is answered after 2 s (``--request-timeout``)."""
    with uvicorn_process(redis_url, ["--request-timeout", "2"]) as (_, url):
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def head(length: str | None, extra: str = "") -> str:
    lines = ["POST /notes HTTP/1.1", "Host: t", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return "\n".join(lines) + "\n" + extra


def test_huge_or_negative_content_length_answers_at_once(server: tuple[str, int]) -> None:
    """99999999999999: 413 without reading (no MemoryError); -1 or junk: 400 (uvicorn's
    HTTP parser refuses them before the app), no task left waiting for the client."""
    status, body = raw_request(server, head("99999999999999"))
    assert status == 413 and json.loads(body)["error"]
    assert raw_request(server, head(str(2 << 20)), b"x" * 1000)[0] == 413
    assert raw_request(server, head("-1"), b'{"title": "x"}')[0] == 400
    assert raw_request(server, head("1e3"), b'{"title": "x"}')[0] == 400
    assert Note.query.count() == 0


def test_missing_content_length_is_411(server: tuple[str, int]) -> None:
    """A route that reads a body needs its length (chunked bodies never pass); a POST
    without a body to a route that reads none is served (``curl -XPOST``)."""
    assert raw_request(server, head(None), b'{"title": "x"}')[0] == 411
    assert raw_request(server, head(None, "Transfer-Encoding: chunked\n"),
                       b'e\r\n{"title": "x"}\r\n0\r\n\r\n')[0] == 411
    assert Note.query.count() == 0
    status, body = raw_request(server, "POST /jobs/rebuild/NoSuchModel HTTP/1.1\nHost: t\n")
    assert status == 400 and b"NoSuchModel" in body


@pytest.mark.slow
def test_stalled_body_does_not_hold_the_server(server: tuple[str, int]) -> None:
    """Fewer bytes than announced, then silence: answered 408 after the server's timeout
    instead of waiting for the client forever; the next request is served."""
    status, body = raw_request(server, head("100"), b'{"ti', timeout=15)
    assert status == 408 and "2 s" in json.loads(body)["error"]
    status, body = raw_request(server, head("16"), b'{"title": "ok"} ')
    assert status == 201, body



def test_unknown_job_is_404_and_enqueued_job_is_queued(client: TestClient,
                                                       broker: redis.Redis) -> None:
    """GET /jobs/<id>: 404 for an id nobody enqueued (it used to answer "queued")."""
    response = client.get("/jobs/no-such-job")
    assert response.status_code == 404 and "no-such-job" in response.json()["error"]
    response = client.post("/jobs/rebuild/popoto.ops.examples.models.Note")
    assert response.status_code == 202 and broker.llen("maintenance") == 1
    payload = response.json()
    job = client.get(f"/jobs/{payload['job_id']}").json()
    assert job["status"] == "queued" and job["model"] == payload["model"]
    assert client.post("/jobs/rebuild/NoSuchModel").status_code == 400
