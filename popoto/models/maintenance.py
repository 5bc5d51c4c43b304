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
(:mod:`popoto.models.claims`): a reindex takes its claims as pending with the
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
import math
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import msgpack
import redis
import redis.cluster

from .. import keys
from ..exceptions import ModelException
from ..redis_db import get_client
from . import scripts
from .claims import CLAIM as CLAIM_SCRIPT
from .claims import LEASE_MARGIN_MS, LEASE_MS, MAX_TAKEOVERS, SETTLE
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
_PENDING_RE = re.compile(r"^~(\d+)~(.*)$", re.S)

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




def group_client(ns: str) -> redis.Redis:
    """The client for SCANs of tag group ``ns``: the node owning its slot in cluster mode.

    Key-addressed commands go through :func:`~popoto.redis_db.get_client` (the
    cluster client routes them); a SCAN must be sent to the node that holds
    the group's slot, which is what this returns (the client itself otherwise).
    """
    client = get_client()
    if isinstance(client, redis.cluster.RedisCluster):
        return client.get_redis_connection(client.get_node_from_key(keys.class_set_key(ns)))
    return client


def server_time_ms(client: redis.Redis) -> int:
    """The server's clock in milliseconds (the clock claim leases are written in)."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def parse_claim(value: str) -> tuple[str, int | None]:
    """``(holder key, lease deadline ms or None)`` of a claim value (plain or pending)."""
    match = _PENDING_RE.match(value)
    if match:
        return match.group(2), int(match.group(1))
    return value, None


def _lists_claim(record: Any, holder: str, hash_key: str, hash_field: str) -> bool:
    """True when an ``@idx`` record (packed, or None) lists the claim (hash key, field)."""
    if not record or isinstance(record, Exception):
        return False
    try:
        return (CLAIM, hash_key, hash_field) in unpack_record(record, holder)
    except (ValueError, TypeError, IndexError, msgpack.UnpackException):
        return False


def class_set_size(model: type[Model]) -> int:
    """Members of a model's class set, summed over its tag groups (one round trip)."""
    class_sets = model._meta.class_set_keys()
    client = get_client()
    if len(class_sets) == 1:
        return int(client.scard(class_sets[0]))
    pipe = client.pipeline(transaction=False)
    for class_set in class_sets:
        pipe.scard(class_set)
    return sum(int(n) for n in pipe.execute())


def merge_reports(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum reports of :meth:`MaintenanceMixin.check_indexes` (e.g. one per tag group)."""
    out: dict[str, Any] = {}
    for report in reports:
        for name, value in report.items():
            if isinstance(value, dict):
                bucket = out.setdefault(name, {})
                for index, count in value.items():
                    bucket[index] = bucket.get(index, 0) + count
            else:
                out[name] = out.get(name, 0) + value
    return out


def _settle_all(client: redis.Redis, steps: list[tuple[str, str, str, str]],
                strict: bool = False) -> int:
    """Compare-and-set claim values ``(hash, field, expected, new; '' deletes)``.

    Returns how many were changed. Best effort unless ``strict`` (then a
    connection error propagates): a claim left pending runs out its lease
    (its holder's record decides about it then), a stale one is removed by
    cleaning. Calls that found the script cache empty are sent again.
    """
    changed, todo, failed = 0, list(steps), []
    for _attempt in range(2):
        if not todo:
            break
        SETTLE.ensure_loaded(client)
        pipe = client.pipeline(transaction=False)
        for hash_key, hash_field, expected, new in todo:
            SETTLE.queue(pipe, client, [hash_key], [hash_field, expected, new])
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.exceptions.RedisError as exc:
            if strict:
                raise
            failed.append(exc)
            break
        retry = []
        for step, reply in zip(todo, replies):
            if isinstance(reply, redis.exceptions.NoScriptError):
                retry.append(step)
            elif isinstance(reply, Exception):
                failed.append(reply)
            else:
                changed += int(reply)
        if retry:
            SETTLE.forget()
        todo = retry
    failed += [redis.exceptions.NoScriptError("NOSCRIPT twice")] if todo else []
    if failed:
        logger.warning("could not settle %d unique claims (%s): they are settled by the "
                       "next save of their holder or removed by clean_indexes",
                       len(failed), failed[0])
    return changed


class _Claims:
    """The external unique claims of one reindex transaction (sharded models).

    :meth:`acquire` takes every claim of every batch as pending (the CLAIM
    script of :mod:`popoto.models.claims`), taking over claims proven stale;
    claims another live instance holds are dropped from their batch (logged,
    as the unsharded script does), and an instance with a claim another save
    has pending is left for a retry. :meth:`confirm` / :meth:`rollback` end it.
    """

    def __init__(self, model: type[Model], client: redis.Redis) -> None:
        self.model = model
        self.client = client
        self.taken: dict[str, list[tuple[str, str, str, str]]] = {}  # key: (h, f, pending, prev)
        self.deadline: dict[str, int] = {}

    def acquire(self, batches: list[tuple[str, WriteBatch]],
                dropped: dict[str, set[tuple[str, str]]]) -> set[str]:
        """Take the claims of ``batches`` as pending; returns the keys to retry later."""
        client = self.client
        by_key = dict(batches)
        expected: dict[tuple[str, int], str] = {}
        todo = [(key, i) for key, batch in batches for i in range(len(batch.claims))]
        busy: set[str] = set()
        took_over: list[tuple[str, int, str]] = []  # (key, claim index, stale value replaced)
        for _attempt in range(MAX_TAKEOVERS + 1):
            todo = [(key, i) for key, i in todo if key not in busy]
            if not todo:
                break
            CLAIM_SCRIPT.ensure_loaded(client)
            pipe = client.pipeline(transaction=False)
            for key, i in todo:
                hash_key, hash_field = by_key[key].claims[i]
                CLAIM_SCRIPT.queue(pipe, client, [hash_key], [
                    hash_field, key, key, expected.get((key, i), ""), LEASE_MS])
            held: list[tuple[str, int, str]] = []
            for (key, i), reply in zip(todo, pipe.execute(raise_on_error=False)):
                if isinstance(reply, Exception):
                    if isinstance(reply, redis.exceptions.NoScriptError):
                        CLAIM_SCRIPT.forget()
                    busy.add(key)
                    continue
                status, value, until = _s(reply[0]), _s(reply[1]), int(reply[2])
                if status == "OK":
                    hash_key, hash_field = by_key[key].claims[i]
                    self.taken.setdefault(key, []).append(
                        (hash_key, hash_field, f"~{until}~{key}", value))
                    self.deadline[key] = min(self.deadline.get(key, until), until)
                    if expected.get((key, i)) and value == expected[(key, i)]:
                        took_over.append((key, i, value))
                elif status == "BUSY":
                    busy.add(key)  # another save of this value is in flight
                else:
                    held.append((key, i, value))
            if not held:
                todo = []
                break
            pipe = client.pipeline(transaction=False)
            for key, i, value in held:
                pipe.hget(parse_claim(value)[0], IDX_PREFIX + by_key[key].claim_owners[i])
            todo = []
            for (key, i, value), record in zip(held, pipe.execute(raise_on_error=False)):
                batch = by_key[key]
                hash_key, hash_field = batch.claims[i]
                holder = parse_claim(value)[0]
                if _lists_claim(record, holder, hash_key, hash_field):
                    logger.error("%s: %s has %s but another instance holds it; its other index "
                                 "entries are rebuilt without that claim", self.model.__name__,
                                 key, batch.claim_labels[i])
                    dropped.setdefault(key, set()).add((hash_key, hash_field))
                else:
                    expected[(key, i)] = value  # stale: take it over if still unchanged
                    todo.append((key, i))
        self._verify_takeovers(by_key, took_over, dropped)
        busy.update(key for key, _i in todo)  # kept changing: retry the instance alone
        for key, batch in batches:
            _drop_claims(batch, dropped.get(key, ()))
        self.rollback(busy)
        return busy

    def _verify_takeovers(self, by_key: dict[str, WriteBatch],
                          took_over: list[tuple[str, int, str]],
                          dropped: dict[str, set[tuple[str, str]]]) -> None:
        """ABA guard (see popoto.models.claims): a holder that saved the same value again
        between our read of its record and our compare-and-set keeps it."""
        if not took_over:
            return
        pipe = self.client.pipeline(transaction=False)
        for key, i, value in took_over:
            pipe.hget(parse_claim(value)[0], IDX_PREFIX + by_key[key].claim_owners[i])
        back: list[tuple[str, str, str, str]] = []
        for (key, i, value), record in zip(took_over, pipe.execute(raise_on_error=False)):
            hash_key, hash_field = by_key[key].claims[i]
            holder = parse_claim(value)[0]
            if not _lists_claim(record, holder, hash_key, hash_field):
                continue
            mine = [t for t in self.taken.get(key, ()) if t[:2] == (hash_key, hash_field)]
            for entry in mine:
                self.taken[key].remove(entry)
                back.append(entry)
            dropped.setdefault(key, set()).add((hash_key, hash_field))
        _settle_all(self.client, [(h, f, pending, prev) for h, f, pending, prev in back])

    def lease_deadline(self, key: str) -> int | None:
        """The SAVE script's deadline for ``key`` (None: it holds no pending claim)."""
        until = self.deadline.get(key)
        return None if until is None else until - LEASE_MARGIN_MS

    def confirm(self, key: str, released: Any) -> None:
        """After a successful write: pending claims become plain, released ones go."""
        steps = [(h, f, pending, key) for h, f, pending, _prev in self.taken.pop(key, ())]
        pairs = released if isinstance(released, list) else []
        steps += [(_s(h), _s(f), key, "") for h, f in zip(pairs[0::2], pairs[1::2])]
        _settle_all(self.client, steps)

    def rollback(self, keys_: Iterable[str] | None = None) -> None:
        """Put the pending claims of ``keys_`` (default: all) back to what they were."""
        chosen = list(self.taken) if keys_ is None else [k for k in keys_ if k in self.taken]
        _settle_all(self.client, [(h, f, pending, prev) for key in chosen
                                  for h, f, pending, prev in self.taken.pop(key)])

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
    :meth:`clean_index_chunk`. ``group`` arguments name one tag group
    (``_meta.groups``) of a sharded model, so each group can be worked on alone.
    """

    _meta: Any

    # --- key recognition -------------------------------------------------
    @classmethod
    def _group_index(cls, ns: str) -> int | None:
        """The position of namespace ``ns`` in ``_meta.groups`` (None: not one of them)."""
        meta = cls._meta
        groups = meta.groups
        if not meta.sharded:
            return 0 if ns == groups[0] else None
        prefix = "{" + meta.model_name + "#"
        if not (ns.startswith(prefix) and ns.endswith("}")):
            return None
        number = ns[len(prefix):-1].split(".", 1)[0]
        if not number.isdigit():
            return None
        position = int(number)
        return position if position < len(groups) and groups[position] == ns else None

    @classmethod
    def _check_group(cls, group: str) -> str:
        if cls._group_index(group) is None:
            raise ModelException(f"{cls.__name__}: {group!r} is not a tag group of "
                                 f"{cls.__name__} (groups: {', '.join(cls._meta.groups)})")
        return group

    @classmethod
    def _is_instance_key(cls, key: str) -> bool:
        """True when ``key`` has the shape of an instance key of this model (any group)."""
        return (key.count(keys.SEP) == len(cls._meta.key_field_names)
                and cls._group_index(keys.ns_of(key)) is not None)

    @classmethod
    def _index_owner(cls, index_key: str) -> str | None:
        """The owner (field name, composite index name, "" for the class set) of an index key.

        None when the key is not one of this model's index keys. Matching is by
        exact segments: ``$SortedF:M:score_2`` never belongs to field ``score``.
        """
        meta = cls._meta
        segs = index_key.split(keys.SEP)
        if len(segs) < 2 or not segs[0].startswith("$") or cls._group_index(segs[1]) is None:
            return None
        if len(segs) == 2:
            return "" if segs[0] == "$Class" else None
        kind, rest = segs[0][1:], segs[2:]
        if kind == "Index":
            ordered = sorted(meta.composite_indexes, key=lambda i: not i.unique)
            for index in ordered:
                n = len(index.field_names)
                if tuple(rest[:n]) == index.field_names and len(rest) == n + (not index.unique):
                    return index.name
            return None
        # field indexes are built by keys.field_index_key("<Kind>F", ns, field, *parts)
        if kind.endswith("F") and rest[0] in meta.fields and rest[0] in meta.index_owners:
            return rest[0]
        return None

    @staticmethod
    def _index_group(index_key: str) -> str:
        """The tag group (namespace segment) of one of the model's index keys."""
        return index_key.split(keys.SEP, 2)[1]

    # --- chunk API -------------------------------------------------------
    @classmethod
    def index_keys(cls, count: int = 1000, group: str | None = None) -> list[str]:
        """Every index key of the model (class sets included), found with SCAN.

        ``group``: only the keys of that tag group (its unique-claim hashes
        included, whichever groups their holders are in).
        """
        meta = cls._meta
        if group is not None:
            client = group_client(cls._check_group(group))
            prefix = group
        else:
            client = get_client()
            prefix = "{" + meta.model_name + "#" if meta.sharded else meta.groups[0]
        pattern = "$*" + keys.SEP + keys.glob_escape(prefix) + "*"
        found = {_s(k) for k in client.scan_iter(match=pattern, count=count)}
        return sorted(k for k in found if cls._index_owner(k) is not None
                      and (group is None or cls._index_group(k) == group))

    @classmethod
    def _walk_groups(cls, cursor: int, group: str | None,
                     step: Any) -> tuple[int, list[str]]:
        """Run ``step(ns, inner_cursor)`` for one group, or walk all groups with one cursor.

        The combined cursor is ``inner * n_groups + group index``; it is the
        plain inner cursor for an unsharded model (one group).
        """
        if group is not None:
            return step(cls._check_group(group), cursor)
        groups = cls._meta.groups
        n = len(groups)
        position, inner = cursor % n, cursor // n
        inner, found = step(groups[position], inner)
        if inner == 0:
            position += 1
            return (0 if position == n else position), found
        return inner * n + position, found

    @classmethod
    def scan_class_set(cls, cursor: int = 0, count: int = 1000,
                       group: str | None = None) -> tuple[int, list[str]]:
        """One SSCAN step over the class set: ``(next_cursor, instance keys)``.

        ``group``: that tag group's class set; without it the cursor walks the
        class set of every group in turn.
        """
        client = get_client()

        def step(ns: str, inner: int) -> tuple[int, list[str]]:
            inner, members = client.sscan(keys.class_set_key(ns), inner, count=count)
            return int(inner), [_s(m) for m in members]

        return cls._walk_groups(cursor, group, step)

    @classmethod
    def scan_instance_keys(cls, cursor: int = 0, count: int = 1000,
                           group: str | None = None) -> tuple[int, list[str]]:
        """One SCAN step over the keyspace: ``(next_cursor, instance hash keys)``.

        Finds hashes the class set lost track of, which :meth:`scan_class_set`
        cannot. ``group``: only that tag group's instances (in cluster mode the
        SCAN then goes to the node owning the group's slot only). Without it,
        one SCAN covers every group on a single server; in cluster mode the
        cursor walks the groups in turn.
        """
        meta = cls._meta

        def step(ns: str, inner: int) -> tuple[int, list[str]]:
            pattern = keys.glob_escape(ns) + keys.SEP + "*"
            inner, found = group_client(ns).scan(inner, match=pattern, count=count,
                                                 _type="hash")
            return int(inner), [k for k in map(_s, found) if cls._is_instance_key(k)]

        if group is None and meta.sharded and not isinstance(get_client(),
                                                             redis.cluster.RedisCluster):
            client = get_client()
            pattern = keys.glob_escape("{" + meta.model_name + "#") + "*"
            cursor, found = client.scan(cursor, match=pattern, count=count, _type="hash")
            return int(cursor), [k for k in map(_s, found) if cls._is_instance_key(k)]
        return cls._walk_groups(cursor, group, step)

    @classmethod
    def reindex_keys(cls, keys: list[str]) -> int:
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
        dropped: dict[str, set[tuple[str, str]]] = {}
        tries: dict[str, int] = {}
        work = [part for members in by_group.values() for part in _chunks(members, 1000)]
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
        """One optimistic transaction over ``part`` (keys of ONE tag group).

        Returns ``(rewritten, keys to retry alone)``; raises WatchError when one
        of the hashes changed after it was read. A sharded model's unique
        claims (other slots) are taken as pending before the transaction and
        confirmed or rolled back after it.
        """
        meta = cls._meta
        ns = _ns(part[0])
        class_set = keys.class_set_key(ns)
        fixed_zsets = [f.sorted_key((), ns) for f in meta.fields.values()
                       if f.is_sorted and not getattr(f, "partition_by", ())]
        claims = _Claims(cls, client)  # type: ignore[arg-type]
        retry: list[str] = []
        with client.pipeline(transaction=True) as tx:
            tx.watch(*part)
            reader = client.pipeline(transaction=False)
            for key in part:
                reader.hgetall(key)
            raws = reader.execute(raise_on_error=False)
            gone: list[str] = []
            batches: list[tuple[str, WriteBatch]] = []
            for key, raw in zip(part, raws):
                if isinstance(raw, Exception):
                    logger.warning("%s: %s is not a hash (%s); not reindexed",
                                   cls.__name__, key, raw)
                    continue
                if not raw:
                    gone.append(key)
                    continue
                batch = cls._reindex_batch(key, raw)
                if batch is None:
                    continue
                _drop_claims(batch, dropped.get(key, ()))
                batches.append((key, batch))
            external = [(k, b) for k, b in batches if b.external_claims and b.claims]
            if external:
                busy = claims.acquire(external, dropped)
                retry += [k for k, _b in external if k in busy]
                batches = [(k, b) for k, b in batches if k not in busy]
            tx.multi()
            queued: list[tuple[str, WriteBatch] | None] = []
            for key in gone:
                tx.srem(class_set, key)
                queued.append(None)
                for zkey in fixed_zsets:
                    tx.zrem(zkey, key)
                    queued.append(None)
            for key, batch in batches:
                scripts.SAVE.queue(tx, client, *batch.save_args(claims.lease_deadline(key)))
                queued.append((key, batch))
            if not queued:
                return 0, retry
            try:
                results = tx.execute(raise_on_error=False)
            except BaseException:
                claims.rollback()
                raise
        done = 0
        for item, result in zip(queued, results):
            if item is None:
                continue
            key, batch = item
            if not isinstance(result, Exception):
                done += 1
                if batch.external_claims:
                    claims.confirm(key, result)
                continue
            claims.rollback([key])
            text = str(result)
            if isinstance(result, redis.exceptions.NoScriptError):
                scripts.SAVE.forget()
                retry.append(key)
            elif "POPOTO_LEASE" in text:
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
        typ = _s(client.type(index_key))
        if owner == "":
            if typ != "set":
                return 0, 0
            cursor, found = client.sscan(index_key, cursor, count=count)
            members = [_s(m) for m in found]
            own = [m for m in members if cls._is_instance_key(m) and _ns(m) == group]
            own_set = set(own)
            foreign = [m for m in members if m not in own_set]
            removed = client.srem(index_key, *foreign) if foreign else 0
            if own:
                removed += CLEAN(client, [index_key], ["class", "", *own])
            return int(cursor), removed
        mode = _MODE_BY_TYPE.get(typ)
        if mode is None:
            return 0, 0
        if mode == "C" and cls._meta.sharded:
            return cls._clean_claims_step(client, index_key, owner, cursor, count)
        cursor, members = _scan_step(client, index_key, typ, cursor, count)
        found = [m for m, _v in members]
        removed = 0
        if cls._meta.sharded:  # a member of another group is another slot: never owned here
            foreign = [m for m in found if _ns(m) != group]
            if foreign:
                removed += (client.srem if mode == "S" else client.zrem)(index_key, *foreign)
                found = [m for m in found if _ns(m) == group]
        if found:
            removed += CLEAN(client, [index_key], [mode, owner, *found])
        return int(cursor), removed

    @classmethod
    def _clean_claims_step(cls, client: redis.Redis, index_key: str, owner: str, cursor: int,
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
        candidates: list[tuple[str, str, str]] = []
        for hash_field, value in rows:
            holder, deadline = parse_claim(value)
            if deadline is not None and deadline + LEASE_MARGIN_MS > now:
                continue
            candidates.append((hash_field, value, holder))
        live = [c for c in candidates if cls._is_instance_key(c[2])]
        records: list[Any] = []
        if live:
            pipe = client.pipeline(transaction=False)
            for _f, _v, holder in live:
                pipe.hget(holder, IDX_PREFIX + owner)
            records = pipe.execute(raise_on_error=False)
        listed = {(f, v) for (f, v, holder), record in zip(live, records)
                  if _lists_claim(record, holder, index_key, f)}
        stale = [(index_key, f, v, "") for f, v, _h in candidates if (f, v) not in listed]
        removed = _settle_all(client, stale, strict=True)
        # ABA guard (see popoto.models.claims): a holder that saved the same value again
        # between our read of its record and the compare-and-set gets its claim back
        again = [(f, holder) for f, v, holder in candidates
                 if (f, v) not in listed and cls._is_instance_key(holder)]
        if removed and again:
            pipe = client.pipeline(transaction=False)
            for _f, holder in again:
                pipe.hget(holder, IDX_PREFIX + owner)
            back = [(f, holder) for (f, holder), record
                    in zip(again, pipe.execute(raise_on_error=False))
                    if _lists_claim(record, holder, index_key, f)]
            if back:
                pipe = client.pipeline(transaction=False)
                for f, holder in back:
                    pipe.hsetnx(index_key, f, holder)
                restored = pipe.execute()
                removed -= sum(restored)
                lost = [holder for (f, holder), ok in zip(back, restored) if not ok]
                if lost:
                    logger.error("%s: unique claims of %s in %s were taken by another writer "
                                 "while being restored; check_indexes reports the duplicate",
                                 cls.__name__, lost, index_key)
        return int(cursor), removed

    # --- whole-model operations ------------------------------------------
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
            for part in _chunks(found, batch_size):
                rewritten += cls.reindex_keys(part)
            if cursor == 0:
                break
        removed = cls.clean_indexes(batch_size)
        logger.info("%s: rebuilt the index entries of %d instances, removed %d stale entries",
                    cls.__name__, rewritten, removed)
        return rewritten

    @classmethod
    def clean_indexes(cls, batch_size: int = 1000, group: str | None = None) -> int:
        """Remove orphaned and unowned entries from every index; returns how many were removed.

        Covers the class set, sorted/indexed/geo/relationship field indexes,
        unique claims and composite indexes. Wrong scores and missing entries
        need :meth:`rebuild_indexes`. ``group``: only that tag group's keys.
        """
        return sum(cls.clean_index_key(index_key, batch_size)
                   for index_key in cls.index_keys(batch_size, group=group))

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

    @classmethod
    def check_indexes(cls, batch_size: int = 1000, group: str | None = None) -> dict[str, Any]:
        """Read-only health report of every index of the model.

        Returns a dict with problem counts per index (``class_set`` and one
        dict per index category: ``key_fields``, ``sorted_fields``,
        ``indexed_fields``, ``geo_fields``, ``unique_fields``,
        ``relationship_fields``, ``composite_indexes`` keyed by index key, by
        index name for a sharded model, ``other_indexes``), per problem type
        (``orphans``, ``missing``, ``wrong``, ``owner_records``), the number of
        ``instances`` checked, the number of ``unreadable`` hashes (logged; not
        counted in the total) and ``total``. Point-in-time: concurrent writes
        can show up as transient problems.

        ``group``: only the index keys and instances of that tag group; the
        reports of every group add up (:func:`merge_reports`) to the report of
        the whole model.
        """
        report = _Report(cls)  # type: ignore[arg-type]
        client = get_client()
        for index_key in cls.index_keys(batch_size, group=group):
            cls._check_index_key(client, index_key, report, batch_size)
        cursor = 0
        while True:
            cursor, found = cls.scan_instance_keys(cursor, batch_size, group=group)
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
        group = cls._index_group(index_key)
        claims_elsewhere = kind == CLAIM and meta.sharded
        now = server_time_ms(group_client(group)) if claims_elsewhere else 0
        deps = sorted(meta.index_owners.get(owner, ()))
        names = list(dict.fromkeys([*meta.key_field_names, *deps]))
        cursor = 0
        while True:
            cursor, rows = _scan_step(client, index_key, typ, cursor, batch_size)
            if claims_elsewhere:
                rows = _settled_claims(rows, now)
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
                    if _ns(holder) != group:
                        report.add("wrong", owner, kind)
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
            pipe.sismember(keys.class_set_key(_ns(key)), key)
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
                # a sharded model's claim may still be pending (``~deadline~key``)
                if found is None or parse_claim(_s(found))[0] != key:
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


def _ns(redis_key: str) -> str:
    return keys.ns_of(redis_key)


def _settled_claims(rows: list[tuple[str, str]], now: int) -> list[tuple[str, str]]:
    """Claim rows ``(field, value)`` as ``(field, holder)``, without claims in flight.

    A claim pending inside its lease belongs to a save that has not finished:
    neither a problem nor something to repair yet.
    """
    out = []
    for hash_field, value in rows:
        holder, deadline = parse_claim(value)
        if deadline is None or deadline + LEASE_MARGIN_MS <= now:
            out.append((hash_field, holder))
    return out


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
