"""Reindexing: rewrite instances' index entries through the single write path.

:meth:`ReindexMixin.reindex_keys` re-runs each instance's index write through
the SAVE script without touching its field values or TTL; the script removes
the entries the instance owned and adds the ones its values produce in one
atomic step. The hashes are WATCHed, so a concurrent save wins and the chunk is
retried. A sharded model's unique claims (other slots) are taken with the claim
protocol of :mod:`popoto.engine.claims` (policy REINDEX) before the transaction
and settled or rolled back after it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import redis

from popoto import keys
from popoto.engine import claims, io, scripts
from popoto.engine.io import chunks
from popoto.engine.write import Claim, WriteBatch
from popoto.models.maintenance.keyspace import _Host, _ns
from popoto.protocol import ERR_LEASE, ERR_MISSING, ERR_UNIQUE, error_tag
from popoto.protocol import text as _s
from popoto.redis_db import get_client

if TYPE_CHECKING:
    from popoto.redis_db import Client

    class _SortedIndex(Protocol):
        """A SortedField (``is_sorted``): the key of its sorted set."""

        def sorted_key(self, partition_values: tuple[Any, ...] = (), ns: str | None = None
                       ) -> str: ...

logger = logging.getLogger("popoto.maintenance")

MAX_REINDEX_TRIES = 5



class ReindexMixin(_Host):
    """In-place index repair of given instances (part of MaintenanceMixin)."""

    @classmethod
    def reindex_keys(cls, keys: Iterable[str]) -> int:
        """Rewrite the index entries of these instances from their stored hashes.

        Each instance goes through the SAVE script with no field value written
        and its TTL untouched: the script removes the entries the instance owned
        and adds the ones its values produce, atomically, so queries never miss
        it. Keys whose hash is gone are removed from the class set and from the
        unpartitioned sorted sets (their other entries are found by
        :meth:`clean_index_chunk`). Keys that are not instance keys of this model
        are ignored. One transaction per tag group (keys of a sharded model may
        be given mixed). Idempotent. Returns the number of instances rewritten.
        """
        todo = [k for k in dict.fromkeys(_s(k) for k in keys) if cls._is_instance_key(k)]
        by_group: dict[str, list[str]] = {}
        for key in todo:
            by_group.setdefault(_ns(key), []).append(key)
        client = get_client()
        rewritten = 0
        dropped: dict[str, set[Claim]] = {}
        tries: dict[str, int] = {}
        work = [part for members in by_group.values() for part in chunks(members, 1000)]
        while work:
            part = work.pop()
            retry: Sequence[str]
            try:
                done, retry = cls._reindex_tx(client, part, dropped)
            except redis.exceptions.WatchError:
                if len(part) > 1:
                    half = len(part) // 2
                    work += [part[:half], part[half:]]
                    continue
                retry = part
                done = 0
            rewritten += done
            for key in retry:
                tries[key] = tries.get(key, 0) + 1
                if tries[key] < MAX_REINDEX_TRIES:
                    work.append([key])
                else:
                    logger.warning("reindex of %s skipped: it kept changing during %d tries "
                                   "(its own saves rewrite its index entries)", key, tries[key])
        return rewritten

    @classmethod
    def _reindex_tx(cls, client: Client, part: Sequence[str],
                    dropped: dict[str, set[Claim]]) -> tuple[int, list[str]]:
        """One optimistic transaction over ``part`` (keys of ONE tag group).

        Returns ``(rewritten, keys to retry alone)``; raises WatchError when one
        of the hashes changed after it was read. A sharded model's unique
        claims (other slots) are taken as pending before the transaction and
        settled or rolled back after it.
        """
        meta = cls._meta
        ns = _ns(part[0])
        class_set = keys.class_set_key(ns)
        fixed_zsets = [cast("_SortedIndex", f).sorted_key((), ns) for f in meta.fields.values()
                       if f.is_sorted and not f.partition_by]
        with client.pipeline(transaction=True) as tx:
            tx.watch(*part)
            gone, batches = cls._read_for_reindex(client, part, dropped)
            acquired, retry = cls._acquire_claims(batches, dropped)
            batches = [(k, b) for k, b in batches if k not in retry]
            tx.multi()
            queued: list[tuple[str, WriteBatch] | None] = []
            for key in gone:
                tx.srem(class_set, key)
                queued.append(None)
                for zkey in fixed_zsets:
                    tx.zrem(zkey, key)
                    queued.append(None)
            for key, batch in batches:
                deadline = acquired[key].deadline if key in acquired else None
                scripts.SAVE.queue(tx, client, *batch.save_args(deadline))
                queued.append((key, batch))
            if not queued:
                return 0, retry
            try:
                results = tx.execute(raise_on_error=False)
            except BaseException:
                io.run(io.lockstep([claims.rollback_steps(k, a.pending)
                                    for k, a in acquired.items()]))
                raise
        done, settle = 0, []
        for item, result in zip(queued, results):
            if item is None:
                continue
            key, batch = item
            pending = acquired[key].pending if key in acquired else []
            if not isinstance(result, Exception):
                done += 1
                if batch.external_claims:
                    settle.append(claims.settle_steps(key, pending, claims.released_pairs(result),
                                                      key))
                continue
            settle.append(claims.rollback_steps(key, pending))
            if cls._reindex_failed(key, batch, result, dropped):
                retry.append(key)
        if settle:  # one round trip for every key's claims; best effort
            for outcome in io.run_inline(io.lockstep(settle)):
                if isinstance(outcome, Exception):
                    logger.warning("could not settle unique claims (%s): they are settled by "
                                   "the next save of their holder or removed by clean_indexes",
                                   outcome)
        return done, retry

    @classmethod
    def _read_for_reindex(cls, client: Client, part: Sequence[str],
                          dropped: dict[str, set[Claim]]
                          ) -> tuple[list[str], list[tuple[str, WriteBatch]]]:
        """Read the (WATCHed) hashes: ``(keys whose hash is gone, [(key, rewrite)])``."""
        reader = client.pipeline(transaction=False)
        for key in part:
            reader.hgetall(key)
        gone: list[str] = []
        batches: list[tuple[str, WriteBatch]] = []
        for key, raw in zip(part, reader.execute(raise_on_error=False)):
            if isinstance(raw, Exception):
                logger.warning("%s: %s is not a hash (%s); not reindexed", cls.__name__, key, raw)
            elif not raw:
                gone.append(key)
            elif (batch := cls._reindex_batch(key, raw)) is not None:
                batch.drop_claims(dropped.get(key, ()))
                batches.append((key, batch))
        return gone, batches

    @classmethod
    def _acquire_claims(cls, batches: list[tuple[str, WriteBatch]],
                        dropped: dict[str, set[Claim]]
                        ) -> tuple[dict[str, claims.Acquired], list[str]]:
        """Take the external claims of every batch as pending, side by side (REINDEX
        policy): ``({key: acquired}, keys to retry alone)``. Claims a live instance holds
        are dropped from their batch and remembered in ``dropped`` for the retries."""
        external = [(k, b) for k, b in batches if b.external_claims and b.claims]
        if not external:
            return {}, []
        outcomes = io.run_inline(io.lockstep([
            claims.acquire_steps(cls, b, k, claims.REINDEX) for k, b in external]))
        acquired: dict[str, claims.Acquired] = {}
        retry: list[str] = []
        for (key, _batch), outcome in zip(external, outcomes):
            if isinstance(outcome, BaseException):
                logger.warning("%s: claims of %s not taken (%s); retried", cls.__name__, key,
                               outcome)
                retry.append(key)
                continue
            dropped.setdefault(key, set()).update(outcome.dropped)
            if outcome.busy:
                retry.append(key)  # another save of a value is in flight
            else:
                acquired[key] = outcome
        return acquired, retry

    @classmethod
    def _reindex_failed(cls, key: str, batch: WriteBatch, result: Exception,
                        dropped: dict[str, set[Claim]]) -> bool:
        """Log a failed rewrite of ``key``; True when it is worth a retry alone."""
        if isinstance(result, redis.exceptions.NoScriptError):
            scripts.SAVE.forget()
            return True
        tag, detail = error_tag(result) or ("", str(result))
        if tag == ERR_LEASE:
            return True
        if tag == ERR_UNIQUE:
            claim = batch.claims[int(detail.split()[0]) - 1]
            logger.error("%s: %s has %s but another instance holds it; its other index "
                         "entries are rebuilt without that claim", cls.__name__, key,
                         claim.label)
            dropped.setdefault(key, set()).add(claim)
            return True
        if tag != ERR_MISSING:
            logger.error("%s: reindex of %s failed: %s", cls.__name__, key, result)
        return False
