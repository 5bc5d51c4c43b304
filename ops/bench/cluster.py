"""Redis Cluster scenarios: the bench model sharded into 16 tag groups on a local
3-master cluster, against the standalone server the rest of the benchmark uses.

Three layouts of the same fields are timed side by side in every repetition:

* ``standalone``: ``BenchItem`` (unsharded) on the standalone server;
* ``standalone-sharded``: ``BenchShard`` (``BenchItem`` with ``Meta.shards = 16``) on
  the standalone server: the cluster's exact key layout, without the cluster;
* ``cluster``: ``BenchShard`` on the cluster (``popoto.configure(url, cluster=True)``).

Each layout has a raw redis-py floor doing the same Redis work (``ShardedRaw`` for the
sharded layouts, ``workload.Raw`` for the unsharded one). ``ShardedRaw`` shares no code
with the ORM but the text of the save script: it computes the tag groups itself.
``tests/ops/test_bench_smoke.py`` pins that it writes what Popoto writes and reads what
Popoto reads.
"""

from __future__ import annotations

import binascii
import os
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
from redis.cluster import RedisCluster

import popoto
from popoto.engine.scripts import SAVE
from popoto.redis_db import get_client

from .plain import Scripting
from .timing import Impl, measure, paired_ratio
from .workload import (
    POPOTO_PATTERNS,
    BenchItem,
    Dataset,
    Raw,
    Row,
    decode_row,
    delete_namespace,
    pack,
    read_all,
)

SHARDS = 16
SHARD_MODEL = "BenchShard"
N_SLOTS = 16384
NO_LEASE = 2**52  # the lease deadline of a save without unique claims (none to settle)
TOP = 20  # the page size of the sorted filter scenario
GETKEYS = "raw-getkeys"  # raw routed by redis-py's defaults: COMMAND GETKEYS per EVALSHA

STANDALONE, SHARDED, CLUSTER = "standalone", "standalone-sharded", "cluster"
LAYOUTS = (STANDALONE, SHARDED, CLUSTER)
SHARD_PATTERNS = tuple(p + "{" + SHARD_MODEL + "#*"
                       for p in ("", "$Class:", "$SortedF:", "$IndexF:", "$LexF:"))


class BenchShard(BenchItem):
    """``BenchItem``'s fields in 16 tag groups (the cluster layout, also on one server)."""

    class Meta:
        shards = SHARDS


def group_tags(model: str = SHARD_MODEL, n: int = SHARDS) -> list[str]:
    """The namespaces ``{Model#k}`` / ``{Model#k.j}`` of the ``n`` groups: group k gets the
    smallest salt j whose CRC16 slot lies in the k-th of ``n`` equal slot ranges."""
    out = []
    for k in range(n):
        low, high = k * N_SLOTS // n, (k + 1) * N_SLOTS // n
        candidate, salt = f"{model}#{k}", 0
        while not low <= binascii.crc_hqx(candidate.encode(), 0) % N_SLOTS < high:
            salt += 1
            candidate = f"{model}#{k}.{salt}"
        out.append("{" + candidate + "}")
    return out


class ShardedRaw:
    """redis-py doing Popoto's Redis work for ``BenchShard`` (16 tag groups).

    Works on a ``redis.Redis`` (standalone, same layout) and on a ``RedisCluster``: its
    pipelines route each command to the node of its key's slot, so one ``execute()``
    is one round trip per node.
    """

    def __init__(self, client: redis.Redis[bytes] | RedisCluster[bytes]) -> None:
        self.r = client
        # both have SCRIPT LOAD (a cluster loads it on every primary): see Scripting
        self.save_sha = cast(Scripting, client).script_load(SAVE.body)
        self.groups = group_tags()

    def ns(self, row: Row) -> str:
        return self.groups[zlib.crc32(row.sku.encode()) % len(self.groups)]

    def key(self, row: Row) -> str:
        return f"{self.ns(row)}:{row.sku}"

    def save_argv(self, row: Row) -> list[Any]:
        """KEYS + ARGV of the create-only save script call ``bulk_create`` sends."""
        ns = self.ns(row)
        key = f"{ns}:{row.sku}"
        zkey = f"$SortedF:{ns}:score"
        ckey = f"$IndexF:{ns}:color:{row.color}"
        lkey, rkey = f"$LexF:{ns}:color", f"$LexF:{ns}:color:r"
        return [
            7, key, f"$Class:{ns}", key, zkey, ckey, lkey, rkey,  # every key it touches
            f"NX{NO_LEASE}", "-", 0, 0, 2, "score", zkey, "color", f"$IndexF:{ns}:color", 0, 9,
            "sku", pack(row.sku), "score", pack(row.score), "color", pack(row.color),
            "name", pack(row.name), "qty", pack(row.qty), "price", pack(row.price),
            "created", pack(row.created),
            "@idx:score", pack([["z"]]),  # rows relative to the owner's record base
            "@idx:color", pack([["s", ":" + row.color]]),
            0, 2, "Z", zkey, key, repr(row.score), "S", ckey, key, "",
            2, 4, "ZADD", lkey, 0, row.color.encode(),  # the color's value registry
            4, "ZADD", rkey, 0, row.color[::-1].encode() + b"\xff" + row.color.encode(),
        ]

    def bulk_create(self, rows: list[Row], chunk: int = 1000) -> None:
        """``chunk`` create-only save-script calls per pipeline, errors collected not raised.

        On a cluster each call names its node (``target_nodes``, the node of KEYS[1]), so
        the pipeline carries the script calls and nothing else, as Popoto's does.
        """
        self._create(rows, chunk, routed=isinstance(self.r, RedisCluster))

    def bulk_create_getkeys(self, rows: list[Row], chunk: int = 1000) -> None:
        """:meth:`bulk_create` leaving the routing to redis-py (context, not a floor).

        ``pipe.execute_command("EVALSHA", ...)`` on a redis-py 8.1 ``ClusterPipeline``
        with its default command policies: it knows no routing policy for EVALSHA and
        asks a server ``COMMAND GETKEYS`` (one synchronous round trip) for every EVALSHA
        it sends. Popoto's cluster client routes script calls by their KEYS instead
        (``popoto.redis_db``); this is what it would cost without that.
        """
        self._create(rows, chunk, routed=False)

    def _create(self, rows: list[Row], chunk: int, routed: bool) -> None:
        sha = self.save_sha
        r = self.r
        node_of = r.get_node_from_key if routed and isinstance(r, RedisCluster) else None
        for start in range(0, len(rows), chunk):
            pipe = self.r.pipeline(transaction=False)
            execute_command = pipe.execute_command  # a cluster pipeline blocks .evalsha()
            for row in rows[start:start + chunk]:
                argv = self.save_argv(row)
                if node_of is None:
                    execute_command("EVALSHA", sha, *argv)
                else:
                    execute_command("EVALSHA", sha, *argv, target_nodes=node_of(argv[1]))
            pipe.execute(raise_on_error=False)

    def top(self, low: float, n: int) -> list[list[Any]]:
        """Every group's first ``n`` by score >= low (one pipeline), merged, then HGETALLs."""
        pipe = self.r.pipeline(transaction=False)
        for ns in self.groups:
            pipe.zrevrangebyscore(f"$SortedF:{ns}:score", "+inf", low, start=0, num=n,
                                  withscores=True)
        rows = [row for page in pipe.execute() for row in page]
        # the order one server gives: score, then the key without its tag
        rows.sort(key=lambda r: (r[1], r[0].split(b":", 1)[1]), reverse=True)
        pipe = self.r.pipeline(transaction=False)
        for member, _score in rows[:n]:
            pipe.hgetall(member)
        return [decode_row(reply) for reply in pipe.execute() if reply]


def _impl(layout: str, kind: str) -> str:
    return f"{layout}/{kind}"


RATIOS = (  # (name, numerator, denominator): per-op time ratios, > 1 = numerator slower
    ("popoto_cluster_over_standalone", _impl(CLUSTER, "popoto"), _impl(STANDALONE, "popoto")),
    ("popoto_cluster_over_standalone_sharded", _impl(CLUSTER, "popoto"),
     _impl(SHARDED, "popoto")),
    ("popoto_sharded_over_unsharded_standalone", _impl(SHARDED, "popoto"),
     _impl(STANDALONE, "popoto")),
    ("raw_cluster_over_standalone", _impl(CLUSTER, "raw"), _impl(STANDALONE, "raw")),
    ("raw_cluster_over_standalone_sharded", _impl(CLUSTER, "raw"), _impl(SHARDED, "raw")),
    ("popoto_over_raw_standalone", _impl(STANDALONE, "popoto"), _impl(STANDALONE, "raw")),
    ("popoto_over_raw_standalone_sharded", _impl(SHARDED, "popoto"), _impl(SHARDED, "raw")),
    ("popoto_over_raw_cluster", _impl(CLUSTER, "popoto"), _impl(CLUSTER, "raw")),
    ("raw_getkeys_over_raw_cluster", _impl(CLUSTER, GETKEYS), _impl(CLUSTER, "raw")),
)


class ClusterBench:
    """The cluster scenarios; ``popoto`` is switched between the two servers per impl
    (outside the timer) and left configured for the standalone server."""

    def __init__(self, standalone_url: str, cluster_url: str, sizes: Any,
                 log: Callable[[str], None]) -> None:
        self.standalone_url = standalone_url
        self.cluster_url = cluster_url
        self.sizes = sizes
        self.log = log
        self.standalone = redis.Redis.from_url(standalone_url)
        self.cluster: RedisCluster[bytes] = RedisCluster.from_url(cluster_url)
        self.raw = Raw(self.standalone)
        self.sraw = {SHARDED: ShardedRaw(self.standalone), CLUSTER: ShardedRaw(self.cluster)}
        self.scenarios: list[dict[str, Any]] = []
        self._on: str | None = None

    # --- helpers -------------------------------------------------------
    def use(self, layout: str) -> None:
        """Point Popoto at the server of ``layout``; its client is connected before return."""
        target = CLUSTER if layout == CLUSTER else STANDALONE
        if self._on != target:
            if target == CLUSTER:
                popoto.configure(url=self.cluster_url, cluster=True)
            else:
                popoto.configure(url=self.standalone_url)
            self._on = target
        client = get_client()
        if target == CLUSTER:  # open a connection to every node now, not inside the timer
            client.ping(target_nodes=RedisCluster.ALL_NODES)

    def clean(self) -> None:
        delete_namespace(self.standalone, SHARD_PATTERNS)
        delete_namespace(self.standalone, POPOTO_PATTERNS)
        delete_namespace(self.cluster, SHARD_PATTERNS)

    def model(self, layout: str) -> type[BenchItem]:
        return BenchItem if layout == STANDALONE else BenchShard

    def record(self, scenario: str, title: str, stored: int, impls: list[Any], reps: int,
               notes: list[str]) -> dict[str, Any]:
        self.log(f"  {scenario}: {title} ...")
        timings = measure(impls, reps)
        ratios = {name: ratio for name, a, b in RATIOS
                  if (ratio := paired_ratio(timings, a, b)) is not None}
        doc = {
            "scenario": scenario,
            "title": title,
            "stored_objects": stored,
            "timings": timings,
            "per_op_us": {k: v["per_op_us"] for k, v in timings.items()},
            "ops_per_s": {k: 1e6 / v["per_op_us"] for k, v in timings.items()},
            "ratios": ratios,
            "notes": notes,
        }
        self.scenarios.append(doc)
        self.log("    " + ", ".join(f"{k} {v['per_op_us']:.1f}us" for k, v in timings.items()))
        self.log("    " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
        return doc

    # --- scenarios -----------------------------------------------------
    def run(self) -> None:
        self.clean()
        try:
            self.bulk_create()
            self.sorted_filter()
        finally:
            self.clean()
            popoto.configure(url=self.standalone_url)
            self._on = None

    def bulk_create(self) -> None:
        n = self.sizes.cluster_bulk
        rows = Dataset(n, prefix="c").rows
        warm = Dataset(20, prefix="warm").rows

        def setup(layout: str) -> Callable[[], None]:
            def prepare() -> None:
                self.clean()
                self.use(layout)
            return prepare

        def pop(layout: str) -> Callable[[], list[BenchItem]]:
            model = self.model(layout)
            return lambda: model.bulk_create([model(**r.kwargs()) for r in rows])

        def raw(layout: str) -> Callable[[], None]:
            if layout == STANDALONE:
                return lambda: self.raw.bulk_create(rows)
            return lambda: self.sraw[layout].bulk_create(rows)

        impls = []
        for layout in LAYOUTS:
            self.use(layout)  # warm: scripts loaded, connections open
            model = self.model(layout)
            model.bulk_create([model(**r.kwargs()) for r in warm])
            impls.append(Impl(_impl(layout, "raw"), raw(layout), n, setup(layout)))
            impls.append(Impl(_impl(layout, "popoto"), pop(layout), n, setup(layout)))
        impls.append(Impl(_impl(CLUSTER, GETKEYS), lambda: self.sraw[CLUSTER].bulk_create_getkeys(
            rows), n, setup(CLUSTER)))
        self.record(f"c1/{n}", f"bulk_create of {n}", 0, impls, min(self.sizes.reps, 5), [
            "one op = one object; 1,000 create-only save-script calls per pipeline; "
            "raw = the same EVALSHAs (on the cluster: RedisCluster pipelines, each call "
            "with target_nodes = the node of its key); raw-getkeys (context) = the same "
            "calls routed by redis-py's default policies, which send COMMAND GETKEYS per "
            "EVALSHA"])

    def sorted_filter(self) -> None:
        s = self.sizes
        n = s.cluster_stored
        rows = Dataset(n).rows
        self.raw.bulk_create(rows)
        self.sraw[SHARDED].bulk_create(rows)
        self.sraw[CLUSTER].bulk_create(rows)
        lows = [float((i * 104729) % max(1, n // 2)) for i in range(s.cluster_queries)]

        def pop(layout: str) -> Callable[[], None]:
            model = self.model(layout)

            def queries() -> None:
                for lo in lows:
                    found = [read_all(o) for o in
                             model.query.filter(score__gte=lo).order_by("-score").limit(TOP)]
                    assert len(found) == TOP
            return queries

        def warm(layout: str) -> Callable[[], None]:
            model = self.model(layout)

            def prepare() -> None:
                self.use(layout)
                list(model.query.filter(score__gte=0).order_by("-score").limit(TOP))
            return prepare

        def raw(layout: str) -> Callable[[], list[list[list[Any]]]]:
            if layout == STANDALONE:
                return lambda: [self.raw.top(lo, TOP) for lo in lows]
            return lambda: [self.sraw[layout].top(lo, TOP) for lo in lows]

        impls = []
        for layout in LAYOUTS:
            impls.append(Impl(_impl(layout, "raw"), raw(layout), len(lows)))
            impls.append(Impl(_impl(layout, "popoto"), pop(layout), len(lows), warm(layout)))
        self.record(f"c2/{n}",
                    f"filter(score__gte=...).order_by('-score').limit({TOP}) of {n}", n,
                    impls, s.reps, [
                        "one op = one query, all fields of the 20 results read; raw "
                        "(unsharded) = ZREVRANGEBYSCORE LIMIT 0 20 + pipelined HGETALL; raw "
                        "(sharded) = one pipeline of 16 ZREVRANGEBYSCORE LIMIT 0 20 "
                        "WITHSCORES (one per group), merge, one pipeline of 20 HGETALL"])


def environment(client: RedisCluster[bytes], origin: str) -> dict[str, Any]:
    nodes = client.get_primaries()
    info = client.info("server", target_nodes=nodes[0])
    return {
        "server": origin,
        "masters": len(nodes),
        "redis_version": info.get("redis_version"),
        "shards": SHARDS,
        "model": SHARD_MODEL,
    }


@contextmanager
def cluster_url(masters: int = 3) -> Iterator[tuple[str, str]]:
    """REDIS_CLUSTER_URL when set, otherwise a private local cluster of ``masters`` masters."""
    url = os.environ.get("REDIS_CLUSTER_URL")
    if url:
        yield url, "REDIS_CLUSTER_URL"
        return
    from popoto.testing.cluster import EmbeddedCluster

    with EmbeddedCluster(masters=masters) as cluster:
        yield cluster.url, "embedded"


def run_cluster(standalone_url: str, sizes: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """The cluster section of results.json (``{"skipped": reason}`` without a cluster)."""
    from popoto.testing.cluster import ClusterUnavailable

    started = time.time()
    try:
        with cluster_url() as (url, origin):
            bench = ClusterBench(standalone_url, url, sizes, log)
            env = environment(bench.cluster, origin)
            env["startup_s"] = round(time.time() - started, 1)
            try:
                bench.run()
            finally:
                bench.cluster.close()
                bench.standalone.close()
    except ClusterUnavailable as exc:
        log(f"  cluster: SKIPPED - {exc.reason}")
        return {"skipped": exc.reason}
    env["duration_s"] = round(time.time() - started, 1)
    return {"environment": env, "scenarios": bench.scenarios}


def markdown(section: dict[str, Any]) -> str:
    """The cluster table printed after the main one."""
    if "scenarios" not in section:
        return f"Cluster scenarios skipped: {section.get('skipped')}"
    env = section["environment"]
    lines = [f"Cluster: {env['masters']} masters ({env['server']}), Redis "
             f"{env['redis_version']}, {SHARD_MODEL} with Meta.shards = {env['shards']}.", ""]
    columns = [_impl(lay, k) for lay in LAYOUTS for k in ("raw", "popoto")]
    columns.insert(5, _impl(CLUSTER, GETKEYS))
    head = ["#", "scenario", *columns, "cluster/standalone (popoto)",
            "cluster/standalone-sharded (popoto)", "popoto/raw (cluster)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for sc in section["scenarios"]:
        bulk = sc["scenario"].startswith("c1")
        cells = [sc["scenario"], sc["title"]]
        for column in columns:
            v = sc["per_op_us"].get(column)
            cells.append("-" if v is None else
                         (f"{1e6 / v:,.0f} obj/s" if bulk else f"{v:.0f} µs"))
        r = sc["ratios"]
        for name in ("popoto_cluster_over_standalone", "popoto_cluster_over_standalone_sharded",
                     "popoto_over_raw_cluster"):
            cells.append("-" if r.get(name) is None else f"{r[name]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
