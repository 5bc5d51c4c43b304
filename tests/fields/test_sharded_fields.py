"""Decaying/cyclic fields and capped lists of sharded models (Meta.shards = 4, one server)."""

from __future__ import annotations

import math
import random

import pytest
import redis

from popoto import (
    CyclicDecayField,
    DecayingSortedField,
    Field,
    KeyField,
    ListField,
    Model,
    ModelException,
    QueryException,
    SortedField,
)
from popoto import keys
from popoto.encoding import unpack
from tests.helpers import count_round_trips

DAY = 86400.0
NOW = 1_700_000_000.0


class ShardPost(Model):
    slug = KeyField()
    seen = DecayingSortedField(decay_rate=0.5, base_score_field="likes")
    likes = SortedField(type=int, null=True)

    class Meta:
        shards = 4


class FlatPost(Model):
    slug = KeyField()
    seen = DecayingSortedField(decay_rate=0.5, base_score_field="likes")
    likes = SortedField(type=int, null=True)


class ShardHabit(Model):
    name = KeyField()
    level = CyclicDecayField(cycles=[(DAY, 2.0, 0.0), (7 * DAY, 1.0, 3600.0)],
                             pressure_rate=0.5, decay_rate=0.2)

    class Meta:
        shards = 4


class FlatHabit(Model):
    name = KeyField()
    level = CyclicDecayField(cycles=[(DAY, 2.0, 0.0), (7 * DAY, 1.0, 3600.0)],
                             pressure_rate=0.5, decay_rate=0.2)


class ShardBoard(Model):
    name = KeyField()
    board = Field(type=str)
    seen = DecayingSortedField(partition_by="board")

    class Meta:
        shards = 4


class ShardFeed(Model):
    name = KeyField()
    items = ListField(max_length=3)
    title = Field(type=str, null=True)

    class Meta:
        shards = 4


def decay(ts: float, as_of: float, rate: float, base: float = 1.0) -> float:
    """Reference decay term."""
    return base * max((as_of - ts) / DAY, 0.01) ** (-rate)


def groups_used(model: type[Model], names: list[str]) -> int:
    return len({keys.ns_of(model._meta.instance_key([n])) for n in names})


# --- decaying / cyclic ---------------------------------------------------------------

def test_top_by_decay_across_groups_equals_the_unsharded_answer(r: redis.Redis) -> None:
    """Same data in a sharded and an unsharded model: same winners, order, ties and scores."""
    rng = random.Random(11)
    rows = {}
    for i in range(400):
        ts = NOW - rng.choice([rng.random() * 90 * DAY, 2 * DAY])  # many exact ties
        rows[f"p{i:03d}"] = (ts, rng.choice([None, 0, 3, rng.randint(1, 80)]))
    for model in (ShardPost, FlatPost):
        for slug, (ts, likes) in rows.items():
            model(slug=slug, seen=ts, likes=likes).save(skip_auto_now=True)
    assert groups_used(ShardPost, list(rows)) == 4
    for rate, n in ((0.5, 25), (3.0, 10), (0.0, 7), (0.5, 1000)):
        sharded = ShardPost.query.top_by_decay(n=n, as_of=NOW, decay_rate=rate)
        flat = FlatPost.query.top_by_decay(n=n, as_of=NOW, decay_rate=rate)
        assert [(p.slug, p._score) for p in sharded] == [(p.slug, p._score) for p in flat]
        expected = sorted(rows, key=lambda s: (-decay(rows[s][0], NOW, rate, 1 if rows[s][1]
                                                       is None else rows[s][1]), s))[:n]
        assert [p.slug for p in sharded] == expected


@pytest.mark.standalone_only
def test_top_by_decay_is_one_round_trip_for_all_groups() -> None:
    """The per-group ranking calls go out in one pipelined round trip (plus the hash reads)."""
    for i in range(12):
        ShardPost(slug=f"p{i}", seen=NOW - i * DAY, likes=1).save(skip_auto_now=True)
    ShardPost.query.top_by_decay(n=3, as_of=NOW)  # scripts loaded
    with count_round_trips() as trips:
        got = ShardPost.query.top_by_decay(n=3, as_of=NOW)
    assert [p.slug for p in got] == ["p0", "p1", "p2"]
    assert trips[0] == 2


def test_cyclic_state_lives_in_the_members_group(r: redis.Redis) -> None:
    """$Cycles/$Pressure are per group, hold only that group's members, share their slot."""
    names = [f"h{i}" for i in range(10)]
    for name in names:
        ShardHabit(name=name, level=NOW - DAY).save(skip_auto_now=True)
    field = ShardHabit.level
    for ns in ShardHabit._meta.groups:
        for key in (field.cycles_key(ns), field.pressure_key(ns)):
            members = [m.decode() for m in r.hkeys(key)]
            assert all(keys.ns_of(m) == ns and keys.key_slot(m) == keys.key_slot(key)
                       for m in members)
    assert sum(r.hlen(field.cycles_key(ns)) for ns in ShardHabit._meta.groups) == 10
    assert not r.exists("$Cycles:ShardHabit:level")
    with pytest.raises(ModelException, match="sharded"):
        field.cycles_key()
    with pytest.raises(ModelException, match="sharded"):
        field.pressure_key()


@pytest.mark.standalone_only
def test_unsharded_cyclic_keys_are_unchanged() -> None:
    """An unsharded model keeps $Cycles:<Model>:<field> and $Pressure:<Model>:<field>."""
    assert FlatHabit.level.cycles_key() == "$Cycles:FlatHabit:level"
    assert FlatHabit.level.pressure_key() == "$Pressure:FlatHabit:level"


def test_cycle_methods_on_sharded_instances(r: redis.Redis) -> None:
    """strengthen/weaken/resolve_pressure and cycles_of/pressure_of use the member's group."""
    habit = ShardHabit(name="h", level=NOW - DAY)
    habit.save(skip_auto_now=True)
    ns = keys.ns_of(habit.pk)
    assert habit.strengthen_cycle("level", factor=2) == [(DAY, 4.0, 0.0),
                                                         (7 * DAY, 2.0, 3600.0)]
    assert habit.weaken_cycle("level", factor=0.5) == ShardHabit.level.cycles_of(habit)
    assert unpack(r.hget(f"$Cycles:{ns}:level", habit.pk)) == [[DAY, 2.0, 0.0],
                                                                [7 * DAY, 1.0, 3600.0]]
    habit.resolve_pressure("level")
    state = ShardHabit.level.pressure_of(habit)
    assert state is not None and state["rate"] == 0.5 and state["last_resolved"] > NOW
    habit.delete()
    assert not r.exists(f"$Cycles:{ns}:level") and not r.exists(f"$Pressure:{ns}:level")


def test_cyclic_ranking_across_groups_equals_the_unsharded_answer(r: redis.Redis) -> None:
    """top_by_decay with cycles and pressure: sharded answer == unsharded answer."""
    as_of = NOW + 0.3 * DAY
    specs = {f"h{i}": NOW - (i % 7) * 0.4 * DAY for i in range(24)}
    for model in (ShardHabit, FlatHabit):
        for name, ts in specs.items():
            model(name=name, level=ts).save(skip_auto_now=True)
        model.query.get(name="h3").strengthen_cycle("level", factor=3)
        model.query.get(name="h5").weaken_cycle("level", factor=0)
    sharded = ShardHabit.query.top_by_decay("level", n=10, as_of=as_of)
    flat = FlatHabit.query.top_by_decay("level", n=10, as_of=as_of)
    assert [(h.name, h._score) for h in sharded] == [(h.name, h._score) for h in flat]
    assert all(math.isfinite(h._score) for h in sharded)


def test_partitioned_ranking_across_groups(r: redis.Redis) -> None:
    """A partitioned decaying field ranks one partition over every group."""
    for i in range(12):
        ShardBoard(name=f"b{i}", board="x" if i % 3 else "y",
                   seen=NOW - i * DAY).save(skip_auto_now=True)
    got = ShardBoard.query.top_by_decay(board="x", as_of=NOW, n=5)
    assert [b.name for b in got] == ["b1", "b2", "b4", "b5", "b7"]
    assert [b.name for b in ShardBoard.query.top_by_decay(board="y", as_of=NOW)] == [
        "b0", "b3", "b6", "b9"]
    with pytest.raises(QueryException, match="board"):
        ShardBoard.query.top_by_decay(as_of=NOW)


# --- capped lists --------------------------------------------------------------------

def test_capped_list_is_kept_through_resaves_in_every_group(r: redis.Redis) -> None:
    """Pushes, saves of other fields and appends keep each sharded instance's capped list,
    stored beside its hash in the same slot; delete removes it."""
    names = [f"f{i}" for i in range(8)]
    assert groups_used(ShardFeed, names) >= 2
    for i, name in enumerate(names):
        ShardFeed.create(name=name, items=[i])
    for i, name in enumerate(names):
        feed = ShardFeed.query.get(name=name)
        feed.items.push(i + 10)
        feed.title = "t"
        feed.save()
        feed.items.append(i + 20)
        feed.save()
        ShardFeed.query.get(name=name).items.push(i + 30)
        feed.save(update_fields=["title"])
    feeds = list(ShardFeed.query.all())
    ShardFeed.items.prefetch(feeds)
    for feed in feeds:
        i = names.index(feed.name)
        assert list(feed.items) == [i + 30, i + 20, i + 10]  # newest first
        list_key = f"$List:{feed.pk}:items"
        assert keys.key_slot(list_key) == keys.key_slot(feed.pk) and r.exists(list_key)
    for feed in feeds:
        feed.delete()
    assert list(r.scan_iter(match="*")) == []
