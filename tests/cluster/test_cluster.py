"""Popoto on a real local Redis Cluster (3 masters; 3+3 for failover).

The session cluster comes from the ``cluster`` / ``cluster_mode`` fixtures
(conftest.py); the failover test starts its own 6-node cluster.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import redis

import popoto
from popoto import Field, GeoField, IndexedField, KeyField, Model, SortedField, UniqueViolation
from popoto import keys
from popoto.testing.cluster import EmbeddedCluster

pytestmark = [pytest.mark.standalone_only, pytest.mark.slow]  # they bring their own cluster


class Parcel(Model):
    code = KeyField()
    weight = SortedField(type=int)
    depot = IndexedField()
    tracking = Field(unique=True, null=True)
    spot = GeoField(null=True)

    class Meta:
        shards = 16


class Note(Model):  # no Meta.shards: the cluster default applies
    ident = KeyField()
    body = Field(null=True)

    class Meta:
        namespace = "ClusterNote"


def _evalsha_calls(cluster: EmbeddedCluster) -> dict[int, int]:
    out = {}
    for node in cluster.masters():
        stats = node.client().info("commandstats")
        out[node.port] = stats.get("cmdstat_evalsha", {}).get("calls", 0)
    return out


def test_cluster_mode_layout_and_defaults(cluster_mode):
    """Cluster mode tags every model: default 16 groups, keys of one instance in one slot."""
    assert popoto.redis_db.is_cluster()
    assert len(Note._meta.groups) == 16 and Note._meta.sharded
    note = Note.create(ident="n1", body="hi")
    assert note.pk.startswith("{ClusterNote#")
    assert Note.query.get(ident="n1").body == "hi"
    assert Note.query.count() == 1


def test_a_save_is_one_script_call_on_one_node(cluster_mode):
    """A save of an instance without unique values is one EVALSHA on the node owning its
    group (hash, class set, sorted, indexed and geo entries together)."""
    Parcel.create(code="warm-up", weight=1, depot="d1")  # scripts loaded, slots cached
    for node in cluster_mode.masters():
        node.client().config_resetstat()
    parcel = Parcel.create(code="p1", weight=5, depot="d1", spot=(48.85, 2.35))
    calls = _evalsha_calls(cluster_mode)
    owner = cluster_mode.node_for_key(parcel.pk).port
    assert calls == {port: (1 if port == owner else 0) for port in calls}
    assert [p.code for p in Parcel.query.filter(depot="d1", weight__gte=2)] == ["p1"]


def test_unique_claims_are_global_on_a_cluster(cluster_mode):
    """A unique value is claimed once across all nodes; the claim sits in its own group."""
    Parcel.create(code="a", weight=1, depot="d", tracking="T-1")
    for i in range(10):
        with pytest.raises(UniqueViolation):
            Parcel.create(code=f"b{i}", weight=1, depot="d", tracking="T-1")
    a = Parcel.query.get(code="a")
    a.tracking = "T-2"
    a.save()
    Parcel.create(code="b0", weight=1, depot="d", tracking="T-1")
    assert Parcel.query.count() == 2


def _share_per_master(cluster: EmbeddedCluster, model: type[Model]) -> dict[int, float]:
    """Fraction of the model's instances held by each master."""
    client = popoto.redis_db.get_client()
    per_node: Counter[int] = Counter()
    for key in model._meta.class_set_keys():
        per_node[cluster.node_for_key(key).port] += client.scard(key)
    total = sum(per_node.values())
    return {port: per_node[port] / total for port in (n.port for n in cluster.masters())}


@pytest.mark.slow
def test_30k_objects_in_16_groups_spread_over_three_masters(cluster_mode, capsys):
    """shards=16, 30,000 objects: every master holds 20-47% of them (keys too); queries,
    unique checks and increments give the answers a single server gives."""
    n = 30_000
    started = time.perf_counter()
    Parcel.bulk_create([Parcel(code=f"c{i:05d}", weight=i % 1000, depot=f"d{i % 7}",
                               tracking=None) for i in range(n)])
    elapsed = time.perf_counter() - started
    shares = _share_per_master(cluster_mode, Parcel)
    keys_per_node = cluster_mode.key_counts()
    total_keys = sum(keys_per_node.values())
    with capsys.disabled():
        print(f"\n  30k bulk_create on 3 masters: {elapsed:.2f} s; instance share per master "
              f"{ {p: round(s, 3) for p, s in shares.items()} }; keys per master "
              f"{keys_per_node}")
    assert all(0.20 <= s <= 0.47 for s in shares.values()), shares
    assert all(0.20 <= c / total_keys <= 0.47 for c in keys_per_node.values()), keys_per_node
    q = Parcel.query
    assert q.count() == n
    assert q.filter(depot="d3").count() == len([i for i in range(n) if i % 7 == 3])
    top = q.filter(weight__gte=990).order_by("-weight").limit(5)
    want = sorted((i for i in range(n) if i % 1000 >= 990),
                  key=lambda i: (i % 1000, f"c{i:05d}"), reverse=True)[:5]
    assert [p.code for p in top] == [f"c{i:05d}" for i in want]
    page = q.filter(depot="d1").order_by("weight")[100:103]
    want = sorted((i for i in range(n) if i % 7 == 1), key=lambda i: (i % 1000, f"c{i:05d}"))
    assert [p.code for p in page] == [f"c{i:05d}" for i in want[100:103]]
    p = q.get(code="c00042")
    p.atomic_increment("weight", 5000)
    assert [x.code for x in q.order_by("-weight").limit(1)] == ["c00042"]
    p.tracking = "T"
    p.save()
    with pytest.raises(UniqueViolation):
        Parcel.create(code="new", weight=1, depot="d", tracking="T")
    # index repair over the 30k: damage entries in several groups, check finds exactly
    # them, clean + rebuild restore the answers a healthy index gives
    client = popoto.redis_db.get_client()
    victims = [q.get(code=f"c{i:05d}") for i in (3, 4, 5, 6)]
    for v in victims:
        ns = keys.ns_of(v.pk)
        client.zrem(Parcel._meta.fields["weight"].sorted_key((), ns), v.pk)  # missing entry
    ghost = Parcel._meta.instance_key(["ghost"])
    client.sadd(Parcel._meta.fields["depot"].index_key("d3", keys.ns_of(ghost)), ghost)  # orphan
    started = time.perf_counter()
    report = Parcel.check_indexes()
    checked = time.perf_counter() - started
    assert (report["missing"], report["orphans"]) == (4, 1), report
    Parcel.clean_indexes()
    started = time.perf_counter()
    Parcel.rebuild_indexes()
    rebuilt = time.perf_counter() - started
    assert Parcel.check_indexes()["total"] == 0
    assert q.filter(weight=3).count() == len([i for i in range(n) if i % 1000 == 3])
    assert q.filter(depot="d3").count() == len([i for i in range(n) if i % 7 == 3])
    with capsys.disabled():
        print(f"  check_indexes of 30k on the cluster: {checked:.2f} s; rebuild {rebuilt:.2f} s")


def _wait_replicated(cluster: EmbeddedCluster, timeout: float = 10.0) -> None:
    """Until every replica has acknowledged its master's whole replication stream."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lagging = []
        for master in cluster.masters():
            info = master.client().info("replication")
            offset = info["master_repl_offset"]
            replicas = [v for k, v in info.items() if k.startswith("slave")
                        and isinstance(v, dict)]
            if not replicas or any(r["offset"] < offset for r in replicas):
                lagging.append(master.port)
        if not lagging:
            return
        time.sleep(0.05)
    raise AssertionError(f"replicas of {lagging} did not catch up")


@pytest.mark.slow
def test_failover_keeps_committed_writes_and_writes_resume(redis_server, capsys):
    """3 masters + 3 replicas: stop the master of a group, a replica is promoted; every
    object written (and replicated) before is still there, indexes agree, and saves to that
    group succeed again once the client has refreshed its slot map."""
    with EmbeddedCluster(masters=3, replicas_per_master=1) as big:
        popoto.configure(url=big.url, cluster=True)
        try:
            for i in range(300):
                Parcel.create(code=f"f{i}", weight=i, depot=f"d{i % 3}", tracking=f"T{i}")
            _wait_replicated(big)
            victim_key = Parcel.query.get(code="f7").pk
            victim = big.node_for_key(victim_key)
            big.stop_node(victim)
            stopped = time.monotonic()
            big.wait_for_failover(victim)
            resumed = None
            for _attempt in range(100):
                try:
                    obj = Parcel.query.get(code="f7")
                    obj.weight = 7000
                    obj.save()
                    resumed = time.monotonic() - stopped
                    break
                except (redis.exceptions.ConnectionError, redis.exceptions.ClusterError,
                        redis.exceptions.TimeoutError):
                    time.sleep(0.1)
            assert resumed is not None, "writes never resumed after the failover"
            with capsys.disabled():
                print(f"\n  failover: writes resumed {resumed:.2f} s after the master stopped")
            assert Parcel.query.count() == 300
            assert {p.code for p in Parcel.query.all()} == {f"f{i}" for i in range(300)}
            assert Parcel.query.filter(depot="d1").count() == 100
            assert [p.code for p in Parcel.query.order_by("-weight").limit(2)] == ["f7", "f299"]
            with pytest.raises(UniqueViolation):
                Parcel.create(code="dup", weight=1, depot="d0", tracking="T7")
            same_group = next(f"g{i}" for i in range(10_000) if keys.ns_of(
                Parcel._meta.instance_key([f"g{i}"])) == keys.ns_of(victim_key))
            Parcel.create(code=same_group, weight=1, depot="d0", tracking="new")
            assert Parcel.query.get(code=same_group) is not None
        finally:
            popoto.configure(url=redis_server.url)


def test_async_cluster_client_queues_instead_of_running_out_of_connections(cluster_mode):
    """500 concurrent async increments and 500 concurrent creates on one event loop: the
    asyncio cluster client waits for a free connection (redis-py's per-node pools of 100
    would raise MaxConnectionsError) and nothing is lost."""
    import asyncio

    async def scenario() -> tuple[int, int]:
        await Parcel.async_create(code="hot", weight=0, depot="d")
        hot = await Parcel.query.async_get(code="hot")
        await asyncio.gather(*(hot.async_atomic_increment("weight", 1) for _ in range(500)))
        await asyncio.gather(*(Parcel.async_create(code=f"a{i}", weight=1, depot="d")
                               for i in range(500)))
        return (await Parcel.query.async_get(code="hot")).weight, await Parcel.query.async_count()

    assert asyncio.run(scenario()) == (500, 501)
    assert popoto.redis_db.ASYNC_CLUSTER_CONCURRENCY < 100
