"""Index health: check, clean and repair a model's indexes (mixed into Model).

What "correct" means comes from one place: for a stored hash, the entries the
write path would write (``instance.build_save()``, no I/O) are the entries it
must have. The ``@idx:<owner>`` fields of the hash record what the instance
owns; the save and delete scripts rely on them, so they are checked too.

Three kinds of damage:

* **orphans**: an index entry (or class-set entry, or unique claim) whose
  instance hash is gone (TTL expiry, ``DEL`` behind the ORM's back);
* **wrong**: an entry whose instance exists but does not produce it (wrong
  index set, stale unique claim, wrong score or position);
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

Everything iterates with SCAN / SSCAN / ZSCAN / HSCAN; no index is ever read
whole. Index keys are matched exactly by splitting them into their segments,
so fields ``score`` and ``score_2`` never touch each other's keys.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import msgpack
import redis

from .. import keys
from ..exceptions import ModelException
from ..redis_db import get_client
from . import scripts
from .write import (
    CLAIM,
    GEO,
    IDX_PREFIX,
    KEY,
    SET,
    ZSET,
    WriteBatch,
    pack_record,
    unpack_record,
)

if TYPE_CHECKING:
    from .base import Model

logger = logging.getLogger("popoto.maintenance")

#: Entry kinds that can live in a key of each Redis type.
KINDS_BY_TYPE = {"set": SET, "zset": ZSET + GEO, "hash": CLAIM}
_MODE_BY_TYPE = {"set": "S", "zset": "Z", "hash": "C"}
#: Tries per instance key when concurrent writers keep changing it during a reindex.
MAX_REINDEX_TRIES = 5
#: Geo positions are stored as 52-bit geohashes: accept this error in degrees.
GEO_TOLERANCE = 1e-5

# KEYS[1]: index key. ARGV: mode ('class' | 'S' | 'Z' | 'C'), owner, member*.
# Removes each member whose instance hash is gone or (index keys) whose
# instance's @idx:<owner> record does not list [kind, KEYS[1], member].
CLEAN_LUA = r"""
local idx, mode, owner = KEYS[1], ARGV[1], ARGV[2]
local kinds = ({S = 'S', Z = 'ZG', C = 'C'})[mode]
local function is_hash(k)
  return redis.call('TYPE', k)['ok'] == 'hash'
end
local function owns(inst, m)
  local packed = redis.call('HGET', inst, '@idx:' .. owner)
  if not packed then return false end
  local ok, entries = pcall(cmsgpack.unpack, packed)
  if not ok or type(entries) ~= 'table' then return false end
  for _, e in ipairs(entries) do
    if e[2] == idx and (e[3] or inst) == m and string.find(kinds, e[1], 1, true) then
      return true
    end
  end
  return false
end
local removed = 0
for i = 3, #ARGV do
  local m = ARGV[i]
  if mode == 'class' then
    if not is_hash(m) then removed = removed + redis.call('SREM', idx, m) end
  elseif mode == 'C' then
    local holder = redis.call('HGET', idx, m)
    if holder and not (is_hash(holder) and owns(holder, m)) then
      removed = removed + redis.call('HDEL', idx, m)
    end
  elseif not (is_hash(m) and owns(m, m)) then
    if mode == 'S' then
      removed = removed + redis.call('SREM', idx, m)
    else
      removed = removed + redis.call('ZREM', idx, m)
    end
  end
end
return removed
"""

CLEAN = scripts.LuaScript("clean_index", CLEAN_LUA)

Entry = tuple[str, str, str]  # kind, key, member


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stored_records(raw: dict[Any, bytes], owner_key: str) -> dict[str, set[Entry]]:
    """The ``@idx:<owner>`` records of a raw hash (an unreadable record counts as empty)."""
    out: dict[str, set[Entry]] = {}
    for name, packed in raw.items():
        name = _s(name)
        if not name.startswith(IDX_PREFIX):
            continue
        try:
            out[name[len(IDX_PREFIX):]] = unpack_record(packed, owner_key)
        except (ValueError, TypeError, IndexError, msgpack.UnpackException):
            out[name[len(IDX_PREFIX):]] = set()
    return out


def _record_problems(raw: dict[Any, bytes], batch: WriteBatch) -> list[str]:
    """Owners whose ``@idx`` record in ``raw`` does not list exactly the batch's entries."""
    raw = {_s(k): v for k, v in raw.items()}
    stored = {k[len(IDX_PREFIX):] for k in raw if k.startswith(IDX_PREFIX)}
    problems = []
    for owner in sorted(stored | {o for o, rows in batch.entries.items() if rows}):
        rows = batch.entries.get(owner, [])
        record = raw.get(IDX_PREFIX + owner)
        if record is not None and rows and record == pack_record(rows, batch.key):
            continue  # byte-identical to what the write path writes: the usual case
        want = {(k, rk, m) for k, rk, m, _score in rows}
        stored = _stored_records({IDX_PREFIX + owner: record}, batch.key) if record else {}
        if record is None or stored.get(owner) != want:
            problems.append(owner)
    return problems


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _drop_claims(batch: WriteBatch, dropped: Iterable[tuple[str, str]]) -> None:
    """Take unique claims (hash key, hash field) out of a batch: another instance holds them."""
    gone = set(dropped)
    kept = [(c, label) for c, label in zip(batch.claims, batch.claim_labels) if c not in gone]
    batch.claims = [c for c, _label in kept]
    batch.claim_labels = [label for _c, label in kept]
    for owner, rows in batch.entries.items():
        batch.entries[owner] = [r for r in rows if not (r[0] == CLAIM and (r[1], r[2]) in gone)]


class _Report:
    """Accumulates problems per index (the buckets of the spec) and per problem type."""

    BUCKETS = ("key_fields", "sorted_fields", "indexed_fields", "geo_fields", "unique_fields",
               "relationship_fields", "composite_indexes", "other_indexes")
    PROBLEMS = ("orphans", "missing", "wrong", "owner_records")

    def __init__(self, model: type[Model]) -> None:
        self.meta = model._meta
        self.class_set = 0
        self.buckets: dict[str, dict[str, int]] = {b: {} for b in self.BUCKETS}
        self.problems = dict.fromkeys(self.PROBLEMS, 0)
        self.instances = 0
        self.unreadable = 0
        for owner in self.meta.index_owners:
            bucket, name = self.bucket(owner, None)
            self.buckets[bucket].setdefault(name, 0)
            field = self.meta.fields.get(owner)
            if field is not None and field.unique:
                self.buckets["unique_fields"].setdefault(owner, 0)

    def bucket(self, owner: str, kind: str | None) -> tuple[str, str]:
        meta = self.meta
        for index in meta.composite_indexes:
            if index.name == owner:
                # named by its key when unsharded (one key), by its fields when sharded
                return "composite_indexes", (index.name if meta.sharded
                                             else index.key(meta.groups[0]))
        field = meta.fields.get(owner)
        if field is None:
            return "other_indexes", owner
        if kind == CLAIM:
            return "unique_fields", owner
        for flag, bucket in (("is_sorted", "sorted_fields"), ("is_geo", "geo_fields"),
                             ("is_indexed", "indexed_fields"),
                             ("is_relationship", "relationship_fields")):
            if getattr(field, flag):
                return bucket, owner
        if field.unique:
            return "unique_fields", owner
        return ("key_fields" if field.is_key else "other_indexes"), owner

    def add(self, problem: str, owner: str, kind: str | None) -> None:
        self.problems[problem] += 1
        if owner == "":
            self.class_set += 1
            return
        bucket, name = self.bucket(owner, kind)
        self.buckets[bucket][name] = self.buckets[bucket].get(name, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        total = sum(self.problems.values())
        return {"class_set": self.class_set, **self.buckets, **self.problems,
                "instances": self.instances, "unreadable": self.unreadable, "total": total}


class MaintenanceMixin:
    """Index health checks and in-place repairs, plus the chunk-level API used by tasks.

    Whole-model methods: :meth:`check_indexes` (read only), :meth:`clean_indexes`,
    :meth:`rebuild_indexes` and their ``async_`` variants. Chunk methods, each one
    bounded, idempotent and safe to retry alone: :meth:`index_keys`,
    :meth:`scan_instance_keys`, :meth:`scan_class_set`, :meth:`reindex_keys`,
    :meth:`clean_index_chunk`.
    """

    _meta: Any

    # --- key recognition -------------------------------------------------
    @classmethod
    def _is_instance_key(cls, key: str) -> bool:
        """True when ``key`` has the shape of an instance key of this model."""
        meta = cls._meta
        return (key.startswith(meta.db_class_key + keys.SEP)
                and key.count(keys.SEP) == len(meta.key_field_names))

    @classmethod
    def _index_owner(cls, index_key: str) -> str | None:
        """The owner (field name, composite index name, "" for the class set) of an index key.

        None when the key is not one of this model's index keys. Matching is by
        exact segments: ``$SortedF:M:score_2`` never belongs to field ``score``.
        """
        meta = cls._meta
        if index_key == meta.db_class_set_key:
            return ""
        segs = index_key.split(keys.SEP)
        if len(segs) < 3 or not segs[0].startswith("$") or segs[1] != keys.tag(meta.model_name):
            return None
        kind, rest = segs[0][1:], segs[2:]
        if kind == "Index":
            ordered = sorted(meta.composite_indexes, key=lambda i: not i.unique)
            for index in ordered:
                n = len(index.field_names)
                if tuple(rest[:n]) == index.field_names and len(rest) == n + (not index.unique):
                    return index.name
            return None
        # field indexes are built by keys.field_index_key("<Kind>F", model, field, *parts)
        if kind.endswith("F") and rest[0] in meta.fields and rest[0] in meta.index_owners:
            return rest[0]
        return None

    # --- chunk API -------------------------------------------------------
    @classmethod
    def index_keys(cls, count: int = 1000) -> list[str]:
        """Every index key of the model (class set included), found with SCAN."""
        pattern = "$*" + keys.SEP + keys.glob_escape(keys.tag(cls._meta.model_name)) + "*"
        found = {_s(k) for k in get_client().scan_iter(match=pattern, count=count)}
        return sorted(k for k in found if cls._index_owner(k) is not None)

    @classmethod
    def scan_class_set(cls, cursor: int = 0, count: int = 1000) -> tuple[int, list[str]]:
        """One SSCAN step over the class set: ``(next_cursor, instance keys)``."""
        cursor, members = get_client().sscan(cls._meta.db_class_set_key, cursor, count=count)
        return int(cursor), [_s(m) for m in members]

    @classmethod
    def scan_instance_keys(cls, cursor: int = 0, count: int = 1000) -> tuple[int, list[str]]:
        """One SCAN step over the keyspace: ``(next_cursor, instance hash keys)``.

        Finds hashes the class set lost track of, which :meth:`scan_class_set` cannot.
        """
        pattern = keys.glob_escape(keys.tag(cls._meta.model_name)) + keys.SEP + "*"
        cursor, found = get_client().scan(cursor, match=pattern, count=count, _type="hash")
        return int(cursor), [k for k in map(_s, found) if cls._is_instance_key(k)]

    @classmethod
    def reindex_keys(cls, keys: list[str]) -> int:
        """Rewrite the index entries of these instances from their stored hashes.

        Each instance goes through the SAVE script with no field value written
        and its TTL untouched: the script removes the entries the instance owned
        and adds the ones its values produce, atomically, so queries never miss
        it. Keys whose hash is gone are removed from the class set and from the
        unpartitioned sorted sets (their other entries are found by
        :meth:`clean_index_chunk`). Keys that are not instance keys of this model
        are ignored. Idempotent. Returns the number of instances rewritten.
        """
        todo = [k for k in dict.fromkeys(_s(k) for k in keys) if cls._is_instance_key(k)]
        client = get_client()
        rewritten = 0
        dropped: dict[str, set[tuple[str, str]]] = {}
        tries: dict[str, int] = {}
        work = list(_chunks(todo, 1000))
        while work:
            part = work.pop()
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
    def _expected_batch(cls, key: str, raw: dict[Any, bytes],
                        fields: Iterable[str] | None = None) -> WriteBatch | None:
        """What the write path writes for this stored hash (no I/O).

        ``fields`` limits the work to the owners depending on them. None (and
        a warning) when the hash cannot be turned back into a valid instance.
        """
        instance = cls.from_redis(key, raw)  # type: ignore[attr-defined]
        try:
            return instance.build_save(update_fields=fields, skip_auto_now=True)
        except ModelException as exc:
            logger.warning("%s: cannot rebuild the index entries of %s: %s",
                           cls.__name__, key, exc)
            return None

    @classmethod
    def _reindex_batch(cls, key: str, raw: dict[Any, bytes]) -> WriteBatch | None:
        """The instance's save reduced to its index entries: no values, no TTL, no commands."""
        batch = cls._expected_batch(key, raw)
        if batch is None:
            return None
        for name in raw:
            name = _s(name)
            if name.startswith(IDX_PREFIX) and name[len(IDX_PREFIX):] not in batch.entries:
                batch.own(name[len(IDX_PREFIX):])  # an owner the model no longer has
        batch.mapping = {}
        batch.commands = []
        batch.ttl = None
        batch.must_exist = True
        batch.must_not_exist = False
        return batch

    @classmethod
    def _reindex_tx(cls, client: redis.Redis, part: list[str],
                    dropped: dict[str, set[tuple[str, str]]]) -> tuple[int, list[str]]:
        """One optimistic transaction over ``part``: ``(rewritten, keys to retry alone)``.

        Raises WatchError when one of the hashes changed after it was read.
        """
        meta = cls._meta
        fixed_zsets = [f.sorted_key(()) for f in meta.fields.values()
                       if f.is_sorted and not getattr(f, "partition_by", ())]
        with client.pipeline(transaction=True) as tx:
            tx.watch(*part)
            reader = client.pipeline(transaction=False)
            for key in part:
                reader.hgetall(key)
            raws = reader.execute(raise_on_error=False)
            tx.multi()
            queued: list[tuple[str, WriteBatch] | None] = []
            for key, raw in zip(part, raws):
                if isinstance(raw, Exception):
                    logger.warning("%s: %s is not a hash (%s); not reindexed",
                                   cls.__name__, key, raw)
                    continue
                if not raw:
                    tx.srem(meta.db_class_set_key, key)
                    queued.append(None)
                    for zkey in fixed_zsets:
                        tx.zrem(zkey, key)
                        queued.append(None)
                    continue
                batch = cls._reindex_batch(key, raw)
                if batch is None:
                    continue
                _drop_claims(batch, dropped.get(key, ()))
                scripts.SAVE.queue(tx, client, *batch.save_args())
                queued.append((key, batch))
            if not queued:
                return 0, []
            results = tx.execute(raise_on_error=False)
        done, retry = 0, []
        for item, result in zip(queued, results):
            if item is None:
                continue
            key, batch = item
            if not isinstance(result, Exception):
                done += 1
                continue
            text = str(result)
            if isinstance(result, redis.exceptions.NoScriptError):
                scripts.SAVE.forget()
                retry.append(key)
            elif "POPOTO_UNIQUE" in text:
                number = int(text.split("POPOTO_UNIQUE", 1)[1].split()[0])
                claim = batch.claims[number - 1]
                logger.error("%s: %s has %s but another instance holds it; its other index "
                             "entries are rebuilt without that claim", cls.__name__, key,
                             batch.claim_labels[number - 1])
                dropped.setdefault(key, set()).add(claim)
                retry.append(key)
            elif "POPOTO_MISSING" not in text:
                logger.error("%s: reindex of %s failed: %s", cls.__name__, key, text)
        return done, retry

    @classmethod
    def clean_index_chunk(cls, index_key: str, cursor: int = 0,
                          count: int = 1000) -> tuple[int, int]:
        """One SSCAN/ZSCAN/HSCAN step over ``index_key``, removing entries nobody owns.

        An entry goes when its instance hash is gone or the instance's
        ``@idx`` record does not list it (checked and removed atomically in
        one script, so a concurrent save is never undone). Class-set entries go
        when their hash is gone. Returns ``(next_cursor, removed)``; cursor 0
        means done. Idempotent.
        """
        owner = cls._index_owner(index_key)
        if owner is None:
            raise ModelException(f"{cls.__name__}.clean_index_chunk: {index_key!r} is not an "
                                 f"index key of {cls.__name__}")
        client = get_client()
        typ = _s(client.type(index_key))
        if owner == "":
            if typ != "set":
                return 0, 0
            cursor, found = client.sscan(index_key, cursor, count=count)
            members = [_s(m) for m in found]
            foreign = [m for m in members if not cls._is_instance_key(m)]
            removed = client.srem(index_key, *foreign) if foreign else 0
            own = [m for m in members if cls._is_instance_key(m)]
            if own:
                removed += CLEAN(client, [index_key], ["class", "", *own])
            return int(cursor), removed
        mode = _MODE_BY_TYPE.get(typ)
        if mode is None:
            return 0, 0
        cursor, members = _scan_step(client, index_key, typ, cursor, count)
        removed = CLEAN(client, [index_key], [mode, owner, *(m for m, _v in members)]) \
            if members else 0
        return int(cursor), removed

    # --- whole-model operations ------------------------------------------
    @classmethod
    def rebuild_indexes(cls, batch_size: int = 1000) -> int:
        """Repair every index of the model in place; returns the number of instances rewritten.

        Reindexes every instance hash (SCAN of the keyspace, so hashes missing
        from the class set are found), then cleans every index key. Nothing is
        deleted up front: queries keep answering correctly while it runs.
        """
        rewritten = 0
        cursor = 0
        while True:
            cursor, found = cls.scan_instance_keys(cursor, batch_size)
            for part in _chunks(found, batch_size):
                rewritten += cls.reindex_keys(part)
            if cursor == 0:
                break
        removed = cls.clean_indexes(batch_size)
        logger.info("%s: rebuilt the index entries of %d instances, removed %d stale entries",
                    cls.__name__, rewritten, removed)
        return rewritten

    @classmethod
    def clean_indexes(cls, batch_size: int = 1000) -> int:
        """Remove orphaned and unowned entries from every index; returns how many were removed.

        Covers the class set, sorted/indexed/geo/relationship field indexes,
        unique claims and composite indexes. Wrong scores and missing entries
        need :meth:`rebuild_indexes`.
        """
        removed = 0
        for index_key in cls.index_keys(batch_size):
            cursor = 0
            while True:
                cursor, n = cls.clean_index_chunk(index_key, cursor, batch_size)
                removed += n
                if cursor == 0:
                    break
        return removed

    @classmethod
    def check_indexes(cls, batch_size: int = 1000) -> dict[str, Any]:
        """Read-only health report of every index of the model.

        Returns a dict with problem counts per index (``class_set`` and one
        dict per index category: ``key_fields``, ``sorted_fields``,
        ``indexed_fields``, ``geo_fields``, ``unique_fields``,
        ``relationship_fields``, ``composite_indexes`` keyed by index key,
        ``other_indexes``), per problem type (``orphans``, ``missing``,
        ``wrong``, ``owner_records``), the number of ``instances`` checked,
        the number of ``unreadable`` hashes (logged; not counted in the total)
        and ``total``. Point-in-time: concurrent writes can show up as
        transient problems.
        """
        report = _Report(cls)  # type: ignore[arg-type]
        client = get_client()
        for index_key in cls.index_keys(batch_size):
            cls._check_index_key(client, index_key, report, batch_size)
        cursor = 0
        while True:
            cursor, found = cls.scan_instance_keys(cursor, batch_size)
            for part in _chunks(found, batch_size):
                cls._check_instances(client, part, report)
            if cursor == 0:
                break
        return report.as_dict()

    @classmethod
    def _check_index_key(cls, client: redis.Redis, index_key: str, report: _Report,
                         batch_size: int) -> None:
        """Index side: every entry must point at a live instance that produces it."""
        meta = cls._meta
        owner = cls._index_owner(index_key)
        typ = _s(client.type(index_key))
        if owner is None or typ not in KINDS_BY_TYPE or (owner == "" and typ != "set"):
            return
        kinds = KINDS_BY_TYPE[typ]
        kind = kinds[0]
        deps = sorted(meta.index_owners.get(owner, ()))
        names = list(dict.fromkeys([*meta.key_field_names, *deps]))
        cursor = 0
        while True:
            cursor, rows = _scan_step(client, index_key, typ, cursor, batch_size)
            holders = list(dict.fromkeys(h for _m, h in rows if cls._is_instance_key(h)))
            pipe = client.pipeline(transaction=False)
            for holder in holders:
                pipe.hmget(holder, names)
            replies = pipe.execute(raise_on_error=False) if holders else []
            # key fields are never null in a stored instance: all None means no hash
            # (a non-hash key answers with an error)
            live = {h: dict(zip(names, values)) for h, values in zip(holders, replies)
                    if not isinstance(values, Exception) and values[0] is not None}
            expected: dict[str, set[Entry] | None] = {}
            for member, holder in rows:
                raw = live.get(holder)
                if raw is None:
                    report.add("orphans", owner, kind)
                    continue
                if owner == "":
                    continue
                if holder not in expected:
                    batch = cls._expected_batch(
                        holder, {f: v for f, v in raw.items() if v is not None}, deps)
                    expected[holder] = None if batch is None else {
                        (k, rk, m) for k, rk, m, _sc in batch.entries.get(owner, ())}
                entries = expected[holder]
                if entries is not None and not any((k, index_key, member) in entries
                                                   for k in kinds):
                    report.add("wrong", owner, kind)
            if cursor == 0:
                break

    @classmethod
    def _check_instances(cls, client: redis.Redis, part: list[str], report: _Report) -> None:
        """Instance side: every entry an instance produces must exist, with the right score."""
        meta = cls._meta
        pipe = client.pipeline(transaction=False)
        for key in part:
            pipe.hgetall(key)
        raws = pipe.execute(raise_on_error=False)
        probes: list[tuple[str, str, tuple[str, str, str, Any]]] = []  # key, owner, row
        pipe = client.pipeline(transaction=False)
        for key, raw in zip(part, raws):
            if not raw or isinstance(raw, Exception):
                continue  # deleted or expired since the SCAN step
            report.instances += 1
            batch = cls._reindex_batch(key, raw)
            if batch is None:
                report.unreadable += 1
                continue
            pipe.sismember(meta.db_class_set_key, key)
            probes.append((key, "", ("", "", "", "")))
            for owner, rows in batch.entries.items():
                for row in rows:
                    kind, rkey, member, _score = row
                    if kind == KEY:
                        continue
                    if kind == SET:
                        pipe.sismember(rkey, member)
                    elif kind == ZSET:
                        pipe.zscore(rkey, member)
                    elif kind == GEO:
                        pipe.geopos(rkey, member)
                    elif kind == CLAIM:
                        pipe.hget(rkey, member)
                    else:
                        continue
                    probes.append((key, owner, row))
            for owner in _record_problems(raw, batch):
                report.add("owner_records", owner, None)
        if not probes:
            return
        for (key, owner, row), found in zip(probes, pipe.execute(raise_on_error=False)):
            kind, _rkey, _member, score = row
            if isinstance(found, Exception):
                report.add("wrong", owner, kind)
            elif owner == "" or kind == SET:
                if not found:
                    report.add("missing", owner, kind)
            elif kind == CLAIM:
                if found is None or _s(found) != key:
                    report.add("missing", owner, kind)
            elif kind == ZSET:
                if found is None:
                    report.add("missing", owner, kind)
                elif float(found) != float(score):
                    report.add("wrong", owner, kind)
            elif kind == GEO:
                position = found[0] if found else None
                if position is None:
                    report.add("missing", owner, kind)
                else:
                    lat, lon = (float(x) for x in str(score).split(","))
                    if not (math.isclose(position[1], lat, abs_tol=GEO_TOLERANCE)
                            and math.isclose(position[0], lon, abs_tol=GEO_TOLERANCE)):
                        report.add("wrong", owner, kind)

    # --- async -----------------------------------------------------------
    # These run the synchronous implementation in a worker thread
    # (asyncio.to_thread): maintenance is a long sequence of scan steps and
    # the event loop stays free meanwhile.
    @classmethod
    async def async_check_indexes(cls, batch_size: int = 1000) -> dict[str, Any]:
        """:meth:`check_indexes` in a worker thread (asyncio.to_thread)."""
        return await asyncio.to_thread(cls.check_indexes, batch_size)

    @classmethod
    async def async_clean_indexes(cls, batch_size: int = 1000) -> int:
        """:meth:`clean_indexes` in a worker thread (asyncio.to_thread)."""
        return await asyncio.to_thread(cls.clean_indexes, batch_size)

    @classmethod
    async def async_rebuild_indexes(cls, batch_size: int = 1000) -> int:
        """:meth:`rebuild_indexes` in a worker thread (asyncio.to_thread)."""
        return await asyncio.to_thread(cls.rebuild_indexes, batch_size)


def _scan_step(client: redis.Redis, key: str, typ: str, cursor: int,
               count: int) -> tuple[int, list[tuple[str, str]]]:
    """One SSCAN/ZSCAN/HSCAN step: ``(next_cursor, [(member, holder instance key)])``."""
    if typ == "set":
        cursor, found = client.sscan(key, cursor, count=count)
        return int(cursor), [(_s(m), _s(m)) for m in found]
    if typ == "zset":
        cursor, found = client.zscan(key, cursor, count=count)
        return int(cursor), [(_s(m), _s(m)) for m, _score in found]
    cursor, found = client.hscan(key, cursor, count=count)
    return int(cursor), [(_s(f), _s(v)) for f, v in found.items()]
