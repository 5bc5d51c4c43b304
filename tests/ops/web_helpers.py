"""Helpers of the example-app tests: the app in a uvicorn process, raw HTTP requests."""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from popoto.tasks.config import default_broker_url
from popoto.tasks.testing import Process, spawn


def listening_url(output: str, event: str) -> str | None:
    for line in output.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            return str(entry["url"])
    return None


@contextmanager
def uvicorn_process(redis_url: str, args: Sequence[str] = (),
                    env: dict[str, str] | None = None) -> Iterator[tuple[Process, str]]:
    """``python -m popoto.ops.examples.web --port 0 ARGS`` (uvicorn in its own process);
    ``(process, url)``."""
    environment = {"REDIS_URL": redis_url, "CELERY_BROKER_URL": default_broker_url(redis_url),
                   "POPOTO_LOG_FORMAT": "json",
                   "POPOTO_MODEL_MODULES": "popoto.ops.examples.models",
                   "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = spawn([sys.executable, "-m", "popoto.ops.examples.web", "--port", "0", *args],
                 environment,
                 ready='"web app listening"', timeout=60)
    try:
        url = listening_url(proc.output(), "web app listening")
        assert url, proc.output()
        yield proc, url
    finally:
        proc.terminate()


def http(method: str, url: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def raw_request(address: tuple[str, int], head: str, body: bytes = b"",
                timeout: float = 10) -> tuple[int, bytes]:
    """Send a request as given; the status code and the body of the answer."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
    answer = b"".join(chunks)
    assert answer, "no answer"
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False
