"""No secret in any log line: Redis passwords in URLs, and values named like secrets.

The web app and a Celery worker run as real processes against a password-protected
Redis (``requirepass``) and are made to fail: a data database the server refuses
(so every request and task errors deep inside the connection code), a request
that answers 500, a task that raises. Every line they print (JSON logs with
tracebacks and frame locals included) is checked for the password and for the
values of environment variables named like secrets.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from popoto.testing.server import EmbeddedRedis
from popoto.tasks.config import with_db
from popoto.tasks.logconfig import configure_logging
from popoto.tasks.testing import Process, spawn, spawn_worker, wait_until

pytestmark = pytest.mark.standalone_only

PASSWORD = "Zq7hunter2Pw"  # noqa: S105 - the secret the logs must never show
TOKEN = "tok9f8e7d6c5b4a"  # noqa: S105
SIGNING = "sig0a1b2c3d4e5f"  # noqa: S105
REPO = Path(__file__).resolve().parents[2]
SECRETS = (PASSWORD, TOKEN, SIGNING)


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked:\n" + "\n".join(
            line for line in text.splitlines() if secret in line)[:3000]


# --- the processor, in process ------------------------------------------------------

@pytest.fixture
def json_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """configure_logging("json") into a buffer, restored afterwards."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, structlog.get_config())
    try:
        configure_logging("json", "INFO", stream=stream)
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.configure(**saved[2])


def _fail_with_secrets_in_locals() -> None:
    url = f"redis://app:{PASSWORD}@127.0.0.1:1/0"
    kwargs = {"password": PASSWORD, "host": "127.0.0.1"}
    auth_args = (PASSWORD,)  # a name that says nothing: masked by its known value
    api_token = TOKEN
    raise RuntimeError(f"cannot talk to {url} with {kwargs} {auth_args} {api_token}")


def test_processor_masks_urls_secret_names_and_traceback_locals(
        json_log: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    """URLs' passwords, fields/keys named like secrets, frame locals: all masked."""
    monkeypatch.setenv("DB_PASSWORD", PASSWORD)
    monkeypatch.setenv("API_TOKEN", TOKEN)  # so a bare occurrence is known to be one
    log = structlog.stdlib.get_logger("tests.secrets")
    log.info("connecting", url=f"rediss://user:{PASSWORD}@db.example:6380/2",
             api_token=TOKEN, settings={"Signing_Key": SIGNING, "nested": [
                 {"secret": TOKEN}, f"amqp://guest:{PASSWORD}@mq/"]}, model="Note")
    logging.getLogger("tests.stdlib").warning("broker at redis://:%s@h:1/1", PASSWORD)
    try:
        _fail_with_secrets_in_locals()
    except RuntimeError:
        log.exception("request failed")
    text = json_log.getvalue()
    assert_no_secret(text)
    first, second, third = json_lines(text)
    assert first["url"] == "rediss://user:***@db.example:6380/2"
    assert first["api_token"] == "***" and first["settings"]["Signing_Key"] == "***"
    assert first["settings"]["nested"] == [{"secret": "***"}, "amqp://guest:***@mq/"]
    assert first["model"] == "Note"  # other values untouched
    assert second["event"] == "broker at redis://:***@h:1/1"
    frames = third["exception"][0]["frames"]
    local_vars = frames[-1]["locals"]
    assert local_vars["url"] == "'redis://app:***@127.0.0.1:1/0'"
    assert local_vars["api_token"] == "***"
    assert "127.0.0.1" in local_vars["kwargs"] and "***" in local_vars["kwargs"]
    assert "cannot talk to redis://app:***@127.0.0.1:1/0" in third["exception"][0]["exc_value"]


def test_console_format_masks_tracebacks_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """The development renderer (POPOTO_LOG_FORMAT=console) shows no secret either."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, structlog.get_config())
    monkeypatch.setenv("DB_PASSWORD", PASSWORD)
    monkeypatch.setenv("API_TOKEN", TOKEN)  # so a bare occurrence is known to be one
    try:
        configure_logging("console", "INFO", stream=stream)
        try:
            _fail_with_secrets_in_locals()
        except RuntimeError:
            structlog.stdlib.get_logger("tests.secrets").exception("failed", token=TOKEN)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.configure(**saved[2])
    text = stream.getvalue()
    assert "RuntimeError" in text and "failed" in text
    assert_no_secret(text)


# --- real processes against a password-protected Redis -----------------------------

@pytest.fixture(scope="module")
def locked_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(password=PASSWORD) as server:
        yield server


def process_env(server: EmbeddedRedis, data_db: int) -> dict[str, str]:
    """A small environment (so the secrets are among the first entries of any dump)."""
    return {
        "REDIS_URL": with_db(server.url, data_db),
        "CELERY_BROKER_URL": with_db(server.url, 1),
        "API_TOKEN": TOKEN,
        "APP_SIGNING_KEY": SIGNING,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "POPOTO_LOG_FORMAT": "json",
        "POPOTO_MODEL_MODULES": "popoto.ops.examples.models",
        "PYTHONUNBUFFERED": "1",
    }


def start_web(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "popoto.ops.examples.web", "--port", "0"],
                                env=env,
                                cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)

    def listening() -> str | None:
        for line in json_lines(log_path.read_text()):
            if line.get("event") == "web app listening":
                return str(line["url"])
        if proc.poll() is not None:
            raise RuntimeError(f"web app exited:\n{log_path.read_text()[-3000:]}")
        return None

    try:
        return proc, wait_until(listening, timeout=30, message="web app listening")
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def request(method: str, url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_web_app_500s_log_no_secret(locked_server: EmbeddedRedis, tmp_path: Path) -> None:
    """Requests failing inside the connection code (a db the server refuses): logged with
    tracebacks and locals, and no password, token or key in any line."""
    env = process_env(locked_server, data_db=99)  # "DB index is out of range"
    proc, url = start_web(env, tmp_path / "web.log")
    try:
        assert request("POST", f"{url}/notes", {"title": "t", "tag": "x", "score": 1})[0] == 500
        assert request("GET", f"{url}/notes?tag=x")[0] == 500
        assert request("GET", f"{url}/orders/o1")[0] == 500
        status, body = request("GET", f"{url}/health")
        assert status == 503 and body["ok"] is False
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    text = (tmp_path / "web.log").read_text()
    lines = json_lines(text)
    failures = [e for e in lines if e.get("event") == "request failed"]
    assert len(failures) == 3 and all(e["level"] == "error" for e in failures)
    assert all(e["exception"][-1]["frames"] for e in failures)  # tracebacks were logged
    assert any("locals" in f for e in failures for x in e["exception"] for f in x["frames"])
    assert_no_secret(text)
    # the raw WSGI environ (process environment, request headers) is not among them
    assert "HTTP_AUTHORIZATION" not in text and "'API_TOKEN'" not in text


@pytest.mark.slow
def test_worker_task_failures_log_no_secret(locked_server: EmbeddedRedis,
                                            tmp_path: Path) -> None:
    """A celery worker on the password-protected broker: tasks that raise (the data db is
    refused; a message naming the URL; an unknown model) and a task logging a failure
    with its traceback are all logged, without any secret."""
    env = process_env(locked_server, data_db=99)
    broker = locked_server.client(db=1)
    broker.flushdb()
    worker: Process = spawn_worker(env, concurrency=1, pool="solo", name="secrets",
                                   extra=("--include", "tests.tasks.secret_tasks"))
    with worker:
        enqueue = ("from popoto.tasks import app; "
                   "app.send_task('popoto.maintenance.rebuild_indexes', "
                   "('popoto.ops.examples.models.Note',)); "
                   "app.send_task('popoto.maintenance.rebuild_indexes', ('NoSuchModel',)); "
                   "app.send_task('tests.secrets.raises_with_url'); "
                   "app.send_task('tests.secrets.logs_failure')")
        sender = spawn([sys.executable, "-c", enqueue], env)
        assert sender.popen.wait(timeout=60) == 0, sender.output()

        def failures() -> list[dict[str, Any]]:
            found = [e for e in json_lines(worker.output())
                     if e.get("level") == "error" and "exception" in e]
            return found if len(found) >= 4 else []

        failed = wait_until(failures, timeout=60, message="both tasks failed and logged")
        worker.terminate()
        text = worker.output() + sender.output()
    broker.flushdb()
    broker.close()
    assert any("ResponseError" in json.dumps(e["exception"]) for e in failed)
    assert any("NoSuchModel" in json.dumps(e) for e in failed)
    assert any("cannot use redis://" in json.dumps(e) for e in failed)
    logged = [e for e in failed if e["event"] == "data Redis unusable"]
    assert logged and any(f["locals"] for x in logged[0]["exception"] for f in x["frames"])
    assert_no_secret(text)
