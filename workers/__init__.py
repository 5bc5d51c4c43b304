"""Event-stream consumers: consumer groups, handler registry, dead letters, drain task.

``python -m workers consume --stream mutations --group projections --consumer c1``
runs a long-lived consumer; ``popoto.events.drain_stream`` (see
:mod:`workers.tasks`) drains a bounded amount from Celery beat.
"""

from .consumer import ConsumerStats, StreamConsumer
from .events import Event, MalformedEntry
from .idempotency import apply_if_newer, apply_once
from .registry import HandlerRegistry, handler, registry

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
