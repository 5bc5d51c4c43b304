"""Stream handlers of the example app (``POPOTO_HANDLER_MODULES=popoto.ops.examples.handlers``).

They keep a projection of ``stream:orders``, written the two recommended ways:

* ``orders:events`` counts events per op, once per event id (``apply_once``):
  redeliveries and dead-letter replays are not counted twice;
* ``orders:latest`` holds each order's latest status, applied only if the
  event is newer than what the projection has (``apply_if_newer`` on the
  event's ``ts``): an old event retried late never rolls a status back.
"""

from __future__ import annotations

import structlog

from popoto.redis_db import get_client
from popoto.workers import Event, apply_if_newer, apply_once, handler

log = structlog.stdlib.get_logger("popoto.ops.examples.handlers")

EVENTS = "orders:events"
LATEST = "orders:latest"
VERSIONS = "orders:latest:versions"
SEEN = "orders:events:seen"


@handler("Order")
def project_order(event: Event) -> None:
    client = get_client()
    apply_once(client, SEEN, event.event_id, [("HINCRBY", EVENTS, event.op, 1)])
    if event.op == "delete":
        changed = apply_if_newer(client, VERSIONS, event.pk, event.ts, [("HDEL", LATEST, event.pk)])
    else:
        status = str(event.metadata.get("status", ""))
        changed = apply_if_newer(client, VERSIONS, event.pk, event.ts,
                                 [("HSET", LATEST, event.pk, status)])
    log.debug("order projected", pk=event.pk, op=event.op, applied=changed,
             deliveries=event.deliveries)
