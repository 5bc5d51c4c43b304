"""Handlers for consumer subprocesses started by the tests (imported via --handlers).

Behaviour is set through the environment: ``TEST_HANDLER_SLEEP`` seconds after the
effect of each entry (a slow handler), ``TEST_HANDLER_SLEEP_ONCE=1`` to sleep only on
the first entry. Every invocation is counted in ``proc:invocations``; the effect
(``proc:totals`` handled += 1) is applied once per event id with ``apply_once``.
"""

from __future__ import annotations

import os
import time

from popoto.redis_db import get_client
from popoto.workers import Event, apply_once, handler

_slept = False


@handler("Order")
def project(event: Event) -> None:
    global _slept
    client = get_client()
    client.incr("proc:invocations")
    apply_once(client, "seen:proc", event.event_id, [("HINCRBY", "proc:totals", "handled", 1)])
    delay = float(os.environ.get("TEST_HANDLER_SLEEP", "0"))
    if delay and not (_slept and os.environ.get("TEST_HANDLER_SLEEP_ONCE")):
        _slept = True
        time.sleep(delay)
