"""`make demo`, part 3: one model spread over a local Redis Cluster, and a failover.

Starts a 3-master cluster with one replica per master (the server binary the
embedded server uses; about 2 s), switches Popoto to cluster mode, and shows:
where the data lands, a merged query across tag groups, a global unique value,
and a master being killed while its replica takes over. This is a command-line
program, so it prints.
"""

from __future__ import annotations

import time

import redis

import popoto
from popoto import Field, IndexedField, KeyField, Model, SortedField, UniqueViolation, keys
from popoto.testing.cluster import ClusterUnavailable, EmbeddedCluster


class Parcel(Model):
    code = KeyField()
    weight = SortedField(type=int)
    depot = IndexedField()
    tracking = Field(unique=True, null=True)

    class Meta:
        shards = 16


def _wait_replicated(cluster: EmbeddedCluster, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        behind = 0
        for master in cluster.masters():
            info = master.client().info("replication")
            offsets = [v["offset"] for k, v in info.items()
                       if k.startswith("slave") and isinstance(v, dict)]
            behind += sum(1 for o in offsets if o < info["master_repl_offset"]) or not offsets
        if not behind:
            return
        time.sleep(0.05)


def run(cluster: EmbeddedCluster) -> None:
    popoto.configure(url=cluster.url, cluster=True)
    masters = cluster.masters()
    print(f"cluster: {len(masters)} masters + {len(cluster.replicas())} replicas on "
          f"127.0.0.1 ({', '.join(str(m.port) for m in masters)})")
    n = 6000
    started = time.perf_counter()
    Parcel.bulk_create([Parcel(code=f"p{i:05d}", weight=(i * 37) % 1000, depot=f"d{i % 5}")
                        for i in range(n)])
    print(f"bulk_create of {n} parcels in 16 tag groups: {time.perf_counter() - started:.2f} s")
    client = popoto.redis_db.get_client()
    share: dict[int, int] = {}
    for set_key in Parcel._meta.class_set_keys():
        port = cluster.node_for_key(set_key).port
        share[port] = share.get(port, 0) + client.scard(set_key)
    for port, count in share.items():
        print(f"  master :{port} holds {count} parcels ({100 * count / n:.1f} %)")
    top = Parcel.query.filter(depot="d2").order_by("-weight").limit(3)
    print("heaviest in depot d2 (16 groups queried in one round trip, pages merged):")
    for p in top:
        print(f"  {p.code} weight={p.weight} key={p.pk}")
    print(f"count(weight >= 900) = {Parcel.query.filter(weight__gte=900).count()}")

    first = Parcel.query.get(code="p00001")
    assert first is not None  # saved above
    first.tracking = "TRK-1"
    first.save()
    other = next(f"p{i:05d}" for i in range(2, n) if keys.ns_of(
        Parcel._meta.instance_key([f"p{i:05d}"])) != keys.ns_of(first.pk))
    clash = Parcel.query.get(code=other)
    assert clash is not None  # saved above
    clash.tracking = "TRK-1"
    try:
        clash.save()
    except UniqueViolation as exc:
        print(f"unique across groups: {other} refused -> {exc}")

    _wait_replicated(cluster)
    victim = cluster.node_for_key(first.pk)
    print(f"killing master :{victim.port} (holds {first.pk}) ...")
    cluster.stop_node(victim)
    stopped = time.monotonic()
    promoted = cluster.wait_for_failover(victim)
    for _attempt in range(100):
        try:
            first = Parcel.query.get(code="p00001")
            assert first is not None  # saved above
            first.weight = 5000
            first.save()
            break
        except (redis.exceptions.ConnectionError, redis.exceptions.ClusterError,
                redis.exceptions.TimeoutError):
            time.sleep(0.1)
    print(f"replica :{promoted.port} promoted; writes resumed after "
          f"{time.monotonic() - stopped:.1f} s")
    print(f"after failover: count={Parcel.query.count()} (expected {n}); heaviest="
          f"{[p.code for p in Parcel.query.order_by('-weight').limit(1)]}")


def main() -> int:
    try:
        with EmbeddedCluster(masters=3, replicas_per_master=1) as cluster:
            run(cluster)
    except ClusterUnavailable as exc:
        print(f"cluster part skipped: this Redis server binary cannot run a cluster ({exc})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
