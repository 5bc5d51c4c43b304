"""A small example web app (stdlib WSGI) that saves and queries models per request.

Every request binds a ``request_id`` (the ``X-Request-ID`` header, or a new
one) to the structlog context: each log line of the request carries it, the
response echoes it, and a task enqueued during the request carries it in its
headers, so the worker's log lines for that task carry it too.

Routes (JSON in and out)::

    GET  /health                       Redis reachable?
    POST /notes                        {"title", "tag", "score"} -> 201 {"key"}
    GET  /notes?tag=&min_score=&limit= notes, best score first
    POST /orders                       {"order_id", "customer", "total"} -> 201
    POST /orders/<id>/status           {"status"}: a save, so an event on stream:orders
    GET  /orders/<id>
    GET  /orders/projection            what the stream consumer built (orders:*)
    POST /jobs/rebuild/<model>         enqueue an index rebuild -> 202 {"job_id"}
    GET  /jobs/<job_id>                job progress (done/total, status); 404 if unknown

Run: ``python -m ops.web [--host 127.0.0.1] [--port 8000]`` (``PORT`` env too).

Hostile input is answered, never a 500: a body needs a ``Content-Length`` (411
without one; 400 if negative or not a number; 413, unread, above
``POPOTO_WEB_MAX_BODY`` bytes, default 1 MiB), must be a JSON object (400 for
bad JSON, NaN/Infinity, or nesting deeper than :data:`MAX_JSON_DEPTH`), and a
bad value is a 400 whose JSON names the field (``{"error", "field"}``). A
client that stalls mid-request is dropped after :data:`REQUEST_TIMEOUT`
seconds. Tracebacks of a 500 are logged without the WSGI environ (which holds
the process environment and the request headers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog

from popoto.exceptions import ModelException, QueryException
from popoto.registry import label_of
from popoto.redis_db import get_client

from .example_models import Note, Order

log = structlog.stdlib.get_logger("popoto.web")

StartResponse = Callable[..., Any]
Response = tuple[int, Any]
JSON_TYPE = [("Content-Type", "application/json")]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request",
                404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
                411: "Length Required", 413: "Content Too Large",
                500: "Internal Server Error", 503: "Service Unavailable"}


def _max_body_from_env() -> int:
    raw = os.environ.get("POPOTO_WEB_MAX_BODY", "").strip()
    if not raw:
        return 1 << 20
    if not raw.isascii() or not raw.isdigit():
        raise ValueError(f"POPOTO_WEB_MAX_BODY must be a number of bytes, got {raw!r}")
    return int(raw)


#: largest request body accepted, in bytes (``POPOTO_WEB_MAX_BODY``, default 1 MiB)
MAX_BODY_BYTES = _max_body_from_env()
#: JSON nested deeper than this (objects and arrays) is refused
MAX_JSON_DEPTH = 32
#: seconds a client may stall while sending its request
REQUEST_TIMEOUT = 30
#: the largest ``limit`` of GET /notes
MAX_LIMIT = 1000
#: the WSGI environ entries the handlers get (not the process environment, not headers)
_REQUEST_KEYS = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_LENGTH",
                 "CONTENT_TYPE", "wsgi.input")
_DIGITS = re.compile(r"^[0-9]+$")


class HttpError(Exception):
    """An answer other than success: ``status``, a message and the field it is about."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def _content_length(environ: dict[str, Any]) -> int:
    raw = str(environ.get("CONTENT_LENGTH") or "").strip()
    if not raw:
        raise HttpError(411, "a body needs a Content-Length header (chunked bodies are "
                             "not accepted)")
    if not _DIGITS.match(raw):
        raise HttpError(400, f"bad Content-Length {raw[:32]!r}: not a byte count")
    if len(raw) > 15 or int(raw) > MAX_BODY_BYTES:
        raise HttpError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    return int(raw)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value`` (0 for a scalar)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                break
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _body(environ: dict[str, Any]) -> dict[str, Any]:
    length = _content_length(environ)
    try:
        raw = environ["wsgi.input"].read(length) if length else b""
    except OSError as exc:  # the client stalled past the server's timeout
        raise HttpError(408, f"request body not received: {exc}") from None
    if len(raw) < length:
        raise HttpError(400, f"body shorter than its Content-Length ({len(raw)} < {length})")
    if not raw:
        return {}
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise HttpError(400, f"body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise HttpError(400, f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HttpError(400, "body must be a JSON object")
    if _depth(data) > MAX_JSON_DEPTH:
        raise HttpError(400, f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    return data


def _shown(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _scalar(data: dict[str, Any], field: str, default: Any, kind: str) -> Any:
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise HttpError(400, f"{field} must be {kind}, got {_shown(value)}", field)
    return value


def _number(data: dict[str, Any], field: str, default: Any = None) -> float:
    """A finite number (a JSON number or a numeric string)."""
    value = _scalar(data, field, default, "a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number):
        raise HttpError(400, f"{field} must be a finite number, got {_shown(value)}", field)
    return number


def _decimal(data: dict[str, Any], field: str, default: Any = None) -> Decimal:
    """An exact, finite decimal (a JSON number or a numeric string; no NaN, no Infinity)."""
    value = _scalar(data, field, default, "a decimal number")
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        number = Decimal("NaN")
    if not number.is_finite():
        raise HttpError(400, f"{field} must be a finite decimal number, got {_shown(value)}",
                        field)
    return number


def _text(data: dict[str, Any], field: str, default: str | None = None) -> str | None:
    """Text (a number is taken as its text); null or absent: ``default``."""
    if data.get(field) is None:
        return default
    return str(_scalar(data, field, default, "text"))


def _limit(params: dict[str, str]) -> int:
    raw = params.get("limit", "20").strip()
    if not _DIGITS.match(raw) or len(raw) > 6 or not 1 <= int(raw) <= MAX_LIMIT:
        raise HttpError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}, got "
                             f"{_shown(raw)}", "limit")
    return int(raw)


def _note(note: Any) -> dict[str, Any]:
    return {"key": note.pk, "title": note.title, "tag": note.tag, "score": note.score,
            "created": note.created.isoformat() if note.created else None}


def _order(order: Any) -> dict[str, Any]:
    return {"key": order.pk, "order_id": order.order_id, "customer": order.customer,
            "status": order.status, "total": str(order.total)}


# --- handlers -------------------------------------------------------------------

def health(environ: dict[str, Any]) -> Response:
    try:
        get_client().ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        return 503, {"ok": False, "error": str(exc)}
    return 200, {"ok": True}


def create_note(environ: dict[str, Any]) -> Response:
    data = _body(environ)
    note = Note.create(title=_text(data, "title", ""), tag=_text(data, "tag"),
                       score=_number(data, "score", 0))
    log.info("note saved", key=note.pk, tag=note.tag)
    return 201, _note(note)


def list_notes(environ: dict[str, Any]) -> Response:
    params = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    query: dict[str, Any] = {}
    if "tag" in params:
        query["tag"] = params["tag"]
    if "min_score" in params:
        query["score__gte"] = _number(params, "min_score")
    limit = _limit(params)
    notes = Note.query.filter(**query).order_by("-score").limit(limit)
    found = [_note(n) for n in notes]
    log.info("notes queried", filters=query, found=len(found))
    return 200, {"notes": found}


def create_order(environ: dict[str, Any]) -> Response:
    data = _body(environ)
    order = Order.create(order_id=_text(data, "order_id") or uuid.uuid4().hex[:8],
                         customer=_text(data, "customer"), total=_decimal(data, "total", 0))
    log.info("order saved", key=order.pk)
    return 201, _order(order)


def _get_order(order_id: str) -> Any:
    order = Order.query.get(order_id=order_id)
    if order is None:
        raise HttpError(404, f"no order {order_id!r}")
    return order


def set_order_status(environ: dict[str, Any], order_id: str) -> Response:
    status = _text(_body(environ), "status", "")
    order = _get_order(order_id)
    order.status = status
    order.save()
    log.info("order status changed", key=order.pk, status=order.status)
    return 200, _order(order)


def show_order(environ: dict[str, Any], order_id: str) -> Response:
    return 200, _order(_get_order(order_id))


def order_projection(environ: dict[str, Any]) -> Response:
    from . import example_handlers as h

    client = get_client()
    decode = {k.decode(): v.decode() for k, v in client.hgetall(h.EVENTS).items()}
    latest = {k.decode(): v.decode() for k, v in client.hgetall(h.LATEST).items()}
    return 200, {"events": decode, "latest_status": latest}


def enqueue_rebuild(environ: dict[str, Any], model: str) -> Response:
    import popoto
    from tasks import app, jobs

    label = label_of(popoto.get_model(model))
    job_id = str(uuid.uuid4())
    jobs.create_queued(job_id, "rebuild", label)  # "queued" until its task starts it
    try:
        app.send_task("popoto.maintenance.rebuild_indexes", (label,), task_id=job_id)
    except BaseException:
        jobs.discard_queued(job_id)
        raise
    log.info("rebuild enqueued", model=label, job_id=job_id)
    return 202, {"job_id": job_id, "model": label, "progress": f"/jobs/{job_id}"}


def show_job(environ: dict[str, Any], job_id: str) -> Response:
    """A job's progress: ``queued`` until its task starts it, 404 for an unknown id."""
    from tasks import jobs

    state = jobs.get(job_id)
    if state is None:
        raise HttpError(404, f"no job {job_id!r}")
    return 200, state


ROUTES: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = [
    ("GET", re.compile(r"^/health$"), health),
    ("POST", re.compile(r"^/notes$"), create_note),
    ("GET", re.compile(r"^/notes$"), list_notes),
    ("POST", re.compile(r"^/orders$"), create_order),
    ("GET", re.compile(r"^/orders/projection$"), order_projection),
    ("POST", re.compile(r"^/orders/([^/]+)/status$"), set_order_status),
    ("GET", re.compile(r"^/orders/([^/]+)$"), show_order),
    ("POST", re.compile(r"^/jobs/rebuild/([\w.]+)$"), enqueue_rebuild),
    ("GET", re.compile(r"^/jobs/([\w-]+)$"), show_job),
]


def _dispatch(environ: dict[str, Any]) -> Response:
    method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
    allowed = False
    for route_method, pattern, handler in ROUTES:
        match = pattern.match(path)
        if match:
            allowed = True
            if route_method == method:
                return handler(environ, *match.groups())
    if allowed:
        raise HttpError(405, f"{method} not allowed on {path}")
    raise HttpError(404, f"no route for {path}")


def _handle(request: dict[str, Any]) -> Response:
    """Dispatch ``request`` (the few environ entries the handlers use, see
    :data:`_REQUEST_KEYS`): a traceback logged from here shows its frames' locals,
    so no frame of it holds the raw environ."""
    try:
        return _dispatch(request)
    except HttpError as exc:
        error = {"error": str(exc)}
        return exc.status, {**error, "field": exc.field} if exc.field else error
    except (ModelException, QueryException, ValueError) as exc:
        return 400, {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - the app answers 500 and logs the traceback
        log.exception("request failed")
        return 500, {"error": type(exc).__name__}


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point."""
    given = environ.get("HTTP_X_REQUEST_ID", "")
    request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id,
                                           method=environ.get("REQUEST_METHOD"),
                                           path=environ.get("PATH_INFO"))
    started = time.perf_counter()
    status, payload = _handle({k: environ[k] for k in _REQUEST_KEYS if k in environ})
    body = json.dumps(payload, default=str).encode()
    log.info("request", status=status, ms=round((time.perf_counter() - started) * 1000, 2))
    structlog.contextvars.clear_contextvars()
    start_response(f"{status} {_STATUS_TEXT.get(status, '')}",
                   [*JSON_TYPE, ("Content-Length", str(len(body))),
                    ("X-Request-ID", request_id)])
    return [body]


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def shutdown_request(self, request: Any) -> None:
        """Close gracefully: a body the app refused unread (413, 411, 400) is drained, at
        most 64 KiB and 0.5 s, so the close does not reset the connection (the client
        would lose the answer)."""
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(0.5)
            drained = 0
            while drained < 1 << 16:
                chunk = request.recv(1 << 14)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass
        self.close_request(request)


class QuietHandler(WSGIRequestHandler):
    """Access logs come from the app (structured), not from wsgiref's stderr lines.

    A client that stalls longer than ``timeout`` seconds is dropped.
    """

    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def serve(host: str, port: int) -> Any:
    """A threaded WSGI server for :data:`application` (call ``serve_forever`` on it)."""
    return make_server(host, port, application, server_class=ThreadingServer,
                       handler_class=QuietHandler)


def _set_max_body(limit: int) -> None:
    global MAX_BODY_BYTES
    MAX_BODY_BYTES = limit


def main(argv: list[str] | None = None) -> int:
    from tasks.logconfig import configure_logging

    parser = argparse.ArgumentParser(prog="python -m ops.web", description="example web app")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--max-body", type=int, default=MAX_BODY_BYTES, metavar="BYTES",
                        help="largest request body (default: POPOTO_WEB_MAX_BODY or 1 MiB)")
    args = parser.parse_args(argv)
    _set_max_body(args.max_body)
    configure_logging()
    server = serve(args.host, args.port)

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    log.info("web app listening", url=f"http://{args.host}:{server.server_port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("web app stopping")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
