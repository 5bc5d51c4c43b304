"""SortedField: a Redis sorted set per (model, field, partition values)."""

from __future__ import annotations

import builtins
import datetime as _dt
import math
import time
import warnings
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, overload

from popoto import keys
from popoto.engine.sources import Combine, ScoreRange, Source
from popoto.exceptions import ModelException, QueryException
from popoto.fields.field import Field
from popoto.fields.shortcuts import KeyField
from popoto.query import lookups as lk

if TYPE_CHECKING:
    from typing import TypeAlias

    from typing_extensions import Unpack

    from popoto.fields.field import FieldOptions
    from popoto.models.base import Model

    #: ``partition_by`` (and its deprecated name ``sort_by``): a field name or names
    PartitionBy: TypeAlias = "str | tuple[str, ...] | list[str] | None"

#: the Python type a field gives on an instance
_T = TypeVar("_T")

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def to_score(value: Any) -> float:
    """The sorted-set score of a value (numbers as is, dates as UTC epoch seconds)."""
    if isinstance(value, _dt.datetime):
        moment: _dt.datetime = value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=_dt.timezone.utc)
        return (moment - _EPOCH).total_seconds()
    if isinstance(value, _dt.date):
        return float(value.toordinal() - _EPOCH.date().toordinal()) * 86400.0
    if isinstance(value, _dt.time):
        return value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1e6
    return float(value)


class SortedField(Field[_T]):
    """A range-queryable field backed by one sorted set (per partition).

    Args:
        type: int, float (default), Decimal, date, datetime or time.
        partition_by: a field name or tuple of names; one sorted set per
            combination of their values. Queries must then give those values.
            ``sort_by`` is its deprecated 1.x name.
        auto_now: stamp the current time on every save (``auto_now_add``: on the
            first save only, when no value is set): a datetime (UTC) for datetime
            fields, epoch seconds for int/float/Decimal fields.
    """

    type: builtins.type[Any] = float
    is_sorted = True
    key_kind = "SortedF"
    SCORE_TYPES = (int, float, Decimal, _dt.date, _dt.datetime, _dt.time)

    # the value type follows type= (default float) and null= (default True)
    @overload
    def __init__(self: SortedField[_T], partition_by: PartitionBy = None,
                 auto_now: bool = False, auto_now_add: bool = False, *,
                 type: builtins.type[_T], null: Literal[False],  # noqa: A002
                 sort_by: PartitionBy = None, **options: Unpack[FieldOptions]) -> None: ...

    @overload
    def __init__(self: SortedField[_T | None], partition_by: PartitionBy = None,
                 auto_now: bool = False, auto_now_add: bool = False, *,
                 type: builtins.type[_T], null: bool = True,  # noqa: A002
                 sort_by: PartitionBy = None, **options: Unpack[FieldOptions]) -> None: ...

    @overload
    def __init__(self: SortedField[float], partition_by: PartitionBy = None,
                 auto_now: bool = False, auto_now_add: bool = False, *,
                 null: Literal[False], sort_by: PartitionBy = None,
                 **options: Unpack[FieldOptions]) -> None: ...

    @overload
    def __init__(self: SortedField[float | None], partition_by: PartitionBy = None,
                 auto_now: bool = False, auto_now_add: bool = False, *,
                 null: bool = True, sort_by: PartitionBy = None,
                 **options: Unpack[FieldOptions]) -> None: ...

    def __init__(self, partition_by: PartitionBy = None,
                 auto_now: bool = False, auto_now_add: bool = False, **kwargs: Any) -> None:
        if "sort_by" in kwargs:
            sort_by = kwargs.pop("sort_by")
            warnings.warn("SortedField(sort_by=...) is deprecated; use partition_by=...",
                          DeprecationWarning, stacklevel=2)
            if partition_by is not None and sort_by is not None:
                raise ModelException("SortedField: give partition_by or its old name sort_by, "
                                     "not both")
            partition_by = sort_by if partition_by is None else partition_by
        super().__init__(**kwargs)
        if self.type not in self.SCORE_TYPES:
            raise self.error(f"SortedField type must be one of "
                             f"{[t.__name__ for t in self.SCORE_TYPES]}, got {self.type!r}")
        if (auto_now or auto_now_add) and self.type in (_dt.date, _dt.time):
            raise self.error(f"auto_now/auto_now_add need a datetime or number field, not "
                             f"{self.type.__name__}")
        self.auto_now = bool(auto_now)
        self.auto_now_add = bool(auto_now_add)
        if isinstance(partition_by, str):
            partition_by = (partition_by,)
        self.partition_by: tuple[str, ...] = tuple(partition_by or ())

    def pre_save(self, instance: Model, value: Any, is_create: bool, skip_auto_now: bool) -> Any:
        if skip_auto_now or not (self.auto_now or (self.auto_now_add and is_create
                                                   and value is None)):
            return value
        if self.type is _dt.datetime:
            return _dt.datetime.now(tz=_dt.timezone.utc)
        now = time.time()
        if self.type is int:
            return int(now)
        return Decimal(repr(now)) if self.type is Decimal else now

    def validate(self, value: Any, null_check: bool = True) -> None:
        super().validate(value, null_check)
        if value is not None:
            self.check_lookup_value(value)

    def check_lookup_value(self, value: Any) -> None:
        """The value must have a finite double score (a sorted set's score)."""
        if isinstance(value, (float, Decimal)) and not math.isfinite(value):
            raise self.error("NaN and infinities cannot be sorted (a score is a finite "
                             "number)", value)
        try:
            score = to_score(value)
        except (OverflowError, ValueError, TypeError, ArithmeticError):
            score = math.inf
        if not math.isfinite(score):
            raise self.error("out of the range of a sorted-set score (a finite double)", value)

    def record_base(self, ns: str) -> str:
        return self.sorted_key((), ns)

    def sorted_key(self, partition_values: tuple[Any, ...] = (), ns: str | None = None) -> str:
        return keys.field_index_key("SortedF", ns or self.placed_model._meta.groups[0], self.name,
                                    *partition_values)

    @classmethod
    def get_sortedset_db_key(cls, model: Any, field_name: str) -> keys.DB_key:
        """The (unpartitioned) sorted set of ``field_name`` on ``model``: 1.x's name."""
        return cls.get_special_use_field_db_key(model, field_name)

    @classmethod
    def get_partitioned_sortedset_db_key(cls, instance: Any, field_name: str) -> keys.DB_key:
        """The sorted set holding ``instance`` (its partition's, when partitioned)."""
        field = instance._meta.get_field(field_name)
        return keys.DB_key(field.key_for(instance, cls.model_ns(instance)))

    def key_for(self, instance: Model, ns: str | None = None) -> str:
        """The sorted set holding ``instance`` (in its tag group ``ns``)."""
        return self.sorted_key(tuple(getattr(instance, f) for f in self.partition_by),
                               ns or keys.ns_of(instance.pk))

    def on_save(self, instance: Model, value: Any, batch: Any) -> None:
        batch.add(self.name, "Z", self.key_for(instance, batch.ns), batch.key,
                  repr(to_score(value)))

    def key_from_context(self, context: dict[str, Any]) -> str:
        missing = [f for f in self.partition_by if f not in context]
        if missing:
            raise QueryException(
                f"{self.label} is partitioned by {self.partition_by}: filter also on "
                f"{', '.join(missing)} (exact values) to query it"
            )
        return self.sorted_key(tuple(context[f] for f in self.partition_by),
                               self.query_ns(context))

    def lookup_source(self, lookup: lk.Lookup, context: dict[str, Any]) -> Source | None:
        if isinstance(lookup, lk.IsNull):
            return None
        key = self.key_from_context(context)
        v = lookup.value
        if isinstance(lookup, lk.In):
            return Combine("OR", [ScoreRange(key, repr(to_score(x)), repr(to_score(x)))
                                  for x in v])
        if isinstance(lookup, lk.Between):
            return ScoreRange(key, repr(to_score(v[0])), repr(to_score(v[1])))
        s = repr(to_score(v))
        bounds = {"exact": (s, s), "gt": (f"({s}", "+inf"), "gte": (s, "+inf"),
                  "lt": ("-inf", f"({s}"), "lte": ("-inf", s)}
        low, high = bounds[lookup.lookup_name]
        return ScoreRange(key, low, high)


for _lookup in lk.RANGE_LOOKUPS:
    SortedField.register_lookup(_lookup)


class SortedKeyField(KeyField[_T], SortedField[_T]):
    """A key field that is also range-queryable: part of the instance key, and its
    value scores the instance in ``$SortedF:M:<field>`` (1.x's ``SortedKeyField``).

    ``field=v`` / ``field__in`` are answered from the key, ranges (``__gt``,
    ``__between``...) and ``order_by`` from the sorted set. Numeric or temporal
    types only, like SortedField (default float); the value is required.
    """

    key_kind = "SortedF"
    _lookups: ClassVar[dict[str, type[lk.Lookup]]] = {}

    if TYPE_CHECKING:  # a key value is required: float (the default type) or the given type
        @overload
        def __init__(self: SortedKeyField[float], partition_by: PartitionBy = None,
                     auto_now: bool = False, auto_now_add: bool = False, *,
                     null: Literal[False] = False, **options: Unpack[FieldOptions]) -> None: ...

        @overload
        def __init__(self: SortedKeyField[_T], partition_by: PartitionBy = None,
                     auto_now: bool = False, auto_now_add: bool = False, *,
                     type: builtins.type[_T], null: Literal[False] = False,  # noqa: A002
                     **options: Unpack[FieldOptions]) -> None: ...

        def __init__(self, *args: Any, **kwargs: Any) -> None: ...

    def lookup_source(self, lookup: lk.Lookup, context: dict[str, Any]) -> Source | None:
        if isinstance(lookup, (lk.Exact, lk.In, lk.IsNull)):
            return KeyField.lookup_source(self, lookup, context)
        return SortedField.lookup_source(self, lookup, context)


for _lookup in lk.RANGE_LOOKUPS:
    SortedKeyField.register_lookup(_lookup)
