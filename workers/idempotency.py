"""Exactly-once effects on top of at-least-once delivery.

A consumer may see an entry twice (it crashed after the handler ran but
before XACK, or the entry was reclaimed from a slow consumer). Handlers make
that harmless in one of two ways:

* **by event id** — :func:`apply_once` runs the handler's Redis writes in one
  script together with a marker ``ZADD NX <marker> <event_id>``: the writes
  happen only if the marker is new, atomically, so a second delivery (or a
  replay from the dead-letter stream: ``Event.event_id`` survives it) changes
  nothing. Markers older than ``retention`` are trimmed in the same call;
* **by object version** — :func:`apply_if_newer` writes a projection only if
  the event is newer than what the projection already reflects (the version
  kept per object, e.g. ``event.ts``, is compared and updated in the same
  script): an old or repeated event is a no-op by construction, and events
  arriving out of order (a retried entry after a newer one) never roll back.

Both are one script, so on a Redis Cluster the marker (or version) key and every
key the commands write must share a hash tag (e.g. ``{proj}:seen`` and
``{proj}:totals``); otherwise the server refuses the script.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from popoto.engine.scripts import LuaScript

if TYPE_CHECKING:
    from popoto.redis_db import Client

DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000

# popoto/lua/workers_apply_once.lua: run the commands once per event id
_APPLY_ONCE = LuaScript("workers_apply_once")


# popoto/lua/workers_apply_if_newer.lua: run the commands only for a newer version of a
# member
_APPLY_IF_NEWER = LuaScript("workers_apply_if_newer")


def event_ms(event_id: str) -> int:
    """The millisecond part of a stream id (``"1700000000000-3"`` -> 1700000000000)."""
    return int(event_id.split("-", 1)[0])


def apply_once(client: Client, marker_key: str, event_id: str,
               commands: Iterable[Sequence[Any]],
               retention_ms: int = DEFAULT_RETENTION_MS) -> bool:
    """Run ``commands`` (e.g. ``[("HINCRBY", "totals", "orders", 1)]``) once per event id.

    Returns True when they ran, False when this event id had already been
    applied. The marker and the writes commit together or not at all.
    """
    cmds = [tuple(c) for c in commands]
    argv: list[Any] = [event_id, event_ms(event_id), retention_ms, len(cmds)]
    for cmd in cmds:
        argv.append(len(cmd))
        argv.extend(cmd)
    return bool(_APPLY_ONCE(client, [marker_key], argv))


def apply_if_newer(client: Client, versions_key: str, member: str, version: float,
                   commands: Iterable[Sequence[Any]]) -> bool:
    """Run ``commands`` only if ``version`` is newer than the one recorded for ``member``.

    ``versions_key`` is a hash of member -> last applied version (e.g. the
    event's ``ts`` per instance key). Returns True when the commands ran.
    """
    cmds = [tuple(c) for c in commands]
    argv: list[Any] = [member, repr(float(version)), len(cmds)]
    for cmd in cmds:
        argv.append(len(cmd))
        argv.extend(cmd)
    return bool(_APPLY_IF_NEWER(client, [versions_key], argv))
