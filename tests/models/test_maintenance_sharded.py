"""Index maintenance of sharded models (``Meta.shards = 4``): every tag group, one slot per step.

Standalone with ``shards=4`` builds the key layout of cluster mode on one
server; the last test runs check/clean/rebuild on a real 3-master cluster.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from popoto import Field, IndexedField, KeyField, Model, ModelException, SortedField, keys
from popoto import encoding
from popoto.exceptions import UniqueViolation
from popoto.models.maintenance import merge_reports


class ShardShop(Model):
    region = KeyField()
    name = KeyField()
    color = IndexedField(null=True)
    score = SortedField(type=int, null=True, partition_by="region")
    score_2 = SortedField(type=float, null=True)
    email = Field(null=True, unique=True)
    a = Field(null=True)
    b = Field(null=True)

    class Meta:
        shards = 4
        indexes = ((("a", "b"), True), (("color", "a"), False))


class ShardShopX(Model):
    """Name shares the prefix of ShardShop: its keys must never be taken for ShardShop's."""

    name = KeyField()
    score = SortedField(type=int, null=True)

    class Meta:
        shards = 4


class ShardCounter(Model):
    name = KeyField()
    v = SortedField(type=int)
    tag = Field(unique=True)

    class Meta:
        shards = 4


META = ShardShop._meta


def key(i: int | str) -> str:
    name = f"n{i:02d}" if isinstance(i, int) else i
    return META.instance_key((name, "eu"))


def ns(redis_key: str) -> str:
    return keys.ns_of(redis_key)


def other(group: str) -> str:
    """Another tag group of ShardShop than ``group``."""
    groups = META.groups
    return groups[(groups.index(group) + 1) % len(groups)]


def red(group: str, color: str = "red") -> str:
    return keys.field_index_key("IndexF", group, "color", color)


def score_eu(group: str) -> str:
    return keys.field_index_key("SortedF", group, "score", "eu")


def score_2(group: str) -> str:
    return keys.field_index_key("SortedF", group, "score_2")


def token(value: object) -> str:
    return encoding.pack(value).hex()


def claims_of(value: object) -> str:
    """The claim hash of email ``value``: in the group of the value, not of its holder."""
    return keys.field_index_key("UniqueF", META.claim_ns(token(value)), "email")


def class_set(group: str) -> str:
    return keys.class_set_key(group)


def make_shops(n: int = 12) -> None:
    for i in range(n):
        ShardShop.create(region="eu", name=f"n{i:02d}", color="red", score=i, score_2=i / 2,
                         email=f"e{i}", a="x", b=str(i))


def server_ms(r: Any) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def corrupt(r: Any) -> str:
    """The damage of test_maintenance.corrupt, spread over the groups, plus sharded damage.

    Returns the claim hash holding a claim pending for a save in flight (left alone).
    """
    ghost = key("ghost")
    r.sadd(red(ns(ghost)), ghost)
    r.zadd(score_eu(ns(ghost)), {ghost: 5})
    r.hset(claims_of("ghost@x"), token("ghost@x"), ghost)
    r.sadd(class_set(ns(ghost)), ghost)
    r.sadd(class_set(META.groups[0]), "Other:thing")
    r.delete(key(0))
    r.pexpire(key(1), 1)
    r.srem(red(ns(key(2))), key(2))
    r.zrem(score_2(ns(key(3))), key(3))
    r.srem(class_set(ns(key(4))), key(4))
    r.hdel(claims_of("e5"), token("e5"))
    r.zadd(score_2(ns(key(6))), {key(6): 999})
    r.sadd(red(ns(key(7)), "blue"), key(7))
    r.hset(claims_of("old@x"), token("old@x"), key(8))
    r.hset(key(9), "color", encoding.pack("green"))
    # sharded damage: members in another group's keys, stale / settled-late pending claims
    r.sadd(class_set(other(ns(key(10)))), key(10))
    r.sadd(red(other(ns(key(11)))), key(11))
    now = server_ms(r)
    r.hset(claims_of("stale@x"), token("stale@x"), f"~{now - 60_000}~{key(10)}")
    r.hset(claims_of("e11"), token("e11"), f"~{now - 60_000}~{key(11)}")  # expired, but owned
    in_flight = claims_of("coming@x")
    r.hset(in_flight, token("coming@x"), f"~{now + 600_000}~{key('coming')}")
    time.sleep(0.01)
    return in_flight


def assert_queries_right() -> None:
    live = [f"n{i:02d}" for i in range(2, 12)]
    names = sorted(o.name for o in ShardShop.query.filter(color="red"))
    assert names == [n for n in live if n != "n09"]
    assert ShardShop.query.filter(color="red").count() == 9
    assert [o.name for o in ShardShop.query.filter(color="green")] == ["n09"]
    assert ShardShop.query.filter(color="blue").count() == 0
    assert [o.name for o in ShardShop.query.filter(region="eu", score__gte=0)] == live
    assert [o.name for o in ShardShop.query.filter(score_2__gte=0)] == live
    assert [o.name for o in ShardShop.query.filter(score_2__gt=5.2)] == ["n11"]
    assert ShardShop.query.count() == 10
    assert sorted(ShardShop.query.keys()) == sorted(key(i) for i in range(2, 12))


def test_damage_spans_several_groups() -> None:
    """The fixture data really is spread: the damaged instances live in every group."""
    assert len(META.groups) == 4
    assert {ns(key(i)) for i in range(12)} == set(META.groups)
    assert len({META.claim_ns(token(f"e{i}")) for i in range(12)}) > 1


def test_healthy_sharded_model_reports_zero_in_every_group() -> None:
    """A sharded model written through the ORM has no problems; per-group reports add up."""
    make_shops()
    report = ShardShop.check_indexes()
    assert report["total"] == 0
    assert report["instances"] == 12
    assert report["composite_indexes"] == {"a+b": 0, "color+a": 0}
    per_group = [ShardShop.check_indexes(group=g) for g in META.groups]
    assert all(p["total"] == 0 for p in per_group)
    assert [p["instances"] for p in per_group] == [
        sum(1 for i in range(12) if ns(key(i)) == g) for g in META.groups]
    assert merge_reports(per_group) == report


def test_check_counts_every_kind_of_damage_across_groups(r: Any) -> None:
    """check_indexes counts orphans, missing, wrong and stale records over all groups."""
    make_shops()
    corrupt(r)
    report = ShardShop.check_indexes()
    # color's lex index adds 2 orphans for each of the 2 vanished instances and 2 wrong
    # scores for n09, whose value changed behind the ORM
    assert report["orphans"] == 19 + 4
    assert report["missing"] == 6
    # + class set and color set of another group, stale claim; + n09's 2 lex scores
    assert report["wrong"] == 5 + 3 + 2
    assert report["owner_records"] == 2
    assert report["total"] == 35 + 6
    assert report["class_set"] == 6
    assert report["indexed_fields"] == {"color": 9 + 6}
    assert report["sorted_fields"] == {"score": 3, "score_2": 4}
    assert report["unique_fields"] == {"email": 6}
    assert report["composite_indexes"] == {"a+b": 2, "color+a": 5}
    assert report["instances"] == 10
    per_group = [ShardShop.check_indexes(batch_size=3, group=g) for g in META.groups]
    assert sum(p["total"] > 0 for p in per_group) >= 3
    assert merge_reports(per_group) == report


def test_clean_then_rebuild_repairs_every_group(r: Any) -> None:
    """clean removes what nobody owns in every group, rebuild the rest; queries are right."""
    make_shops()
    in_flight = corrupt(r)
    assert ShardShop.clean_indexes() == 21 + 3 + 4  # + the 2 vanished instances' lex entries
    report = ShardShop.check_indexes()
    assert (report["orphans"], report["missing"], report["wrong"]) == (0, 6, 3 + 2)
    assert report["owner_records"] == 2
    assert ShardShop.clean_indexes() == 0
    assert ShardShop.rebuild_indexes() == 10
    assert ShardShop.check_indexes()["total"] == 0
    assert_queries_right()
    # the claim settled late is plain again; the claim of a save in flight was left alone
    assert r.hget(claims_of("e11"), token("e11")) == key(11).encode()
    assert r.hget(in_flight, token("coming@x")).decode().endswith(key("coming"))


def test_rebuild_alone_repairs_everything_and_unique_claims_work(r: Any) -> None:
    """rebuild_indexes alone repairs all damage; restored and freed global claims behave."""
    make_shops()
    corrupt(r)
    assert ShardShop.rebuild_indexes(batch_size=3) == 10
    assert ShardShop.check_indexes(batch_size=3)["total"] == 0
    assert_queries_right()
    assert not r.sismember(class_set(META.groups[0]), "Other:thing")
    assert r.hget(claims_of("e5"), token("e5")) == key(5).encode()
    with pytest.raises(UniqueViolation):
        ShardShop.create(region="eu", name="dup", email="e5")  # claim of n05 restored
    ShardShop.create(region="eu", name="old", email="old@x")  # stale claim of n08 freed
    ShardShop.create(region="eu", name="ghost", email="ghost@x")  # orphan claim freed
    ShardShop.create(region="eu", name="late", email="stale@x")  # expired pending claim freed
    assert ShardShop.check_indexes()["total"] == 0


def test_per_group_clean_touches_only_its_group(r: Any) -> None:
    """clean_indexes(group=g) removes the damage in g's keys and nothing in other groups."""
    make_shops()
    target = ns(key(3))
    gone = META.instance_key(("gone", "eu"))
    stray = [META.instance_key((f"x{i}", "eu")) for i in range(40)]
    for member in stray:
        r.sadd(red(ns(member)), member)
    by_group = {g: sum(1 for m in stray if ns(m) == g) for g in META.groups}
    assert ShardShop.clean_indexes(group=target) == by_group[target]
    assert ShardShop.check_indexes()["orphans"] == len(stray) - by_group[target]
    assert sum(ShardShop.clean_indexes(group=g) for g in META.groups) \
        == len(stray) - by_group[target]
    assert ShardShop.check_indexes()["total"] == 0
    assert not r.exists(gone)
    with pytest.raises(ModelException, match="not a tag group of ShardShop"):
        ShardShop.clean_indexes(group="{ShardShopX#0}")


def test_group_chunk_api_partitions_the_model(r: Any) -> None:
    """index_keys / scan_instance_keys / scan_class_set per group cover the model exactly once."""
    for i in range(60):
        ShardShop.create(region="eu", name=f"n{i:02d}", color="red", score=i, email=f"e{i}")
    ShardShopX.create(name="n00", score=1)
    r.srem(class_set(ns(key(0))), key(0))

    def collect(step: Any, **kw: Any) -> list[str]:
        cursor, seen = 0, []
        while True:
            cursor, found = step(cursor, 7, **kw)
            seen += found
            if cursor == 0:
                return seen

    everything = {key(i) for i in range(60)}
    per_group = [collect(ShardShop.scan_instance_keys, group=g) for g in META.groups]
    assert sorted(k for part in per_group for k in part) == sorted(everything)
    assert all(ns(k) == g for g, part in zip(META.groups, per_group) for k in part)
    assert set(collect(ShardShop.scan_instance_keys)) == everything
    assert set(collect(ShardShop.scan_class_set)) == everything - {key(0)}
    assert set(collect(ShardShop.scan_class_set, group=ns(key(1)))) \
        == {k for k in everything if ns(k) == ns(key(1))} - {key(0)}
    index_keys = ShardShop.index_keys()
    by_group = [ShardShop.index_keys(group=g) for g in META.groups]
    assert sorted(k for part in by_group for k in part) == index_keys
    assert class_set(META.groups[2]) in by_group[2]
    assert not [k for k in index_keys if "ShardShopX" in k]
    assert ShardShop._index_owner(red(META.groups[1])) == "color"
    assert ShardShop._index_owner(keys.field_index_key("SortedF", "{ShardShopX#0}", "score")) \
        is None
    assert ShardShop._is_instance_key(key(5))
    assert not ShardShop._is_instance_key(ShardShopX._meta.instance_key(("n00",)))
    assert not ShardShop._is_instance_key("{ShardShop#9}:n00:eu")


def test_reindex_keys_of_mixed_groups_restores_them(r: Any) -> None:
    """reindex_keys takes keys of every group at once and rewrites each in its group."""
    make_shops(8)
    for i in range(8):
        r.srem(red(ns(key(i))), key(i))
        r.srem(class_set(ns(key(i))), key(i))
        r.hdel(claims_of(f"e{i}"), token(f"e{i}"))
    assert ShardShop.check_indexes()["missing"] == 24
    assert ShardShop.reindex_keys([key(i) for i in range(8)] + ["Other:x", key(99)]) == 8
    assert ShardShop.check_indexes()["total"] == 0
    assert ShardShop.query.filter(color="red").count() == 8
    assert {r.hget(claims_of(f"e{i}"), token(f"e{i}")) for i in range(8)} \
        == {key(i).encode() for i in range(8)}


def test_reindex_releases_claims_the_values_no_longer_have(r: Any) -> None:
    """A hash whose unique value changed behind the ORM: reindex moves its claim across groups."""
    make_shops(2)
    r.hset(key(1), "email", encoding.pack("moved@x"))
    assert ShardShop.reindex_keys([key(1)]) == 1
    assert not r.hexists(claims_of("e1"), token("e1"))
    assert r.hget(claims_of("moved@x"), token("moved@x")) == key(1).encode()
    assert ShardShop.check_indexes()["total"] == 0
    ShardShop.create(region="eu", name="n05", email="e1")


def test_maintenance_survives_a_flushed_script_cache(r: Any) -> None:
    """After SCRIPT FLUSH (a restarted server), claim takeovers and removals reload scripts."""
    make_shops(4)
    ShardShop.check_indexes()
    r.hset(claims_of("stale@x"), token("stale@x"), key(1))
    r.hdel(claims_of("e2"), token("e2"))
    r.hset(claims_of("e3"), token("e3"), key("gone"))
    r.script_flush()
    assert ShardShop.clean_indexes() == 2
    r.script_flush()
    assert ShardShop.reindex_keys([key(2), key(3)]) == 2
    assert ShardShop.check_indexes()["total"] == 0


def test_duplicate_unique_values_are_reported_not_fatal(r: Any, caplog: Any) -> None:
    """Two live instances with one unique value: rebuild logs it, repairs the rest, check says 2."""
    ShardShop.create(region="eu", name="n00", email="same", color="red")
    ShardShop.create(region="eu", name="n01", email="other", color="red")
    r.hset(key(1), mapping={"email": encoding.pack("same"), "color": encoding.pack("blue")})
    with caplog.at_level(logging.ERROR, logger="popoto.maintenance"):
        assert ShardShop.rebuild_indexes() == 2
    assert "another instance holds it" in caplog.text
    assert [o.name for o in ShardShop.query.filter(color="blue")] == ["n01"]
    assert r.hget(claims_of("same"), token("same")) == key(0).encode()
    assert not r.hexists(claims_of("other"), token("other"))
    report = ShardShop.check_indexes()
    assert report["unique_fields"] == {"email": 2}  # claim missing + its @idx record
    assert report["total"] == 2


def test_reindex_waits_for_a_claim_pending_for_another_save(r: Any, caplog: Any) -> None:
    """A claim pending inside another writer's lease is never taken: the key is retried, then
    skipped; once that lease is over (its writer gone) the claim is taken over."""
    make_shops(1)
    hash_key, field = claims_of("e0"), token("e0")
    r.hset(hash_key, field, f"~{server_ms(r) + 600_000}~{key('writer')}")
    r.srem(red(ns(key(0))), key(0))
    with caplog.at_level(logging.WARNING, logger="popoto.maintenance"):
        assert ShardShop.reindex_keys([key(0)]) == 0
    assert "kept changing" in caplog.text
    assert not r.sismember(red(ns(key(0))), key(0))
    assert r.hget(hash_key, field).decode().endswith(key("writer"))
    r.hset(hash_key, field, f"~{server_ms(r) - 60_000}~{key('writer')}")
    assert ShardShop.reindex_keys([key(0)]) == 1
    assert r.hget(hash_key, field) == key(0).encode()
    assert ShardShop.check_indexes()["total"] == 0


def test_reindex_never_undoes_concurrent_saves_nor_their_claims() -> None:
    """Saves changing a unique value race rebuilds: values, scores and global claims agree."""
    names = [f"c{i:03d}" for i in range(120)]
    for name in names:
        ShardCounter.create(name=name, v=0, tag=f"{name}-0")
    stop = threading.Event()
    last: dict[str, int] = {}
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set():
                name = names[i % len(names)]
                obj = ShardCounter.query.get(name=name)
                obj.v += 1
                obj.tag = f"{name}-{obj.v}"
                obj.save()
                last[name] = obj.v
                i += 7
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(4):
            ShardCounter.rebuild_indexes(batch_size=25)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert last
    ShardCounter.clean_indexes()  # claims released late by saves that raced the last rebuild
    for name, v in last.items():
        obj = ShardCounter.query.get(name=name)
        assert obj.v == v
        assert ShardCounter.query.filter(v__gte=v, v__lte=v).count() >= 1
        with pytest.raises(UniqueViolation):
            ShardCounter.create(name="x" + name, v=0, tag=f"{name}-{v}")
    assert ShardCounter.check_indexes()["total"] == 0


@pytest.mark.standalone_only  # brings its own cluster (the cluster run covers the rest)
@pytest.mark.usefixtures("cluster_mode")
def test_check_clean_rebuild_on_a_real_cluster() -> None:
    """On a 3-master Redis Cluster (16 groups), check/clean/rebuild work slot by slot."""
    from popoto.redis_db import get_client, is_cluster

    class ClusterShop(Model):
        name = KeyField()
        color = IndexedField(null=True)
        score = SortedField(type=int, null=True)
        email = Field(null=True, unique=True)

    assert is_cluster()
    meta = ClusterShop._meta
    assert len(meta.groups) == 16
    for i in range(80):
        ClusterShop.create(name=f"n{i:02d}", color="red", score=i, email=f"e{i}")
    r = get_client()

    def own(i: int) -> str:
        return meta.instance_key((f"n{i:02d}",))

    def email_claims(value: str) -> str:
        return keys.field_index_key("UniqueF", meta.claim_ns(token(value)), "email")

    for i in range(0, 10):
        r.delete(own(i))  # 10 instances x (class set, color, 2 lex, score, claim) orphans
    for i in range(10, 20):
        r.srem(keys.field_index_key("IndexF", keys.ns_of(own(i)), "color", "red"), own(i))
    for i in range(20, 25):
        r.zadd(keys.field_index_key("SortedF", keys.ns_of(own(i)), "score"), {own(i): -1})
    r.hset(email_claims("stale@x"), token("stale@x"), own(30))
    report = ClusterShop.check_indexes(batch_size=7)
    assert (report["orphans"], report["missing"], report["wrong"]) == (40 + 20, 10, 6)
    assert report["instances"] == 70
    assert merge_reports(ClusterShop.check_indexes(group=g) for g in meta.groups) == report
    assert ClusterShop.clean_indexes() == 41 + 20
    assert ClusterShop.rebuild_indexes(batch_size=9) == 70
    assert ClusterShop.check_indexes()["total"] == 0
    assert ClusterShop.query.filter(color="red").count() == 70
    assert [o.name for o in ClusterShop.query.filter(score__lt=12)] == ["n10", "n11"]
    assert [o.name for o in ClusterShop.query.filter(score__gte=20, score__lt=23)] \
        == ["n20", "n21", "n22"]
    with pytest.raises(UniqueViolation):
        ClusterShop.create(name="dup", email="e44")
    ClusterShop.create(name="n00", email="stale@x")


def _keys_of(args: list[str]) -> list[str]:
    """The keys of a monitored command (the ones a cluster routes by)."""
    name = args[0].upper()
    if name in ("EVALSHA", "EVAL"):
        return args[3:3 + int(args[2])]
    if name in ("MULTI", "EXEC", "WATCH", "UNWATCH", "SCAN", "TIME", "INFO", "PING", "ECHO",
                "SCRIPT", "CLIENT", "DISCARD"):
        return args[1:] if name == "WATCH" else []
    return args[1:2]


@pytest.mark.standalone_only  # MONITOR of the one server
def test_every_transaction_and_script_stays_in_one_slot(r: Any, redis_url: str) -> None:
    """check/clean/rebuild of damaged groups: each MULTI/EXEC and each script uses one slot,
    and no index is read whole."""
    import redis as redis_py

    make_shops()
    corrupt(r)
    monitor_client = redis_py.Redis.from_url(redis_url)
    seen: list[tuple[str, list[str]]] = []
    ready = threading.Event()

    def watch() -> None:
        with monitor_client.monitor() as m:
            ready.set()
            for event in m.listen():
                if event["command"] == "ECHO popoto-monitor-stop":
                    return
                client = f"{event.get('client_address')}:{event.get('client_port')}"
                seen.append((client, event["command"].split(" ")))

    thread = threading.Thread(target=watch)
    thread.start()
    ready.wait(5)
    time.sleep(0.1)
    ShardShop.check_indexes(batch_size=4)
    ShardShop.clean_indexes(batch_size=4)
    ShardShop.rebuild_indexes(batch_size=4)
    r.echo("popoto-monitor-stop")
    thread.join(10)
    monitor_client.close()
    names = {args[0].upper() for _c, args in seen}
    assert {"SCAN", "SSCAN", "ZSCAN", "HSCAN", "MULTI", "EVALSHA"} <= names
    assert not names & {"KEYS", "SMEMBERS", "HKEYS", "HVALS", "ZRANGE", "SUNION", "SINTER"}
    open_tx: dict[str, list[str]] = {}
    transactions = 0
    for client, args in seen:
        name = args[0].upper()
        if name == "EVALSHA" and client not in open_tx:
            assert len({keys.key_slot(k) for k in _keys_of(args)}) == 1, args
        if name == "MULTI":
            open_tx[client] = []
        elif name == "EXEC" and client in open_tx:
            used = open_tx.pop(client)
            transactions += 1
            assert len({keys.key_slot(k) for k in used}) == 1, used
        elif client in open_tx:
            open_tx[client] += _keys_of(args)
    assert transactions >= len(META.groups)
