"""Capped lists: ``ListField(max_length=N)`` kept in a Redis LIST beside the instance hash.

Order: **newest first** (index 0 is the newest item), as in Popoto 1.x, on every
write path. ``push``/``append``/``extend`` add items as the newest, at index 0
(LPUSH; ``extend([a, b])`` adds ``a`` then ``b``, so ``b`` ends at index 0), and the
cap drops the oldest items at the end (``LTRIM key 0 N-1``): ``feed[0]`` is always
the newest item and ``reversed(feed)`` reads oldest first. A list assigned or passed
to the constructor is taken as given (index 0 newest); longer than N, it keeps its
first N items. The same rule holds for ``save()``, ``push()``, bulk writes and a
key migration.

Storage: the LIST ``$List:<instance key>:<field>`` (see ``keys.companion_key``),
one msgpack value per item; the instance hash holds no copy of it. The list is
an ``L`` entry of the field (see ``popoto.engine.write``): the save and delete
scripts keep it across saves, rename it on key migration and delete it with
the instance. When the instance has a TTL (``Meta.ttl``, ``_ttl``,
``_expire_at``), every save and every push gives the list the same expiry.

Writes go through the single write path:

* ``proxy.push(v)`` appends ``v`` (plus any unsaved local changes of this
  list) and trims, as ONE partial save of the field (``must_exist``), so
  behaviours see it as an update of that field;
* ``save()`` writes local changes only: appends become LPUSH + LTRIM (so a
  save never overwrites items another process pushed meanwhile), any other
  change (``[i] = v``, ``del``, ``insert``, ``pop``, ``sort``, assignment)
  rewrites the whole list; an unchanged list is not written at all.

Reads are lazy: loading an instance does not read its lists; the first use of
``instance.feed`` reads it (one LRANGE). ``Model.feed.prefetch(objs)`` reads the
lists of many instances in one round trip. ``QuerySet.values()`` reads only
hashes, so it does not return capped lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableSequence
from typing import TYPE_CHECKING, Any, Literal, SupportsIndex, TypeVar, overload

from popoto import encoding, keys
from popoto.engine.write import LINKED_KEY
from popoto.exceptions import FieldUsageError, ModelException
from popoto.fields.field import Field
from popoto.redis_db import get_client

if TYPE_CHECKING:
    from typing_extensions import Self

    from popoto.engine.write import WriteBatch
    from popoto.models.base import Model

#: the Python type a field gives on an instance
_T = TypeVar("_T")

#: Items per RPUSH inside the save script (Lua's unpack() has a small stack).
PUSH_CHUNK = 1000

_CLEAN, _APPEND, _REPLACE = "clean", "append", "replace"
_NONE = object()


def _trim(items: list[Any], cap: int) -> list[Any]:
    """Keep the newest ``cap`` items (the first ones: index 0 is the newest)."""
    if len(items) > cap:
        del items[cap:]
    return items


def _newest_first(added: list[Any]) -> list[Any]:
    """Items added oldest to newest, as they read in the list (newest first)."""
    return added[::-1]


class ListField(Field[_T]):
    """A list stored in the hash; ``ListField(max_length=N)`` is a capped list instead.

    A capped list lives in its own Redis LIST (see :mod:`popoto.fields.capped`).
    """

    type = list

    # ListField(max_length=N) is a CappedListField (its value a CappedListProxy, never
    # None); otherwise the value is a list (| None unless null=False)
    @overload
    def __new__(cls, *, max_length: int, null: bool = True, default: Any = None,
                unique: bool = False) -> CappedListField: ...

    @overload
    def __new__(cls, *, null: Literal[False], default: Any = None, max_length: None = None,
                unique: bool = False) -> ListField[list[Any]]: ...

    @overload
    def __new__(cls, *, null: bool = True, default: Any = None, max_length: None = None,
                unique: bool = False) -> ListField[list[Any] | None]: ...

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is ListField and kwargs.get("max_length") is not None:
            return super().__new__(CappedListField)
        return super().__new__(cls)


class CappedListProxy(MutableSequence[Any]):
    """The value of a capped list field: a list-like view with a Redis-side cap.

    Supports indexing, slicing (returns plain lists), ``len``, iteration,
    ``in``, ``==`` with lists, ``append``/``extend``/``+=`` and the other
    list mutations; ``push(v)`` writes immediately. ``list(proxy)`` gives a
    plain list copy.
    """

    def __init__(self, field: CappedListField, instance: Model, items: list[Any] | None,
                 replace: bool = False) -> None:
        self._field = field
        self._instance = instance
        self._items = items  # None: not read from Redis yet
        self._mode = _REPLACE if replace else _CLEAN
        self._appended: list[Any] = []
        self._inflight: Any = _NONE  # instance._raw when a write of our changes was built

    # --- state -----------------------------------------------------------
    @property
    def max_length(self) -> int:
        return self._field.max_length

    @property
    def has_unsaved_changes(self) -> bool:
        self._sync()
        return self._mode != _CLEAN

    def _sync(self) -> None:
        """Forget pending changes once the save that carried them committed.

        ``Model._saved`` replaces ``instance._raw`` after every committed (or
        queued) write; if it is still the dict seen when the write was built,
        that write failed and the changes stay pending for the next save.
        """
        if self._inflight is not _NONE:
            if self._instance.__dict__.get("_raw") is not self._inflight:
                self._mode = _CLEAN
                self._appended = []
            self._inflight = _NONE

    def _ensure(self) -> list[Any]:
        if self._items is None:
            self._sync()
            key = self._instance._redis_key
            stored = [] if key is None else self._field.read(key)
            self._items = _trim(_newest_first(self._appended) + stored, self.max_length)
        return self._items

    def _loaded(self, stored: list[Any]) -> None:
        self._items = _trim(_newest_first(self._appended) + list(stored), self.max_length)

    def _add(self, values: Iterable[Any]) -> None:
        values = list(values)
        if not values:
            return
        self._sync()
        cap = self.max_length
        if self._mode != _REPLACE:
            self._mode = _APPEND
            self._appended = (self._appended + values)[-cap:]  # oldest to newest
        if self._items is not None:
            self._items = _trim(_newest_first(values) + self._items, cap)

    def _rewrite(self) -> list[Any]:
        """Switch to whole-list rewrite mode and return the items to mutate in place."""
        self._sync()
        items = self._ensure()
        self._mode = _REPLACE
        self._appended = []
        return items

    def _emit(self, batch: WriteBatch, list_key: str) -> None:
        """Queue the commands that write this list's pending changes into ``batch``."""
        self._sync()
        field = self._field
        if batch.is_create or self._mode == _REPLACE:
            batch.command("DEL", list_key)
            field.queue_write(batch, list_key, self._ensure())
        elif self._mode == _APPEND:
            field.queue_push(batch, list_key, self._appended)
        else:
            return
        self._inflight = self._instance.__dict__.get("_raw")

    # --- immediate writes --------------------------------------------------
    def push(self, value: Any, pipeline: Any = None) -> None:
        """Add ``value`` as the newest item (index 0) and trim to the cap, now, in one
        atomic step.

        Runs as a partial save of this field that requires the instance to exist
        (FieldUsageError if it was never saved, ModelException if it is gone);
        unsaved local changes of this list are written in the same step. With
        ``pipeline`` the write is only queued.
        """
        field = self._field
        if self._instance._redis_key is None:
            raise FieldUsageError(f"{field.label}: push({value!r}) needs a saved instance; "
                                  f"save it first (or append() before saving)")
        field.pack_item(value)
        self._sync()
        before = (None if self._items is None else list(self._items), self._mode,
                  list(self._appended))
        self._add([value])
        try:
            self._instance._save_fields([field.name], pipeline, action="push")
        except BaseException:
            self._items, self._mode, self._appended = before
            self._inflight = _NONE
            raise

    def refresh(self) -> None:
        """Re-read the list from Redis, dropping unsaved local changes."""
        self._sync()
        self._mode = _CLEAN
        self._appended = []
        self._items = None
        self._ensure()

    # --- list protocol ---------------------------------------------------
    def __len__(self) -> int:
        return len(self._ensure())

    @overload
    def __getitem__(self, index: SupportsIndex) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: Any) -> Any:
        return self._ensure()[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        items = self._rewrite()
        items[index] = value
        _trim(items, self.max_length)

    def __delitem__(self, index: Any) -> None:
        del self._rewrite()[index]

    def insert(self, index: SupportsIndex, value: Any) -> None:
        items = self._rewrite()
        items.insert(index, value)
        _trim(items, self.max_length)

    def append(self, value: Any) -> None:
        """Add ``value`` as the newest item (index 0) locally (written by the next save)."""
        self._add([value])

    def extend(self, values: Iterable[Any]) -> None:
        """Add ``values`` in order as the newest items (the last one ends at index 0)
        locally; only the newest ``max_length`` are kept."""
        self._add(values)

    def __iadd__(self, values: Iterable[Any]) -> CappedListProxy:
        self._add(values)
        return self

    def pop(self, index: int = -1) -> Any:
        return self._rewrite().pop(index)

    def remove(self, value: Any) -> None:
        self._rewrite().remove(value)

    def clear(self) -> None:
        self._rewrite().clear()

    def reverse(self) -> None:
        self._rewrite().reverse()

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        self._rewrite().sort(key=key, reverse=reverse)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._ensure()))

    def __reversed__(self) -> Iterator[Any]:
        backwards: Iterator[Any] = reversed(list(self._ensure()))  # typeshed: reversed() is Any
        return backwards

    def __contains__(self, value: object) -> bool:
        return value in self._ensure()

    def index(self, value: Any, start: int = 0, stop: int | None = None) -> int:
        items = self._ensure()
        return items.index(value, start, len(items) if stop is None else stop)

    def count(self, value: Any) -> int:
        return self._ensure().count(value)

    def copy(self) -> list[Any]:
        return list(self._ensure())

    def __add__(self, other: Iterable[Any]) -> list[Any]:
        return list(self._ensure()) + list(other)

    def __radd__(self, other: Iterable[Any]) -> list[Any]:
        return list(other) + list(self._ensure())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CappedListProxy):
            return self._ensure() == other._ensure()
        if isinstance(other, list):
            return self._ensure() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # unhashable, like the list it mirrors

    def __repr__(self) -> str:
        return repr(self._ensure())


class CappedListField(ListField[CappedListProxy]):
    """``ListField(max_length=N)``: a list capped at N items, in its own Redis LIST.

    See the module docstring for order, storage, TTL and write semantics.
    ``ListField(max_length=N)`` builds this class; items are any values the
    msgpack encoding supports. ``unique`` is not supported.
    """

    def __init__(self, max_length: int | None = None, **kwargs: Any) -> None:
        if (not isinstance(max_length, int) or isinstance(max_length, bool)
                or max_length < 1):
            raise ModelException(f"ListField max_length must be a positive int (the cap), "
                                 f"got {max_length!r}")
        if kwargs.get("unique"):
            raise ModelException("A capped ListField (max_length=...) cannot be unique")
        if kwargs.get("type", list) is not list:
            raise ModelException(f"A capped ListField holds a list, not {kwargs['type']!r}")
        kwargs.pop("type", None)
        super().__init__(max_length=max_length, **kwargs)
        self.max_length: int = max_length

    # --- keys and storage ----------------------------------------------------
    def list_key(self, instance_key: str) -> str:
        """The Redis LIST of this field for the instance stored at ``instance_key``."""
        return keys.companion_key("List", instance_key, self.name)

    def pack_item(self, item: Any) -> bytes:
        try:
            return encoding.pack(item)
        except (TypeError, ValueError, OverflowError) as exc:
            raise self.error(f"list items must be encodable ({exc})", item) from None

    def read(self, instance_key: str) -> list[Any]:
        """The stored items of one instance (one LRANGE)."""
        return self._decode(instance_key, get_client().lrange(self.list_key(instance_key), 0, -1))

    def _decode(self, instance_key: str, raw: list[bytes]) -> list[Any]:
        return [encoding.decode_field(item, instance_key, self.name) for item in raw]

    def prefetch(self, objs: Iterable[Any]) -> None:
        """Read this list for many instances in one pipelined round trip."""
        todo = [o for o in objs if getattr(o, "_redis_key", None) is not None
                and self.proxy(o)._items is None]
        if not todo:
            return
        pipe = get_client().pipeline(transaction=False)
        for obj in todo:
            pipe.lrange(self.list_key(obj._redis_key), 0, -1)
        for obj, raw in zip(todo, pipe.execute()):
            self.proxy(obj)._loaded(self._decode(obj._redis_key, raw))

    def queue_write(self, batch: WriteBatch, list_key: str, items: list[Any]) -> None:
        """RPUSH ``items`` as they read (index 0 newest) into an emptied list, inside
        ``batch``, then trim to the cap."""
        packed = [self.pack_item(item) for item in items]
        for start in range(0, len(packed), PUSH_CHUNK):
            batch.command("RPUSH", list_key, *packed[start:start + PUSH_CHUNK])
        batch.command("LTRIM", list_key, 0, self.max_length - 1)

    def queue_push(self, batch: WriteBatch, list_key: str, added: list[Any]) -> None:
        """LPUSH ``added`` (oldest to newest: the last ends at index 0), then trim the
        oldest beyond the cap, inside ``batch``."""
        packed = [self.pack_item(item) for item in added]
        for start in range(0, len(packed), PUSH_CHUNK):
            batch.command("LPUSH", list_key, *packed[start:start + PUSH_CHUNK])
        batch.command("LTRIM", list_key, 0, self.max_length - 1)

    # --- values --------------------------------------------------------------
    def proxy(self, instance: Model) -> CappedListProxy:
        """The instance's proxy, wrapping a plain list assigned behind the descriptor."""
        state = instance.__dict__
        value = state.get(self.name, _NONE)
        if isinstance(value, CappedListProxy) and value._instance is instance:
            return value
        if value is _NONE:
            saved = instance._redis_key is not None
            proxy = CappedListProxy(self, instance, None if saved else [], replace=not saved)
        else:
            proxy = CappedListProxy(self, instance, self._as_list(value), replace=True)
        state[self.name] = proxy
        return proxy

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(self, instance: Model, owner: type[Any] | None = None) -> CappedListProxy: ...

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        if instance is None:
            return self
        return self.proxy(instance)

    def __set__(self, instance: Any,
                value: CappedListProxy | list[Any] | tuple[Any, ...] | None) -> None:
        if isinstance(value, CappedListProxy) and value._instance is instance \
                and value._field is self:
            instance.__dict__[self.name] = value
            return
        instance.__dict__[self.name] = CappedListProxy(self, instance, self._as_list(value),
                                                       replace=True)

    def _as_list(self, value: Any) -> list[Any]:
        value = self.coerce(value)
        items = list(value)  # copies a proxy of another instance too
        return _trim(items, self.max_length)

    def get_default(self) -> Any:
        value = super().get_default()
        return [] if value is None else list(value)

    def coerce(self, value: Any) -> Any:
        """A proxy stays itself; None means empty; lists and tuples become capped lists."""
        if isinstance(value, CappedListProxy):
            return value
        if value is None:
            return []
        if isinstance(value, (list, tuple)):
            return _trim(list(value), self.max_length)
        raise self.error(f"expected a list, got {type(value).__name__}", value)

    def validate(self, value: Any, null_check: bool = True) -> None:
        if not isinstance(value, (list, CappedListProxy)):
            raise self.error(f"expected a list, got {type(value).__name__}", value)

    def to_db(self, value: Any) -> bytes:
        return encoding.pack(None)  # never stored in the hash (contribute_save drops it)

    # --- write hooks ---------------------------------------------------------
    def owns_index(self) -> bool:
        return True

    @property
    def depends_on(self) -> tuple[str, ...]:  # type: ignore[override]  # Field: a class attribute
        """Every save runs this field's hook: the list's TTL follows the hash's."""
        return tuple(self.model._meta.fields) if self.model is not None else ()

    def contribute_save(self, instance: Model, value: Any, batch: WriteBatch) -> None:
        list_key = self.list_key(batch.key)
        batch.add(self.name, LINKED_KEY, list_key, self.name)
        if self.name in batch.mapping:
            del batch.mapping[self.name]
            batch.hdel.append(self.name)  # no copy in the hash (e.g. from a plain ListField)
        if batch.update_fields is None or self.name in batch.update_fields:
            self.proxy(instance)._emit(batch, list_key)
        if instance._ttl:
            batch.command("EXPIRE", list_key, int(instance._ttl))
        elif instance._expire_at:
            batch.command("EXPIREAT", list_key, int(instance._expire_at.timestamp()))
