"""GeoField: a position stored in the hash and indexed in a Redis geo set.

Each model's geo field owns one geo set ``$GeoF:Model:field`` (a sorted set
of instance keys scored by geohash). A radius query compiles to a
:class:`~popoto.engine.sources.GeoRadius` source: ``GEOSEARCHSTORE ...
STOREDIST`` inside the query script, so the matches are scored by their
distance from the centre and come back nearest first.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar, overload

from popoto import encoding, keys, registry
from popoto.engine.sources import Combine, GeoRadius, Source
from popoto.exceptions import ModelException, QueryException
from popoto.fields.field import Field
from popoto.query import lookups as lk

if TYPE_CHECKING:
    from typing import TypeAlias

    from typing_extensions import Unpack

    from popoto.fields.field import FieldOptions
    from popoto.models.base import Model

#: the Python type a field gives on an instance
_T = TypeVar("_T")

# Redis's geo limits (EPSG:3857): GEOADD refuses positions outside them.
LAT_LIMIT = 85.05112878
LON_LIMIT = 180.0
EARTH_RADIUS_M = 6372797.560856  # the radius Redis uses for GEODIST / GEOSEARCH
UNITS: dict[str, float] = {"m": 1.0, "km": 1000.0, "mi": 1609.34, "ft": 0.3048}
DEFAULT_RADIUS = 1.0
DEFAULT_UNIT = "m"


class Coordinates(NamedTuple):
    """A position in degrees."""

    latitude: float
    longitude: float


if TYPE_CHECKING:
    #: Coordinates, under a name GeoField's own ``Coordinates`` attribute does not hide
    _Position: TypeAlias = Coordinates


def distance_m(a: Coordinates, b: Coordinates) -> float:
    """Haversine distance in metres, with the earth radius Redis uses."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a.latitude, a.longitude, b.latitude,
                                                b.longitude))
    u = math.sin((lat2 - lat1) / 2)
    v = math.sin((lon2 - lon1) / 2)
    return 2.0 * EARTH_RADIUS_M * math.asin(math.sqrt(u * u + math.cos(lat1) * math.cos(lat2)
                                                      * v * v))


class DistanceRadius(GeoRadius):
    """A radius search whose distances are reported on each result.

    The result's scores must be this source's distances, so it cannot be
    re-scored by an ``order_by`` on a sorted field or merged under OR/NOT
    (see :func:`popoto.query.compiler.check_distance_scores`).
    """

    reports_distances = True

    def __init__(self, label: str, *args: Any) -> None:
        super().__init__(*args)
        self.label = label


class Near(lk.Lookup):
    """``geo=(lat, lon)`` or ``geo=instance``: within ``<field>_radius`` of that point.

    The radius options are read when the query is compiled; ``matches`` (the
    Python fallback under OR / NOT) uses the same radius.
    """

    lookup_name = "exact"
    radius_m: float | None = None

    def prepare(self, value: Any) -> Any:
        if value is None:
            return None
        field = self.field
        if registry.is_instance(value):
            if not isinstance(value, field.placed_model):
                raise QueryException(f"{field.label}: a member must be a "
                                     f"{field.placed_model.__name__} instance, got {value!r}")
            position = getattr(value, field.name)
            if position is None:
                raise QueryException(f"{field.label}: member {value!r} has no position")
            return position
        position = self.coerce(value)
        try:
            field.validate(position)
        except ModelException as exc:
            raise QueryException(f"Invalid value for {field.label}: {exc}") from None
        return position

    def matches(self, stored: Any) -> bool:
        if self.value is None or stored is None:
            return stored is self.value
        radius = DEFAULT_RADIUS * UNITS[DEFAULT_UNIT] if self.radius_m is None else self.radius_m
        return distance_m(self.value, stored) <= radius


class GeoField(Field[_T]):
    """A ``(latitude, longitude)`` position, queryable by radius.

    Values are ``(lat, lon)`` tuples/lists or :class:`GeoField.Coordinates`;
    reading gives ``Coordinates``. Latitude must lie in ±85.05112878 (Redis's
    limit) and longitude in ±180.

    Query: ``filter(geo=(lat, lon), geo_radius=5, geo_radius_unit='km')``
    (``geo_member=instance`` searches around a saved instance instead), where
    ``geo`` is the field name. Radius defaults to 1, unit to ``'m'`` (``'m'``,
    ``'km'``, ``'ft'``, ``'mi'``). Results come nearest first; with
    ``geo_with_distances=True`` each result carries ``instance.geo_distance``
    (in the radius unit). Combining with other AND conditions narrows the
    search inside Redis; ``count()`` never loads instances.
    """

    type = tuple
    is_geo = True
    key_kind = "GeoF"
    Coordinates = Coordinates
    UNITS = UNITS

    if TYPE_CHECKING:  # reads as Coordinates (| None unless null=False)
        @overload
        def __init__(self: GeoField[_Position], *, null: Literal[False],
                     **options: Unpack[FieldOptions]) -> None: ...

        @overload
        def __init__(self: GeoField[_Position | None], *, null: bool = True,
                     **options: Unpack[FieldOptions]) -> None: ...

        def __init__(self, *, null: bool = True, **options: Unpack[FieldOptions]) -> None: ...

        # a (latitude, longitude) pair is accepted too (coerced to Coordinates)
        def __set__(self, instance: Model,
                    value: _T | tuple[float, float] | list[float]) -> None: ...

    # --- values --------------------------------------------------------
    def coerce(self, value: Any) -> Any:
        if value is None or (isinstance(value, (tuple, list)) and len(value) == 2
                             and value[0] is None and value[1] is None):
            return None  # (None, None) means "no location", as in Popoto 1.x
        if (isinstance(value, (tuple, list)) and len(value) == 2
                and all(isinstance(v, (int, float, Decimal)) and not isinstance(v, bool)
                        for v in value)):
            return Coordinates(float(value[0]), float(value[1]))
        raise self.error("expected (latitude, longitude) or GeoField.Coordinates", value)

    def validate(self, value: Any, null_check: bool = True) -> None:
        super().validate(value, null_check)
        if value is None:
            return
        lat, lon = value
        if not -LAT_LIMIT <= lat <= LAT_LIMIT:
            raise self.error(f"latitude must be within ±{LAT_LIMIT}", value)
        if not -LON_LIMIT <= lon <= LON_LIMIT:
            raise self.error(f"longitude must be within ±{LON_LIMIT}", value)

    def to_db(self, value: Any) -> bytes:
        return encoding.pack(None if value is None else (value[0], value[1]))

    def from_db(self, value: Any) -> Any:
        return None if value is None else Coordinates(float(value[0]), float(value[1]))

    # --- index ---------------------------------------------------------
    def record_base(self, ns: str) -> str:
        return self.geo_key(ns)

    def geo_key(self, ns: str | None = None) -> str:
        """The geo set of this field: ``$GeoF:<ns>:field`` (one per tag group)."""
        return keys.field_index_key("GeoF", ns or self.placed_model._meta.groups[0], self.name)

    @classmethod
    def get_geo_db_key(cls, model: Any, field_name: str) -> keys.DB_key:
        """The geo set of ``field_name`` on ``model`` (class or instance): 1.x's name."""
        return cls.get_special_use_field_db_key(model, field_name)

    def on_save(self, instance: Model, value: Any, batch: Any) -> None:
        batch.add(self.name, "G", self.geo_key(batch.ns), batch.key,
                  f"{value[0]!r},{value[1]!r}")

    # --- query ---------------------------------------------------------
    def query_options(self) -> tuple[str, ...]:
        n = self.name
        return (f"{n}_radius", f"{n}_radius_unit", f"{n}_with_distances", f"{n}_member",
                f"{n}_latitude", f"{n}_longitude")

    def query_params(self) -> list[str]:
        return super().query_params() + list(self.query_options())

    def option_condition(self, option: str, value: Any,
                         options: dict[str, Any] | None = None) -> dict[str, Any]:
        """``<field>_member=instance`` is the condition ``<field>=instance``;
        ``<field>_latitude=a, <field>_longitude=b`` (1.x's spelling) is ``<field>=(a, b)``,
        added once both are given (``options`` holds the query's options so far)."""
        n = self.name
        if option == f"{n}_member":
            if value is None:
                raise QueryException(f"{option} expects a {self.placed_model.__name__} instance")
            return {f"{n}__exact": value}
        given = options or {}
        if option in (f"{n}_latitude", f"{n}_longitude") and \
                f"{n}_latitude" in given and f"{n}_longitude" in given:
            return {f"{n}__exact": (given[f"{n}_latitude"], given[f"{n}_longitude"])}
        return {}

    def search_options(self, options: dict[str, Any]) -> tuple[float, str, bool]:
        """(radius, unit, with_distances) from the query options, validated."""
        n = self.name
        radius = options.get(f"{n}_radius", DEFAULT_RADIUS)
        unit = options.get(f"{n}_radius_unit", DEFAULT_UNIT)
        with_distances = options.get(f"{n}_with_distances", False)
        if (isinstance(radius, bool) or not isinstance(radius, (int, float, Decimal))
                or not math.isfinite(radius) or radius < 0):
            raise QueryException(f"{n}_radius must be a non-negative finite number, "
                                 f"got {radius!r}")
        if unit not in UNITS:
            raise QueryException(f"{n}_radius_unit must be one of {', '.join(UNITS)}, "
                                 f"got {unit!r}")
        if not isinstance(with_distances, bool):
            raise QueryException(f"{n}_with_distances expects True or False, "
                                 f"got {with_distances!r}")
        return float(radius), unit, with_distances

    def lookup_source(self, lookup: lk.Lookup, context: dict[str, Any]) -> Source | None:
        if not isinstance(lookup, Near) or lookup.value is None:
            return None
        radius, unit, with_distances = self.search_options(context)
        lookup.radius_m = radius * UNITS[unit]
        lat, lon = lookup.value
        args = (self.geo_key(self.query_ns(context)), lon, lat, radius, unit)
        return DistanceRadius(self.label, *args) if with_distances else GeoRadius(*args)

    def check_plan(self, source: Source | None, options: dict[str, Any]) -> None:
        """Refuse a query whose result scores would not be this field's distances, or one
        giving only one of ``<field>_latitude`` / ``<field>_longitude``."""
        n = self.name
        if (f"{n}_latitude" in options) != (f"{n}_longitude" in options):
            raise QueryException(f"{self.label}: {n}_latitude and {n}_longitude go together "
                                 f"(got only one of them)")
        if self.search_options(options)[2] and not self._scores_are_distances(source):
            n = self.name
            raise QueryException(
                f"{self.label}: {n}_with_distances needs a {n}=(lat, lon) or {n}_member= "
                f"condition ANDed with the rest of the filter, and no order_by on a sorted "
                f"field (results come nearest first; use order_by(None) to drop Meta.order_by)"
            )

    def _scores_are_distances(self, source: Source | None) -> bool:
        if isinstance(source, DistanceRadius):
            return source.label == self.label
        if isinstance(source, Combine):
            if source.kind == "AND" and source.score_from is not None:
                return self._scores_are_distances(source.parts[source.score_from])
            if source.kind == "OR":
                return all(self._scores_are_distances(p) for p in source.parts)
        return False

    def after_load(self, objs: list[Any], options: dict[str, Any]) -> None:
        """With ``<field>_with_distances``, copy each result's distance (its score) onto it."""
        if not options.get(f"{self.name}_with_distances"):
            return
        attr = f"{self.name}_distance"
        for obj in objs:
            if not isinstance(obj, dict):
                obj.__dict__[attr] = obj.__dict__.get("_score")


GeoField.register_lookup(Near)
