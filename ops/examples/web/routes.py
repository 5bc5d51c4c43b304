"""The example app's routes (FastAPI) and :func:`create_app`.

Async endpoints use the async ORM API (``await Note.async_create(...)``,
``await qs.async_list()``): they await Redis on the event loop and never block
it. ``def`` endpoints use the sync API and run in FastAPI's threadpool: changing
an order's status (load, change, save), and everything about jobs, whose
helpers (``popoto.tasks.jobs``, Celery's ``send_task``) are synchronous.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, cast

import structlog
from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import JSONResponse

import popoto
from popoto.dashboard import create_dashboard
from popoto.registry import label_of
from popoto.redis_db import get_async_client
from popoto.tasks import jobs
from popoto.tasks.logconfig import scrub_text
from popoto.tasks.submit import submit_job

from popoto.ops.examples.handlers import EVENTS, LATEST
from popoto.ops.examples.models import Note, Order
from . import settings
from .http import (
    BodyGuardMiddleware,
    HttpError,
    RequestContextMiddleware,
    StrictRoute,
    install_error_handlers,
)
from .schemas import FiniteFloat, NoteIn, OrderIn, StatusIn

if TYPE_CHECKING:
    from redis.commands.core import AsyncHashCommands, AsyncManagementCommands

log = structlog.stdlib.get_logger("popoto.web")

#: the largest ``limit`` of GET /notes
MAX_LIMIT = 1000

router = APIRouter(route_class=StrictRoute)


def _note(note: Any) -> dict[str, Any]:
    return {"key": note.pk, "title": note.title, "tag": note.tag, "score": note.score,
            "created": note.created.isoformat() if note.created else None}


def _order(order: Any) -> dict[str, Any]:
    return {"key": order.pk, "order_id": order.order_id, "customer": order.customer,
            "status": order.status, "total": str(order.total)}


@router.get("/health")
async def health() -> Any:
    try:
        # both asyncio clients have PING; the stubs leave every command out of RedisCluster
        await cast("AsyncManagementCommands", get_async_client()).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        return JSONResponse({"ok": False, "error": scrub_text(str(exc))}, status_code=503)
    return {"ok": True}


@router.post("/notes", status_code=201)
async def create_note(note: NoteIn | None = None) -> Any:
    note = note or NoteIn()
    saved = await Note.async_create(title=note.title, tag=note.tag, score=note.score)
    log.info("note saved", key=saved.pk, tag=saved.tag)
    return _note(saved)


@router.get("/notes")
async def list_notes(tag: str | None = None, min_score: FiniteFloat | None = None,
                     limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20) -> Any:
    query: dict[str, Any] = {}
    if tag is not None:
        query["tag"] = tag
    if min_score is not None:
        query["score__gte"] = min_score
    notes = await Note.query.filter(**query).order_by("-score").limit(limit).async_list()
    log.info("notes queried", filters=query, found=len(notes))
    return {"notes": [_note(n) for n in notes]}


@router.post("/orders", status_code=201)
async def create_order(order: OrderIn | None = None) -> Any:
    order = order or OrderIn()
    saved = await Order.async_create(order_id=order.order_id or uuid.uuid4().hex[:8],
                                     customer=order.customer, total=order.total)
    log.info("order saved", key=saved.pk)
    return _order(saved)


@router.get("/orders/projection")
async def order_projection() -> Any:
    """What the stream consumer built (``popoto.ops.examples.handlers``)."""
    # both asyncio clients have HGETALL; the stubs leave every command out of RedisCluster
    client = cast("AsyncHashCommands[bytes]", get_async_client())
    events = await client.hgetall(EVENTS)
    latest = await client.hgetall(LATEST)
    return {"events": {k.decode(): v.decode() for k, v in events.items()},
            "latest_status": {k.decode(): v.decode() for k, v in latest.items()}}


@router.get("/orders/{order_id}")
async def show_order(order_id: str) -> Any:
    order = await Order.query.async_get(order_id=order_id)
    if order is None:
        raise HttpError(404, f"no order {order_id!r}")
    return _order(order)


@router.post("/orders/{order_id}/status")
def set_order_status(order_id: str, change: StatusIn | None = None) -> Any:
    """The sync API, in FastAPI's threadpool: load, change, save (an event on the stream)."""
    change = change or StatusIn()
    order = Order.query.get(order_id=order_id)
    if order is None:
        raise HttpError(404, f"no order {order_id!r}")
    order.status = change.status
    order.save()
    log.info("order status changed", key=order.pk, status=order.status)
    return _order(order)


@router.post("/jobs/rebuild/{model}", status_code=202)
def enqueue_rebuild(model: str) -> Any:
    """Enqueue an index rebuild; the task carries this request's ``request_id``."""
    label = label_of(popoto.get_model(model))
    job_id = submit_job("rebuild", label)
    log.info("rebuild enqueued", model=label, job_id=job_id)
    return {"job_id": job_id, "model": label, "progress": f"/jobs/{job_id}"}


@router.get("/jobs/{job_id}")
def show_job(job_id: str) -> Any:
    """A job's progress: ``queued`` until its task starts it, 404 for an unknown id."""
    state = jobs.get(job_id)
    if state is None:
        raise HttpError(404, f"no job {job_id!r}")
    return state


@dataclass
class Limits:
    """What :class:`BodyGuardMiddleware` enforces (mutable: ``app.state.limits``)."""

    max_body: int
    timeout: float


def create_app(max_body: int | None = None, request_timeout: float | None = None,
               dashboard: Any = True) -> FastAPI:
    """The example app. ``dashboard``: True mounts ``popoto.dashboard`` at ``/ops/``
    (an app of your own may be given instead; False mounts none)."""
    app = FastAPI(title="Popoto example app")
    app.state.limits = Limits(settings.MAX_BODY_BYTES if max_body is None else max_body,
                              settings.REQUEST_TIMEOUT if request_timeout is None
                              else request_timeout)
    app.include_router(router)
    install_error_handlers(app)
    if dashboard is True:
        dashboard = create_dashboard()
    if dashboard:
        app.mount("/ops", dashboard)
    app.add_middleware(BodyGuardMiddleware, limits=app.state.limits)
    app.add_middleware(RequestContextMiddleware)
    return app
