"""atomic_increment: one Lua script, exact for int/float/Decimal, sorted score follows."""

import re
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, localcontext

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popoto import (
    DecimalField,
    FloatField,
    IndexedField,
    IntField,
    KeyField,
    Model,
    ModelException,
    SortedField,
    StringField,
    UniqueViolation,
    encoding,
    keys,
)
from popoto.redis_db import get_client
from tests.helpers import count_round_trips

EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


class Counter(Model):
    name = KeyField()
    hits = IntField(default=0)
    ratio = FloatField(default=0.0)
    amount = DecimalField(null=True)
    label = StringField(null=True)

    class Meta:
        namespace = "IncrCounter"


class Player(Model):
    name = KeyField()
    board = StringField(default="main")
    points = SortedField(type=int, null=True, partition_by="board")
    balance = SortedField(type=Decimal, null=True)
    rating = SortedField(type=float, default=0.0)


class Tagged(Model):
    name = KeyField()
    level = IndexedField(type=int, default=0)
    code = IntField(unique=True, null=True)
    a = IntField(default=0)
    b = IntField(default=0)

    class Meta:
        indexes = ((("a", "b"), True),)


class Expiring(Model):
    name = KeyField()
    n = IntField(default=0)

    class Meta:
        ttl = 500


def test_int_increment_returns_new_value_and_updates_instance(r):
    """Returns the new value, updates the instance and stores the exact msgpack encoding."""
    c = Counter.create(name="c")
    assert c.atomic_increment("hits") == 1
    assert c.atomic_increment("hits", 41) == 42
    assert c.atomic_increment("hits", -50) == -8
    assert c.hits == -8
    assert Counter.query.get(name="c").hits == -8
    assert r.hget(c.pk, "hits") == encoding.pack(-8)


def test_increment_is_one_round_trip():
    """An increment is a single script call (one round trip)."""
    c = Counter.create(name="c")
    c.atomic_increment("hits")  # loads the script
    with count_round_trips() as trips:
        c.atomic_increment("hits", 2)
    assert trips[0] == 1


@pytest.mark.parametrize("start, delta", [
    (2**53, 1),
    (2**63 - 1, 1),
    (2**64 - 1, 1),
    (-(2**63), -1),
    (10**30, -(10**30) - 5),
    (-(10**25), 10**25 + 3),
    (127, 1), (255, 1), (65535, 1), (-32, -1), (-128, -1), (-32768, -1), (-(2**31), -1),
])
def test_int_exact_beyond_doubles_and_64_bits(r, start, delta):
    """Ints stay exact past 2**53 and past 64 bits; bytes match popoto.encoding exactly."""
    c = Counter.create(name="c", hits=start)
    assert c.atomic_increment("hits", delta) == start + delta
    assert r.hget(c.pk, "hits") == encoding.pack(start + delta)
    assert Counter.query.get(name="c").hits == start + delta


def test_float_increment_is_ieee_addition(r):
    """Floats add as IEEE doubles, exactly as Python does."""
    c = Counter.create(name="c", ratio=0.1)
    assert c.atomic_increment("ratio", 0.2) == 0.1 + 0.2
    assert c.atomic_increment("ratio", 3) == 0.1 + 0.2 + 3
    assert r.hget(c.pk, "ratio") == encoding.pack(0.1 + 0.2 + 3.0)
    assert isinstance(Counter.query.get(name="c").ratio, float)


def test_decimal_with_20_significant_digits_stays_exact(r):
    """A Decimal with 20+ significant digits is added without any rounding."""
    start = Decimal("12345678901234567890.12345")
    c = Counter.create(name="c", amount=start)
    got = c.atomic_increment("amount", Decimal("0.00001"))
    assert got == Decimal("12345678901234567890.12346")
    assert str(got) == "12345678901234567890.12346"
    assert r.hget(c.pk, "amount") == encoding.pack(Decimal("12345678901234567890.12346"))
    assert Counter.query.get(name="c").amount == Decimal("12345678901234567890.12346")


def test_missing_value_counts_as_zero(r):
    """A None value counts as zero (keeping the delta's exponent for Decimals)."""
    c = Counter.create(name="c")
    assert c.amount is None
    assert str(c.atomic_increment("amount", Decimal("1.50"))) == "1.50"
    r.hset(c.pk, "hits", encoding.pack(None))
    assert c.atomic_increment("hits", 3) == 3


decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None,
                       min_value=Decimal("-1e30"), max_value=Decimal("1e30"))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=decimals | st.none(), delta=decimals)
def test_decimal_matches_python_exact_arithmetic(r, start, delta):
    """Random Decimals: the script's sum and its stored bytes equal Python's exact sum."""
    c = Counter(name="d", amount=start)
    c.save()
    with localcontext(EXACT):
        expected = (start if start is not None else Decimal(0)) + delta
    got = c.atomic_increment("amount", delta)
    assert got == expected
    assert r.hget(c.pk, "amount") == encoding.pack(expected)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(min_value=-(2**80), max_value=2**80),
       delta=st.integers(min_value=-(2**80), max_value=2**80))
def test_int_matches_python_arithmetic(r, start, delta):
    """Random ints of any size: exact sum, stored bytes equal popoto.encoding's."""
    c = Counter(name="i", hits=start)
    c.save()
    assert c.atomic_increment("hits", delta) == start + delta
    assert r.hget(c.pk, "hits") == encoding.pack(start + delta)


def test_sorted_score_follows_int_float_decimal(r):
    """The sorted-set score moves in the same script, so range queries see the new value."""
    p = Player.create(name="p", points=10, balance=Decimal("1.25"), rating=1.5)
    p.atomic_increment("points", 5)
    p.atomic_increment("balance", Decimal("0.75"))
    p.atomic_increment("rating", -0.5)
    assert r.zscore(Player.points.key_for(p), p.pk) == 15
    assert r.zscore(Player.balance.key_for(p), p.pk) == 2.0
    assert r.zscore(Player.rating.key_for(p), p.pk) == 1.0
    assert Player.query.filter(board="main", points__gte=15).keys() == [p.pk]
    assert Player.query.filter(balance__between=(2, 2)).keys() == [p.pk]


def test_sorted_entry_created_when_value_was_none(r):
    """From None the entry is added to the partition's sorted set and recorded for delete."""
    p = Player.create(name="p", board="b2")
    assert not r.exists(Player.points.key_for(p))
    assert p.atomic_increment("points", 7) == 7
    assert r.zscore(Player.points.key_for(p), p.pk) == 7
    assert Player.query.filter(board="b2", points=7).keys() == [p.pk]
    zkey = Player.points.key_for(p)
    p.delete()
    assert not r.exists(zkey)


def test_later_save_moves_incremented_entry(r):
    """A save after increments still owns (and replaces) the sorted entry."""
    p = Player.create(name="p", points=1)
    p.atomic_increment("points", 1)
    loaded = Player.query.get(name="p")
    loaded.board = "other"
    loaded.save()
    assert not r.exists(Player.points.key_for(p))  # p still shows board "main"
    assert r.zscore(Player.points.key_for(loaded), p.pk) == 2


def test_ttl_is_kept(r):
    """Incrementing does not drop the instance's expiry."""
    e = Expiring.create(name="e")
    e.atomic_increment("n")
    assert 0 < r.ttl(e.pk) <= 500


def test_pipeline_only_queues():
    """With a pipeline the script is queued; the reply is the new value as text."""
    c = Counter.create(name="c", hits=1)
    pipe = get_client().pipeline()
    assert c.atomic_increment("hits", 2, pipeline=pipe) is pipe
    assert Counter.query.get(name="c").hits == 1
    assert pipe.execute() == [b"3"]
    assert Counter.query.get(name="c").hits == 3


def test_indexed_unique_and_composite_dependents_follow(r):
    """Fields other indexes depend on go through the save path: every index follows."""
    t = Tagged.create(name="t", level=1, code=10, a=1, b=1)
    assert t.atomic_increment("level", 2) == 3
    assert Tagged.query.filter(level=3).keys() == [t.pk]
    assert not r.exists(Tagged.level.index_key(1, keys.ns_of(t.pk)))
    assert t.atomic_increment("code", 5) == 15
    Tagged.create(name="u", code=10, a=2, b=2)  # the old value is free again
    Tagged.create(name="v", code=16, a=3, b=3)
    with pytest.raises(UniqueViolation, match="code=16"):
        t.atomic_increment("code", 1)
    assert Tagged.query.get(name="t").code == 15
    assert t.atomic_increment("a", 1) == 2
    with pytest.raises(UniqueViolation):
        t.atomic_increment("b", 1)  # (2, 2) is held by u
    assert Tagged.query.get(name="t").b == 1


def test_dependent_increment_refuses_pipeline():
    """An increment that needs the save path cannot be queued on a pipeline."""
    t = Tagged.create(name="t")
    with pytest.raises(ModelException, match="Tagged.level.*pipeline"):
        t.atomic_increment("level", 1, pipeline=get_client().pipeline())


@pytest.mark.parametrize("field, delta, match", [
    ("hitz", 1, "Counter has no field 'hitz'.*did you mean 'hits'"),
    ("label", 1, "Counter.label: atomic_increment needs an int, float or Decimal field"),
    ("name", 1, "Counter.name: a key field cannot be incremented"),
    ("hits", None, r"Counter.hits: .*delta.*\(value None\)"),
    ("hits", True, r"Counter.hits: .*delta.*\(value True\)"),
    ("hits", "1", r"Counter.hits: .*delta.*\(value '1'\)"),
    ("hits", 0.5, r"Counter.hits: delta must be a whole number.*\(value 0.5\)"),
    ("ratio", float("nan"), r"Counter.ratio: .*finite.*\(value nan\)"),
    ("amount", Decimal("Infinity"), r"Counter.amount: .*finite"),
])
def test_bad_calls_raise_and_write_nothing(r, field, delta, match):
    """Unknown/non-numeric/key fields and bad deltas raise ModelException naming them."""
    c = Counter.create(name="c", hits=1)
    before = r.hgetall(c.pk)
    with pytest.raises(ModelException, match=match):
        c.atomic_increment(field, delta)
    assert r.hgetall(c.pk) == before


def test_unsaved_and_missing_instances_raise(r):
    """An unsaved instance, or one deleted behind the ORM's back, raises; no hash is created."""
    with pytest.raises(ModelException, match=r"Counter.hits: .*not saved yet"):
        Counter(name="new").atomic_increment("hits")
    c = Counter.create(name="gone")
    r.delete(c.pk)
    with pytest.raises(ModelException,
                       match=rf"Counter.hits: .*no instance at {re.escape(repr(c.pk))}"):
        c.atomic_increment("hits", 1)
    assert not r.exists(c.pk)
    t = Tagged.create(name="gone")
    r.delete(t.pk)
    with pytest.raises(ModelException,
                       match=rf"Tagged.level: .*no instance at {re.escape(repr(t.pk))}"):
        t.atomic_increment("level", 1)
    assert not r.exists(t.pk)


def test_corrupt_stored_value_raises_and_keeps_it(r):
    """A stored value that is not a number is reported (raw bytes shown) and left alone."""
    c = Counter.create(name="c")
    r.hset(c.pk, "hits", encoding.pack("seven"))
    with pytest.raises(ModelException, match=r"Counter.hits: .*not numeric \(raw bytes a5736576"):
        c.atomic_increment("hits", 1)
    assert r.hget(c.pk, "hits") == encoding.pack("seven")
    r.hset(c.pk, "amount", encoding.pack(Decimal("NaN")))
    with pytest.raises(ModelException, match="Counter.amount"):
        c.atomic_increment("amount", 1)


def test_float_overflow_raises_and_keeps_value(r):
    """A float sum that overflows to infinity is refused; the stored value is kept."""
    c = Counter.create(name="c", ratio=1.7e308)
    with pytest.raises(ModelException, match=r"Counter.ratio: .*\(value 'inf'\)"):
        c.atomic_increment("ratio", 1.7e308)
    assert Counter.query.get(name="c").ratio == 1.7e308


def test_unscorable_decimal_refused_before_writing(r):
    """A sorted Decimal whose score would overflow a double is refused; nothing changes."""
    p = Player.create(name="p", balance=Decimal(1))
    r.hset(p.pk, "balance", encoding.pack(Decimal("1E+400")))  # written behind our back
    with pytest.raises(ModelException, match=r"Player.balance: .*scored"):
        p.atomic_increment("balance", 1)
    assert r.hget(p.pk, "balance") == encoding.pack(Decimal("1E+400"))
    assert r.zscore(Player.balance.key_for(p), p.pk) == 1


def test_increment_errors_are_also_the_builtin_upstream_raises(r):
    """Unsaved instance, non-numeric field, None delta: TypeError too; unknown field:
    AttributeError too; all still ModelException, naming model, field and value."""
    unsaved = Counter(name="fresh")
    with pytest.raises(TypeError, match=r"Counter.hits: .*not saved yet") as info:
        unsaved.atomic_increment("hits", 1)
    assert isinstance(info.value, ModelException)
    saved = Counter.create(name="c")
    with pytest.raises(TypeError, match=r"Counter.label: .*int, float or Decimal"):
        saved.atomic_increment("label", 1)
    with pytest.raises(TypeError, match=r"Counter.hits: .*delta.*\(value None\)"):
        saved.atomic_increment("hits", None)
    with pytest.raises(AttributeError, match="Counter has no field 'nope'") as info:
        saved.atomic_increment("nope", 1)
    assert isinstance(info.value, ModelException)
    assert Counter.query.get(name="c").hits == 0 and not r.exists(Counter(name="fresh").db_key)
