"""The example web app: FastAPI on the ORM, served by uvicorn, with the dashboard.

Every request binds a ``request_id`` (the ``X-Request-ID`` header, or a new
one) to the structlog context: each log line of the request carries it, the
response echoes it, and a task enqueued during the request carries it in its
headers, so the worker's log lines for that task carry it too.

Routes (JSON in and out; bodies with ``Content-Type: application/json``)::

    GET  /health                       Redis reachable? (503 if not)
    POST /notes                        {"title", "tag", "score"} -> 201 note
    GET  /notes?tag=&min_score=&limit= notes, best score first
    POST /orders                       {"order_id", "customer", "total"} -> 201 order
    POST /orders/<id>/status           {"status"}: a save, so an event on stream:orders
    GET  /orders/<id>
    GET  /orders/projection            what the stream consumer built (orders:*)
    POST /jobs/rebuild/<model>         enqueue an index rebuild -> 202 {"job_id"}
    GET  /jobs/<job_id>                job progress (done/total, status); 404 if unknown
    /ops/                              the operations dashboard (popoto.dashboard)
    /ops/metrics                       Prometheus metrics

Run: ``python -m popoto.ops.examples.web [--host 127.0.0.1] [--port 8000]`` (uvicorn; ``PORT`` env
too), or ``uvicorn popoto.ops.examples.web:app``.

Hostile input is answered, never a 500: a body needs a ``Content-Length`` (411
without one; 400 if it is not a byte count; 413, unread, above
``POPOTO_WEB_MAX_BODY`` bytes, default 1 MiB), must be a JSON object (415 for
another content type; 400 for bad JSON, NaN/Infinity, nesting deeper than
:data:`~popoto.ops.examples.web.http.MAX_JSON_DEPTH`, or not an object), and a bad value is a
422 whose JSON names the field (``{"error", "field", "detail"}``). A client that
stalls mid-body is answered 408 after ``POPOTO_WEB_REQUEST_TIMEOUT`` seconds
(30). Tracebacks of a 500 are logged from the endpoint down, without the frames
holding the request's scope (its headers).
"""

from __future__ import annotations

from .routes import create_app
from .http import MAX_JSON_DEPTH

app = create_app()

__all__ = ["MAX_JSON_DEPTH", "app", "create_app"]
