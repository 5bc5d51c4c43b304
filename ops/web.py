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
    GET  /jobs/<job_id>                job progress (done/total, status)

Run: ``python -m ops.web [--host 127.0.0.1] [--port 8000]`` (``PORT`` env too).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
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
                404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
                503: "Service Unavailable"}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _body(environ: dict[str, Any]) -> dict[str, Any]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    raw = environ["wsgi.input"].read(length) if length else b""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise HttpError(400, f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HttpError(400, "body must be a JSON object")
    return data


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
    note = Note.create(title=str(data.get("title", "")), tag=data.get("tag"),
                       score=float(data.get("score", 0)))
    log.info("note saved", key=note.pk, tag=note.tag)
    return 201, _note(note)


def list_notes(environ: dict[str, Any]) -> Response:
    params = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    query: dict[str, Any] = {}
    if "tag" in params:
        query["tag"] = params["tag"]
    if "min_score" in params:
        query["score__gte"] = float(params["min_score"])
    limit = int(params.get("limit", 20))
    notes = Note.query.filter(**query).order_by("-score").limit(limit)
    found = [_note(n) for n in notes]
    log.info("notes queried", filters=query, found=len(found))
    return 200, {"notes": found}


def create_order(environ: dict[str, Any]) -> Response:
    data = _body(environ)
    order = Order.create(order_id=str(data.get("order_id") or uuid.uuid4().hex[:8]),
                         customer=data.get("customer"), total=Decimal(str(data.get("total", 0))))
    log.info("order saved", key=order.pk)
    return 201, _order(order)


def _get_order(order_id: str) -> Any:
    order = Order.query.get(order_id=order_id)
    if order is None:
        raise HttpError(404, f"no order {order_id!r}")
    return order


def set_order_status(environ: dict[str, Any], order_id: str) -> Response:
    order = _get_order(order_id)
    order.status = str(_body(environ).get("status", ""))
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
    from tasks import app

    label = label_of(popoto.get_model(model))
    result = app.send_task("popoto.maintenance.rebuild_indexes", (label,))
    log.info("rebuild enqueued", model=label, job_id=result.id)
    return 202, {"job_id": result.id, "model": label, "progress": f"/jobs/{result.id}"}


def show_job(environ: dict[str, Any], job_id: str) -> Response:
    from tasks import jobs

    state = jobs.get(job_id)
    if state is None:
        return 200, {"id": job_id, "status": "queued"}  # its coordinator has not run yet
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


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point."""
    given = environ.get("HTTP_X_REQUEST_ID", "")
    request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id,
                                           method=environ.get("REQUEST_METHOD"),
                                           path=environ.get("PATH_INFO"))
    started = time.perf_counter()
    try:
        status, payload = _dispatch(environ)
    except HttpError as exc:
        status, payload = exc.status, {"error": str(exc)}
    except (ModelException, QueryException, ValueError) as exc:
        status, payload = 400, {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - the app answers 500 and logs the traceback
        log.exception("request failed")
        status, payload = 500, {"error": type(exc).__name__}
    body = json.dumps(payload, default=str).encode()
    log.info("request", status=status, ms=round((time.perf_counter() - started) * 1000, 2))
    structlog.contextvars.clear_contextvars()
    start_response(f"{status} {_STATUS_TEXT.get(status, '')}",
                   [*JSON_TYPE, ("Content-Length", str(len(body))),
                    ("X-Request-ID", request_id)])
    return [body]


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    """Access logs come from the app (structured), not from wsgiref's stderr lines."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def serve(host: str, port: int) -> Any:
    """A threaded WSGI server for :data:`application` (call ``serve_forever`` on it)."""
    return make_server(host, port, application, server_class=ThreadingServer,
                       handler_class=QuietHandler)


def main(argv: list[str] | None = None) -> int:
    from tasks.logconfig import configure_logging

    parser = argparse.ArgumentParser(prog="python -m ops.web", description="example web app")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args(argv)
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
