"""The operations dashboard: an ASGI app on top of the library and its background layer.

::

    from popoto.dashboard import create_dashboard
    app.mount("/ops", create_dashboard())      # in a FastAPI or Starlette app

or ``popoto-ops dashboard --port 8050`` (binds 127.0.0.1 unless ``--host`` says
otherwise). It shows every registered model with its instance count and index
health, the jobs with live progress, the event streams with their groups, lag,
pending entries and dead letters, and the beat schedule with each periodic
job's last run; ``/metrics`` is the same in the Prometheus format. Actions
(check, rebuild, clean, replay dead letters) need ``POPOTO_DASHBOARD_TOKEN``.

Unlike the library's layers (``popoto.models`` ... ``popoto.exceptions``), which
never import them, this package uses ``tasks`` and ``workers``. It needs the
``dashboard`` extra: ``pip install 'popoto-redis[dashboard]'``.
"""

from __future__ import annotations

EXTRA_HINT = "pip install 'popoto-redis[dashboard]'"

try:
    import jinja2  # noqa: F401
    import python_multipart  # noqa: F401  (Starlette's form parser)
    import prometheus_client  # noqa: F401
    import starlette  # noqa: F401
    import celery  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        f"popoto.dashboard needs the 'dashboard' extra ({EXTRA_HINT}): "
        f"{exc.name or exc} is not installed", name=exc.name) from exc

from .app import create_dashboard  # noqa: E402

__all__ = ["EXTRA_HINT", "create_dashboard"]
