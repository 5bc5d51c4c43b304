"""GeoField: storage, validation, the geo index and radius queries against real Redis."""

import math

import pytest

from popoto import (
    Field,
    GeoField,
    IndexedField,
    KeyField,
    Model,
    ModelException,
    Q,
    QueryException,
    SortedField,
)
from popoto.fields.geo import distance_m
from tests.helpers import command_calls, count_round_trips, db_keys, index_key, key_of, server_count

CENTER = (48.8566, 2.3522)  # Paris, Hotel de Ville


class GeoCafe(Model):
    name = KeyField()
    geo = GeoField(null=True)
    rating = SortedField(type=int, null=True)
    kind = IndexedField(null=True)
    note = Field(null=True)


class GeoOrdered(Model):
    name = KeyField()
    geo = GeoField()
    rating = SortedField(type=int)

    class Meta:
        order_by = "rating"


class GeoOther(Model):
    name = KeyField()
    geo = GeoField()


def offset(meters_north: float, meters_east: float = 0.0) -> tuple[float, float]:
    """A point about that many metres north/east of CENTER."""
    lat = CENTER[0] + meters_north / 111_195.0
    lon = CENTER[1] + meters_east / (111_195.0 * math.cos(math.radians(CENTER[0])))
    return (lat, lon)


@pytest.fixture
def cafes():
    rows = [
        ("here", CENTER, 5, "bar", "x"),
        ("m300", offset(300), 3, "bar", None),
        ("m800", offset(0, 800), 4, "tea", None),
        ("km3", offset(-3000), 5, "bar", None),
        ("km50", offset(50_000), 2, "tea", None),
        ("london", (51.5074, -0.1278), 4, "bar", None),
        ("nowhere", None, 1, "bar", "x"),
    ]
    return {name: GeoCafe.create(name=name, geo=geo, rating=rating, kind=kind, note=note)
            for name, geo, rating, kind, note in rows}


def names(results) -> list[str]:
    return [c.name for c in results]


def cafe(name: str) -> str:
    """The instance key of GeoCafe ``name``."""
    return key_of(GeoCafe, name)


def geo_set(name: str) -> str:
    """The geo set (of its tag group) that holds GeoCafe ``name``."""
    return index_key(GeoCafe, "geo", instance=cafe(name))


# --- values and validation ----------------------------------------------------

def test_tuple_list_and_coordinates_are_accepted_and_read_back_as_coordinates():
    """(lat, lon) tuples, lists and Coordinates all store and read back as Coordinates."""
    GeoCafe.create(name="t", geo=(1.5, 2.5))
    GeoCafe.create(name="l", geo=[-3, 4])
    GeoCafe.create(name="c", geo=GeoField.Coordinates(latitude=5.25, longitude=-6.75))
    assert GeoCafe.load(name="t").geo == GeoField.Coordinates(1.5, 2.5)
    loaded = GeoCafe.load(name="l").geo
    assert isinstance(loaded, GeoField.Coordinates)
    assert (loaded.latitude, loaded.longitude) == (-3.0, 4.0)
    assert GeoCafe.load(name="c").geo.longitude == -6.75


def test_saved_position_is_in_the_geo_set(r):
    """A save GEOADDs the instance key to $GeoF:<group>:field at its position."""
    GeoCafe.create(name="a", geo=CENTER)
    (lon, lat), = r.geopos(geo_set("a"), cafe("a"))
    assert lat == pytest.approx(CENTER[0], abs=1e-5)
    assert lon == pytest.approx(CENTER[1], abs=1e-5)


@pytest.mark.parametrize("bad", [
    (90.0, 0.0), (-85.1, 0.0), (0.0, 180.5), (0.0, -181.0), (float("nan"), 0.0),
    (0.0, float("inf")),
])
def test_out_of_range_coordinates_are_rejected_writing_nothing(r, bad):
    """Latitude beyond ±85.05112878 or longitude beyond ±180 raises, naming model/field/value."""
    with pytest.raises(ModelException) as info:
        GeoCafe.create(name="bad", geo=bad)
    message = str(info.value)
    assert "GeoCafe.geo" in message and repr(GeoField.Coordinates(*bad)) in message
    assert db_keys(r) == set()


@pytest.mark.parametrize("bad", [(1.0,), (1.0, 2.0, 3.0), ("1", "2"), (True, 2.0), 3.5, "1,2"])
def test_malformed_values_are_rejected(r, bad):
    """Anything but a pair of numbers is a ModelException naming the field and value."""
    with pytest.raises(ModelException, match=r"GeoCafe\.geo.*latitude, longitude"):
        GeoCafe(name="bad", geo=bad).save()
    assert db_keys(r) == set()


def test_latitude_limits_are_inclusive():
    """The exact Redis limits ±85.05112878 / ±180 are accepted."""
    GeoCafe.create(name="edge", geo=(85.05112878, -180.0))
    found = GeoCafe.query.filter(geo=(85.05112878, -180.0), geo_radius=1).keys()
    assert found == [cafe("edge")]


def test_moving_and_clearing_a_position_keeps_the_index_exact(r):
    """A new position replaces the old geo entry; None and delete remove it."""
    obj = GeoCafe.create(name="a", geo=CENTER)
    obj.geo = (10.0, 20.0)
    obj.save()
    (lon, lat), = r.geopos(geo_set("a"), obj.pk)
    assert (round(lat, 4), round(lon, 4)) == (10.0, 20.0)
    assert r.zcard(geo_set("a")) == 1
    obj.geo = None
    obj.save()
    assert r.zscore(geo_set("a"), obj.pk) is None
    obj.geo = CENTER
    obj.save()
    obj.delete()
    assert r.exists(geo_set("a")) == 0


# --- radius queries -----------------------------------------------------------

def test_radius_in_each_unit(cafes):
    """geo_radius/geo_radius_unit select exactly the points within the radius (m, km, ft, mi)."""
    q = GeoCafe.query
    assert set(names(q.filter(geo=CENTER, geo_radius=500))) == {"here", "m300"}
    assert set(names(q.filter(geo=CENTER, geo_radius=1, geo_radius_unit="km"))) == {
        "here", "m300", "m800"}
    assert set(names(q.filter(geo=CENTER, geo_radius=1000, geo_radius_unit="ft"))) == {
        "here", "m300"}  # 1000 ft = 304.8 m
    assert set(names(q.filter(geo=CENTER, geo_radius=1.5, geo_radius_unit="mi"))) == {
        "here", "m300", "m800"}  # 2414 m
    assert set(names(q.filter(geo=CENTER, geo_radius=400, geo_radius_unit="km"))) == {
        "here", "m300", "m800", "km3", "km50", "london"}


def test_default_radius_is_one_metre(cafes):
    """Without geo_radius the search radius is 1 m (an almost exact position match)."""
    assert names(GeoCafe.query.filter(geo=CENTER)) == ["here"]


def test_results_are_nearest_first_with_redis_distances(cafes, r):
    """geo_with_distances gives each result its distance, nearest first, as Redis computes it."""
    found = list(GeoCafe.query.filter(geo=CENTER, geo_radius=100, geo_radius_unit="km",
                                      geo_with_distances=True))
    assert names(found) == ["here", "m300", "m800", "km3", "km50"]
    expected = {m.decode(): d for ns in GeoCafe._meta.groups for m, d in r.geosearch(
        index_key(GeoCafe, "geo", ns=ns), longitude=CENTER[1], latitude=CENTER[0], radius=100,
        unit="km", withdist=True)}
    for obj in found:
        assert obj.geo_distance == pytest.approx(expected[obj.pk], abs=1e-4)
    distances = [c.geo_distance for c in found]
    assert distances == sorted(distances)
    assert found[1].geo_distance == pytest.approx(0.3, abs=0.002)  # km


def test_without_distances_results_still_come_nearest_first(cafes):
    """Plain radius queries are ordered by distance too, and carry no distance attribute."""
    found = list(GeoCafe.query.filter(geo=offset(0, 800), geo_radius=10, geo_radius_unit="km"))
    assert names(found) == ["m800", "here", "m300", "km3"]
    assert not hasattr(found[0], "geo_distance")


def test_member_query_searches_around_an_instance(cafes):
    """geo_member=instance searches around that instance's position (it is included)."""
    found = GeoCafe.query.filter(geo_member=cafes["m300"], geo_radius=600,
                                 geo_with_distances=True)
    assert names(found) == ["m300", "here"]
    assert found[0].geo_distance == pytest.approx(0.0, abs=1.0)


def test_member_must_be_a_positioned_instance_of_the_model(cafes):
    """geo_member with another model's instance, a None position or None raises QueryException."""
    other = GeoOther.create(name="o", geo=CENTER)
    with pytest.raises(QueryException, match="GeoCafe instance"):
        GeoCafe.query.filter(geo_member=other, geo_radius=5)
    with pytest.raises(QueryException, match="has no position"):
        GeoCafe.query.filter(geo_member=cafes["nowhere"], geo_radius=5)
    with pytest.raises(QueryException, match="geo_member"):
        GeoCafe.query.filter(geo_member=None)


def test_limit_first_and_get_are_pushed_down(cafes):
    """first()/limit() return the nearest matches; get() works with a radius condition."""
    qs = GeoCafe.query.filter(geo=offset(-2900), geo_radius=100, geo_radius_unit="km")
    assert qs.first().name == "km3"
    assert names(qs.limit(2)) == ["km3", "here"]
    assert names(qs[1:3]) == ["here", "m800"]  # 2900 m, then hypot(2900, 800) = 3008 m
    got = GeoCafe.query.get(geo=offset(-2900), geo_radius=200, geo_with_distances=True)
    assert got.name == "km3" and got.geo_distance == pytest.approx(100, abs=1)


def test_combined_with_sorted_and_indexed_conditions(cafes):
    """AND with a sorted range and an equality index is evaluated in Redis, nearest first."""
    qs = GeoCafe.query.filter(geo=CENTER, geo_radius=100, geo_radius_unit="km",
                              rating__gte=4, kind="bar", geo_with_distances=True)
    found = list(qs)
    assert names(found) == ["here", "km3"]
    assert found[1].geo_distance == pytest.approx(3.0, abs=0.01)
    assert qs.count() == 2
    by_expr = GeoCafe.query.filter((GeoCafe.rating >= 3) & (GeoCafe.geo == CENTER),
                                   geo_radius=1, geo_radius_unit="km")
    assert names(by_expr) == ["here", "m300", "m800"]


def test_count_is_answered_without_loading_instances(cafes, r):
    """count() of a radius query runs in Redis and reads no hashes."""
    before = command_calls(r, "hgetall")
    assert GeoCafe.query.filter(geo=CENTER, geo_radius=5, geo_radius_unit="km").count() == 4
    assert GeoCafe.query.count(geo=CENTER, geo_radius=5, geo_radius_unit="km", kind="tea") == 1
    after = command_calls(r, "hgetall")
    assert after == before


def test_a_query_reads_one_page_in_two_round_trips(cafes, r):
    """A radius query is one script call plus one pipelined read of the page (per server)."""
    qs = GeoCafe.query.filter(geo=CENTER, geo_radius=5, geo_radius_unit="km").limit(2)
    with count_round_trips() as trips:
        assert len(list(qs)) == 2
    assert trips[0] <= 2 * server_count(r)


def test_exclude_and_or_with_indexed_conditions(cafes):
    """NOT and OR of a radius condition with indexed conditions stay in Redis and are correct."""
    far = GeoCafe.query.filter(geo_radius=1, geo_radius_unit="km").exclude(geo=CENTER)
    assert set(names(far)) == {"km3", "km50", "london", "nowhere"}
    either = GeoCafe.query.filter(Q(geo=CENTER) | Q(kind="tea"), geo_radius=500)
    assert set(names(either)) == {"here", "m300", "m800", "km50"}


def test_or_with_a_plain_field_uses_the_same_radius_in_python(cafes):
    """Under OR with an unindexed field, the radius is checked in Python with Redis's formula."""
    found = GeoCafe.query.filter(Q(geo=CENTER) | Q(note="x"), geo_radius=0.5,
                                 geo_radius_unit="km")
    assert set(names(found)) == {"here", "m300", "nowhere"}


def test_null_positions_are_not_indexed_and_filter_by_isnull(cafes, r):
    """Instances without a position are absent from the geo set and match geo__isnull=True."""
    assert r.zscore(geo_set("nowhere"), cafe("nowhere")) is None
    assert r.zscore(geo_set("here"), cafe("here")) is not None
    assert names(GeoCafe.query.filter(geo__isnull=True)) == ["nowhere"]
    assert GeoCafe.query.filter(geo__isnull=False).count() == 6


def test_bad_query_options_raise_at_filter_time(cafes):
    """An unknown unit, a negative/NaN radius or a non-bool flag is a QueryException."""
    with pytest.raises(QueryException, match="geo_radius_unit must be one of m, km, mi, ft"):
        GeoCafe.query.filter(geo=CENTER, geo_radius=1, geo_radius_unit="parsec")
    with pytest.raises(QueryException, match="geo_radius must be"):
        GeoCafe.query.filter(geo=CENTER, geo_radius=-1)
    with pytest.raises(QueryException, match="geo_radius must be"):
        GeoCafe.query.filter(geo=CENTER, geo_radius=float("nan"))
    with pytest.raises(QueryException, match="geo_radius must be"):
        GeoCafe.query.filter(geo=CENTER, geo_radius="5")
    with pytest.raises(QueryException, match="geo_with_distances expects"):
        GeoCafe.query.filter(geo=CENTER, geo_with_distances="yes")
    with pytest.raises(QueryException, match="unit must be"):  # options given in a later call
        GeoCafe.query.filter(geo=CENTER).filter(geo_radius_unit="yd")


def test_bad_center_raises_query_exception(cafes):
    """A centre outside the geo limits or of the wrong shape is a QueryException."""
    with pytest.raises(QueryException, match="latitude"):
        GeoCafe.query.filter(geo=(91.0, 0.0), geo_radius=1)
    with pytest.raises(QueryException, match="GeoCafe.geo"):
        GeoCafe.query.filter(geo="paris", geo_radius=1)


def test_distances_need_distance_ordering():
    """geo_with_distances refuses an order_by on a sorted field (explicit or Meta) or no centre."""
    GeoOrdered.create(name="a", geo=CENTER, rating=1)
    with pytest.raises(QueryException, match="geo_with_distances needs"):
        list(GeoCafe.query.filter(geo=CENTER, geo_radius=1, geo_with_distances=True,
                                  order_by="rating"))
    with pytest.raises(QueryException, match="order_by"):
        list(GeoOrdered.query.filter(geo=CENTER, geo_radius=1, geo_with_distances=True))
    found = GeoOrdered.query.filter(geo=CENTER, geo_radius=1,
                                    geo_with_distances=True).order_by(None)
    assert [o.geo_distance < 1 for o in found] == [True]
    with pytest.raises(QueryException, match="needs a geo="):
        list(GeoCafe.query.filter(rating__gte=1, geo_with_distances=True))


def test_order_by_another_field_keeps_all_matches(cafes):
    """A radius query ordered by a sorted field returns the same matches in that order."""
    found = GeoCafe.query.filter(geo=CENTER, geo_radius=5, geo_radius_unit="km",
                                 order_by="-rating")
    assert [c.rating for c in found] == [5, 5, 4, 3]


def test_python_distance_matches_redis(r):
    """distance_m uses Redis's haversine and earth radius (GEODIST agrees to 0.1 mm)."""
    a, b = (48.8566, 2.3522), (40.7128, -74.0060)
    r.geoadd("pts", (a[1], a[0], "a", b[1], b[0], "b"))
    redis_m = r.geodist("pts", "a", "b", unit="m")
    assert distance_m(GeoField.Coordinates(*a), GeoField.Coordinates(*b)) == pytest.approx(
        redis_m, abs=1.0)  # Redis measures between geohash cell centres (sub-metre shifts)


def test_get_info_lists_geo_field_and_options():
    """get_info names the geo field and its query options."""
    info = GeoCafe.get_info()
    assert info["geo_fields"] == ["geo"]
    for option in ("geo", "geo_radius", "geo_radius_unit", "geo_with_distances", "geo_member"):
        assert option in info["query_filters"]


def test_latitude_longitude_filter_arguments(r):
    """filter(geo_latitude=, geo_longitude=, geo_radius=) searches like geo=(lat, lon)."""
    near = GeoCafe.create(name="near", geo=(48.8566, 2.3522))
    GeoCafe.create(name="far", geo=(51.5074, -0.1278))
    GeoCafe.create(name="none")
    got = GeoCafe.query.filter(geo_latitude=48.86, geo_longitude=2.35, geo_radius=5,
                               geo_radius_unit="km")
    assert got == [near]
    assert GeoCafe.query.filter(geo_latitude=48.86).filter(
        geo_longitude=2.35, geo_radius=5, geo_radius_unit="km").keys() == [near.pk]
    with pytest.raises(QueryException, match="geo_latitude and geo_longitude go together"):
        GeoCafe.query.filter(geo_latitude=48.86).keys()
    with pytest.raises(QueryException, match="GeoCafe.geo"):
        GeoCafe.query.filter(geo_latitude=95.0, geo_longitude=0.0).keys()


def test_none_none_means_no_location(r):
    """(None, None) is stored as no location, reads back None and filters like None."""
    cafe = GeoCafe.create(name="nowhere", geo=(None, None))
    GeoCafe.create(name="somewhere", geo=(1.0, 2.0))
    assert cafe.geo is None and GeoCafe.query.get(name="nowhere").geo is None
    assert r.hget(cafe.pk, "geo") == b"\xc0"  # msgpack nil
    assert GeoCafe.query.filter(geo=(None, None)).keys() == [cafe.pk]
    assert GeoCafe.query.filter(geo_latitude=None, geo_longitude=None).keys() == [cafe.pk]
    cafe.geo = (3.0, 4.0)
    cafe.save()
    cafe.geo = (None, None)
    cafe.save()
    assert GeoCafe.query.filter(geo=(3.0, 4.0), geo_radius=10).keys() == []
