"""Cleaning: remove index entries nobody owns, one bounded cursor step at a time.

:meth:`CleanMixin.clean_index_chunk` removes, in one server-side script per
SCAN step, the entries whose instance is gone or does not own them according to
its ``@idx`` record. A sharded model's claims are proven stale from their
holder's record and removed by compare-and-set (:func:`popoto.engine.claims.
release_stale_steps`); claims pending inside their lease are left alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from popoto.engine import claims, io, scripts
from popoto.engine.claims import LEASE_MARGIN_MS, parse_claim
from popoto.engine.write import Claim
from popoto.exceptions import ModelException
from popoto.models.maintenance.keyspace import (
    _Host,
    _ns,
    _scan_step,
    group_client,
    key_type,
    server_time_ms,
)
from popoto.protocol import KIND_CLAIM, KIND_SET, KIND_ZSET
from popoto.protocol import text as _s
from popoto.redis_db import get_client

if TYPE_CHECKING:
    from popoto.redis_db import Client

_MODE_BY_TYPE = {"set": KIND_SET, "zset": KIND_ZSET, "hash": KIND_CLAIM}

# popoto/lua/clean_index.lua: removes the stale members of one index; its mode is "class"
# or the kind of the index's entries
CLEAN = scripts.LuaScript("clean_index")



class CleanMixin(_Host):
    """Removal of unowned index entries (part of MaintenanceMixin)."""

    @classmethod
    def clean_index_chunk(cls, index_key: str, cursor: int = 0,
                          count: int = 1000) -> tuple[int, int]:
        """One SSCAN/ZSCAN/HSCAN step over ``index_key``, removing entries nobody owns.

        An entry goes when its instance hash is gone or the instance's
        ``@idx`` record does not list it (checked and removed atomically in
        one script, so a concurrent save is never undone). Class-set entries go
        when their hash is gone. Entries naming an instance of another tag
        group go (nothing writes them). A sharded model's unique claims are
        proven stale from their holder's record and removed by compare-and-set
        (see the module doc). Returns ``(next_cursor, removed)``; cursor 0
        means done. Idempotent.
        """
        owner = cls._index_owner(index_key)
        if owner is None:
            raise ModelException(f"{cls.__name__}.clean_index_chunk: {index_key!r} is not an "
                                 f"index key of {cls.__name__}")
        client = get_client()
        group = cls._index_group(index_key)
        typ = key_type(client, index_key)
        if owner == "":
            if typ != "set":
                return 0, 0
            cursor, raw_members = client.sscan(index_key, cursor, count=count)
            members = [_s(m) for m in raw_members]
            own = [m for m in members if cls._is_instance_key(m) and _ns(m) == group]
            own_set = set(own)
            foreign = [m for m in members if m not in own_set]
            removed = client.srem(index_key, *foreign) if foreign else 0
            if own:
                removed += CLEAN(client, [index_key], ["class", "", "", *own])
            return int(cursor), removed
        mode = _MODE_BY_TYPE.get(typ)
        if mode is None:
            return 0, 0
        if mode == "C" and cls._meta.sharded:
            return cls._clean_claims_step(client, index_key, owner, cursor, count)
        cursor, rows = _scan_step(client, index_key, typ, cursor, count)
        found = [m for m, _v in rows]
        removed = 0
        if cls._meta.sharded:  # a member of another group is another slot: never owned here
            foreign = [m for m in found if _ns(m) != group]
            if foreign:
                removed += (client.srem if mode == "S" else client.zrem)(index_key, *foreign)
                found = [m for m in found if _ns(m) == group]
        if found:
            base = cls._meta.record_bases(group).get(owner, "")
            removed += CLEAN(client, [index_key], [mode, owner, base, *found])
        return int(cursor), removed

    @classmethod
    def _clean_claims_step(cls, client: Client, index_key: str, owner: str, cursor: int,
                           count: int) -> tuple[int, int]:
        """One HSCAN step over a sharded model's claim hash, removing stale claims.

        A claim is stale when its holder is not an instance key of the model
        or its holder's ``@idx`` record does not list it; it is then removed
        with a compare-and-set on the value seen. Claims pending inside their
        lease (a save in flight) are left alone.
        """
        cursor, found = client.hscan(index_key, cursor, count=count)
        rows = [(_s(f), _s(v)) for f, v in found.items()]
        if not rows:
            return int(cursor), 0
        now = server_time_ms(group_client(cls._index_group(index_key)))
        settled = [(f, v) for f, v in rows
                   if (deadline := parse_claim(v)[1]) is None or deadline + LEASE_MARGIN_MS <= now]
        held = [(Claim(owner, index_key, f, f), v) for f, v in settled]
        removed = io.run_inline(claims.release_stale_steps(held, cls._is_instance_key, cls))
        return int(cursor), removed

    @classmethod
    def clean_indexes(cls, batch_size: int = 1000, group: str | None = None) -> int:
        """Remove orphaned and unowned entries from every index; returns how many were removed.

        Covers the class set, sorted/indexed/geo/relationship field indexes,
        unique claims and composite indexes, and deletes partial writes (hashes
        missing a key field's value, see :mod:`~popoto.models.maintenance.partial`).
        Wrong scores and missing entries need :meth:`rebuild_indexes`. ``group``:
        only that tag group's keys.
        """
        removed = sum(cls.clean_index_key(index_key, batch_size)
                      for index_key in cls.index_keys(batch_size, group=group))
        return removed + cls.clean_partial_writes(batch_size, group)

    @classmethod
    def clean_index_key(cls, index_key: str, batch_size: int = 1000) -> int:
        """:meth:`clean_index_chunk` over the whole of one index key; returns how many
        entries were removed."""
        removed, cursor = 0, 0
        while True:
            cursor, n = cls.clean_index_chunk(index_key, cursor, batch_size)
            removed += n
            if cursor == 0:
                return removed
