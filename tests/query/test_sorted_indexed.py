"""Sorted and indexed fields: range lookups, partitions, pushdown, set algebra in Redis."""

import datetime as dt
from decimal import Decimal

import pytest

from popoto import (
    Field,
    IndexedField,
    KeyField,
    Model,
    ModelException,
    Q,
    QueryException,
    SortedField,
)
from tests.helpers import (
    command_calls,
    count_round_trips,
    index_key,
    index_members,
    key_of,
    server_count,
)


class Player(Model):
    name = KeyField()
    score = SortedField(type=int, null=True)
    score_2 = SortedField(type=float, null=True)
    team = IndexedField(null=True)
    level = SortedField(type=int, null=True, partition_by="team")
    note = Field(null=True)

    class Meta:
        namespace = "SortedPlayer"


class Event(Model):
    slug = KeyField()
    when = SortedField(type=dt.datetime)
    day = SortedField(type=dt.date, null=True)
    price = SortedField(type=Decimal, null=True)


@pytest.fixture
def players():
    rows = [("ann", 10, "red", 1), ("bob", 20, "red", 2), ("cat", 30, "blue", 3),
            ("dan", 40, "blue", 4), ("eve", 50, None, 5)]
    for name, score, team, level in rows:
        Player(name=name, score=score, score_2=score / 10, team=team, level=level).save()


def names(qs):
    return [p.name for p in qs]


def test_range_lookups_in_score_order(players):
    """gt/gte/lt/lte/between/range/exact return matches in score order."""
    assert names(Player.query.filter(score__gt=20)) == ["cat", "dan", "eve"]
    assert names(Player.query.filter(score__gte=20, score__lt=40)) == ["bob", "cat"]
    assert names(Player.query.filter(score__lte=10)) == ["ann"]
    assert names(Player.query.filter(score__between=(15, 45))) == ["bob", "cat", "dan"]
    assert names(Player.query.filter(score__range=(15, 25))) == ["bob"]
    assert names(Player.query.filter(score=30)) == ["cat"]
    assert names(Player.query.filter(score__in=[10, 50])) == ["ann", "eve"]


def test_expressions(players):
    """Model.field comparisons build the same conditions as keyword lookups."""
    assert names(Player.query.filter(Player.score >= 40)) == ["dan", "eve"]
    assert names(Player.query.filter((Player.score < 20) | (Player.score > 40))) == ["ann", "eve"]
    assert names(Player.query.filter(Player.score.between(20, 30) & (Player.team == "red"))) == [
        "bob"]
    assert names(Player.query.filter(Player.team != "red", order_by="score")) == ["cat", "dan",
                                                                                 "eve"]


def test_order_by_and_limit(players):
    """order_by on a sorted field (asc/desc) with limit, first and last."""
    assert names(Player.query.filter(score__gte=0, order_by="-score", limit=2)) == ["eve", "dan"]
    assert names(Player.query.filter(team="blue").order_by("-score")) == ["dan", "cat"]
    assert Player.query.filter(score__gte=0).first().name == "ann"
    assert Player.query.filter(score__gte=0).last().name == "eve"


def test_similar_field_names_do_not_mix(players, r):
    """score and score_2 keep separate sorted sets."""
    assert len(index_members(r, Player, "score")) == 5
    assert len(index_members(r, Player, "score_2")) == 5
    assert names(Player.query.filter(score_2__gte=4.0)) == ["dan", "eve"]


def test_partitioned_sorted_field(players, r):
    """A partitioned field keeps one sorted set per partition and requires its values."""
    assert index_members(r, Player, "level", "red") == {key_of(Player, n) for n in ("ann", "bob")}
    assert names(Player.query.filter(team="blue", level__gte=4)) == ["dan"]
    with pytest.raises(QueryException, match="team"):
        list(Player.query.filter(level__gte=1))


def test_partition_change_moves_entry(players, r):
    """Changing the partition field via update_fields moves the sorted entry."""
    p = Player.query.get(name="ann")
    p.team = "blue"
    p.save(update_fields=["team"])
    assert r.zscore(index_key(Player, "level", "blue", instance=p), p.pk) == 1
    assert r.zscore(index_key(Player, "level", "red", instance=p), p.pk) is None


def test_indexed_lookups(players):
    """exact / in / isnull on an IndexedField come from Redis sets."""
    assert names(Player.query.filter(team="red")) == ["ann", "bob"]
    assert names(Player.query.filter(team__in=["red", "blue"])) == ["ann", "bob", "cat", "dan"]
    assert names(Player.query.filter(team__isnull=True)) == ["eve"]
    assert names(Player.query.filter(team__isnull=False)) == ["ann", "bob", "cat", "dan"]


def test_count_uses_indexes_without_loading(players, r):
    """count() of indexed conditions reads no hashes (one round trip per server)."""
    with count_round_trips() as trips:
        assert Player.query.count(team="red") == 2
        assert Player.query.count(score__gte=30) == 3
        assert Player.query.count(Q(team="red") | Q(score__gte=50)) == 3
    assert trips[0] == 3 * server_count(r)


def test_limit_is_pushed_down(r):
    """A page of 10 of a large sorted set reads ~10 hashes."""
    pipe = r.pipeline(transaction=False)
    for i in range(3000):
        Player(name=f"p{i:05d}", score=i).save(pipeline=pipe)
    pipe.execute()
    before = command_calls(r, "hgetall")
    page = names(Player.query.filter(score__gte=100, limit=10))
    after = command_calls(r, "hgetall")
    assert page == [f"p{i:05d}" for i in range(100, 110)]
    assert after - before == 10


def test_nan_and_infinity_rejected():
    """NaN/inf cannot be stored in or queried against a sorted field."""
    with pytest.raises(ModelException, match="score_2"):
        Player(name="x", score_2=float("nan")).save()
    with pytest.raises(QueryException, match="finite"):
        Player.query.filter(score_2__gt=float("inf"))


def test_dates_datetimes_decimals_sort(r):
    """datetime, date and Decimal sorted fields range-query correctly."""
    base = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    for i in range(5):
        when = base + dt.timedelta(days=i)
        Event(slug=f"e{i}", when=when, day=when.date(), price=Decimal("1.10") * i).save()
    got = [e.slug for e in Event.query.filter(when__gte=base + dt.timedelta(days=3))]
    assert got == ["e3", "e4"]
    assert [e.slug for e in Event.query.filter(day__lt=dt.date(2024, 1, 3))] == ["e0", "e1"]
    assert [e.slug for e in Event.query.filter(price__between=(Decimal("2"), Decimal("3.3")))] \
        == ["e2", "e3"]


def test_mixed_indexed_and_plain_conditions(players):
    """Index conditions narrow in Redis; plain-field conditions filter the candidates."""
    p = Player.query.get(name="cat")
    p.note = "x"
    p.save()
    assert names(Player.query.filter(team="blue", note="x")) == ["cat"]
    assert names(Player.query.filter(Q(note="x") | Q(team="red"))) == ["ann", "bob", "cat"]


def test_no_temp_keys_left(players, r):
    """Set-algebra temp keys are removed after the query."""
    list(Player.query.filter(Q(team="red") | Q(score__gte=40), ~Q(name="ann")))
    assert not [k for k in r.scan_iter("$Tmp*")]


def test_order_by_key_field_over_a_range(players):
    """Ordering a score range by the key field sorts by key, not by score."""
    got = names(Player.query.filter(score__gte=20, order_by="-name"))
    assert got == ["eve", "dan", "cat", "bob"]
    assert names(Player.query.filter(team="red", order_by="-name")) == ["bob", "ann"]


def test_order_by_plain_field_puts_none_first(r):
    """order_by on a plain (unindexed) field sorts None before every value (desc: last)."""
    from popoto import Field, KeyField, Model

    class Task(Model):
        name = KeyField()
        rank = Field(type=int, null=True)

    for name, rank in (("a", 2), ("b", None), ("c", 1), ("d", None)):
        Task.create(name=name, rank=rank)
    assert [t.name for t in Task.query.all().order_by("rank")] == ["b", "d", "c", "a"]
    assert [t.name for t in Task.query.all().order_by("-rank")] == ["a", "c", "d", "b"]
    assert [v["rank"] for v in Task.query.values("rank").order_by("rank")] == [None, None, 1, 2]
