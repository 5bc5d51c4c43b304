"""Partial writes: instance hashes missing the value of a key field, and stale keys.

A hash at an instance key that lacks a KeyField value (an auto key among them)
cannot be loaded as an instance: a write outside the ORM (``HSET`` on a key that
was never saved, an ``HDEL`` of a key field, a 1.x save cut short between its
commands) left it. ``check_indexes`` counts them as ``partial_writes`` (and per key
field under ``key_fields``); ``clean_indexes`` deletes them, each under WATCH so a
concurrent save that completes the hash wins, together with the index entries its
``@idx`` records list.

``drop_stale_keys`` is the cleaning behind ``Model.query.keys(clean=True)``: keys a
query read whose hash is gone leave the class set, the unpartitioned sorted sets and
the index keys the query read, checked atomically like every clean.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import redis

from popoto import keys
from popoto.engine import claims, io, scripts
from popoto.engine.write import IDX_PREFIX, WriteBatch
from popoto.models.maintenance.clean import CLEAN, _MODE_BY_TYPE
from popoto.models.maintenance.keyspace import _Host, _ns, key_type
from popoto.protocol import text as _s
from popoto.redis_db import get_client

if TYPE_CHECKING:
    from popoto.models.options import ModelOptions
    from popoto.redis_db import Client

logger = logging.getLogger("popoto.maintenance")

_NIL = b"\xc0"  # msgpack nil


def missing_key_fields(meta: ModelOptions, raw: dict[Any, Any]) -> list[str]:
    """The key fields a stored hash has no value for (empty: a complete instance)."""
    values = {_s(k): v for k, v in raw.items()}
    return [n for n in meta.key_field_names if values.get(n) in (None, _NIL, "\xc0")]


class PartialWritesMixin(_Host):
    """Finding and removing partial writes and stale keys (part of MaintenanceMixin)."""

    @classmethod
    def clean_partial_writes(cls, batch_size: int = 1000, group: str | None = None) -> int:
        """Delete every hash at an instance key that lacks a key field's value; returns
        how many were deleted. Each one under WATCH: a hash completed meanwhile is kept."""
        client = get_client()
        removed, cursor = 0, 0
        names = cls._meta.key_field_names
        while True:
            cursor, found = cls.scan_instance_keys(cursor, batch_size, group=group)
            if found:
                pipe = client.pipeline(transaction=False)
                for key in found:
                    pipe.hmget(key, names)
                replies = pipe.execute(raise_on_error=False)
                for key, values in zip(found, replies):
                    if isinstance(values, list) and any(v in (None, _NIL) for v in values):
                        removed += cls._drop_partial(client, key)
            if cursor == 0:
                return removed

    @classmethod
    def _drop_partial(cls, client: Client, key: str) -> int:
        """Delete one partial write and the entries its records list, if it still is one."""
        meta = cls._meta
        try:
            with client.pipeline(transaction=True) as tx:
                tx.watch(key)
                # WATCHed: the pipeline runs commands at once until multi()
                raw = cast("dict[bytes, bytes]", tx.hgetall(key))
                if not raw or not missing_key_fields(meta, raw):
                    return 0
                ns = _ns(key)
                batch = WriteBatch(key=key, class_set=keys.class_set_key(ns), ns=ns,
                                   external_claims=meta.sharded, bases=meta.record_bases(ns))
                records = {_s(k)[len(IDX_PREFIX):]: v for k, v in raw.items()
                           if _s(k).startswith(IDX_PREFIX)}
                batch.owners = list(dict.fromkeys([*meta.index_owners, *records]))
                batch.previous = list(records.items())
                tx.multi()
                scripts.DELETE.queue(tx, client, *batch.delete_args())
                (reply,) = tx.execute()
        except redis.exceptions.WatchError:
            return 0
        _existed, released = claims.released_after_delete(reply)
        if released:
            io.run_inline(claims.settle_steps(key, [], released, key))
        logger.info("%s: deleted the partial write %s (missing %s)", cls.__name__, key,
                    ", ".join(missing_key_fields(meta, raw)))
        return 1

    @classmethod
    def drop_stale_keys(cls, stale: list[str], index_keys: Iterable[str] = ()) -> int:
        """Remove instance keys whose hash is gone from the class set, the unpartitioned
        sorted sets and ``index_keys`` (e.g. the indexes a query read); returns how many
        entries went. Each removal is checked in Redis (a key saved again stays)."""
        client = get_client()
        stale = [k for k in dict.fromkeys(stale) if cls._is_instance_key(k)]
        if not stale:
            return 0
        cls.reindex_keys(stale)  # class set + fixed zsets
        removed = 0
        for index_key in dict.fromkeys(index_keys):
            owner = cls._index_owner(index_key)
            if owner is None:
                continue
            members = [k for k in stale if _ns(k) == cls._index_group(index_key)]
            mode = "class" if owner == "" else _MODE_BY_TYPE.get(key_type(client, index_key))
            if members and mode in ("class", "S", "Z"):
                base = "" if owner == "" else cls._meta.record_bases(
                    cls._index_group(index_key)).get(owner, "")
                removed += CLEAN(client, [index_key], [mode, owner, base, *members])
        return removed
