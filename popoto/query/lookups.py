"""Lookups: ``field__<name>=value`` conditions, registered per field class.

Each lookup validates its value against the field, may offer an index
:class:`~popoto.engine.sources.Source` that Redis can evaluate, and always
offers a Python predicate (``matches``) used when no index can answer it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from popoto.engine.sources import Source
from popoto.exceptions import ModelException, QueryException

if TYPE_CHECKING:
    from popoto.fields.field import Field


class Lookup:
    """Base lookup: equality."""

    lookup_name = "exact"

    def __init__(self, field: Field[Any], value: Any) -> None:
        self.field = field
        self.value = self.prepare(value)

    def coerce(self, value: Any) -> Any:
        try:
            value = self.field.coerce(value)
            if value is not None:
                self.field.check_lookup_value(value)
            return value
        except ModelException as exc:
            raise QueryException(f"Invalid value for {self.field.label}__{self.lookup_name}: "
                                 f"{exc}") from None

    def prepare(self, value: Any) -> Any:
        return self.coerce(value)

    def source(self, context: dict[str, Any]) -> Source | None:
        """An index source answering this condition, or None when only Python can."""
        return self.field.lookup_source(self, context)

    def matches(self, stored: Any) -> bool:
        same: bool = stored == self.value
        return same

    def __repr__(self) -> str:
        return f"{self.field.label}__{self.lookup_name}={self.value!r}"


class Exact(Lookup):
    lookup_name = "exact"


class In(Lookup):
    lookup_name = "in"

    def prepare(self, value: Any) -> Any:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise QueryException(f"{self.field.label}__in expects a list of values, got {value!r}")
        return [self.coerce(v) for v in value]

    def matches(self, stored: Any) -> bool:
        return stored in self.value


class IsNull(Lookup):
    lookup_name = "isnull"

    def prepare(self, value: Any) -> Any:
        if not isinstance(value, bool):
            raise QueryException(f"{self.field.label}__isnull expects True or False, "
                                 f"got {value!r}")
        return value

    def matches(self, stored: Any) -> bool:
        return (stored is None) is self.value


class StartsWith(Lookup):
    lookup_name = "startswith"

    def prepare(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise QueryException(f"{self.field.label}__startswith expects a string, "
                                 f"got {value!r}")
        return value

    def matches(self, stored: Any) -> bool:
        return stored is not None and str(stored).startswith(self.value)


class EndsWith(StartsWith):
    lookup_name = "endswith"

    def matches(self, stored: Any) -> bool:
        return stored is not None and str(stored).endswith(self.value)


def _finite(lookup: Lookup, value: Any) -> Any:
    value = lookup.coerce(value)
    if value is None:
        raise QueryException(f"{lookup.field.label}__{lookup.lookup_name} needs a value, got None")
    if isinstance(value, float) and not math.isfinite(value):
        raise QueryException(f"{lookup.field.label}__{lookup.lookup_name}: {value!r} is not a "
                             f"finite number")
    return value


class Gt(Lookup):
    lookup_name = "gt"

    def prepare(self, value: Any) -> Any:
        return _finite(self, value)

    def matches(self, stored: Any) -> bool:
        return stored is not None and stored > self.value


class Gte(Gt):
    lookup_name = "gte"

    def matches(self, stored: Any) -> bool:
        return stored is not None and stored >= self.value


class Lt(Gt):
    lookup_name = "lt"

    def matches(self, stored: Any) -> bool:
        return stored is not None and stored < self.value


class Lte(Gt):
    lookup_name = "lte"

    def matches(self, stored: Any) -> bool:
        return stored is not None and stored <= self.value


class Between(Lookup):
    lookup_name = "between"

    def prepare(self, value: Any) -> Any:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise QueryException(f"{self.field.label}__{self.lookup_name} expects (low, high), "
                                 f"got {value!r}")
        return (_finite(self, value[0]), _finite(self, value[1]))

    def matches(self, stored: Any) -> bool:
        return stored is not None and self.value[0] <= stored <= self.value[1]


class Range(Between):
    lookup_name = "range"


BASIC_LOOKUPS: tuple[type[Lookup], ...] = (Exact, In, IsNull)
KEY_LOOKUPS: tuple[type[Lookup], ...] = (Exact, In, IsNull, StartsWith, EndsWith)
RANGE_LOOKUPS: tuple[type[Lookup], ...] = (Exact, In, IsNull, Gt, Gte, Lt, Lte, Between, Range)
