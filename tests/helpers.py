"""Test helpers shared by several test modules.

The key helpers build key names through the model's own layout (``Model._meta``
and the fields' key builders), so a test using them reads the same in the
standalone run (``Person:e:o``, ``$SortedF:Person:age``) and in the cluster run
(``{Person#9.63}:e:o``, ``$SortedF:{Person#9.63}:age``). The server helpers
(``db_keys``, ``db_size``, ``command_calls``) sum over every primary of a
``RedisCluster`` and ask the one server of a ``redis.Redis``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.connection

from popoto import keys, redis_db


@contextlib.contextmanager
def count_round_trips() -> Iterator[list[int]]:
    """Count client->server writes (one per command or per pipeline batch, on any node)."""
    counter = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        counter[0] += 1
        return original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counting
    try:
        yield counter
    finally:
        redis.connection.AbstractConnection.send_packed_command = original


def worker_url(url: str) -> str:
    """``url`` for ``popoto.configure(url=...)`` in a worker process: with
    ``?cluster=true`` when this process talks to a Redis Cluster."""
    if not redis_db.is_cluster():
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "cluster"]
    query.append(("cluster", "true"))
    return urlunsplit(parts._replace(query=urlencode(query)))


# --- key names (layout-agnostic) --------------------------------------------------
def key_of(model: Any, *values: Any) -> str:
    """The instance key of ``model`` with these key values (ordered by field name)."""
    return model._meta.instance_key(values)


def _ns(model: Any, instance: Any, ns: str | None = None) -> str:
    if ns is not None:
        return ns
    if instance is None:
        groups = model._meta.groups
        if model._meta.sharded:
            raise ValueError(f"{model.__name__} is sharded: pass instance= to name its group")
        return groups[0]
    pk = instance if isinstance(instance, str) else instance.pk
    return keys.ns_of(pk)


def index_key(model: Any, field: str, *parts: Any, instance: Any = None,
              ns: str | None = None) -> str:
    """The index key of ``model.field`` in the tag group of ``instance`` (object or key),
    or in group ``ns``; an unsharded model needs neither.

    ``parts``: the value of an IndexedField / Relationship (a related key), the
    partition values of a SortedField, nothing for a GeoField.
    """
    ns = _ns(model, instance, ns)
    f = model._meta.fields[field]
    if f.is_geo:
        return f.geo_key(ns)
    if f.is_sorted:
        return f.sorted_key(tuple(parts), ns)
    if f.is_relationship or f.is_indexed:
        (value,) = parts
        return f.index_key(value, ns)
    raise ValueError(f"{model.__name__}.{field} owns no index")


def index_members(client: Any, model: Any, field: str, *parts: Any) -> set[str]:
    """The members of ``model.field``'s index (``parts`` as for :func:`index_key`) in
    every tag group together: the whole index of a sharded model."""
    members: set[str] = set()
    for ns in model._meta.groups:
        key = index_key(model, field, *parts, ns=ns)
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "zset":
            found = client.zrange(key, 0, -1)
        elif kind == "set":
            found = client.smembers(key)
        elif kind == "none":
            found = []
        else:
            raise ValueError(f"{key} is a {kind}, not an index")
        members |= {m.decode() if isinstance(m, bytes) else m for m in found}
    return members


def class_set_of(instance: Any) -> str:
    """The class set holding ``instance`` (object or key): one per tag group."""
    pk = instance if isinstance(instance, str) else instance.pk
    return keys.class_set_key(keys.ns_of(pk))


# --- server state (summed over a cluster's primaries) -----------------------------
def _is_cluster_client(client: Any) -> bool:
    return hasattr(client, "get_primaries")


def server_count(client: Any) -> int:
    """How many servers answer a round trip: the primaries of a cluster, else 1."""
    return len(client.get_primaries()) if _is_cluster_client(client) else 1


def db_keys(client: Any, pattern: str = "*") -> set[str]:
    """Every key matching ``pattern`` (SCAN over all primaries of a cluster)."""
    return {k.decode() if isinstance(k, bytes) else k
            for k in client.scan_iter(match=pattern, count=1000)}


def db_size(client: Any) -> int:
    """DBSIZE of the server, or summed over every primary of a cluster."""
    if _is_cluster_client(client):
        size = client.dbsize(target_nodes=client.PRIMARIES)
        return sum(size.values()) if isinstance(size, dict) else size
    return client.dbsize()


def command_calls(client: Any, command: str) -> int:
    """How often ``command`` (e.g. "hgetall") ran on the server / on all primaries."""
    name = f"cmdstat_{command.lower()}"
    if _is_cluster_client(client):
        per_node = client.info("commandstats", target_nodes=client.PRIMARIES)
        # several nodes: {node name: stats}; one node: its stats
        one_node = all(k.startswith("cmdstat_") for k in per_node)
        stats = [per_node] if one_node else list(per_node.values())
    else:
        stats = [client.info("commandstats")]
    return sum(int(s.get(name, {}).get("calls", 0)) for s in stats)


def servers_of(client: Any, redis_keys: Any) -> int:
    """How many servers hold ``redis_keys``: the distinct cluster nodes owning their slots,
    else 1 (0 for no keys). A pipeline touching these keys costs that many round trips."""
    found = list(redis_keys)
    if not found:
        return 0
    if not _is_cluster_client(client):
        return 1
    return len({client.get_node_from_key(k).name for k in found})


# --- key values by tag group (models with ONE key field) --------------------------
def group_values(model: Any, ns: str, prefix: str = "k") -> Iterator[str]:
    """Key values ``<prefix><i>`` whose instance of ``model`` falls in tag group ``ns``
    (every value for an unsharded model), in order of ``i``."""
    i = 0
    while True:
        value = f"{prefix}{i}"
        if keys.ns_of(model._meta.instance_key([value])) == ns:
            yield value
        i += 1


def values_in_one_group(model: Any, n: int, prefix: str = "k") -> list[str]:
    """``n`` key values whose instances all share one tag group (the group of
    ``<prefix>0``): e.g. to fill ONE of a sharded model's per-group streams."""
    ns = keys.ns_of(model._meta.instance_key([f"{prefix}0"]))
    values = group_values(model, ns, prefix)
    return [next(values) for _ in range(n)]


def same_group_value(model: Any, instance: Any, prefix: str = "m") -> str:
    """A key value that moves ``instance`` (object or key) to another key in its own tag
    group: a key migration that stays in one slot, so companions (capped lists,
    access logs, cycles) can move with it in sharded mode too."""
    pk = instance if isinstance(instance, str) else instance.pk
    return next(v for v in group_values(model, keys.ns_of(pk), prefix)
                if model._meta.instance_key([v]) != pk)
