"""The beat-driven way to consume a stream: a Celery task that drains a bounded amount.

``drain_stream(stream, group)`` runs a :class:`~popoto.workers.consumer.StreamConsumer`
for at most ``max_entries`` entries or ``max_seconds`` seconds (below the
task's soft time limit), returning early once the stream is caught up, then
trims what every group acknowledged. The
consumer name is stable per worker host, so entries a killed drain had read
are resumed by the next drain on that host (or reclaimed by any other after
``claim_idle_ms``). Two drains of the same stream and group never overlap: a
Redis lease makes the second one return at once. A stream name written by a
sharded model is drained from all its tag groups' streams (the worker must
import the model's module; see :func:`popoto.workers.streams.stream_keys`).
"""

from __future__ import annotations

import socket
from typing import Any

import structlog

from popoto.tasks.base import popoto_task, settings
from popoto.tasks.jobs import lease

from .consumer import StreamConsumer
from .streams import stream_key

log = structlog.stdlib.get_logger("popoto.workers")


@popoto_task("popoto.events.drain_stream")
def drain_stream(self: Any, stream: str, group: str, max_entries: int = 1000,
                 max_seconds: float = 8.0, consumer: str | None = None,
                 claim_idle_ms: int = 60_000, max_deliveries: int = 5,
                 batch_size: int = 20) -> dict[str, int] | None:
    """Handle at most ``max_entries`` entries / ``max_seconds`` seconds of ``stream``."""
    key = stream_key(stream)
    name = consumer or f"drain-{socket.gethostname()}"
    structlog.contextvars.bind_contextvars(stream=key, group=group, consumer=name)
    with lease(f"drain:{key}:{group}", ttl=settings.time_limit) as acquired:
        if not acquired:
            log.info("job already running", job="drain_stream")
            return None
        reader = StreamConsumer(stream, group, name, batch_size=batch_size,
                                block_ms=min(500, int(max_seconds * 1000)),
                                claim_idle_ms=claim_idle_ms, max_deliveries=max_deliveries,
                                trim_interval=max_seconds + 1)
        stats = reader.run(max_entries=max_entries, max_seconds=max_seconds, until_idle=True)
        stats.trimmed += reader.trim_now()
        log.info("drain finished", **stats.as_dict())
        return stats.as_dict()
