"""DecayingSortedField, CyclicDecayField, touch/resolve_pressure/strengthen/weaken, top_by_decay."""

import datetime as dt
import math
import random
import threading
import time

import pytest

from popoto import (
    CyclicDecayField,
    DecayingSortedField,
    Field,
    FieldUsageError,
    FloatField,
    IntField,
    KeyField,
    Model,
    ModelException,
    QueryException,
    SortedField,
    UnknownFieldError,
    keys,
)
from popoto.encoding import pack, unpack
from popoto.redis_db import get_client
from tests.helpers import db_keys, index_key, key_of, same_group_value

DAY = 86400.0
NOW = 1_700_000_000.0


class Post(Model):
    slug = KeyField()
    seen = DecayingSortedField(decay_rate=0.5, base_score_field="likes")
    likes = SortedField(type=int, null=True)
    title = Field(type=str, null=True)


class Plain(Model):
    name = KeyField()
    seen = DecayingSortedField()
    weight = FloatField(null=True)
    label = Field(type=str, null=True)


class Board(Model):
    name = KeyField()
    board = Field(type=str)
    seen = DecayingSortedField(partition_by="board")


class Habit(Model):
    name = KeyField()
    level = CyclicDecayField(cycles=[(DAY, 2.0, 0.0), (7 * DAY, 1.0, 3600.0)],
                             pressure_rate=0.5, decay_rate=0.2)
    other = DecayingSortedField()
    note = Field(type=str, null=True)


class Calm(Model):
    name = KeyField()
    level = CyclicDecayField(cycles=[(DAY, 1.0)])


class NoDecay(Model):
    name = KeyField()
    count = IntField(null=True)


def decay(ts, as_of, rate, base=1.0):
    """Reference decay term."""
    return base * max((as_of - ts) / DAY, 0.01) ** (-rate)


def cyclic(ts, as_of, rate, cycles, pressure=None):
    """Reference CyclicDecayField score."""
    score = decay(ts, as_of, rate)
    for period, amp, phase in cycles:
        score += amp * math.cos(2 * math.pi * (as_of - phase) / period)
    if pressure:
        days = (as_of - pressure["last_resolved"]) / DAY
        score += pressure["rate"] * max(days, 0)
    return score


def make_post(slug, ts, likes=None):
    post = Post(slug=slug, seen=ts, likes=likes)
    post.save(skip_auto_now=True)
    return post


def seen_score(r, slug):
    """The score of Post ``slug`` in the sorted set of Post.seen (its group's set)."""
    pk = key_of(Post, slug)
    return r.zscore(index_key(Post, "seen", instance=pk), pk)


# --- DecayingSortedField -------------------------------------------------------

@pytest.mark.standalone_only  # pins the unsharded key names (cluster: keys carry a group tag)
def test_unsharded_decay_key_names(r):
    """Unsharded: $SortedF:Post:seen, and Habit's $Cycles:/$Pressure:Habit:level hashes."""
    make_post("a", NOW)
    Habit.create(name="h")
    assert r.zscore("$SortedF:Post:seen", "Post:a") == NOW
    assert Habit.level.cycles_key() == "$Cycles:Habit:level"
    assert Habit.level.pressure_key() == "$Pressure:Habit:level"
    assert r.hexists("$Cycles:Habit:level", "Habit:h")
    assert r.hexists("$Pressure:Habit:level", "Habit:h")


def test_save_stamps_the_time_in_hash_and_sorted_set(r):
    """Every full save sets the field to now and scores the sorted set with it."""
    before = time.time()
    post = Post.create(slug="a", likes=3)
    after = time.time()
    assert before <= post.seen <= after
    assert seen_score(r, "a") == post.seen
    assert Post.query.get(slug="a").seen == post.seen
    post.title = "x"
    post.save()
    assert post.seen >= after


def test_partial_save_not_naming_the_field_keeps_its_time(r):
    """save(update_fields=[other]) and skip_auto_now leave the timestamp alone."""
    post = make_post("a", NOW - DAY)
    post.title = "t"
    post.save(update_fields=["title"])
    assert Post.query.get(slug="a").seen == NOW - DAY
    post.save(skip_auto_now=True)
    assert seen_score(r, "a") == NOW - DAY


def test_touch_updates_hash_and_index_in_one_write(r):
    """touch() sets the field to now in the hash and the sorted set, in one round trip."""
    from tests.helpers import count_round_trips

    post = make_post("a", NOW - 10 * DAY, likes=1)
    loaded = Post.query.get(slug="a")
    with count_round_trips() as trips:
        ts = loaded.touch("seen")
    assert trips[0] == 1
    assert abs(ts - time.time()) < 5
    assert loaded.seen == ts
    assert seen_score(r, "a") == ts
    assert Post.query.get(slug="a").seen == ts
    assert post.likes == Post.query.get(slug="a").likes


def test_touch_with_pipeline_is_queued(r):
    """touch(pipeline=p) queues the write and returns p."""
    post = make_post("a", NOW)
    pipe = get_client().pipeline()
    assert post.touch("seen", pipeline=pipe) is pipe
    assert seen_score(r, "a") == NOW
    pipe.execute()
    assert seen_score(r, "a") > NOW
    assert Post.query.get(slug="a").seen == seen_score(r, "a")


def test_touch_errors():
    """touch() names unknown fields, wrong field types and unsaved instances."""
    post = Post(slug="a")
    with pytest.raises(FieldUsageError, match="unsaved"):
        post.touch("seen")
    with pytest.raises(TypeError):
        post.touch("seen")
    post.save()
    with pytest.raises(UnknownFieldError, match="nope"):
        post.touch("nope")
    with pytest.raises(AttributeError):
        post.touch("nope")
    with pytest.raises(FieldUsageError, match="DecayingSortedField.*title"):
        post.touch("title")


def test_touch_never_resurrects_a_deleted_instance(r):
    """touch() on an instance deleted meanwhile fails and writes nothing."""
    post = Post.create(slug="a")
    Post.query.get(slug="a").delete()
    with pytest.raises(ModelException, match="no instance"):
        post.touch("seen")
    assert db_keys(r) == set()


def test_field_definition_errors():
    """Bad decay_rate/type/base field/cycles/pressure are refused with ModelException."""
    with pytest.raises(ModelException, match="decay_rate"):
        DecayingSortedField(decay_rate=-1)
    with pytest.raises(ModelException, match="decay_rate"):
        DecayingSortedField(decay_rate=float("nan"))
    with pytest.raises(ModelException, match="float"):
        DecayingSortedField(type=int)
    with pytest.raises(ModelException, match="pressure_rate"):
        CyclicDecayField(pressure_rate=-0.1)
    for bad in ([(0, 1)], [(DAY, 101)], [(DAY, -1)], [(DAY,)], [(DAY, 1, 2, 3)], ["x"], 5,
                [(DAY, float("inf"))]):
        with pytest.raises(ModelException, match="cycle"):
            CyclicDecayField(cycles=bad)

    class BadBase(Model):
        name = KeyField()
        seen = DecayingSortedField(base_score_field="missing")

    with pytest.raises(ModelException, match="missing"):
        BadBase(name="x").save()


# --- top_by_decay --------------------------------------------------------------

def test_top_by_decay_matches_the_formula():
    """Ranking = base * max(days, 0.01) ** -rate, highest first, as of a fixed time."""
    rows = {"a": (NOW - 1 * DAY, 10), "b": (NOW - 3 * DAY, 40), "c": (NOW - 0.5 * DAY, 2),
            "d": (NOW - 30 * DAY, 100), "e": (NOW - 0.001 * DAY, None)}
    for slug, (ts, likes) in rows.items():
        make_post(slug, ts, likes)
    got = Post.query.top_by_decay(n=10, as_of=NOW)
    expected = sorted(rows, key=lambda s: (-decay(rows[s][0], NOW, 0.5, rows[s][1] or 1), s))
    assert [p.slug for p in got] == expected
    for post in got:
        ts, likes = rows[post.slug]
        assert post._score == pytest.approx(decay(ts, NOW, 0.5, likes or 1))
    assert [p.slug for p in Post.query.top_by_decay(n=2, as_of=NOW)] == expected[:2]


def test_top_by_decay_overrides_rate_and_base_field():
    """decay_rate= and base_score_field= override the field's configuration."""
    make_post("old", NOW - 100 * DAY, likes=50)
    make_post("new", NOW - 1 * DAY, likes=1)
    assert [p.slug for p in Post.query.top_by_decay(as_of=NOW)] == ["old", "new"]
    assert [p.slug for p in Post.query.top_by_decay(as_of=NOW, decay_rate=2.0)] == ["new", "old"]
    for name, ts, weight in (("x", NOW - DAY, 5.0), ("y", NOW - DAY, 7.5), ("z", NOW, None)):
        Plain(name=name, seen=ts, weight=weight).save(skip_auto_now=True)
    plain = Plain.query.top_by_decay(as_of=NOW)
    assert [p.name for p in plain] == ["z", "x", "y"]
    weighted = Plain.query.top_by_decay(base_score_field="weight", as_of=NOW)
    expected = sorted([("x", decay(NOW - DAY, NOW, 0.1, 5.0)), ("y", decay(NOW - DAY, NOW, 0.1,
                      7.5)), ("z", decay(NOW, NOW, 0.1, 1.0))], key=lambda t: -t[1])
    assert [p.name for p in weighted] == [n for n, _s in expected]


def test_ties_are_broken_by_key():
    """Equal scores (same timestamp, or all inside the 0.01-day floor) rank by key."""
    for slug in ("m", "b", "z", "a"):
        make_post(slug, NOW - 2 * DAY)
    assert [p.slug for p in Post.query.top_by_decay(n=3, as_of=NOW)] == ["a", "b", "m"]
    for i, slug in enumerate(("q3", "q1", "q2")):
        make_post(slug, NOW - i * 60)  # within 864 s: all clamp to 0.01 days
    assert [p.slug for p in Post.query.top_by_decay(n=3, as_of=NOW)] == ["q1", "q2", "q3"]


def test_top_by_decay_is_exact_on_many_members():
    """The early-exit scan returns exactly the reference top n on 1500 random members."""
    rng = random.Random(7)
    rows = {}
    for i in range(1500):
        ts = NOW - rng.random() * 400 * DAY
        likes = rng.choice([None, rng.randint(0, 200)])
        rows[f"p{i:04d}"] = (ts, likes)
    Post.bulk_create(Post(slug=s, seen=ts, likes=lk) for s, (ts, lk) in rows.items())
    # bulk_create stamps now: put the intended times back without touching anything else
    for slug, (ts, _lk) in rows.items():
        p = Post.query.get(slug=slug)
        p.seen = ts
        p.save(update_fields=["seen"], skip_auto_now=True)
    for rate, n in ((0.5, 25), (3.0, 10), (0.0, 5)):
        got = Post.query.top_by_decay(n=n, as_of=NOW, decay_rate=rate)
        expected = sorted(rows, key=lambda s: (-decay(rows[s][0], NOW, rate, rows[s][1] or 1),
                                               s))[:n]
        assert [p.slug for p in got] == expected
    unweighted = Plain
    for i in range(300):
        unweighted(name=f"u{i:03d}", seen=NOW - i * 3600.0).save(skip_auto_now=True)
    got = Plain.query.top_by_decay(n=7, as_of=NOW)
    assert [p.name for p in got] == ["u000", "u001", "u002", "u003", "u004", "u005", "u006"]


def test_top_by_decay_skips_vanished_instances(r):
    """Sorted-set entries whose hash expired or was deleted behind the ORM are skipped."""
    for i in range(4):
        make_post(f"p{i}", NOW - i * DAY, likes=1)
    r.delete(key_of(Post, "p0"))
    assert seen_score(r, "p0") == NOW
    got = Post.query.top_by_decay(n=3, as_of=NOW)
    assert [p.slug for p in got] == ["p1", "p2", "p3"]


def test_as_of_accepts_datetimes_and_is_reproducible():
    """as_of as a datetime equals the epoch number; results do not depend on the clock."""
    make_post("a", NOW - DAY, likes=2)
    make_post("b", NOW - 2 * DAY, likes=3)
    when = dt.datetime.fromtimestamp(NOW, tz=dt.timezone.utc)
    first = [(p.slug, p._score) for p in Post.query.top_by_decay(as_of=when)]
    time.sleep(0.01)
    assert [(p.slug, p._score) for p in Post.query.top_by_decay(as_of=NOW)] == first


def test_partitioned_ranking_needs_the_partition():
    """A partitioned field ranks one partition, given as a keyword argument."""
    for name, board, ts in (("a", "x", NOW - DAY), ("b", "y", NOW), ("c", "x", NOW - 2 * DAY)):
        Board(name=name, board=board, seen=ts).save(skip_auto_now=True)
    assert [b.name for b in Board.query.top_by_decay(board="x", as_of=NOW)] == ["a", "c"]
    assert [b.name for b in Board.query.top_by_decay(board="y", as_of=NOW)] == ["b"]
    with pytest.raises(QueryException, match="board"):
        Board.query.top_by_decay(as_of=NOW)


def test_top_by_decay_errors():
    """Bad field, n, rate, as_of, base field or partition argument raise QueryException."""
    with pytest.raises(QueryException, match="no DecayingSortedField"):
        NoDecay.query.top_by_decay()
    with pytest.raises(QueryException, match="several"):
        Habit.query.top_by_decay()
    with pytest.raises(QueryException, match="title"):
        Post.query.top_by_decay("title")
    with pytest.raises(QueryException, match="n must be"):
        Post.query.top_by_decay(n=-1)
    with pytest.raises(QueryException, match="decay_rate"):
        Post.query.top_by_decay(decay_rate=-0.5)
    with pytest.raises(QueryException, match="as_of"):
        Post.query.top_by_decay(as_of="yesterday")
    with pytest.raises(QueryException, match="int or float"):
        Post.query.top_by_decay(base_score_field="title")
    with pytest.raises(QueryException, match="not a field"):
        Post.query.top_by_decay(base_score_field="nope")
    with pytest.raises(QueryException, match="unexpected"):
        Post.query.top_by_decay(board="x")
    assert Post.query.top_by_decay(n=0) == []


# --- CyclicDecayField ----------------------------------------------------------

def cycles_key(key=None):
    """The cycles hash of Habit.level holding the member at ``key`` (default Habit "h")."""
    return Habit.level.cycles_key(keys.ns_of(key or key_of(Habit, "h")))


def pressure_key(key=None):
    """The pressure hash of Habit.level holding the member at ``key`` (default Habit "h")."""
    return Habit.level.pressure_key(keys.ns_of(key or key_of(Habit, "h")))


def stored_cycles(r, key=None):
    """Decoded cycles of one member (default Habit "h") from the companion hash."""
    key = key or key_of(Habit, "h")
    return unpack(r.hget(cycles_key(key), key))


def test_first_save_writes_companion_state(r):
    """A new member gets the field's cycles and a pressure clock in the companion hashes."""
    habit = Habit.create(name="h")
    assert stored_cycles(r) == [[DAY, 2.0, 0.0], [7 * DAY, 1.0, 3600.0]]
    pressure = unpack(r.hget(pressure_key(), habit.pk))
    assert pressure == {"rate": 0.5, "last_resolved": habit.level}
    assert Habit.level.cycles_of(habit) == [(DAY, 2.0, 0.0), (7 * DAY, 1.0, 3600.0)]
    calm = Calm.create(name="c")
    assert Calm.level.cycles_of(calm) == [(DAY, 1.0, 0.0)]
    assert sum(r.exists(Calm.level.pressure_key(ns)) for ns in Calm._meta.groups) == 0


def test_strengthen_and_weaken_scale_amplitudes_with_clamping(r):
    """strengthen/weaken multiply amplitudes; results stay in [0, 100], < 0.01 becomes 0."""
    habit = Habit.create(name="h")
    assert habit.strengthen_cycle("level") == [(DAY, 2.4, 0.0), (7 * DAY, 1.2, 3600.0)]
    assert habit.strengthen_cycle("level", factor=100) == [(DAY, 100.0, 0.0),
                                                            (7 * DAY, 100.0, 3600.0)]
    assert habit.weaken_cycle("level", factor=0.5) == [(DAY, 50.0, 0.0), (7 * DAY, 50.0, 3600.0)]
    habit.weaken_cycle("level", factor=0.0001)  # 50 * 0.0001 = 0.005 < 0.01
    assert Habit.level.cycles_of(habit) == [(DAY, 0.0, 0.0), (7 * DAY, 0.0, 3600.0)]
    assert habit.weaken_cycle("level") == [(DAY, 0.0, 0.0), (7 * DAY, 0.0, 3600.0)]
    assert habit.weaken_cycle("level", factor=0.8)[0][1] == 0.0


def test_amplitude_updates_are_atomic_under_concurrency():
    """Concurrent strengthen calls never lose an update (server-side read-modify-write)."""
    Calm.create(name="c")
    threads = [threading.Thread(target=lambda: Calm.query.get(name="c").strengthen_cycle(
        "level", factor=1.1)) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    amp = Calm.level.cycles_of(Calm.query.get(name="c"))[0][1]
    assert amp == pytest.approx(1.1 ** 20)


def test_saves_and_rebuilds_never_reset_learned_amplitudes(r):
    """Full saves, partial saves, stale-copy saves and rebuild_indexes keep learned state."""
    habit = Habit.create(name="h")
    stale = Habit.query.get(name="h")
    habit.strengthen_cycle("level", factor=2)
    habit.resolve_pressure("level")
    learned = stored_cycles(r)
    assert learned == [[DAY, 4.0, 0.0], [7 * DAY, 2.0, 3600.0]]
    pressure = r.hget(pressure_key(), habit.pk)
    habit.note = "x"
    habit.save()
    habit.save(update_fields=["note"])
    stale.save()
    habit.touch("level")
    Habit.rebuild_indexes()
    assert stored_cycles(r) == learned
    assert r.hget(pressure_key(), habit.pk) == pressure
    assert Habit.check_indexes()["total"] == 0


def test_companion_state_moves_with_key_and_dies_with_instance(r):
    """A key migration moves the member's state; delete removes it (the new key is in the
    same tag group: a sharded member with state cannot move to another slot)."""
    habit = Habit.create(name="h")
    old_pk = habit.pk
    habit.strengthen_cycle("level", factor=3)
    habit.name = same_group_value(Habit, habit, prefix="g")
    habit.save(migrate_key=True)
    assert r.hget(cycles_key(old_pk), old_pk) is None
    assert r.hget(pressure_key(old_pk), old_pk) is None
    assert stored_cycles(r, habit.pk)[0][1] == 6.0
    assert r.hexists(pressure_key(habit.pk), habit.pk)
    habit.delete()
    assert not r.exists(cycles_key(habit.pk)) and not r.exists(pressure_key(habit.pk))
    assert db_keys(r) == set()


def test_resolve_pressure_resets_the_clock(r):
    """resolve_pressure() stores last_resolved = now (with the field's rate)."""
    habit = Habit(name="h", level=NOW - 5 * DAY)
    habit.save(skip_auto_now=True)
    assert unpack(r.hget(pressure_key(), habit.pk))["last_resolved"] == NOW - 5 * DAY
    ts = habit.resolve_pressure("level")
    assert abs(ts - time.time()) < 5
    assert Habit.level.pressure_of(habit) == {"rate": 0.5, "last_resolved": ts}
    pipe = get_client().pipeline()
    assert habit.resolve_pressure("level", pipeline=pipe) is pipe
    pipe.execute()
    assert Habit.level.pressure_of(habit)["last_resolved"] >= ts


def test_cyclic_errors(r):
    """Unknown field, wrong field kind, zero pressure_rate, unsaved/deleted, bad factor."""
    habit = Habit(name="h")
    with pytest.raises(FieldUsageError, match="unsaved"):
        habit.strengthen_cycle("level")
    with pytest.raises(FieldUsageError, match="unsaved"):
        habit.resolve_pressure("level")
    habit.save()
    with pytest.raises(UnknownFieldError):
        habit.weaken_cycle("nope")
    with pytest.raises(FieldUsageError, match="CyclicDecayField"):
        habit.strengthen_cycle("other")
    with pytest.raises(TypeError, match="CyclicDecayField"):
        habit.resolve_pressure("note")
    calm = Calm.create(name="c")
    with pytest.raises(FieldUsageError, match="pressure_rate"):
        calm.resolve_pressure("level")
    for bad in (-1, float("nan"), "2", True):
        with pytest.raises(ModelException, match="factor"):
            habit.strengthen_cycle("level", factor=bad)
    Habit.query.get(name="h").delete()
    with pytest.raises(ModelException, match="no instance"):
        habit.strengthen_cycle("level")
    with pytest.raises(ModelException, match="no instance"):
        habit.resolve_pressure("level")
    assert not r.exists(pressure_key())


def test_member_without_stored_cycles_adjusts_nothing(r):
    """strengthen/weaken on a member whose cycles were removed return [] and write nothing."""
    habit = Habit.create(name="h")
    assert r.hdel(cycles_key(), habit.pk) == 1
    assert habit.strengthen_cycle("level") == []
    assert habit.weaken_cycle("level") == []
    assert not r.hexists(cycles_key(), habit.pk)


def test_cyclic_ranking_matches_the_formula(r):
    """top_by_decay on a CyclicDecayField adds cycles and pressure to the decay term."""
    as_of = NOW + 6 * 3600
    specs = {"a": NOW - DAY, "b": NOW - 3 * DAY, "c": NOW - 0.2 * DAY}
    for name, ts in specs.items():
        Habit(name=name, level=ts).save(skip_auto_now=True)
    Habit.query.get(name="b").strengthen_cycle("level", factor=3)
    Habit.query.get(name="c").weaken_cycle("level", factor=0)
    a_key = key_of(Habit, "a")
    r.hset(pressure_key(a_key), a_key, pack({"rate": 0.5, "last_resolved": as_of}))
    assert Habit.level.pressure_of(Habit.query.get(name="a"))["last_resolved"] == as_of
    expected = {}
    for name, ts in specs.items():
        cycles = Habit.level.cycles_of(Habit.query.get(name=name))
        pressure = Habit.level.pressure_of(Habit.query.get(name=name))
        expected[name] = cyclic(ts, as_of, 0.2, cycles, pressure)
    got = Habit.query.top_by_decay("level", as_of=as_of)
    assert [h.name for h in got] == sorted(expected, key=lambda n: (-expected[n], n))
    for habit in got:
        assert habit._score == pytest.approx(expected[habit.name], rel=1e-9)
