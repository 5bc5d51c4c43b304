"""Checking: a read-only report of every index problem of a model.

What "correct" means comes from one place: for a stored hash, the entries the
write path would write (``instance.build_save()``, no I/O) are the entries it
must have; the ``@idx:<owner>`` records of the hash must list exactly those.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from popoto import keys
from popoto.engine.claims import LEASE_MARGIN_MS, parse_claim
from popoto.engine.write import (
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
from popoto.engine.io import chunks
from popoto.models.maintenance.keyspace import (
    _Host,
    _ns,
    _scan_step,
    class_set_size,
    group_client,
    key_type,
    server_time_ms,
)
from popoto.models.maintenance.partial import missing_key_fields
from popoto.protocol import text as _s
from popoto.redis_db import get_client

if TYPE_CHECKING:
    from popoto.models.maintenance.keyspace import MaintenanceHost
    from popoto.redis_db import Client

    class _GeoQueue(Protocol):
        """A pipeline's GEOPOS (redis-py's stubs leave it untyped)."""

        def geopos(self, name: str, *values: str) -> object: ...

KINDS_BY_TYPE = {"set": SET, "zset": ZSET + GEO, "hash": CLAIM}

#: ``progress(phase, done, total)``: how far a check is (see ``check_indexes``)
Progress = Callable[[str, int, int], None]


GEO_TOLERANCE = 1e-5


Entry = tuple[str, str, str]  # kind, key, member


def _stored_records(raw: dict[Any, bytes], owner_key: str,
                    bases: dict[str, str]) -> dict[str, set[Entry]]:
    """The ``@idx:<owner>`` records of a raw hash (an unreadable record counts as empty)."""
    out: dict[str, set[Entry]] = {}
    for name, packed in raw.items():
        name = _s(name)
        if not name.startswith(IDX_PREFIX):
            continue
        owner = name[len(IDX_PREFIX):]
        try:
            out[owner] = unpack_record(packed, owner_key, bases.get(owner, ""))
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
        base = batch.bases.get(owner, "")
        if record is not None and rows and record == pack_record(rows, batch.key, base):
            continue  # byte-identical to what the write path writes: the usual case
        want = {(k, rk, m) for k, rk, m, _score in rows}
        records = (_stored_records({IDX_PREFIX + owner: record}, batch.key, batch.bases)
                   if record else {})
        if record is None or records.get(owner) != want:
            problems.append(owner)
    return problems


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


class _Report:
    """Accumulates problems per index (the buckets of the spec) and per problem type."""

    BUCKETS = ("key_fields", "sorted_fields", "indexed_fields", "geo_fields", "unique_fields",
               "relationship_fields", "composite_indexes", "other_indexes")
    PROBLEMS = ("orphans", "missing", "wrong", "owner_records")

    def __init__(self, model: type[MaintenanceHost]) -> None:
        self.meta = model._meta
        self.class_set = 0
        self.buckets: dict[str, dict[str, int]] = {b: {} for b in self.BUCKETS}
        self.problems = dict.fromkeys(self.PROBLEMS, 0)
        self.instances = 0
        self.unreadable = 0
        self.partial_writes = 0
        for name in self.meta.key_field_names:  # per KeyField: hashes lacking its value
            self.buckets["key_fields"][name] = 0
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
        field = meta.fields.get(owner.removesuffix("@lex"))
        if field is None:
            return "other_indexes", owner
        if kind == CLAIM:
            return "unique_fields", field.name
        for flag, bucket in (("is_sorted", "sorted_fields"), ("is_geo", "geo_fields"),
                             ("is_indexed", "indexed_fields"),
                             ("is_relationship", "relationship_fields")):
            if getattr(field, flag):
                return bucket, field.name
        if field.unique:
            return "unique_fields", field.name
        return ("key_fields" if field.is_key else "other_indexes"), field.name

    def add(self, problem: str, owner: str, kind: str | None) -> None:
        self.problems[problem] += 1
        if owner == "":
            self.class_set += 1
            return
        bucket, name = self.bucket(owner, kind)
        self.buckets[bucket][name] = self.buckets[bucket].get(name, 0) + 1

    def add_partial(self, missing: list[str]) -> None:
        """A hash at an instance key lacking the value of the key fields ``missing``."""
        self.partial_writes += 1
        for name in missing:
            self.buckets["key_fields"][name] += 1

    def as_dict(self) -> dict[str, Any]:
        total = sum(self.problems.values()) + self.partial_writes
        return {"class_set": self.class_set, **self.buckets, **self.problems,
                "partial_writes": self.partial_writes, "instances": self.instances,
                "unreadable": self.unreadable, "total": total}



class CheckMixin(_Host):
    """Index health reports (part of MaintenanceMixin)."""

    @classmethod
    def check_indexes(cls, batch_size: int = 1000, group: str | None = None, *,
                      progress: Progress | None = None) -> dict[str, Any]:
        """Read-only health report of every index of the model.

        Returns a dict with problem counts per index (``class_set`` and one
        dict per index category: ``key_fields``, ``sorted_fields``,
        ``indexed_fields``, ``geo_fields``, ``unique_fields``,
        ``relationship_fields``, ``composite_indexes`` keyed by index key, by
        index name for a sharded model, ``other_indexes``), per problem type
        (``orphans``, ``missing``, ``wrong``, ``owner_records``), ``partial_writes``
        (hashes at instance keys lacking a key field's value, also counted per
        KeyField under ``key_fields``, which lists every KeyField), the number of
        ``instances`` checked, the number of ``unreadable`` hashes (logged; not
        counted in the total) and ``total``. Point-in-time: concurrent writes
        can show up as transient problems.

        ``group``: only the index keys and instances of that tag group; the
        reports of every group add up (:func:`merge_reports`) to the report of
        the whole model.

        ``progress(phase, done, total)``, if given, is called as the check advances:
        phase ``"indexes"`` counts index keys, then ``"instances"`` counts instance
        hashes (its total is the class set's size until the keyspace scan is over,
        then the number of hashes it found).
        """
        report = _Report(cls)
        client = get_client()
        index_keys = cls.index_keys(batch_size, group=group)
        if progress is not None:
            progress("indexes", 0, len(index_keys))
        for done, index_key in enumerate(index_keys, 1):
            cls._check_index_key(client, index_key, report, batch_size)
            if progress is not None:
                progress("indexes", done, len(index_keys))
        total = class_set_size(cls) if progress is not None else 0
        cursor, seen = 0, 0
        if progress is not None:
            progress("instances", 0, total)
        while True:
            cursor, found = cls.scan_instance_keys(cursor, batch_size, group=group)
            for part in chunks(found, batch_size):
                cls._check_instances(client, part, report)
            seen += len(found)
            if progress is not None:  # once the scan is over, its count is the total
                progress("instances", seen, seen if cursor == 0 else max(total, seen))
            if cursor == 0:
                break
        return report.as_dict()

    @classmethod
    def _check_index_key(cls, client: Client, index_key: str, report: _Report,
                         batch_size: int) -> None:
        """Index side: every entry must point at a live instance that produces it."""
        meta = cls._meta
        owner = cls._index_owner(index_key)
        typ = key_type(client, index_key)
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
    def _check_instances(cls, client: Client, part: Sequence[str], report: _Report) -> None:
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
            missing = missing_key_fields(cls._meta, raw)
            if missing:
                report.add_partial(missing)
                continue
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
                        geo: _GeoQueue = pipe
                        geo.geopos(rkey, member)
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
