"""popoto.dashboard with Starlette's test client on the real Redis: what it shows, who may
act (token, session, CSRF), escaping, mounting, and the ImportError without the extra."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
from fastapi import FastAPI
from starlette.testclient import TestClient

from popoto.ops.examples.models import Note, Order
from popoto.dashboard import create_dashboard, data
from popoto.redis_db import get_client
from popoto.dashboard.auth import COOKIE, SESSION_SECONDS, Auth
from popoto.tasks import jobs
from popoto.tasks.health import record_check
from popoto.tasks.submit import submit_job
from tests.dashboard.helpers import STREAM, TOKEN, csrf_of, log_in, make_dead_letter

NOTE = "popoto.ops.examples.models.Note"


@pytest.fixture
def client(broker: redis.Redis, celery_app: object) -> Iterator[TestClient]:
    """The dashboard with a token; the Celery app on the test broker (nothing consumes)."""
    broker.flushdb()
    with TestClient(create_dashboard(TOKEN, chunk_size=50)) as test_client:
        yield test_client
    broker.flushdb()


def test_overview_shows_models_jobs_streams_and_schedule(client: TestClient) -> None:
    for i in range(3):
        Note.create(title=f"n{i}", tag="t", score=i)
    Order.create(order_id="o1", customer="ann", total="2.50")
    record_check(NOTE, {"total": 2, "orphans": 2, "missing": 0, "wrong": 0})
    job_id = submit_job("rebuild", NOTE)
    response = client.get("/")
    assert response.status_code == 200
    page = response.text
    assert 'data-model="popoto.ops.examples.models.Note"' in page
    assert '<td class="num" data-field="instances">3</td>' in page
    assert "2 problems" in page and "never checked" in page  # Note checked, Order not
    assert f'data-job="{job_id}"' in page and "queued" in page
    assert 'data-stream="stream:orders"' in page
    for entry in ("popoto-check-indexes", "popoto-clean-indexes", "popoto-resume-stalled-jobs"):
        assert f'data-entry="{entry}"' in page
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    model_page = client.get(f"/models/{NOTE}").text
    assert "orphans" in model_page and "n2" in model_page
    assert client.get("/models/NoSuchModel").status_code == 404
    assert client.get(f"/jobs/{job_id}").status_code == 200
    assert client.get("/jobs/nope").status_code == 404
    assert client.get("/streams/stream:orders").status_code == 200
    assert client.get("/streams/stream:nothing").status_code == 404
    assert client.get("/static/dashboard.js").status_code == 200


def test_job_progress_api(client: TestClient) -> None:
    job_id = submit_job("check", NOTE)
    body = client.get("/api/jobs", params={"id": [job_id, "unknown"]}).json()
    assert body == {"jobs": [{"id": job_id, "status": "queued", "phase": "", "done": 0,
                              "total": 0, "percent": 0.0, "final": False, "error": ""}]}


def test_actions_need_the_token_a_session_and_the_csrf_token(
        client: TestClient, broker: redis.Redis) -> None:
    """Refused (403, nothing enqueued) without a session, with a wrong token, without or
    with a wrong CSRF token; done with both."""
    page = client.get("/").text
    assert 'id="login-form"' in page and csrf_of(page) == ""  # no session: empty CSRF
    refused = client.post(f"/actions/rebuild/{NOTE}", data={"csrf": ""})
    assert refused.status_code == 403 and "log in first" in refused.text
    assert log_in(client, "wrong-token").status_code == 403
    assert COOKIE not in client.cookies
    response = log_in(client)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    page = client.get("/").text
    csrf = csrf_of(page)
    assert csrf and 'id="logged-in"' in page and TOKEN not in page
    for bad in ("", "0" * 64, csrf[:-1] + ("0" if csrf[-1] != "0" else "1")):
        refused = client.post(f"/actions/rebuild/{NOTE}", data={"csrf": bad})
        assert refused.status_code == 403 and "CSRF" in refused.text
    assert jobs.recent() == [] and broker.llen("maintenance") == 0
    done = client.post(f"/actions/rebuild/{NOTE}",
                       data={"csrf": csrf, "next": f"/models/{NOTE}"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith(f"/models/{NOTE}?")
    (job,) = jobs.recent()
    assert job["kind"] == "rebuild" and job["status"] == "queued"
    message = json.loads(broker.lrange("maintenance", 0, -1)[0])
    assert message["headers"]["id"] == job["id"] and message["headers"]["task"] == \
        "popoto.maintenance.rebuild_indexes"
    assert json.loads(base64.b64decode(message["body"]))[1] == {"chunk_size": 50}
    page = client.get(done.headers["location"]).text
    assert f"rebuild of {NOTE} enqueued as job {job['id']}" in page
    assert client.post("/actions/rebuild/NoSuchModel", data={"csrf": csrf}).status_code == 404
    assert client.post("/actions/explode/x", data={"csrf": csrf}).status_code == 404
    # an open redirect is not possible: "next" must be a path of the dashboard
    away = client.post(f"/actions/check/{NOTE}", data={"csrf": csrf, "next": "//evil/"},
                       follow_redirects=False)
    assert away.headers["location"].startswith("/?flash=job")


def test_read_only_without_a_configured_token(broker: redis.Redis, celery_app: object) -> None:
    with TestClient(create_dashboard(token="")) as client:
        page = client.get("/").text
        assert 'id="read-only"' in page and "/actions/" not in page and "login" not in page
        refused = client.post(f"/actions/check/{NOTE}", data={"csrf": "x"})
        assert refused.status_code == 403 and "read-only" in refused.text
        assert log_in(client, "").status_code == 403
    assert jobs.recent() == []


def test_replay_dead_letters(client: TestClient) -> None:
    entry = make_dead_letter()
    page = client.get(f"/streams/{STREAM}").text
    assert f'data-id="{entry}"' in page and "cannot project Order:dl-1" in page
    log_in(client)
    csrf = csrf_of(client.get(f"/streams/{STREAM}").text)
    response = client.post(f"/actions/replay/{STREAM}",
                           data={"csrf": csrf, "next": f"/streams/{STREAM}"})
    assert response.status_code == 200 and "replayed 1 dead letter(s)" in response.text
    assert 'class="dead-letter"' not in response.text
    assert Order.query.count() == 1 and redis_len(f"dead:{STREAM}") == 0
    assert redis_len(STREAM) == 2  # the create event, and its replay


def redis_len(key: str) -> int:
    return int(get_client().xlen(key))


def test_every_value_is_escaped(client: TestClient) -> None:
    """Model data, dead-letter errors and keys are user data: shown as text."""
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>"\'&'
    Note.create(title=hostile, tag='"><b>tag</b>', score=1)
    record_check(NOTE, {"total": 0, "<i>index</i>": {"<u>k</u>": 1}})
    page = client.get(f"/models/{NOTE}").text
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>tag" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" \
        "&#34;&#39;&amp;" in page
    assert "&lt;i&gt;index&lt;/i&gt;: &lt;u&gt;k&lt;/u&gt;" in page
    assert page.count("<script") == 1  # the dashboard's own script tag
    # a model label or stream key in a URL is quoted, in text escaped
    assert client.get("/streams/stream:<x>").status_code == 404


def test_sessions_expire_and_cannot_be_forged() -> None:
    auth = Auth(TOKEN)
    cookie = auth.new_session(now=1000)
    nonce = auth.session(cookie, now=1000 + 60)
    assert nonce and auth.check_csrf(nonce, auth.csrf(nonce))
    assert auth.session(cookie, now=1000 + SESSION_SECONDS + 1) is None
    issued, nonce_part, mac = cookie.split(".")
    assert auth.session(f"{int(issued) + 1}.{nonce_part}.{mac}", now=1001) is None
    assert Auth("another-token").session(cookie, now=1000) is None  # token rotated
    assert Auth("").session(cookie) is None and not Auth(None).enabled
    assert not auth.check_csrf(nonce, "") and not auth.check_csrf(None, auth.csrf(None))


def test_mounted_in_a_fastapi_app(broker: redis.Redis, celery_app: object) -> None:
    """Mounted at /ops: every link, form and the session cookie are under /ops."""
    app = FastAPI()
    app.mount("/ops", create_dashboard(TOKEN))
    with TestClient(app) as client:
        page = client.get("/ops/").text
        assert 'href="/ops/static/dashboard.css"' in page and 'action="/ops/login"' in page
        assert 'data-base="/ops"' in page
        response = log_in(client, base="/ops")
        assert response.headers["location"] == "/ops/"
        assert "Path=/ops" in response.headers["set-cookie"]
        csrf = csrf_of(client.get("/ops/").text)
        done = client.post(f"/ops/actions/check/{NOTE}", data={"csrf": csrf, "next": "/ops/"},
                           follow_redirects=False)
        assert done.status_code == 303 and done.headers["location"].startswith("/ops/?")
        assert client.get("/ops/metrics").status_code == 200


def test_importing_without_the_extra_names_it() -> None:
    code = ("import sys; sys.modules['jinja2'] = None\n"
            "try:\n    import popoto.dashboard\n"
            "except ImportError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert "popoto-redis[dashboard]" in result.stdout and "jinja2" in result.stdout


def test_forms_are_bounded_and_stream_pages_only_show_streams(client: TestClient) -> None:
    big = client.post("/login", content=b"token=" + b"x" * 20_000,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413
    chunked = client.post("/login", content=iter([b"token=x"]),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert chunked.status_code == 411
    get_client().set("stream:not-a-stream", "x")
    assert client.get("/streams/stream:not-a-stream").status_code == 404
    assert client.get("/streams/Note:1").status_code == 404


def test_the_stream_list_is_reused_on_a_large_keyspace(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """SCAN walks the whole keyspace: above LARGE_KEYSPACE keys its result is reused for
    STREAM_LIST_SECONDS; below, every page sees new streams at once."""
    Order.create(order_id="o1", customer="ann", total="1")
    assert data.stream_keys() == [STREAM]
    get_client().xadd("stream:other", {"a": "1"})
    assert data.stream_keys() == [STREAM, "stream:other"]  # a small keyspace: rescanned
    monkeypatch.setattr(data, "LARGE_KEYSPACE", 0)
    get_client().xadd("stream:third", {"a": "1"})
    assert data.stream_keys() == [STREAM, "stream:other"]  # reused within the minute
    monkeypatch.setattr(data, "STREAM_LIST_SECONDS", 0.0)
    assert data.stream_keys() == [STREAM, "stream:other", "stream:third"]
