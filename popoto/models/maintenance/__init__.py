"""Index health: check, clean and repair a model's indexes (mixed into Model).

What "correct" means comes from one place: for a stored hash, the entries the
write path would write (``instance.build_save()``, no I/O) are the entries it
must have. The ``@idx:<owner>`` fields of the hash record what the instance
owns; the save and delete scripts rely on them, so they are checked too.

Three kinds of damage:

* **orphans**: an index entry (or class-set entry, or unique claim) whose
  instance hash is gone (TTL expiry, ``DEL`` behind the ORM's back);
* **wrong**: an entry whose instance exists but does not produce it (wrong
  index set, stale unique claim, wrong score or position, an entry or
  class-set member in another tag group's key);
* **missing**: an entry the instance produces that is not in Redis (including
  its class-set entry); plus **owner_records**: ``@idx`` fields that disagree
  with the values (the next save would then leave entries behind).

Repairs never take an index away from queries:

* :meth:`MaintenanceMixin.reindex_keys` re-runs each instance's index write
  through the SAVE script (the single write path) without touching its field
  values or TTL; the script removes the entries the instance owned and adds
  the ones its values produce in one atomic step. The hashes are WATCHed, so
  a concurrent save wins and the chunk is retried.
* :meth:`MaintenanceMixin.clean_index_chunk` removes, in one server-side
  script per SCAN step, the entries whose instance is gone or does not own
  them according to its ``@idx`` record.

``rebuild_indexes`` = reindex every hash, then clean every index key. Run
``reindex_keys`` before ``clean_index_chunk`` when driving the chunks yourself:
cleaning trusts the ``@idx`` records that reindexing rewrites from the values.

Sharded models (``Meta.shards`` > 1, or cluster mode) keep their keys in tag
groups (``_meta.groups``), one cluster slot each. Every transaction and every
script here touches the keys of ONE group: reindexing groups its keys by
:func:`popoto.keys.ns_of` and runs one WATCH/MULTI per group. Their unique
claims live in the group of the claimed *value* (``_meta.claim_ns``), usually
another slot than the instance, so they are handled like the save path does
(:mod:`popoto.engine.claims`): a reindex takes its claims as pending with the
CLAIM script before its transaction, and confirms them (or rolls them back)
after; cleaning proves a claim stale by reading its holder's ``@idx`` record
with an ordinary command and removes it with a compare-and-set in the claim's
slot. Claims pending inside their lease belong to a save in flight and are
left alone. The chunk API takes a ``group``; without one a cursor walks every
group (``scan_class_set``) or, in cluster mode, ``scan_instance_keys`` walks
the groups one after the other, each on the node owning its slot (the cursor
then encodes the group: ``inner * n_groups + group index``).

Everything iterates with SCAN / SSCAN / ZSCAN / HSCAN; no index is ever read
whole. Index keys are matched exactly by splitting them into their segments,
so fields ``score`` and ``score_2`` never touch each other's keys.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from popoto.models.maintenance.check import CheckMixin
from popoto.models.maintenance.clean import CleanMixin
from popoto.models.maintenance.keyspace import (
    KeyspaceMixin,
    class_set_size,
    group_client,
    merge_reports,
    server_time_ms,
)
from popoto.engine.io import chunks
from popoto.models.maintenance.partial import PartialWritesMixin
from popoto.models.maintenance.reindex import ReindexMixin

__all__ = ["MaintenanceMixin", "class_set_size", "group_client", "merge_reports",
           "server_time_ms"]

logger = logging.getLogger("popoto.maintenance")


class MaintenanceMixin(KeyspaceMixin, ReindexMixin, CleanMixin, PartialWritesMixin,
                       CheckMixin):
    """Index health checks and in-place repairs, plus the chunk-level API used by tasks.

    Whole-model methods: :meth:`check_indexes` (read only), :meth:`clean_indexes`,
    :meth:`rebuild_indexes` and their ``async_`` variants. Chunk methods, each one
    bounded, idempotent and safe to retry alone: :meth:`index_keys`,
    :meth:`scan_instance_keys`, :meth:`scan_class_set`, :meth:`reindex_keys`,
    :meth:`clean_index_chunk`. ``group`` arguments name one tag group
    (``_meta.groups``) of a sharded model, so each group can be worked on alone.
    """

    @classmethod
    def rebuild_indexes(cls, batch_size: int = 1000) -> int:
        """Repair every index of the model in place; returns the number of instances rewritten.

        Reindexes every instance hash (SCAN of the keyspace, so hashes missing
        from the class set are found), then cleans every index key. Nothing is
        deleted up front: queries keep answering correctly while it runs.
        Every tag group of a sharded model is reindexed before any is cleaned
        (cleaning trusts the ``@idx`` records, and a group's claim hashes hold
        claims of instances of every group).
        """
        rewritten = 0
        cursor = 0
        while True:
            cursor, found = cls.scan_instance_keys(cursor, batch_size)
            for part in chunks(found, batch_size):
                rewritten += cls.reindex_keys(part)
            if cursor == 0:
                break
        removed = cls.clean_indexes(batch_size)
        logger.info("%s: rebuilt the index entries of %d instances, removed %d stale entries",
                    cls.__name__, rewritten, removed)
        return rewritten

    @classmethod
    async def async_check_indexes(cls, batch_size: int = 1000,
                                  group: str | None = None) -> dict[str, Any]:
        """:meth:`check_indexes` in a worker thread (asyncio.to_thread)."""
        return await asyncio.to_thread(cls.check_indexes, batch_size, group)

    @classmethod
    async def async_clean_indexes(cls, batch_size: int = 1000, group: str | None = None) -> int:
        """:meth:`clean_indexes` in a worker thread (asyncio.to_thread)."""
        return await asyncio.to_thread(cls.clean_indexes, batch_size, group)

    @classmethod
    async def async_rebuild_indexes(cls, batch_size: int = 1000) -> int:
        """:meth:`rebuild_indexes` in a worker thread (asyncio.to_thread)."""
        return await asyncio.to_thread(cls.rebuild_indexes, batch_size)
