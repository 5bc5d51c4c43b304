"""Event-stream consumers: consumer groups, handler registry, dead letters, drain task.

``python -m popoto.workers consume --stream mutations --group projections --consumer c1``
runs a long-lived consumer; ``popoto.events.drain_stream`` (see
:mod:`popoto.workers.tasks`) drains a bounded amount from Celery beat. Needs the
``celery`` extra (``pip install 'popoto-redis[celery]'``): without it, importing
this package raises ModuleNotFoundError naming that command.
"""

from popoto.extras import require_extra

require_extra("workers (Popoto's stream consumers)", "celery", ("celery", "structlog"))

# the imports below need the extra checked above
from .consumer import ConsumerStats, StreamConsumer  # noqa: E402
from .events import Event, MalformedEntry  # noqa: E402
from .idempotency import apply_if_newer, apply_once  # noqa: E402
from .registry import HandlerRegistry, handler, registry  # noqa: E402

__all__ = [
    "ConsumerStats",
    "Event",
    "HandlerRegistry",
    "MalformedEntry",
    "StreamConsumer",
    "apply_if_newer",
    "apply_once",
    "handler",
    "registry",
]
