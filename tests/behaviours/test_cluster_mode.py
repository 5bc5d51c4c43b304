"""Behaviours and special fields on a real 3-master Redis Cluster (every model sharded)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.cluster import RedisCluster

import popoto
from popoto import (
    AccessTrackerMixin,
    CyclicDecayField,
    EventStreamMixin,
    Field,
    FloatField,
    KeyField,
    ListField,
    Model,
    SortedField,
    WriteFilterMixin,
)
from popoto import keys, redis_db
from popoto.testing.cluster import ClusterUnavailable, EmbeddedCluster
from popoto.workers import Event, HandlerRegistry, StreamConsumer
from popoto.workers.streams import dead_letter_key

DAY = 86400.0
NOW = 1_700_000_000.0


pytestmark = pytest.mark.slow  # forms a local Redis Cluster (make test-fast skips it)


class Item(WriteFilterMixin, EventStreamMixin, AccessTrackerMixin, Model):
    """Every behaviour and special field at once."""

    _record_on_read = True  # every read recorded at once (not staged)
    name = KeyField()
    value = FloatField(default=0.9)
    email = Field(type=str, null=True, unique=True)
    likes = SortedField(type=int, null=True)
    level = CyclicDecayField(cycles=[(DAY, 2.0)], pressure_rate=0.5, base_score_field="likes")
    feed = ListField(max_length=3)

    _stream_name = "cluster-items"
    _stream_metadata_fields = ("value",)
    _max_access_log = 5

    def compute_filter_score(self) -> float:
        return self.value


class Ranked(WriteFilterMixin, Model):
    name = KeyField()
    value = FloatField(default=0.9)

    def compute_filter_score(self) -> float:
        return self.value


@pytest.fixture(scope="module")
def behaviour_cluster() -> Iterator[EmbeddedCluster]:
    """A 3-master cluster; Popoto in cluster mode for this module, then configured back."""
    try:
        started = EmbeddedCluster(masters=3).start()
    except ClusterUnavailable as exc:
        pytest.skip(exc.reason)
    saved = dict(redis_db._config)
    popoto.configure(url=started.url, cluster=True)
    try:
        yield started
    finally:
        popoto.configure(url=saved["url"], cluster=saved["cluster"], **saved["kwargs"])
        started.stop()


@pytest.fixture
def rc(behaviour_cluster: EmbeddedCluster) -> Iterator[RedisCluster]:
    """A raw cluster client on a flushed cluster."""
    behaviour_cluster.flushall()
    client = behaviour_cluster.client()
    yield client
    client.close()


def all_keys(rc: RedisCluster) -> set[str]:
    return {k.decode() for k in rc.scan_iter(match="*", count=1000)}


def test_models_are_sharded_over_the_masters(behaviour_cluster: EmbeddedCluster,
                                             rc: RedisCluster) -> None:
    """Cluster mode: 16 groups; their streams, priority sets and cycles spread over 3 nodes."""
    assert redis_db.is_cluster() and Item._meta.sharded and len(Item._meta.groups) == 16
    node_of = behaviour_cluster.node_for_key
    ports = {node_of(k).port for k in Item.stream_keys()}
    assert len(ports) == 3
    assert {node_of(k).port for k in Ranked.priority_keys()} == ports


def test_save_and_delete_with_every_behaviour(rc: RedisCluster) -> None:
    """Create, update, push, touch, cycle changes and delete of instances in every group run
    as single-slot scripts and keep every behaviour's data right."""
    items = [Item.create(name=f"i{i:02d}", value=0.7 + i / 100, email=f"{i}@x", likes=i + 1,
                         feed=[i]) for i in range(24)]
    assert len({keys.ns_of(i.pk) for i in items}) >= 12
    for item in items:
        loaded = Item.query.get(name=item.name)
        loaded.feed.push(100)
        loaded.value = loaded.value + 0.01
        loaded.save()
        loaded.touch("level")
        loaded.strengthen_cycle("level", factor=1.5)
        loaded.resolve_pressure("level")
    again = Item.query.no_track().get(name="i05")
    assert list(again.feed) == [100, 5] and again.access_count == 1  # newest first
    assert len(again.access_log()) == 1
    assert Item.level.cycles_of(again) == [(DAY, 3.0, 0.0)]
    assert Item.level.pressure_of(again)["rate"] == 0.5
    assert [x.name for x in Item.query.priority(3)] == ["i23", "i22", "i21"]
    top = Item.query.top_by_decay(n=4)
    assert len(top) == 4 and top[0]._score >= top[-1]._score
    for item in items[:12]:
        Item.query.no_track().get(name=item.name).delete()
    assert Item.query.count() == 12
    assert Item.stream_len() == 24 * 4 + 12
    for item in items[12:]:
        item.delete()
    left = all_keys(rc)
    assert left and left <= set(Item.stream_keys())  # only the group streams remain
    assert Item.create(name="again", email="0@x").email == "0@x"  # claims were released


def test_top_by_decay_and_priority_return_the_global_best(rc: RedisCluster) -> None:
    """top_by_decay over 16 groups with base, cycles and pressure keys (no placeholder keys)
    and priority(n) return the globally best members."""
    for i in range(30):
        Item(name=f"d{i:02d}", level=NOW - i * 0.2 * DAY, likes=i % 5 + 1,
             value=0.7 + (i % 10) / 100).save(skip_auto_now=True)
    top = Item.query.top_by_decay(n=30, as_of=NOW)
    scores = [x._score for x in top]
    assert len(top) == 30 and scores == sorted(scores, reverse=True)
    best5 = Item.query.top_by_decay(n=5, as_of=NOW)
    assert [(x.name, x._score) for x in best5] == [(x.name, x._score) for x in top[:5]]
    values = {f"d{i:02d}": 0.7 + (i % 10) / 100 for i in range(30)}
    expected = sorted(values, key=lambda name: (-values[name], name))[:6]
    assert [(x.name, x._score) for x in Item.query.priority(6)] == [
        (name, values[name]) for name in expected]


def test_move_to_another_group_in_cluster(rc: RedisCluster) -> None:
    """A write-filtered instance moved across groups (two slots) leaves nothing behind."""
    note = Ranked.create(name="a")
    old = note.pk
    note.name = next(f"m{i}" for i in range(100) if keys.ns_of(
        Ranked._meta.instance_key([f"m{i}"])) != keys.ns_of(old))
    note.save(migrate_key=True)
    assert rc.exists(old) == 0 and rc.zscore(Ranked.priority_key(keys.ns_of(old)), old) is None
    assert [x.pk for x in Ranked.query.priority(3)] == [note.pk]


def test_consumer_reads_every_group_stream_of_the_cluster(rc: RedisCluster) -> None:
    """A real StreamConsumer polls the 16 group streams (one slot per command), handles each
    event once, acks, dead-letters in the stream's slot and trims."""
    items = [Item.create(name=f"c{i:02d}") for i in range(20)]
    reg = HandlerRegistry()
    got: list[Event] = []
    reg.register("Item", "*", got.append)
    c = StreamConsumer("cluster-items", "proj", "c1", registry=reg, block_ms=20,
                       claim_idle_ms=50, trim_approximate=False)
    assert len(c.streams) == 17
    c.run(until_idle=True)
    assert sorted(e.pk for e in got) == sorted(i.pk for i in items)
    assert all(keys.key_slot(e.stream) == keys.key_slot(e.pk) for e in got)
    assert sum(rc.xpending(k, "proj")["pending"] for k in Item.stream_keys()) == 0
    assert c.trim_now() == 20

    def poison(event: Event) -> Any:
        raise RuntimeError("broken")

    reg.clear()
    reg.register("Item", "*", poison)
    items[3].delete()
    c.max_deliveries = 1
    started = time.monotonic()
    c.run(until_idle=True)
    assert time.monotonic() - started < 5
    home = Item.stream_key(ns=keys.ns_of(items[3].pk))
    assert c.stats.dead_lettered == 1 and rc.xlen(dead_letter_key(home)) == 1
    rc.xadd("stream:cluster-items", {"junk": "1"})  # another writer's malformed entry
    c.run(until_idle=True)
    plain_dead = dead_letter_key("stream:cluster-items")
    assert plain_dead == "dead:{stream:cluster-items}"
    assert keys.key_slot(plain_dead) == keys.key_slot("stream:cluster-items")
    assert c.stats.dead_lettered == 2 and rc.xlen(plain_dead) == 1
