"""The HTTP plumbing of the example app: request ids, body limits, strict JSON, errors.

Pure ASGI middleware (no ``BaseHTTPMiddleware``), so a request's structlog
context and the task headers it leads to stay in the request's own task (and
in the threadpool threads FastAPI runs ``def`` endpoints in: they get a copy of
the context).

* :class:`RequestContextMiddleware`: binds ``request_id`` (the ``X-Request-ID``
  header when it is well formed, else a new one), ``method`` and ``path``;
  echoes the id; logs one ``request`` line with the status and the time.
* :class:`BodyGuardMiddleware`: a request with a body must announce its size
  (411 for a chunked body, and when a route reads the body of a request without
  a ``Content-Length``; 400 if it is not a byte
  count; 413 above the limit, answered without reading the body); a client
  that stalls mid-body is answered 408 after ``timeout`` s.
* :class:`StrictRoute`: a body must be sent as JSON (415 for another
  ``Content-Type``) and is parsed strictly (UTF-8, no NaN or
  Infinity, at most :data:`MAX_JSON_DEPTH` levels, an object at the top: 400
  otherwise); an unexpected exception is a 500 whose logged traceback starts at
  the endpoint (no frame holding the ASGI scope, i.e. the request headers);
  Popoto's own errors are 400 (409 for a unique conflict).
* :func:`install_error_handlers`: every error answer is JSON ``{"error", ...}``;
  validation errors are 422 ``{"error", "field", "detail"}`` naming the field.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from popoto.exceptions import ModelException, QueryException, UniqueViolation

log = structlog.stdlib.get_logger("popoto.web")

#: JSON nested deeper than this (objects and arrays) is refused
MAX_JSON_DEPTH = 32
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_DIGITS = re.compile(r"^[0-9]+$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
LENGTH_REQUIRED = "a body needs a Content-Length header (chunked bodies are not accepted)"


class HttpError(StarletteHTTPException):
    """An error answer: ``status``, a message and the field it is about (if any)."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(status_code=status, detail=message)
        self.field = field


def error_body(message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return {**body, **extra}


async def _send_json(send: Send, status: int, payload: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())  # ASGI: byte pairs
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


# --- middleware -------------------------------------------------------------------

class RequestContextMiddleware:
    """``request_id`` into the structlog context (and so into task headers), echoed back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id") or ""
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, method=scope["method"],
                                               path=scope["path"])
        started = time.perf_counter()
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info("request", status=status["code"],
                     ms=round((time.perf_counter() - started) * 1000, 2))
            structlog.contextvars.clear_contextvars()


class BodyGuardMiddleware:
    """Bodies: announced (411/400), bounded (413, unread), not stalled (408).

    ``max_body`` and ``timeout`` are read from ``limits`` on every request
    (an object with ``max_body`` and ``timeout`` attributes), so an app's limits
    can be changed at run time.
    """

    def __init__(self, app: ASGIApp, limits: Any) -> None:
        self.app = app
        self.limits = limits

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        raw = _header(scope, b"content-length")
        if raw is None:
            if _header(scope, b"transfer-encoding") is not None:
                return 411, LENGTH_REQUIRED, "Content-Length"
            return None
        raw = raw.strip()
        if not _DIGITS.match(raw):
            return 400, f"bad Content-Length {raw[:32]!r}: not a byte count", "Content-Length"
        if len(raw) > 15 or int(raw) > self.limits.max_body:
            return 413, f"body larger than {self.limits.max_body} bytes", "Content-Length"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            status, message, header = refusal
            await _send_json(send, status, error_body(message, header))
            return
        timeout = self.limits.timeout
        complete = False
        unannounced = scope["method"] in _BODY_METHODS and \
            _header(scope, b"content-length") is None

        async def receive_in_time() -> Message:
            nonlocal complete
            if unannounced:  # only a route that reads a body needs its length
                raise HttpError(411, LENGTH_REQUIRED, "Content-Length")
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                raise HttpError(408, f"request body not received within {timeout:g} s") \
                    from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, receive_in_time, send)


# --- strict JSON bodies and the catch-all ---------------------------------------

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


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, strictly: HttpError 400 for anything else."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"body is not UTF-8: {exc.reason}") from None
    except RecursionError:
        raise HttpError(400, f"body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise HttpError(400, f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HttpError(400, "body must be a JSON object")
    if _depth(data) > MAX_JSON_DEPTH:
        raise HttpError(400, f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    return data


class StrictJSONRequest(Request):
    """A request whose ``json()`` is :func:`parse_json_object`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json_object(await self.body())
        return self._json


def _from_endpoint(exc: BaseException, endpoint: Callable[..., Any]) -> BaseException:
    """``exc`` with its traceback cut to start at ``endpoint``'s frame (when it has one):
    the frames above it (FastAPI, Starlette, the middleware) hold the request's scope."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code is not endpoint.__code__:
        tb = tb.tb_next
    return exc.with_traceback(tb) if tb is not None else exc.with_traceback(None)


class StrictRoute(APIRoute):
    """FastAPI route: strict JSON bodies, Popoto errors as 400/409, a clean 500."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            if not _json_or_empty(request):
                return JSONResponse(error_body("a body must be JSON (Content-Type: "
                                               "application/json)", "Content-Type"),
                                    status_code=415)
            try:
                return await original(StrictJSONRequest(request.scope, request.receive))
            except (StarletteHTTPException, RequestValidationError):
                raise
            except UniqueViolation as exc:
                return JSONResponse(error_body(str(exc)), status_code=409)
            except (ModelException, QueryException) as exc:
                return JSONResponse(error_body(str(exc)), status_code=400)
            except Exception as exc:  # noqa: BLE001 - answered 500, traceback logged
                _log_failure(_from_endpoint(exc, endpoint))
                return JSONResponse(error_body(type(exc).__name__), status_code=500)

        return handler


def _json_or_empty(request: Request) -> bool:
    if (request.headers.get("content-length") or "0").strip() in ("", "0"):
        return True
    kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _log_failure(exc: BaseException) -> None:
    log.error("request failed", exc_info=exc)


# --- error answers ------------------------------------------------------------------

def _field_of(loc: tuple[Any, ...] | list[Any]) -> str | None:
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path") \
        else [str(p) for p in loc]
    return ".".join(parts) or (str(loc[0]) if loc else None)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    field = getattr(exc, "field", None)
    return JSONResponse(error_body(str(exc.detail), field), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = [{"loc": list(e.get("loc", ())), "field": _field_of(e.get("loc", ())),
               "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    first: dict[str, Any] = detail[0] if detail else {"field": None, "msg": "invalid request"}
    message = f"{first['field']}: {first['msg']}" if first["field"] else first["msg"]
    return JSONResponse(error_body(message, first["field"], detail=detail), status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
