"""Stream keys, safe trimming, dead letters and the numbers ``popoto-ops streams`` shows.

Stream ``name`` lives at ``stream:<name>`` or ``stream:<name>:<partition>`` (the
keys ``EventStreamMixin`` writes; a full ``stream:...`` key is accepted too);
its dead letters at ``dead:stream:<name>[:<partition>]``. Dead-letter streams are never
trimmed here: an operator replays or deletes them.

A sharded model writes one stream per tag group, ``stream:<name>[:<partition>]:{M#k}``
(see ``EventStreamMixin``); :func:`stream_keys` resolves a name to every stream the
imported models write under it. A stream and its dead letters share a cluster slot
(dead-lettering is one MULTI): see :func:`dead_letter_key`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog

from popoto.behaviours import EventStreamMixin
from popoto.engine.scripts import LuaScript
from popoto.keys import SEP, escape
from popoto.protocol import text as _text
from popoto.redis_db import Client, is_cluster
from popoto.registry import all_models

from .events import DEAD_LETTER_FIELDS, ORIGIN_FIELD

STREAM_PREFIX = "stream:"
DEAD_PREFIX = "dead:"
#: Lag is counted exactly up to this many entries, then reported as "at least".
LAG_LIMIT = 10_000


def stream_key(name: str, partition: Any = None) -> str:
    """The key ``EventStreamMixin`` writes to: ``stream:<name>[:<partition>]``.

    A full key (already starting with ``stream:``) is returned unchanged.
    """
    if name.startswith(STREAM_PREFIX) and partition is None:
        return name
    parts = [STREAM_PREFIX + escape(name)]
    if partition is not None:
        parts.append(escape(partition))
    return SEP.join(parts)


def stream_keys(name: str, partition: Any = None) -> list[str]:
    """Every stream written under ``name`` (of one ``partition``), sorted.

    A full key (starting with ``stream:``, e.g. one group's stream) is just
    itself. Otherwise ``stream:<name>[:<partition>]`` (where unsharded models
    and other writers append) plus the group streams of every imported sharded
    model with ``EventStreamMixin`` and ``_stream_name == name``. So the process
    must import the modules of a sharded model to consume its events
    (``--models``); in cluster mode, where every model is sharded, a warning
    says so when none is found.
    """
    if name.startswith(STREAM_PREFIX) and partition is None:
        return [name]
    plain = stream_key(name, partition)
    found = {key for model in all_models()
             if issubclass(model, EventStreamMixin) and model._stream_name == name
             for key in model.stream_keys(partition)} - {plain}
    if not found and is_cluster():
        structlog.stdlib.get_logger("popoto.workers").warning(
            "no imported model writes this stream: import the model modules (--models) to "
            "read every tag group's stream", stream=name)
    return [plain, *sorted(found)]


def dead_letter_key(stream: str) -> str:
    """``dead:<stream key>``: in the stream's cluster slot, as dead-lettering is one MULTI.

    A group stream's key carries its hash tag already. In cluster mode a stream
    key without one (``stream:<name>``) gets ``dead:{stream:<name>}``, whose tag
    hashes to that stream's own slot.
    """
    key = stream_key(stream)
    if "{" in key or not is_cluster():
        return DEAD_PREFIX + key
    return DEAD_PREFIX + "{" + key + "}"


# popoto/lua/workers_stream_trim_acked.lua: trim the entries every group has acknowledged
_TRIM = LuaScript("workers_stream_trim_acked")


def trim_acknowledged(client: Client, stream: str, approximate: bool = True) -> int:
    """Drop entries every consumer group has acknowledged; never an unacknowledged one.

    Atomic (one script). ``approximate`` lets Redis drop only whole internal
    nodes, which is cheaper and drops fewer entries, never more.
    """
    removed, _minid = _TRIM(client, [stream_key(stream)], ["~" if approximate else "="])
    return int(removed)


@dataclass
class GroupInfo:
    name: str
    consumers: int
    pending: int
    last_delivered: str
    lag: int
    lag_exact: bool
    oldest_pending_idle_ms: int = 0


@dataclass
class StreamInfo:
    key: str
    length: int
    first_id: str | None
    last_id: str | None
    dead_letters: int
    groups: list[GroupInfo] = field(default_factory=list)


def _lag(client: Client, key: str, last_delivered: str) -> tuple[int, bool]:
    """Entries after ``last_delivered`` (exact up to LAG_LIMIT; Redis 6.2 has no lag field)."""
    start = "-" if last_delivered in ("0-0", "") else f"({last_delivered}"
    rows = client.xrange(key, min=start, max="+", count=LAG_LIMIT + 1)
    return min(len(rows), LAG_LIMIT), len(rows) <= LAG_LIMIT


def stream_info(client: Client, stream: str) -> StreamInfo:
    """Length, groups (consumers, pending, lag, oldest pending idle time), dead letters."""
    key = stream_key(stream)
    length = client.xlen(key)
    first = client.xrange(key, count=1)
    last = client.xrevrange(key, count=1)
    info = StreamInfo(key=key, length=length,
                      first_id=_text(first[0][0]) if first else None,
                      last_id=_text(last[0][0]) if last else None,
                      dead_letters=client.xlen(dead_letter_key(key)))
    if not client.exists(key):
        return info
    # types-redis leaves XINFO GROUPS unannotated; redis-py replies one dict per group
    xinfo_groups: Callable[[str], list[dict[str, Any]]] = client.xinfo_groups
    for group in xinfo_groups(key):
        name = _text(group["name"])
        last_delivered = _text(group["last-delivered-id"])
        lag, exact = _lag(client, key, last_delivered)
        idle = 0
        if group["pending"]:
            oldest = client.xpending_range(key, name, "-", "+", 1)
            idle = int(oldest[0]["time_since_delivered"]) if oldest else 0
        info.groups.append(GroupInfo(name=name, consumers=int(group["consumers"]),
                                     pending=int(group["pending"]),
                                     last_delivered=last_delivered, lag=lag,
                                     lag_exact=exact, oldest_pending_idle_ms=idle))
    return info


def iter_streams(client: Client) -> Iterator[str]:
    """Keys of every event stream (``stream:*`` keys of type stream), sorted."""
    found = {_text(k) for k in client.scan_iter(match=STREAM_PREFIX + "*", count=1000,
                                                _type="stream")}
    yield from sorted(found)


def dead_letter(client: Client, stream: str, group: str, consumer: str,
                entry_id: str, fields: dict[str, Any], deliveries: int, error: str) -> str:
    """Move one entry to the dead-letter stream: XADD there + XACK here, in one MULTI."""
    key = stream_key(stream)
    payload = {_text(k): v for k, v in fields.items() if _text(k) not in DEAD_LETTER_FIELDS}
    payload.update(dl_stream=key, dl_group=group, dl_consumer=consumer, dl_id=entry_id,
                   dl_deliveries=deliveries, dl_error=error[:2000], dl_ts=time.time())
    pipe = client.pipeline(transaction=True)
    pipe.xadd(dead_letter_key(key), payload)
    pipe.xack(key, group, entry_id)
    new_id, _acked = pipe.execute()
    return _text(new_id)


def replay_dead_letters(client: Client, stream: str, count: int | None = None) -> int:
    """Put dead letters back on their stream (oldest first) and remove them from the DLQ.

    Each replay is one MULTI: XADD of the original fields (plus ``origin_id``,
    the id it was first written with, so ``Event.event_id`` stays the same and
    idempotent handlers do not apply it twice) to the source stream and XDEL
    from the dead-letter stream. Returns how many were replayed.
    """
    key = stream_key(stream)
    dlq = dead_letter_key(key)
    replayed = 0
    start = "-"
    while count is None or replayed < count:
        batch = 100 if count is None else min(100, count - replayed)
        rows = client.xrange(dlq, min=start, max="+", count=batch)
        if not rows:
            break
        for entry_id, fields in rows:
            data = {_text(k): v for k, v in fields.items()}
            target = _text(data.get("dl_stream", key))
            original = {k: v for k, v in data.items() if k not in DEAD_LETTER_FIELDS}
            original.setdefault(ORIGIN_FIELD, data.get("dl_id", entry_id))
            pipe = client.pipeline(transaction=True)
            pipe.xadd(target, original)
            pipe.xdel(dlq, entry_id)
            pipe.execute()
            replayed += 1
        start = f"({_text(rows[-1][0])}"
    return replayed
