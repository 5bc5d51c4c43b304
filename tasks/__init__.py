"""Celery side of Popoto: the app, maintenance tasks, beat schedule and structlog wiring.

``celery -A tasks worker`` and ``celery -A tasks beat`` find :data:`app` here.
"""

from .app import app, configure_app
from .config import Settings

__all__ = ["Settings", "app", "configure_app"]
