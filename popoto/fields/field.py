"""The Field base class: validation, storage encoding, hooks and lookups.

A field installs itself on a model (:meth:`Field.contribute_to_class`), knows
how to coerce and validate its values, contributes index entries to a
:class:`~popoto.engine.write.WriteBatch` on save, and offers the query
lookups registered on its class (:meth:`Field.register_lookup`).

On a model class a field is a non-data descriptor: ``Model.score`` is the
field itself (usable in expressions like ``Model.score >= 10``), while
``instance.score`` is the value. Instances built from a query keep the raw
bytes and decode a field only when it is first read.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import difflib
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Literal,
    Protocol,
    TypeVar,
    overload,
    runtime_checkable,
)

from msgpack import unpackb as _unpackb

from popoto import encoding
from popoto.encoding import _ext_hook
from popoto.engine.sources import NS_CONTEXT, Combine, SetSource, Source
from popoto.exceptions import ModelException, QueryException
from popoto.keys import DB_key, class_set_key, field_index_key, ns_of
from popoto.query import lookups as _lk
from popoto.query.expressions import Q
from popoto.query.lookups import Lookup

if TYPE_CHECKING:
    from typing import TypedDict

    from typing_extensions import Self

    from popoto.engine.write import WriteBatch
    from popoto.models.base import Model

    class FieldOptions(TypedDict, total=False):
        """The keyword arguments every field accepts besides ``type`` and ``null``
        (typing only: field constructors take them as ``**options``)."""

        default: Any
        max_length: int | None
        unique: bool

_MISSING = object()


def _coerce_bool(value: Any) -> bool:
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise ValueError("not a boolean")


def _coerce_datetime(value: Any) -> _dt.datetime:
    if isinstance(value, str):
        return _dt.datetime.fromisoformat(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _dt.datetime.fromtimestamp(value, tz=_dt.timezone.utc)
    raise ValueError("not a datetime")


def _coerce_date(value: Any) -> _dt.date:
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, str):
        return _dt.date.fromisoformat(value)
    raise ValueError("not a date")


def _coerce_time(value: Any) -> _dt.time:
    if isinstance(value, str):
        return _dt.time.fromisoformat(value)
    raise ValueError("not a time")


def _coerce_decimal(value: Any) -> Decimal:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return Decimal(value)
    raise ValueError("not a decimal")


def _coerce_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise ValueError("not a number")
    return float(value)


def _coerce_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("booleans are not integers")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("float has a fractional part")
        return int(value)
    if isinstance(value, (str, Decimal)):
        return int(value)
    raise ValueError("not an integer")


def _coerce_str(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    if isinstance(value, (int, float, Decimal, uuid.UUID)) and not isinstance(value, bool):
        return str(value)
    raise ValueError("not a string")


_COERCE: dict[type, Callable[[Any], Any]] = {
    bool: _coerce_bool,
    int: _coerce_int,
    float: _coerce_float,
    Decimal: _coerce_decimal,
    str: _coerce_str,
    bytes: lambda v: bytes(v) if isinstance(v, bytearray) else v.encode("utf-8"),
    list: lambda v: list(v) if isinstance(v, (tuple, set, frozenset)) else _fail(),
    tuple: lambda v: tuple(v) if isinstance(v, (list, set, frozenset)) else _fail(),
    set: lambda v: set(v) if isinstance(v, (list, tuple, frozenset)) else _fail(),
    dict: lambda v: dict(v) if hasattr(v, "items") else _fail(),
    _dt.datetime: _coerce_datetime,
    _dt.date: _coerce_date,
    _dt.time: _coerce_time,
}


def _fail() -> Any:
    raise ValueError("incompatible type")



@runtime_checkable
class FieldHooks(Protocol):
    """The contract between a field and the model layer (``Field`` implements it all).

    ``contribute_to_class`` places the field; :meth:`ModelOptions.finalize
    <popoto.models.options.ModelOptions.finalize>` then compiles, once per class, the
    fields that own index entries (``owns_index``), the load hooks (fields overriding
    ``after_load``) and the extra filter keywords (``query_options``), so the write and
    read paths loop over short lists and never look a hook up by name.
    """

    name: str
    partition_by: tuple[str, ...]
    depends_on: tuple[str, ...]

    def contribute_to_class(self, model: type[Model], name: str) -> None: ...
    def coerce(self, value: Any) -> Any: ...
    def validate(self, value: Any, null_check: bool = True) -> None: ...
    def pre_save(self, instance: Model, value: Any, is_create: bool,
                 skip_auto_now: bool) -> Any: ...
    def encode(self, value: Any) -> bytes: ...
    def owns_index(self) -> bool: ...
    def extra_owners(self) -> tuple[str, ...]: ...
    def contribute_save(self, instance: Model, value: Any, batch: WriteBatch) -> None: ...
    def after_load(self, objs: list[Any], options: dict[str, Any]) -> None: ...
    def query_options(self) -> tuple[str, ...]: ...
    def lookup_source(self, lookup: Lookup, context: dict[str, Any]) -> Source | None: ...
    def check_lookup_value(self, value: Any) -> None: ...


#: the Python type a field gives on an instance (``str``, ``float | None``...)
_T = TypeVar("_T")


class Field(Generic[_T]):
    """A persisted attribute of a model: one field of the instance's Redis hash.

    Args:
        type: Python type of the value (coerced on assignment when compatible).
        null: Whether ``None`` is allowed at save time.
        default: Default value, or a callable returning one.
        max_length: Longest allowed ``str``/``bytes``/``list`` value.
        unique: Enforce that no two live instances hold the same non-null value.
    """

    type: builtins.type[Any] = str
    #: category flags, read by ModelOptions; subclasses set them.
    is_key: ClassVar[bool] = False
    is_auto: ClassVar[bool] = False
    is_sorted: ClassVar[bool] = False
    is_indexed: ClassVar[bool] = False
    is_geo: ClassVar[bool] = False
    is_relationship: ClassVar[bool] = False
    _lookups: ClassVar[dict[str, builtins.type[Lookup]]] = {}
    #: fields whose values choose this field's index key (SortedField(partition_by=...))
    partition_by: tuple[str, ...] = ()
    #: more fields whose saves must re-run this field's save hook (e.g. every field)
    depends_on: tuple[str, ...] = ()
    _uses_from_db = True  # refined per field in contribute_to_class
    _creation_counter: ClassVar[int] = 0

    # the value type follows ``type=`` and ``null=``: Field(type=int, null=False) reads
    # as int, Field(type=int) as int | None (null defaults to True), Field() as str | None
    @overload
    def __init__(self: Field[_T], type: builtins.type[_T], null: Literal[False],  # noqa: A002
                 default: Any = None, max_length: int | None = None,
                 unique: bool = False) -> None: ...

    @overload
    def __init__(self: Field[_T | None], type: builtins.type[_T], null: bool = True,  # noqa: A002
                 default: Any = None, max_length: int | None = None,
                 unique: bool = False) -> None: ...

    @overload
    def __init__(self: Field[str], type: None = None, *, null: Literal[False],  # noqa: A002
                 default: Any = None, max_length: int | None = None,
                 unique: bool = False) -> None: ...

    @overload
    def __init__(self: Field[str | None], type: None = None,  # noqa: A002
                 null: bool = True, default: Any = None, max_length: int | None = None,
                 unique: bool = False) -> None: ...

    def __init__(
        self,
        type: builtins.type[Any] | None = None,  # noqa: A002 - the spec's public parameter name
        null: bool = True,
        default: Any = None,
        max_length: int | None = None,
        unique: bool = False,
        **options: Any,
    ) -> None:
        if type is not None:
            self.type = type
        self.null = null
        self.default = default
        self.max_length = max_length
        self.unique = unique
        self.name: str = ""
        self.model: builtins.type[Model] | None = None
        Field._creation_counter += 1
        self._order = Field._creation_counter
        if options:
            unknown = ", ".join(sorted(options))
            raise ModelException(f"{self.__class__.__name__} got unknown option(s): {unknown}")

    # --- placement -----------------------------------------------------
    def contribute_to_class(self, model: builtins.type[Model], name: str) -> None:
        """Install this field on ``model`` under ``name`` and register it in ``_meta``."""
        self.name = name
        self.model = model
        # reading a loaded value skips the from_db call when it would change nothing
        self._uses_from_db = type(self).from_db is not Field.from_db or self.type is float
        model._meta.add_field(name, self)
        setattr(model, name, self)

    def clone(self) -> Self:
        """A fresh copy (fields inherited from an abstract parent are cloned)."""
        new = object.__new__(self.__class__)
        new.__dict__.update(self.__dict__)
        new.name, new.model = "", None
        return new

    @property
    def placed_model(self) -> builtins.type[Model]:
        """``model``, for code that only runs once the field is placed on a model."""
        model = self.model
        if model is None:
            raise AttributeError(f"{self!r} is not placed on a model yet")
        return model

    @property
    def label(self) -> str:
        model = self.model.__name__ if self.model else "?"
        return f"{model}.{self.name}"

    # --- descriptor ----------------------------------------------------
    # typing only: Model.field is the field (for expressions), instance.field its value
    @overload
    def __get__(self, instance: None, owner: builtins.type[Any] | None = None) -> Self: ...

    @overload
    def __get__(self, instance: Model, owner: builtins.type[Any] | None = None) -> _T: ...

    def __get__(self, instance: Any, owner: builtins.type[Any] | None = None) -> Any:
        if instance is None:
            return self
        state = instance.__dict__
        raw = state.get("_raw")
        if raw is not None:
            name = self.name
            data = raw.get(name)
            if data is not None:
                try:  # encoding.unpack inlined: this runs for every field read of a loaded object
                    value = _unpackb(data, ext_hook=_ext_hook, strict_map_key=False)
                except Exception:  # corrupt: decode_field raises the DecodeError naming it
                    value = encoding.decode_field(data, state.get("_redis_key"), name)
                if self._uses_from_db:
                    value = self.from_db(value)
                state[name] = value
                return value
        return self.get_default()

    if TYPE_CHECKING:
        # typing only: assigning checks the value type. A runtime __set__ would make
        # every field a data descriptor (slower reads, different semantics).
        def __set__(self, instance: Model, value: _T) -> None: ...

    # --- values --------------------------------------------------------
    def get_default(self) -> Any:
        return self.default() if callable(self.default) else self.default

    def error(self, message: str, value: Any = _MISSING,
              cls: builtins.type[ModelException] = ModelException) -> ModelException:
        """A ModelException (or subclass ``cls``) naming the model, the field and
        (shortened) the value."""
        shown = "" if value is _MISSING else f" (value {encoding.short_repr(value)})"
        return cls(f"{self.label}: {message}{shown}")

    def coerce(self, value: Any) -> Any:
        """Return ``value`` as this field's type, or raise ModelException naming it."""
        if value is None or isinstance(value, self.type):
            if self.type is int and isinstance(value, bool):
                raise self.error("expected int, got bool", value)
            if self.type is _dt.date and isinstance(value, _dt.datetime):
                return value.date()
            if isinstance(value, str) and not encoding.is_text(value):
                raise self.error("text must be valid Unicode (it has a lone surrogate)", value)
            if isinstance(value, Decimal) and value.is_snan():
                raise self.error("a signaling NaN is not a value", value)
            return value
        converter = _COERCE.get(self.type)
        if converter is None:
            raise self.error(f"expected {self.type.__name__}, got {type(value).__name__}", value)
        try:
            converted = converter(value)
        except OverflowError:
            raise self.error(f"out of the range of {self.type.__name__}", value) from None
        except (ValueError, TypeError, InvalidOperation, AttributeError, UnicodeDecodeError,
                RecursionError):
            raise self.error(
                f"expected {self.type.__name__}, got {type(value).__name__}", value
            ) from None
        return self.coerce(converted) if isinstance(converted, (str, Decimal)) else converted

    def validate(self, value: Any, null_check: bool = True) -> None:
        """Raise ModelException when ``value`` (already coerced) is not acceptable."""
        if value is None:
            if null_check and not self.null:
                raise self.error("value is required (null=False)", value)
            return
        if self.max_length is not None and hasattr(value, "__len__"):
            if len(value) > self.max_length:
                raise self.error(f"longer than max_length={self.max_length}", value)

    def pre_save(self, instance: Model, value: Any, is_create: bool, skip_auto_now: bool) -> Any:
        """Last change to a value before it is written (auto timestamps, ...)."""
        return value

    def to_db(self, value: Any) -> bytes:
        return encoding.pack(value)

    def encode(self, value: Any) -> bytes:
        """``to_db(value)``, with encoding failures (an object msgpack cannot hold, a too
        deep or self-referencing container, a lone surrogate) as a ModelException."""
        try:
            return self.to_db(value)
        except encoding.ENCODE_ERRORS as exc:
            raise self.error(f"cannot be stored ({type(exc).__name__}: "
                             f"{encoding.short_repr(str(exc))[1:-1]})", value) from None

    def check_lookup_value(self, value: Any) -> None:
        """Raise ModelException when a filter value can never be looked up (hook)."""

    def record_base(self, ns: str) -> str:
        """The prefix of this field's own index keys in group ``ns`` ("" when its entries
        have no common one): its ``@idx`` record rows are written relative to it."""
        return ""

    def delete_keys(self, ns: str) -> list[str]:
        """Keys a delete of an instance may touch for this field beyond its recorded
        entries (declared in the delete script's KEYS; e.g. a value registry)."""
        return []

    def extra_record_bases(self, ns: str) -> dict[str, str]:
        """Record bases of the other owners this field writes entries for (hook)."""
        return {}

    def from_db(self, value: Any) -> Any:
        """Post-process a decoded value (msgpack gives lists, ints for floats, ...)."""
        if value is not None and self.type is float and isinstance(value, int):
            return float(value)
        return value

    # --- write hooks (override to maintain indexes) ----------------------
    def on_save(self, instance: Model, value: Any, batch: WriteBatch) -> None:
        """Queue this field's index entries for ``value``; the base field has none."""

    def owns_index(self) -> bool:
        """True when this field writes index entries (so saves/deletes must clean them)."""
        return type(self).on_save is not Field.on_save or self.unique

    def extra_owners(self) -> tuple[str, ...]:
        """More owner names (``@idx:<owner>`` records) whose entries this field writes,
        besides its own name (e.g. ``<field>@lex``); they depend on the same fields."""
        return ()

    def contribute_save(self, instance: Model, value: Any, batch: WriteBatch) -> None:
        """Rewrite every entry this field owns: its unique claim and its index entries."""
        batch.own(self.name)
        if self.unique and value is not None:
            token = self.unique_token(value)
            batch.claim(self.name, self.unique_key(self.placed_model._meta.claim_ns(token)), token,
                        f"{self.name}={encoding.short_repr(value)}")
        if value is not None:
            self.on_save(instance, value, batch)

    def unique_key(self, ns: str | None = None) -> str:
        """The claims hash of this field in group ``ns`` (an unsharded model has one)."""
        return field_index_key("UniqueF", ns or self.placed_model._meta.groups[0], self.name)

    # --- key builders under Popoto 1.x's names (the keys of our layout) ----------
    #: the kind segment of this field's index keys: ``$<key_kind>:M:<field>``
    key_kind: ClassVar[str] = ""

    def index_kind(self) -> str:
        """``key_kind``; for a field without one ``UniqueF`` (unique) or ``<Type>F``."""
        if self.key_kind:
            return self.key_kind
        return "UniqueF" if self.unique else type(self).__name__.removesuffix("Field") + "F"

    @staticmethod
    def model_ns(model: builtins.type[Model] | Model, what: str = "this key") -> str:
        """The namespace of ``model`` (a model class or instance) for a key builder:
        the instance's tag group, the only group of an unsharded model class."""
        meta = model._meta
        if not meta.sharded:
            return meta.groups[0]
        if isinstance(model, type):
            return meta.single_group(what)
        return ns_of(model.pk)

    @classmethod
    def get_special_use_field_db_key(cls, model: Any, field_name: str, *parts: Any) -> DB_key:
        """``$<kind>:M:<field>[:<part>...]``: the base key of the index of ``field_name``
        on ``model`` (a model class or instance), e.g. ``$SortedF:Product:price``.

        Callable on the field class or on a field; ``parts`` (user values) are escaped.
        """
        field = model._meta.get_field(field_name)
        ns = cls.model_ns(model, "get_special_use_field_db_key()")
        return DB_key(field_index_key(field.index_kind(), ns, field_name, *parts))

    def query_ns(self, context: dict[str, Any]) -> str:
        """The tag group a query is being compiled for (the only one when unsharded)."""
        return context.get(NS_CONTEXT) or self.placed_model._meta.groups[0]

    @staticmethod
    def isnull_source(null_key: str, ns: str, is_null: bool) -> Source:
        """``isnull`` of a field whose NULLs have their own index set ``null_key``: that
        set, or every instance of the group but those in it."""
        null = SetSource(null_key)
        return null if is_null else Combine("NOT", [SetSource(class_set_key(ns)), null])

    def unique_token(self, value: Any) -> str:
        return encoding.pack(value).hex()

    # --- query hooks ---------------------------------------------------
    def query_options(self) -> tuple[str, ...]:
        """Extra filter keywords this field accepts besides ``name__lookup``."""
        return ()

    def after_load(self, objs: list[Any], options: dict[str, Any]) -> None:
        """Post-process instances just loaded by a query (one call per result batch)."""

    # --- lookups -------------------------------------------------------
    def lookup_source(self, lookup: Lookup, context: dict[str, Any]) -> Source | None:
        """Index source for ``lookup`` (None: evaluated in Python over candidates).

        ``context`` holds the exact-match values of sibling AND conditions.
        """
        return None

    @classmethod
    def register_lookup(cls, lookup: builtins.type[Lookup],
                        name: str | None = None) -> builtins.type[Lookup]:
        """Make ``lookup`` available as ``field__<name>`` on this field class and subclasses."""
        if "_lookups" not in cls.__dict__:
            cls._lookups = dict(cls._lookups)
        cls._lookups[name or lookup.lookup_name] = lookup
        return lookup

    @classmethod
    def get_lookups(cls) -> dict[str, builtins.type[Lookup]]:
        return cls._lookups

    def get_lookup(self, name: str) -> builtins.type[Lookup]:
        lookups = self.get_lookups()
        try:
            return lookups[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(lookups), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise QueryException(
                f"Unsupported lookup {name!r} for {type(self).__name__} {self.label!r}{hint} "
                f"(supported: {', '.join(sorted(lookups))})"
            ) from None

    def query_params(self) -> list[str]:
        """Filter parameter names this field accepts, as listed by ``get_info()``."""
        return [self.name if n == "exact" else f"{self.name}__{n}" for n in self.get_lookups()]

    # --- expressions: Model.field <op> value -----------------------------
    def _expr(self, lookup: str, value: Any) -> Q:
        return Q(**{f"{self.name}__{lookup}": value})

    def __eq__(self, other: Any) -> Q:  # type: ignore[override]  # builds a Q, not a bool
        return self._expr("exact", other)

    def __ne__(self, other: Any) -> Q:  # type: ignore[override]  # builds a Q, not a bool
        return ~self._expr("exact", other)

    def __lt__(self, other: Any) -> Q:
        return self._expr("lt", other)

    def __le__(self, other: Any) -> Q:
        return self._expr("lte", other)

    def __gt__(self, other: Any) -> Q:
        return self._expr("gt", other)

    def __ge__(self, other: Any) -> Q:
        return self._expr("gte", other)

    def between(self, low: Any, high: Any) -> Q:
        return self._expr("between", (low, high))

    def in_(self, values: Any) -> Q:
        return self._expr("in", values)

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"


for _lookup in _lk.BASIC_LOOKUPS:
    Field.register_lookup(_lookup)
