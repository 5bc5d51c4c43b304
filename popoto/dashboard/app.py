"""The dashboard's ASGI app (Starlette, server-rendered Jinja2): :func:`create_dashboard`.

Pages (read-only, for anyone who reaches the app)::

    GET  /                    models, jobs (live progress bars), streams, beat schedule
    GET  /models/<label>      index health, the last check report, sample instances
    GET  /jobs/<id>           one job's record
    GET  /streams/<key>       groups, lag, pending, dead letters
    GET  /api/jobs?id=...     job progress as JSON (what the progress bars poll)
    GET  /metrics             Prometheus metrics (popoto.dashboard.metrics)

Actions (POST; a session from ``POST /login`` with the token, and its CSRF token)::

    /actions/check/<label>    /actions/rebuild/<label>    /actions/clean/<label>
    /actions/replay/<stream key>

Every page is sent with a Content-Security-Policy that allows only the
dashboard's own script and stylesheet, and every value is escaped by Jinja2's
autoescape (model data is user data).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
import structlog
from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from popoto.exceptions import PopotoError

from . import actions, data, metrics
from .auth import COOKIE, SESSION_SECONDS, Auth

log = structlog.stdlib.get_logger("popoto.dashboard")

HERE = Path(__file__).parent
#: the largest form (login, actions) read
MAX_FORM_BYTES = 16 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _when(ts: Any) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(float(ts), datetime.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return ""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _templates() -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    env.filters["when"] = _when
    env.filters["urlq"] = lambda value: quote(str(value), safe="")
    return Jinja2Templates(env=env)


class Dashboard:
    """The app's state and handlers (one instance per :func:`create_dashboard` call)."""

    def __init__(self, auth: Auth, title: str, chunk_size: int | None,
                 beat_schedule: Callable[[], dict[str, Any]]) -> None:
        self.auth = auth
        self.title = title
        self.chunk_size = chunk_size
        self.beat_schedule = beat_schedule
        self.templates = _templates()
        self.registry = metrics.new_registry()

    # --- rendering --------------------------------------------------------------

    def base(self, request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def context(self, request: Request, **values: Any) -> dict[str, Any]:
        nonce = self.auth.session(request.cookies.get(COOKIE))
        return {"title": self.title, "base": self.base(request), "auth": self.auth,
                "logged_in": nonce is not None, "csrf": self.auth.csrf(nonce),
                "here": request.url.path, **values}

    def render(self, request: Request, name: str, status: int = 200,
               **values: Any) -> Response:
        response = self.templates.TemplateResponse(request, name,
                                                   self.context(request, **values),
                                                   status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    def refuse(self, request: Request, status: int, reason: str) -> Response:
        return self.render(request, "refused.html", status=status, reason=reason, code=status)

    async def page(self, request: Request, name: str,
                   gather: Callable[[], dict[str, Any]]) -> Response:
        """Render ``name`` with what ``gather`` reads (in the threadpool: blocking I/O)."""
        def read() -> dict[str, Any]:
            return {**gather(), "flash": actions.flash(request.query_params)}

        return self.render(request, name, **await run_in_threadpool(read))

    # --- pages ----------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        def gather() -> dict[str, Any]:
            return {"models": data.model_rows(), "jobs": data.recent_jobs(),
                    "streams": data.streams(),
                    "schedule": data.schedule(self.beat_schedule())}

        return await self.page(request, "index.html", gather)

    async def model(self, request: Request) -> Response:
        label = request.path_params["label"]
        model = data.find_model(label)
        if model is None:
            return self.refuse(request, 404, f"no model {label!r} is registered here")

        def gather() -> dict[str, Any]:
            check = data.last_check(label)
            return {"label": label, "model": model, "check": check,
                    "report": data.report_rows(check.get("report") or {}) if check else [],
                    "row": data.model_row(model), "sample": data.sample(model)}

        return await self.page(request, "model.html", gather)

    async def job(self, request: Request) -> Response:
        job = await run_in_threadpool(data.job, request.path_params["job_id"])
        if job is None:
            return self.refuse(request, 404, "no such job (unknown or expired)")
        fields = sorted((k, data.cell(v)) for k, v in job.items())
        return self.render(request, "job.html", job=job, fields=fields)

    async def stream(self, request: Request) -> Response:
        key = request.path_params["key"]
        info = await run_in_threadpool(data.stream, key)
        if info is None:
            return self.refuse(request, 404, f"no stream {key!r}")
        return await self.page(request, "stream.html",
                               lambda: {"info": info, "letters": data.dead_letters(key)})

    async def api_jobs(self, request: Request) -> Response:
        ids = request.query_params.getlist("id")[:100]
        found = await run_in_threadpool(data.jobs_by_id, ids)
        keys = ("id", "status", "phase", "done", "total", "percent", "final", "error")
        return JSONResponse({"jobs": [{k: j[k] for k in keys} for j in found]},
                            headers={"Cache-Control": "no-store"})

    async def metrics(self, request: Request) -> Response:
        try:
            body = await run_in_threadpool(metrics.exposition, self.registry)
        except (redis.RedisError, PopotoError) as exc:
            log.warning("metrics unavailable", error=type(exc).__name__)
            return Response(f"# metrics unavailable: {type(exc).__name__}\n", status_code=503,
                            media_type="text/plain")
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    # --- login and actions ------------------------------------------------------------

    async def form(self, request: Request) -> FormData | Response:
        """The posted form, or a refusal: its size must be announced and small."""
        raw = (request.headers.get("content-length") or "").strip()
        if not raw.isdigit():
            return self.refuse(request, 411, "a form needs a Content-Length header")
        if int(raw) > MAX_FORM_BYTES:
            return self.refuse(request, 413, f"a form is at most {MAX_FORM_BYTES} bytes")
        return await request.form(max_files=0, max_fields=20)

    async def login(self, request: Request) -> Response:
        form = await self.form(request)
        if isinstance(form, Response):
            return form
        if not self.auth.enabled:
            return self.refuse(request, 403, "this dashboard is read-only: "
                                             "POPOTO_DASHBOARD_TOKEN is not set")
        if not self.auth.check_token(str(form.get("token", ""))):
            log.warning("dashboard login refused")
            return self.refuse(request, 403, "wrong token")
        log.info("dashboard login")
        response = RedirectResponse(actions.next_path(self.base(request), form), 303)
        response.set_cookie(COOKIE, self.auth.new_session(), max_age=SESSION_SECONDS,
                            path=self.base(request) or "/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse(f"{self.base(request)}/", 303)
        response.delete_cookie(COOKIE, path=self.base(request) or "/")
        return response

    async def action(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        target = request.path_params["target"]
        form = await self.form(request)
        if isinstance(form, Response):
            return form
        nonce = self.auth.session(request.cookies.get(COOKIE))
        if not self.auth.enabled:
            reason = "this dashboard is read-only: POPOTO_DASHBOARD_TOKEN is not set"
        elif nonce is None:
            reason = "actions need the dashboard token (log in first)"
        elif not self.auth.check_csrf(nonce, str(form.get("csrf", ""))):
            reason = "missing or wrong CSRF token (reload the page and try again)"
        else:
            reason = ""
        if reason:
            log.warning("dashboard action refused", action=kind, target=target, reason=reason)
            return self.refuse(request, 403, reason)
        outcome = await run_in_threadpool(actions.run, kind, target, self.chunk_size)
        if outcome.error:
            return self.refuse(request, outcome.status, outcome.error)
        log.info("dashboard action", action=kind, target=target, **outcome.logged)
        return RedirectResponse(outcome.redirect(self.base(request), form), 303)


def create_dashboard(token: str | None = None, *, title: str = "Popoto operations",
                     chunk_size: int | None = None,
                     beat_schedule: Callable[[], dict[str, Any]] | None = None) -> Starlette:
    """The dashboard as an ASGI app: mount it (``app.mount("/ops", create_dashboard())``)
    or serve it (``popoto-ops dashboard``).

    ``token``: the token actions need (default ``POPOTO_DASHBOARD_TOKEN``; none: the
    dashboard is read-only). ``chunk_size``: of the rebuild/clean jobs it starts
    (default: the workers' ``POPOTO_CHUNK_SIZE``). ``beat_schedule``: returns the
    schedule to show (default: that of ``popoto.tasks.app``).
    """
    if token is None:
        token = os.environ.get("POPOTO_DASHBOARD_TOKEN", "")
    board = Dashboard(Auth(token), title, chunk_size, beat_schedule or actions.beat_schedule)
    routes = [
        Route("/", board.index, name="index"),
        Route("/models/{label}", board.model),
        Route("/jobs/{job_id}", board.job),
        Route("/streams/{key:path}", board.stream),
        Route("/api/jobs", board.api_jobs),
        Route("/metrics", board.metrics),
        Route("/login", board.login, methods=["POST"]),
        Route("/logout", board.logout, methods=["POST"]),
        Route("/actions/{kind}/{target:path}", board.action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.dashboard = board
    return app
