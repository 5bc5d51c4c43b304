"""Key recognition and scans: which keys are a model's instances and index keys.

Index keys are matched exactly by splitting them into their segments, so fields
``score`` and ``score_2`` never touch each other's keys. Everything iterates
with SCAN / SSCAN / ZSCAN / HSCAN; no index is ever read whole. In cluster mode
a SCAN of one tag group goes to the node owning its slot (:func:`group_client`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

import redis
import redis.cluster

from popoto import keys
from popoto.engine.write import IDX_PREFIX, WriteBatch
from popoto.exceptions import ModelException
from popoto.protocol import text as _s
from popoto.redis_db import get_client

if TYPE_CHECKING:
    from redis.cluster import ClusterNode

    from popoto.models.base import Model
    from popoto.models.options import ModelOptions
    from popoto.redis_db import Client

    class MaintenanceHost:
        """What the maintenance mixins use of one another and of Model, which mixes them
        all in (type checking only: each mixin derives from it, from ``object`` at run time).
        """

        _meta: ClassVar[ModelOptions]

        @classmethod
        def from_redis(cls, redis_key: str, raw: dict[bytes | str, bytes]) -> Model: ...

        # KeyspaceMixin
        @classmethod
        def _is_instance_key(cls, key: str) -> bool: ...

        @classmethod
        def _index_owner(cls, index_key: str) -> str | None: ...

        @staticmethod
        def _index_group(index_key: str) -> str: ...

        @classmethod
        def index_keys(cls, count: int = 1000, group: str | None = None) -> list[str]: ...

        @classmethod
        def scan_instance_keys(cls, cursor: int = 0, count: int = 1000,
                               group: str | None = None) -> tuple[int, list[str]]: ...

        @classmethod
        def _expected_batch(cls, key: str, raw: dict[Any, bytes],
                            fields: Iterable[str] | None = None) -> WriteBatch | None: ...

        @classmethod
        def _reindex_batch(cls, key: str, raw: dict[Any, bytes]) -> WriteBatch | None: ...

        # ReindexMixin
        @classmethod
        def reindex_keys(cls, keys: Iterable[str]) -> int: ...

        # PartialWritesMixin
        @classmethod
        def clean_partial_writes(cls, batch_size: int = 1000, group: str | None = None
                                 ) -> int: ...

    _Host = MaintenanceHost

    class _KeyTypes(Protocol):
        """The TYPE command of a client (redis-py's stubs leave it untyped)."""

        def type(self, name: str) -> bytes | str: ...
else:
    _Host = object

logger = logging.getLogger("popoto.maintenance")


def group_client(ns: str) -> Client:
    """The client for SCANs of tag group ``ns``: the node owning its slot in cluster mode.

    Key-addressed commands go through :func:`~popoto.redis_db.get_client` (the
    cluster client routes them); a SCAN must be sent to the node that holds
    the group's slot, which is what this returns (the client itself otherwise).
    """
    client = get_client()
    if isinstance(client, redis.cluster.RedisCluster):
        # the primary of the slot (None only when asking for a missing replica)
        node = cast("ClusterNode", client.get_node_from_key(keys.class_set_key(ns)))
        return client.get_redis_connection(node)
    return client


def server_time_ms(client: Client) -> int:
    """The server's clock in milliseconds (the clock claim leases are written in)."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def key_type(client: Client, key: str) -> str:
    """The type of ``key`` (``"none"`` when it does not exist)."""
    typed: _KeyTypes = client
    return _s(typed.type(key))


def class_set_size(model: type[MaintenanceHost]) -> int:
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


def _ns(redis_key: str) -> str:
    return keys.ns_of(redis_key)


def _scan_step(client: Client, key: str, typ: str, cursor: int,
               count: int) -> tuple[int, list[tuple[str, str]]]:
    """One SSCAN/ZSCAN/HSCAN step: ``(next_cursor, [(member, holder instance key)])``."""
    if typ == "set":
        cursor, members = client.sscan(key, cursor, count=count)
        return int(cursor), [(_s(m), _s(m)) for m in members]
    if typ == "zset":
        cursor, scored = client.zscan(key, cursor, count=count)
        return int(cursor), [(_s(m), _s(m)) for m, _score in scored]
    cursor, fields = client.hscan(key, cursor, count=count)
    return int(cursor), [(_s(f), _s(v)) for f, v in fields.items()]



class KeyspaceMixin(_Host):
    """Which keys belong to the model, found with cursors (part of MaintenanceMixin)."""

    @classmethod
    def _group_index(cls, ns: str) -> int | None:
        """The position of namespace ``ns`` in ``_meta.groups`` (None: not one of them)."""
        meta = cls._meta
        groups = meta.groups
        if not meta.sharded:
            return 0 if ns == groups[0] else None
        prefix = "{" + meta.namespace + "#"
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
        if kind == "LexF":  # an IndexedField's value registry: no entries of an owner
            return None
        # field indexes are built by keys.field_index_key("<Kind>F", ns, field, *parts)
        if kind.endswith("F") and rest[0] in meta.fields and rest[0] in meta.index_owners:
            return rest[0]
        return None

    @staticmethod
    def _index_group(index_key: str) -> str:
        """The tag group (namespace segment) of one of the model's index keys."""
        return index_key.split(keys.SEP, 2)[1]

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
            prefix = "{" + meta.namespace + "#" if meta.sharded else meta.groups[0]
        pattern = "$*" + keys.SEP + keys.glob_escape(prefix) + "*"
        found = {_s(k) for k in client.scan_iter(match=pattern, count=count)}
        return sorted(k for k in found if cls._index_owner(k) is not None
                      and (group is None or cls._index_group(k) == group))

    @classmethod
    def _walk_groups(cls, cursor: int, group: str | None,
                     step: Callable[[str, int], tuple[int, list[str]]]) -> tuple[int, list[str]]:
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
            pattern = keys.glob_escape("{" + meta.namespace + "#") + "*"
            cursor, found = client.scan(cursor, match=pattern, count=count, _type="hash")
            return int(cursor), [k for k in map(_s, found) if cls._is_instance_key(k)]
        return cls._walk_groups(cursor, group, step)

    @classmethod
    def _expected_batch(cls, key: str, raw: dict[Any, bytes],
                        fields: Iterable[str] | None = None) -> WriteBatch | None:
        """What the write path writes for this stored hash (no I/O).

        ``fields`` limits the work to the owners depending on them. None (and
        a warning) when the hash cannot be turned back into a valid instance.
        """
        instance = cls.from_redis(key, raw)
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
        batch.commands = list(batch.idempotent_commands)
        batch.ttl = None
        batch.must_exist = True
        batch.must_not_exist = False
        return batch
