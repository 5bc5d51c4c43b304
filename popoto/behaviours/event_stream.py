"""EventStreamMixin: every committed create, update and delete appends one stream entry.

The XADD runs inside the same script call as the write it reports (a command
of the save/delete WriteBatch), so an entry exists if and only if the write
committed: a write that fails (unique violation, missing instance, ...) adds
nothing, and a delete of an instance that did not exist adds nothing.
Index rebuilds (``reindex_keys``) add no entries.

Stream key (``popoto.keys.stream_key``)::

    stream:<_stream_name>                        (no partition field)
    stream:<_stream_name>:<partition value>      (escaped str() of the value;
                                                  None -> the unpartitioned key)

A sharded model (``Meta.shards`` > 1, or cluster mode) writes each entry in
the stream of the instance's tag group, ``stream:<_stream_name>[:<partition
value>]:{Model#k}``, so the XADD runs in the save script's own slot. Its
events are then spread over one stream per group: ``Model.stream_keys()``
lists them, ``stream_range``/``stream_len`` read them all, and a
``workers.StreamConsumer`` given the stream name (with the model module
imported) or ``Model.stream_keys()`` consumes them all. Entries of one
instance are in one stream, in commit order (a save that moves an instance to
another group writes its event, with ``old_pk``, to the new group's stream).

Entry format, a contract with stream consumers. Every field and value is a
string (UTF-8)::

    model           model class name, e.g. "Order"
    pk              instance key, e.g. "Order:42" (after the write)
    op              "create" | "update" | "delete"
    ts              client time of the write, epoch seconds as a float literal
                    ("1700000000.123456")
    changed_fields  field names joined by "," (sorted), as Popoto 1.x writes them:
                    the update_fields of a partial save (touch()/push() are
                    partial saves of one field); "" for "create", full saves
                    and "delete"
    old_pk          only present when the save moved the instance to a new key
                    (save(migrate_key=True)): the key it moved from
    <name>          one per name in _stream_metadata_fields: str() of the field's
                    value, "" for None
    <extra>         fields of a custom event (``_xadd_event(op, extra_fields)``)

"create" means the first save of a new instance object (``Model.create``,
``Model(...).save()``, bulk_create), even when ``Model(...).save()`` overwrote
an existing key; "update" is any save of a loaded or already saved instance.
``instance._xadd_event(op, extra_fields=None, pipeline=None)`` appends a custom
event for the instance (same fields, ``op`` as given, ``changed_fields`` ""), now or
queued on ``pipeline``. ``parse_event`` turns an entry back into Python values. The stream is capped
with ``XADD ... MAXLEN ~ <_stream_max_length>`` (approximate trimming; None
disables the cap); a sharded model's cap applies to each group's stream.
"""

from __future__ import annotations

import heapq
import itertools
import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

from popoto import keys
from popoto.engine.io import Steps, run
from popoto.engine.scripts import CommandQueue
from popoto.exceptions import ModelException
from popoto.protocol import text as _s
from popoto.redis_db import get_client

if TYPE_CHECKING:
    from popoto.engine.write import WriteBatch
    from popoto.models.options import ModelOptions

#: Entry fields every event has (metadata field names must differ from these).
STANDARD_FIELDS = ("model", "pk", "op", "ts", "changed_fields", "old_pk")

#: what ``_xadd_event`` can queue its XADD on (a redis pipeline)
_Q = TypeVar("_Q", bound=CommandQueue)


def split_changed_fields(value: str) -> list[str]:
    """``changed_fields`` as a list: comma-separated names ("" -> []); a JSON list written
    by earlier versions of this ORM is read too."""
    if value.startswith("["):
        return [str(v) for v in json.loads(value)]
    return value.split(",") if value else []


def parse_event(fields: dict[Any, Any]) -> dict[str, Any]:
    """One stream entry as Python values: ``ts`` float, ``changed_fields`` a list of names,
    everything else (metadata included) the str written."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        name, value = _s(name), _s(value)
        if name == "ts":
            out[name] = float(value)
        elif name == "changed_fields":
            out[name] = split_changed_fields(value)
        else:
            out[name] = value
    return out


class EventStreamMixin:
    """Append ``{model, pk, op, ts, changed_fields, <metadata>}`` to a stream per write.

    Class attributes: ``_stream_name`` ('mutations'), ``_stream_partition_field``
    (None, or a field name: one stream per value), ``_stream_max_length``
    (10000, approximate cap), ``_stream_metadata_fields`` (() - field values to
    copy into each entry). See the module docstring for the exact entry format.
    """

    popoto_behaviour = True
    _stream_name: str = "mutations"
    _stream_partition_field: str | None = None
    _stream_max_length: int | None = 10000
    _stream_metadata_fields: tuple[str, ...] = ()
    #: set on a model class once its stream fields are checked (read from its own __dict__)
    _stream_fields_ok: ClassVar[bool]
    # provided by the host Model
    _meta: ClassVar[ModelOptions]

    if TYPE_CHECKING:
        @property
        def pk(self) -> str: ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # what the class set, any object until checked here
        name: object = cls._stream_name
        cap: object = cls._stream_max_length
        part: object = cls._stream_partition_field
        meta: object = cls._stream_metadata_fields
        problem = None
        if not isinstance(name, str) or not name:
            problem = f"_stream_name must be a non-empty str, got {name!r}"
        elif cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            problem = f"_stream_max_length must be a positive int or None, got {cap!r}"
        elif part is not None and not isinstance(part, str):
            problem = f"_stream_partition_field must be a field name or None, got {part!r}"
        elif not isinstance(meta, (tuple, list)) or not all(isinstance(m, str) for m in meta):
            problem = f"_stream_metadata_fields must be a tuple of field names, got {meta!r}"
        elif set(meta) & set(STANDARD_FIELDS):
            problem = (f"_stream_metadata_fields cannot use the reserved entry names "
                       f"{sorted(set(meta) & set(STANDARD_FIELDS))}")
        if problem:
            raise ModelException(f"{cls.__name__}: {problem}")

    # --- stream keys and reading -------------------------------------------
    @classmethod
    def _check_stream_fields(cls) -> None:
        if cls.__dict__.get("_stream_fields_ok"):
            return
        fields = cls._meta.fields
        named = [cls._stream_partition_field] if cls._stream_partition_field else []
        for name in [*named, *cls._stream_metadata_fields]:
            if name not in fields:
                raise ModelException(f"{cls.__name__}: stream field {name!r} is not a field "
                                     f"(fields: {', '.join(fields)})")
        cls._stream_fields_ok = True

    @classmethod
    def stream_key(cls, partition: Any = None, ns: str | None = None) -> str:
        """Key of this model's stream (of one partition when partitioned).

        A sharded model has one stream per tag group: give the group ``ns``
        (``keys.ns_of(instance key)``), or use :meth:`stream_keys`.
        """
        if ns is None:
            ns = cls._meta.single_group("stream_key() (one stream per group: stream_keys())")
        return keys.stream_key(cls._stream_name, partition, ns)

    @classmethod
    def stream_keys(cls, partition: Any = None) -> list[str]:
        """Every stream this model writes to (of one partition): one per tag group."""
        return [keys.stream_key(cls._stream_name, partition, ns) for ns in cls._meta.groups]

    @classmethod
    def stream_range(cls, start: str = "-", end: str = "+", count: int | None = None,
                     partition: Any = None) -> list[tuple[str, dict[str, Any]]]:
        """``(entry id, parse_event(entry))`` pairs, oldest first (XRANGE).

        The stream may be shared with other models (same ``_stream_name``). A
        sharded model's group streams are read in one pipelined round trip and
        merged: each stream in its own (commit) order, the streams interleaved
        by entry id time, then by the writer's ``ts``. So one instance's entries
        are in commit order; entries of different groups in time order as far
        as the servers' and writers' clocks agree.
        """
        return run(_range_steps(cls.stream_keys(partition), start, end, count))

    @classmethod
    def stream_len(cls, partition: Any = None) -> int:
        """Number of entries in the stream (XLEN; summed over a sharded model's groups)."""
        return run(_len_steps(cls.stream_keys(partition)))

    # --- entries ------------------------------------------------------------
    def _event_args(self, key: str, ns: str, op: str, changed: list[str],
                    old_key: str | None = None) -> list[str | int]:
        """The XADD command of one event (see the module docstring for its fields)."""
        cls = type(self)
        cls._check_stream_fields()
        partition = getattr(self, cls._stream_partition_field) \
            if cls._stream_partition_field else None
        args: list[str | int] = ["XADD", keys.stream_key(cls._stream_name, partition, ns)]
        if cls._stream_max_length is not None:
            args += ["MAXLEN", "~", cls._stream_max_length]
        args += ["*", "model", self._meta.model_name, "pk", key, "op", op,
                 "ts", repr(time.time()), "changed_fields", ",".join(changed)]
        if old_key and old_key != key:
            args += ["old_pk", old_key]
        for name in cls._stream_metadata_fields:
            value = getattr(self, name)
            args += [name, "" if value is None else str(value)]
        return args

    @overload
    def _xadd_event(self, op: str, extra_fields: dict[str, Any] | None = None,
                    pipeline: None = None) -> str: ...

    @overload
    def _xadd_event(self, op: str, extra_fields: dict[str, Any] | None = None, *,
                    pipeline: _Q) -> _Q: ...

    @overload
    def _xadd_event(self, op: str, extra_fields: dict[str, Any] | None,
                    pipeline: _Q) -> _Q: ...

    def _xadd_event(self, op: str, extra_fields: dict[str, Any] | None = None,
                    pipeline: _Q | None = None) -> str | _Q:
        """Append a custom event for this instance (``op`` as given, ``changed_fields``
        ""), plus ``extra_fields`` (values as str, None as ""). Returns the entry id,
        or ``pipeline`` when the XADD was only queued on it."""
        if not isinstance(op, str) or not op:
            raise ModelException(f"{type(self).__name__}._xadd_event: op must be a non-empty "
                                 f"str, got {op!r}")
        key = self.pk
        args = self._event_args(key, keys.ns_of(key), op, [])
        for name, value in (extra_fields or {}).items():
            if not isinstance(name, str) or name in STANDARD_FIELDS:
                raise ModelException(f"{type(self).__name__}._xadd_event: extra field "
                                     f"{name!r} is not a str or is a standard entry field")
            args += [name, "" if value is None else str(value)]
        if pipeline is not None:
            pipeline.execute_command(*args)
            return pipeline
        return _s(get_client().execute_command(*args))

    # --- behaviour hooks ---------------------------------------------------
    def _xadd_mutation(self, batch: WriteBatch, op: str, changed: list[str]) -> None:
        # the key it moved from: in the same script (batch.old_key), or, when a sharded
        # instance moved to another tag group, the key the separate delete removes
        old_key = batch.old_key or (self.__dict__.get("_redis_key") if op != "delete" else None)
        batch.command(*self._event_args(batch.key, batch.ns, op, changed, old_key))

    def behaviour_on_save(self, batch: WriteBatch) -> None:
        # 1.x: the names of a partial save's fields; "" for creates and full saves
        changed = [] if batch.update_fields is None else sorted(batch.update_fields)
        self._xadd_mutation(batch, "create" if batch.is_create else "update", changed)

    def behaviour_on_delete(self, batch: WriteBatch) -> None:
        self._xadd_mutation(batch, "delete", [])


def _merge_key(row: tuple[Any, dict[Any, Any]]) -> tuple[int, float]:
    """Entry id milliseconds, then the writer's ``ts`` (ties across groups' streams)."""
    entry_id, fields = row
    ts = fields.get(b"ts", fields.get("ts", 0))
    try:
        when = float(ts)
    except (TypeError, ValueError):
        when = 0.0
    return int(_s(entry_id).partition("-")[0]), when


def _range_steps(stream_keys: list[str], start: str, end: str, count: int | None
                 ) -> Steps[list[tuple[str, dict[str, Any]]]]:
    replies = yield [("xrange", (key, start, end, count)) for key in stream_keys]
    # a k-way merge keeps each stream's own order (exact) and interleaves the streams
    rows: Iterable[tuple[Any, dict[Any, Any]]] = (
        heapq.merge(*replies, key=_merge_key) if len(replies) > 1 else replies[0])
    if count is not None:
        rows = itertools.islice(rows, count)
    return [(_s(entry_id), parse_event(fields)) for entry_id, fields in rows]


def _len_steps(stream_keys: list[str]) -> Steps[int]:
    replies = yield [("xlen", (key,)) for key in stream_keys]
    return sum(int(n) for n in replies)
