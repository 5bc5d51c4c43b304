"""Typed field shortcuts and the key fields."""

from __future__ import annotations

import builtins
import datetime as _dt
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from popoto import keys
from popoto.engine.sources import Combine, KeyList, KeyPattern, Program, SetSource, Source
from popoto.exceptions import ModelException
from popoto.fields.field import Field
from popoto.protocol import OP_LEX
from popoto.query import lookups as lk

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from popoto.fields.field import FieldOptions
    from popoto.models.base import Model

#: the Python type a field gives on an instance
_T = TypeVar("_T")


class IntField(Field[_T]):
    type = int

    if TYPE_CHECKING:  # the value type follows null= (default True: it may be None)
        @overload
        def __init__(self: IntField[int], *, null: Literal[False],
                     **options: Unpack[FieldOptions]) -> None: ...

        @overload
        def __init__(self: IntField[int | None], *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...

        def __init__(self, *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...


class FloatField(Field[_T]):
    type = float

    if TYPE_CHECKING:  # the value type follows null= (default True: it may be None)
        @overload
        def __init__(self: FloatField[float], *, null: Literal[False],
                     **options: Unpack[FieldOptions]) -> None: ...

        @overload
        def __init__(self: FloatField[float | None], *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...

        def __init__(self, *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...


class DecimalField(Field[_T]):
    type = Decimal

    if TYPE_CHECKING:  # the value type follows null= (default True: it may be None)
        @overload
        def __init__(self: DecimalField[Decimal], *, null: Literal[False],
                     **options: Unpack[FieldOptions]) -> None: ...

        @overload
        def __init__(self: DecimalField[Decimal | None], *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...

        def __init__(self, *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...


class StringField(Field[_T]):
    type = str

    if TYPE_CHECKING:  # the value type follows null= (default True: it may be None)
        @overload
        def __init__(self: StringField[str], *, null: Literal[False],
                     **options: Unpack[FieldOptions]) -> None: ...

        @overload
        def __init__(self: StringField[str | None], *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...

        def __init__(self, *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...


class BooleanField(Field[_T]):
    type = bool

    if TYPE_CHECKING:  # the value type follows null= (default True: it may be None)
        @overload
        def __init__(self: BooleanField[bool], *, null: Literal[False],
                     **options: Unpack[FieldOptions]) -> None: ...

        @overload
        def __init__(self: BooleanField[bool | None], *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...

        def __init__(self, *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...


class BytesField(Field[_T]):
    type = bytes

    if TYPE_CHECKING:  # the value type follows null= (default True: it may be None)
        @overload
        def __init__(self: BytesField[bytes], *, null: Literal[False],
                     **options: Unpack[FieldOptions]) -> None: ...

        @overload
        def __init__(self: BytesField[bytes | None], *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...

        def __init__(self, *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...


class DictField(Field[_T]):
    type = dict

    if TYPE_CHECKING:  # the value type follows null= (default True: it may be None)
        @overload
        def __init__(self: DictField[dict[Any, Any]], *, null: Literal[False],
                     **options: Unpack[FieldOptions]) -> None: ...

        @overload
        def __init__(self: DictField[dict[Any, Any] | None], *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...

        def __init__(self, *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...


class SetField(Field[_T]):
    type = set

    if TYPE_CHECKING:  # the value type follows null= (default True: it may be None)
        @overload
        def __init__(self: SetField[set[Any]], *, null: Literal[False],
                     **options: Unpack[FieldOptions]) -> None: ...

        @overload
        def __init__(self: SetField[set[Any] | None], *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...

        def __init__(self, *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...


class TupleField(Field[_T]):
    type = tuple

    if TYPE_CHECKING:  # the value type follows null= (default True: it may be None)
        @overload
        def __init__(self: TupleField[tuple[Any, ...]], *, null: Literal[False],
                     **options: Unpack[FieldOptions]) -> None: ...

        @overload
        def __init__(self: TupleField[tuple[Any, ...] | None], *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...

        def __init__(self, *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...


class DateField(Field[_T]):
    type = _dt.date

    if TYPE_CHECKING:  # the value type follows null= (default True: it may be None)
        @overload
        def __init__(self: DateField[_dt.date], *, null: Literal[False],
                     **options: Unpack[FieldOptions]) -> None: ...

        @overload
        def __init__(self: DateField[_dt.date | None], *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...

        def __init__(self, *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...


class TimeField(Field[_T]):
    type = _dt.time

    if TYPE_CHECKING:  # the value type follows null= (default True: it may be None)
        @overload
        def __init__(self: TimeField[_dt.time], *, null: Literal[False],
                     **options: Unpack[FieldOptions]) -> None: ...

        @overload
        def __init__(self: TimeField[_dt.time | None], *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...

        def __init__(self, *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...


class DatetimeField(Field[_T]):
    """A datetime; ``auto_now`` stamps every save, ``auto_now_add`` the first one."""

    type = _dt.datetime

    @overload
    def __init__(self: DatetimeField[_dt.datetime], auto_now: bool = False,
                 auto_now_add: bool = False, *, null: Literal[False],
                 **options: Unpack[FieldOptions]) -> None: ...

    @overload
    def __init__(self: DatetimeField[_dt.datetime | None], auto_now: bool = False,
                 auto_now_add: bool = False, *, null: bool = True,
                 **options: Unpack[FieldOptions]) -> None: ...

    def __init__(self, auto_now: bool = False, auto_now_add: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.auto_now = auto_now
        self.auto_now_add = auto_now_add

    def pre_save(self, instance: Model, value: Any, is_create: bool, skip_auto_now: bool) -> Any:
        if skip_auto_now:
            return value
        if self.auto_now or (self.auto_now_add and is_create and value is None):
            return _dt.datetime.now(tz=_dt.timezone.utc)
        return value


class KeyField(Field[_T]):
    """Part of the instance's Redis key (``Model:v1:v2`` ordered by field name).

    Key values are required; changing one on a saved instance needs
    ``save(migrate_key=True)``.
    """

    is_key = True
    key_kind = "KeyF"
    #: longest key value (UTF-8 bytes): the key is repeated in every index entry
    MAX_BYTES = 4096

    # a key value is required (null=True is refused when the class is defined): str, or
    # the given type
    @overload
    def __init__(self: KeyField[str], *, null: Literal[False] = False,
                 **options: Unpack[FieldOptions]) -> None: ...

    @overload
    def __init__(self: KeyField[_T], *, type: builtins.type[_T],  # noqa: A002
                 null: Literal[False] = False, **options: Unpack[FieldOptions]) -> None: ...

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("null", False)
        super().__init__(**kwargs)

    #: value types a key cannot hold: mutable containers have no stable key segment
    REFUSED_TYPES = (list, dict, set)

    def contribute_to_class(self, model: type[Model], name: str) -> None:
        """Refuse, when the class is defined, what a key cannot be: a container type
        (``type=list|dict|set``) or ``null=True`` (a key value is always required)."""
        label = f"{model.__name__}.{name}"
        if self.type in self.REFUSED_TYPES:
            raise ModelException(f"{label}: a {type(self).__name__} cannot have "
                                 f"type={self.type.__name__} (a key segment must be a scalar)")
        if self.null:
            raise ModelException(f"{label}: a {type(self).__name__} cannot be null=True (every "
                                 f"instance needs a key value); use a plain or IndexedField "
                                 f"for optional values")
        super().contribute_to_class(model, name)

    def validate(self, value: Any, null_check: bool = True) -> None:
        super().validate(value, null_check)
        if isinstance(value, str):
            if value == "":
                raise self.error("a key value cannot be empty", value)
            if len(value) * 4 > self.MAX_BYTES and len(value.encode()) > self.MAX_BYTES:
                raise self.error(f"a key value is at most {self.MAX_BYTES} bytes "
                                 f"(got {len(value.encode())})", value)

    def _pattern(self, ns: str, segment: str) -> str:
        meta = self.placed_model._meta
        parts = ["*"] * len(meta.key_field_names)
        parts[meta.key_field_names.index(self.name)] = segment
        return keys.SEP.join([keys.glob_escape(ns), *parts])

    def _exact(self, value: Any, ns: str) -> Source:
        meta = self.placed_model._meta
        if len(meta.key_field_names) == 1:
            # in exactly one tag group: KeyList.emit() leaves it out of the others
            return KeyList([meta.instance_key([value])])
        return KeyPattern(keys.class_set_key(ns), self._pattern(ns, keys.escape(value)))

    def lookup_source(self, lookup: lk.Lookup, context: dict[str, Any]) -> Source | None:
        ns = self.query_ns(context)
        class_set = keys.class_set_key(ns)
        if isinstance(lookup, lk.Exact):
            return self._exact(lookup.value, ns)
        if isinstance(lookup, lk.In):
            return Combine("OR", [self._exact(v, ns) for v in lookup.value])
        if isinstance(lookup, lk.EndsWith):
            return KeyPattern(class_set, self._pattern(ns, "*" + keys.escape(lookup.value)))
        if isinstance(lookup, lk.StartsWith):
            return KeyPattern(class_set, self._pattern(ns, keys.escape(lookup.value) + "*"))
        if isinstance(lookup, lk.IsNull):
            return KeyList([]) if lookup.value else SetSource(class_set)
        return None


for _lookup in lk.KEY_LOOKUPS:
    KeyField.register_lookup(_lookup)


class UniqueKeyField(KeyField[_T]):
    """A KeyField whose value alone is unique across all instances."""

    @overload
    def __init__(self: UniqueKeyField[str], *, null: Literal[False] = False,
                 **options: Unpack[FieldOptions]) -> None: ...

    @overload
    def __init__(self: UniqueKeyField[_T], *, type: builtins.type[_T],  # noqa: A002
                 null: Literal[False] = False, **options: Unpack[FieldOptions]) -> None: ...

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("unique", True)
        super().__init__(**kwargs)


class AutoKeyField(KeyField[str]):
    """A KeyField filled with a uuid4 hex string when the instance is created.

    ``auto_uuid_length=n`` (1-32, default 32) keeps the first n hex digits: shorter
    keys, more chance of a collision (a collision overwrites nothing: ``create``
    refuses an existing key).
    """

    is_auto = True

    def __init__(self, auto_uuid_length: int = 32, **kwargs: Unpack[FieldOptions]) -> None:
        if (not isinstance(auto_uuid_length, int) or isinstance(auto_uuid_length, bool)
                or not 1 <= auto_uuid_length <= 32):
            raise ModelException(f"AutoKeyField auto_uuid_length must be an int from 1 to 32, "
                                 f"got {auto_uuid_length!r}")
        self.auto_uuid_length = auto_uuid_length
        kwargs.setdefault("default", lambda: uuid.uuid4().hex[:auto_uuid_length])
        super().__init__(**kwargs)


#: separates a reversed value from its value in a suffix registry member (never in UTF-8)
REGISTRY_SEP = b"\xff"


def lex_range(prefix: bytes) -> tuple[bytes, bytes]:
    """The ZRANGEBYLEX bounds of every member starting with ``prefix`` (UTF-8 bytes: the
    last byte is below 0xF5, so it can be incremented)."""
    if not prefix:
        return b"-", b"+"
    return b"[" + prefix, b"(" + prefix[:-1] + bytes([prefix[-1] + 1])


@dataclass
class LexMatch(Source):
    """The instances whose value starts (``mode`` 's') or ends ('e') with a prefix: the
    matching values come from the field's value registry (ZRANGEBYLEX), and their
    equality sets are united, inside the query script (query.lua, ``OP_LEX``)."""

    key: str  # the registry
    low: bytes
    high: bytes
    mode: str
    set_prefix: str  # the equality set of value token t is set_prefix + t

    def emit(self, prog: Program) -> int:
        dst = prog.temp()
        prog.op(OP_LEX, dst, prog.key(self.key), self.low, self.high, self.mode,
                self.set_prefix)
        return dst


class IndexedField(Field[_T]):
    """An equality index: one Redis set of instance keys per value.

    Answers ``exact``, ``in`` and ``isnull`` from Redis without loading objects. A
    str field also keeps a *value registry*: its distinct values, lex-ordered, in
    ``$LexF:M:<field>`` (and reversed, ``<reversed>\\xff<value>``, in ``$LexF:M:<field>:r``),
    one member per distinct value, not per instance. So ``startswith`` / ``endswith``
    run inside Redis: ZRANGEBYLEX finds the matching values and the query script unites
    their equality sets. Every save ZADDs its value (an idempotent command, so a reindex
    rebuilds the registry too); a value no instance holds any more is pruned by the next
    query that meets it. ``IndexedField(prefix_index=False)`` drops the registry;
    prefix/suffix lookups on such a field are then evaluated in Python.
    """

    is_indexed = True
    key_kind = "IndexF"
    NULL_TOKEN = "%00"  # escape() never produces it: every '%' becomes '%25'

    # the value type follows type= (default str) and null= (default True)
    @overload
    def __init__(self: IndexedField[_T], prefix_index: bool = True, *,
                 type: builtins.type[_T], null: Literal[False],  # noqa: A002
                 **options: Unpack[FieldOptions]) -> None: ...

    @overload
    def __init__(self: IndexedField[_T | None], prefix_index: bool = True, *,
                 type: builtins.type[_T], null: bool = True,  # noqa: A002
                 **options: Unpack[FieldOptions]) -> None: ...

    @overload
    def __init__(self: IndexedField[str], prefix_index: bool = True, *,
                 null: Literal[False], **options: Unpack[FieldOptions]) -> None: ...

    @overload
    def __init__(self: IndexedField[str | None], prefix_index: bool = True, *,
                 null: bool = True, **options: Unpack[FieldOptions]) -> None: ...

    def __init__(self, prefix_index: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prefix_index = bool(prefix_index)

    def record_base(self, ns: str) -> str:
        return keys.SEP.join(["$IndexF", ns, self.name])

    def index_key(self, value: Any, ns: str | None = None) -> str:
        token = self.NULL_TOKEN if value is None else keys.escape(self.token(value))
        return keys.SEP.join(["$IndexF", ns or self.placed_model._meta.groups[0], self.name, token])

    def token(self, value: Any) -> str:
        if isinstance(value, (_dt.date, _dt.time)):
            return value.isoformat()
        return str(value)

    def contribute_save(self, instance: Model, value: Any, batch: Any) -> None:
        super().contribute_save(instance, value, batch)
        if value is None:
            batch.add(self.name, "S", self.index_key(None, batch.ns), batch.key)
        if self.lexed():  # an emptied equality set prunes its value from the registries
            batch.extra_keys += [self.lex_key(False, batch.ns), self.lex_key(True, batch.ns)]
        if value is not None and self.lexed():
            token = keys.escape(value).encode()
            batch.command("ZADD", self.lex_key(False, batch.ns), 0, token, idempotent=True)
            batch.command("ZADD", self.lex_key(True, batch.ns), 0,
                          keys.escape(value[::-1]).encode() + REGISTRY_SEP + token,
                          idempotent=True)

    # --- lex index: startswith / endswith in Redis ------------------------------
    def lexed(self) -> bool:
        """True when the field keeps a lex index (str values, unless turned off)."""
        return self.type is str and self.prefix_index




    def delete_keys(self, ns: str) -> list[str]:
        return [self.lex_key(False, ns), self.lex_key(True, ns)] if self.lexed() else []

    def lex_key(self, reverse: bool = False, ns: str | None = None) -> str:
        """``$LexF:<ns>:<field>`` (the value registry), ``$LexF:<ns>:<field>:r`` (reversed)."""
        return keys.field_index_key("LexF", ns or self.placed_model._meta.groups[0], self.name,
                                    *(("r",) if reverse else ()))

    def on_save(self, instance: Model, value: Any, batch: Any) -> None:
        batch.add(self.name, "S", self.index_key(value, batch.ns), batch.key)

    def lookup_source(self, lookup: lk.Lookup, context: dict[str, Any]) -> Source | None:
        ns = self.query_ns(context)
        if isinstance(lookup, lk.Exact):
            return SetSource(self.index_key(lookup.value, ns))
        if isinstance(lookup, lk.In):
            return Combine("OR", [SetSource(self.index_key(v, ns)) for v in lookup.value])
        if isinstance(lookup, lk.IsNull):
            return self.isnull_source(self.index_key(None, ns), ns, lookup.value)
        if isinstance(lookup, lk.StartsWith) and self.lexed():
            suffix = isinstance(lookup, lk.EndsWith)
            low, high = lex_range(keys.escape(lookup.value[::-1] if suffix
                                              else lookup.value).encode())
            return LexMatch(self.lex_key(suffix, ns), low, high, "e" if suffix else "s",
                            self.record_base(ns) + keys.SEP)
        return None


IndexedField.register_lookup(lk.StartsWith)
IndexedField.register_lookup(lk.EndsWith)
