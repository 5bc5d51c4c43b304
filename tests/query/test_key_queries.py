"""Queries on key fields and plain fields: lookups, ordering, limits, values, errors."""

import pytest

from popoto import Field, IntField, KeyField, Model, Q, QueryException
from tests.helpers import count_round_trips, key_of, server_count


class City(Model):
    country = KeyField()
    name = KeyField()
    population = IntField(null=True)
    motto = Field(null=True)

    class Meta:
        order_by = "name"


@pytest.fixture
def cities():
    data = [("fr", "paris", 2100), ("fr", "lyon", 500), ("de", "berlin", 3600),
            ("de", "bonn", 300), ("it", "rome", 2800), ("it", "a:b*c", 1)]
    for country, name, pop in data:
        City(country=country, name=name, population=pop, motto=f"{name}!").save()


def keys_of(qs):
    return sorted(c.name for c in qs)


def test_get_by_key_fields_db_key_and_none(cities):
    """get() by all key fields, by db_key/redis_key, and None when absent."""
    assert City.query.get(country="fr", name="paris").population == 2100
    assert City.query.get(db_key=key_of(City, "fr", "paris")).name == "paris"
    assert City.query.get(redis_key=key_of(City, "fr", "lyon")).name == "lyon"
    assert City.query.get(country="fr", name="nice") is None


def test_get_raises_when_several_match(cities):
    """get() with a filter matching several instances raises QueryException."""
    with pytest.raises(QueryException, match="more than one"):
        City.query.get(country="fr")


def test_key_field_lookups(cities):
    """exact, in, startswith, endswith and isnull on key fields."""
    assert keys_of(City.query.filter(country="de")) == ["berlin", "bonn"]
    assert keys_of(City.query.filter(country__in=["de", "it"])) == ["a:b*c", "berlin", "bonn",
                                                                    "rome"]
    assert keys_of(City.query.filter(name__startswith="b")) == ["berlin", "bonn"]
    assert keys_of(City.query.filter(name__endswith="n")) == ["berlin", "bonn", "lyon"]
    assert City.query.filter(name__isnull=True).count() == 0
    assert City.query.filter(name__isnull=False).count() == 6


def test_special_characters_are_not_glob_patterns(cities):
    """A key value with glob characters matches literally."""
    assert keys_of(City.query.filter(name="a:b*c")) == ["a:b*c"]
    assert keys_of(City.query.filter(name__startswith="a:b*")) == ["a:b*c"]
    assert City.query.filter(name__startswith="*").count() == 0


def test_plain_field_equality(cities):
    """Equality on a plain field filters loaded candidates."""
    assert keys_of(City.query.filter(motto="rome!")) == ["rome"]
    assert keys_of(City.query.filter(country="fr", population=500)) == ["lyon"]


def test_all_count_keys(cities):
    """all(), count() and keys() agree."""
    assert len(City.query.all()) == 6 == City.query.count()
    assert sorted(City.query.keys(country="fr")) == sorted(
        [key_of(City, "fr", "lyon"), key_of(City, "fr", "paris")])


def test_order_by_limit_values(cities):
    """order_by (asc/desc, Meta default), limit and values()."""
    assert [c.name for c in City.query.all()][:2] == ["a:b*c", "berlin"]
    by_pop = City.query.filter(order_by="-population", limit=2)
    assert [c.name for c in by_pop] == ["berlin", "rome"]
    vals = City.query.filter(country="fr", values=("name", "population"))
    assert sorted(vals, key=lambda d: d["name"]) == [
        {"name": "lyon", "population": 500}, {"name": "paris", "population": 2100}]
    assert City.query.filter(country="fr").order_by("population").first().name == "lyon"
    assert City.query.filter(country="fr").order_by("population").last().name == "paris"


def test_slicing_len_exists(cities):
    """Slices and indexing push offset/limit down; exists and len work."""
    qs = City.query.all()
    assert [c.name for c in qs[1:3]] == ["berlin", "bonn"]
    assert qs[0].name == "a:b*c"
    with pytest.raises(IndexError):
        City.query.filter(country="fr")[5]
    assert City.query.filter(country="fr").exists()
    assert not City.query.filter(country="xx").exists()


def test_q_objects_and_exclude(cities):
    """Q objects combine with | & ~, and exclude() negates."""
    q = Q(country="fr") | Q(name="rome")
    assert keys_of(City.query.filter(q)) == ["lyon", "paris", "rome"]
    assert keys_of(City.query.filter(~Q(country="fr") & Q(country__in=["fr", "de"]))) == [
        "berlin", "bonn"]
    assert keys_of(City.query.exclude(country="it")) == ["berlin", "bonn", "lyon", "paris"]
    assert keys_of(City.query.filter(Q(population=300) | Q(country="fr"))) == ["bonn", "lyon",
                                                                              "paris"]


def test_unknown_field_and_lookup_errors():
    """Unknown fields and lookups raise QueryException with valid filters and a suggestion."""
    with pytest.raises(QueryException, match="did you mean|Did you mean") as info:
        City.query.filter(contry="fr")
    assert "country__startswith" in str(info.value)
    with pytest.raises(QueryException, match="did you mean 'startswith'"):
        City.query.filter(name__startwith="x")
    with pytest.raises(QueryException, match="values"):
        City.query.values("nope")
    with pytest.raises(QueryException):
        City.query.filter(order_by="nope")


def test_reads_are_pipelined(cities, r):
    """Loading many instances costs a constant number of round trips per server, not one
    per object (a cluster pipeline sends each node its share of the commands)."""
    for i in range(200):
        City(country="xx", name=f"c{i}").save()
    with count_round_trips() as trips:
        assert len(list(City.query.filter(country="xx"))) == 200
    assert trips[0] <= 3 * server_count(r)


def test_lazy_decoding(cities, r):
    """Query results decode a field only when it is read."""
    r.hset(key_of(City, "fr", "paris"), "motto", b"\xc1")
    paris = City.query.get(country="fr", name="paris")
    assert paris.population == 2100
    with pytest.raises(Exception, match="motto"):
        _ = paris.motto


def test_script_calls_in_a_cluster_pipeline_cost_no_extra_round_trips(cluster_mode):
    """On a cluster, a query's per-group script calls go out in one pipelined round trip per
    node, routed by their KEYS (redis-py would otherwise ask COMMAND GETKEYS for each)."""
    for i in range(60):
        City(country="xx", name=f"c{i}").save()
    assert len(list(City.query.filter(country="xx"))) == 60  # connects, loads the scripts
    with count_round_trips() as trips:
        assert len(list(City.query.filter(country="xx"))) == 60
    assert trips[0] <= 2 * len(cluster_mode.masters())  # scripts, then the hashes
