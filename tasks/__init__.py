"""Celery side of Popoto: the app, maintenance tasks, beat schedule and structlog wiring.

``celery -A popoto.tasks worker`` and ``celery -A popoto.tasks beat`` find :data:`app` here.
Needs the ``celery`` extra (``pip install 'popoto-redis[celery]'``): without it,
importing this package raises ModuleNotFoundError naming that command.
"""

from popoto.extras import require_extra

require_extra("tasks (the Celery side of Popoto)", "celery", ("celery", "structlog"))

# the imports below need the extra checked above
from .app import app, configure_app  # noqa: E402
from .config import Settings  # noqa: E402

__all__ = ["Settings", "app", "configure_app"]
