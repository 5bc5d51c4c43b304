"""The only place Redis key names are built.

Key segments are joined with ``:``. A segment that comes from user data is
escaped with percent-encoding of the characters ``% : * ? [ ] { } \\`` so
that every key parses back unambiguously and no user value can inject a glob
pattern into ``SCAN MATCH``. ``{`` and ``}`` are reserved for hash tags: a
cluster mode adds a tag in :func:`tag` and nowhere else.
"""

from __future__ import annotations

import binascii
import re
import zlib
from collections.abc import Iterable
from typing import Any

SEP = ":"
_ESCAPE_CHARS = "%:*?[]{}\\"
_ESCAPE = {ord(c): f"%{ord(c):02X}" for c in _ESCAPE_CHARS}
_UNESCAPE_RE = re.compile(r"%([0-9A-F]{2})")


def escape(value: Any) -> str:
    """Escape one key segment (user data) so it has no separator or glob characters."""
    return str(value).translate(_ESCAPE)


def unescape(segment: str) -> str:
    """Inverse of :func:`escape`."""
    return _UNESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), segment)


N_SLOTS = 16384
_MAX_BALANCED_GROUPS = 1024


def key_slot(key: str | bytes) -> int:
    """The Redis Cluster slot of ``key`` (CRC16 of its hash tag, else of the whole key)."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1:end]
    return binascii.crc_hqx(data, 0) % N_SLOTS


def group_tag(model_name: str, group: int, n_groups: int) -> str:
    """The namespace of tag group ``group`` of a model split into ``n_groups`` groups.

    ``{Model#k}``, or ``{Model#k.j}`` with the smallest ``j`` whose slot falls in
    the k-th of ``n_groups`` equal slot ranges: the groups then spread evenly over
    a cluster whose masters own equal contiguous slot ranges (what ``redis-cli
    --cluster create`` builds), instead of wherever CRC16 happens to put them.
    """
    base = f"{model_name}#{group}"
    if n_groups > _MAX_BALANCED_GROUPS:
        return "{" + base + "}"
    low, high = group * N_SLOTS // n_groups, (group + 1) * N_SLOTS // n_groups
    candidate, salt = base, 0
    while not low <= binascii.crc_hqx(candidate.encode(), 0) % N_SLOTS < high:
        salt += 1
        candidate = f"{base}.{salt}"
    return "{" + candidate + "}"


def group_of(token: str, n_groups: int) -> int:
    """The tag group (0..n_groups-1) of an instance's escaped key values or a unique value."""
    if n_groups == 1:
        return 0
    return zlib.crc32(token.encode()) % n_groups


def ns_of(redis_key: str) -> str:
    """The namespace (first segment) of an instance key."""
    return redis_key.split(SEP, 1)[0]


def instance_key(ns: str, key_values: Iterable[Any]) -> str:
    """``<ns>:v1:v2`` with key values already ordered by field name."""
    return SEP.join([ns, *(escape(v) for v in key_values)])


def split_instance_key(redis_key: str) -> list[str]:
    """Return the unescaped key values of an instance key (without the model name)."""
    return [unescape(s) for s in redis_key.split(SEP)[1:]]


def class_set_key(ns: str) -> str:
    return f"$Class{SEP}{ns}"


def field_index_key(kind: str, ns: str, field_name: str, *parts: Any) -> str:
    """Index owned by one field, e.g. ``$SortedF:Model:score`` or ``$IndexF:Model:color:red``."""
    return SEP.join([f"${kind}", ns, field_name, *(escape(p) for p in parts)])


def composite_index_key(ns: str, field_names: Iterable[str]) -> str:
    return SEP.join(["$Index", ns, *field_names])


def behaviour_key(kind: str, ns: str, *parts: Any) -> str:
    """Keys owned by a model behaviour, e.g. ``$Priority:Model``."""
    return SEP.join([f"${kind}", ns, *(escape(p) for p in parts)])


def companion_key(kind: str, instance_key: str, slot: str) -> str:
    """A key holding data of ONE instance beside its hash, e.g. ``$List:Post:42:comments``.

    ``instance_key`` is embedded as is (its segments are already escaped), so the
    companion follows its instance wherever the instance key is placed (a cluster
    hash tag in the instance key keeps both in one slot).
    """
    return SEP.join([f"${kind}", instance_key, escape(slot)])


def stream_key(name: str, partition: Any = None, ns: str = "") -> str:
    """Mutation stream ``stream:<name>`` or ``stream:<name>:<partition>`` (both escaped).

    A tag group's namespace ``ns`` (``{Model#k}``) is appended as is:
    ``stream:<name>[:<partition>]:{Model#k}`` lives in that group's slot, so a
    save script of the group can XADD to it. Escaped segments hold no ``{``, so
    the group's tag is the key's hash tag. An unsharded ``ns`` adds nothing.
    """
    parts = ["stream", escape(name)]
    if partition is not None:
        parts.append(escape(partition))
    if ns.startswith("{"):
        parts.append(ns)
    return SEP.join(parts)


def temp_key(token: str, ns: str = "") -> str:
    """A query's temporary key; inside the group's slot when ``ns`` is a tag group."""
    return f"$Tmp{SEP}{ns}{SEP}{token}" if ns.startswith("{") else f"$Tmp{SEP}{token}"


class DB_key(str):  # noqa: N801 - Popoto 1.x's public class name
    """A Redis key that is also a ``str``: ``key.redis_key`` is the plain string.

    Returned by ``instance.db_key``, ``Model._meta.db_class_key`` /
    ``db_class_set_key`` and the fields' key builders
    (``get_special_use_field_db_key`` ...). Being a ``str`` it works wherever a key
    string does: redis-py commands, msgpack, comparisons, hashing, formatting.

    ``DB_key(*parts)`` joins parts with ``:``. A ``DB_key`` part, and a first part
    given as a plain ``str`` (a key or a key prefix), are used as they are; every
    other part is one user-data segment and is escaped like the ORM escapes key
    values (lists and tuples give one segment per item). So
    ``DB_key(field.get_special_use_field_db_key(Model, "color"), "a:b")`` is the real
    index key ``$IndexF:Model:color:a%3Ab``.
    """

    __slots__ = ()

    def __new__(cls, *parts: Any) -> DB_key:
        segments: list[str] = []
        for position, part in enumerate(parts):
            if isinstance(part, DB_key) or (position == 0 and type(part) is str):
                segments.append(str.__str__(part))
            elif isinstance(part, (list, tuple)):
                segments += [escape(p) for p in part]
            else:
                segments.append(escape(part))
        return super().__new__(cls, SEP.join(segments))

    @property
    def redis_key(self) -> str:
        """The key as a plain ``str``."""
        return str.__str__(self)

    @property
    def segments(self) -> list[str]:
        """The ``:``-separated segments, unescaped."""
        return [unescape(s) for s in self.split(SEP)]

    def __repr__(self) -> str:
        return f"DB_key({str.__repr__(self)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (DB_key, (self.redis_key,))


def glob_escape(text: str) -> str:
    """Escape glob metacharacters for MATCH patterns (segments are already escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
