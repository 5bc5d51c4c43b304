"""Run the benchmark scenarios side by side and write ``bench/results.json``.

Every scenario times the same operation done by raw redis-py (the floor),
by Popoto and, where they support it, by walrus and redis-om, interleaved
within each repetition; medians of the repetitions are compared. The Redis
Cluster scenarios (``ops/bench/cluster.py``) run after them unless ``--no-cluster``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis

import popoto

from .cluster import markdown as cluster_markdown
from .cluster import run_cluster
from .peers import load_peers
from .workload import (
    CLASS_SET,
    COLOR_PREFIX,
    MODEL,
    POPOTO_PATTERNS,
    SCORE_KEY,
    BenchItem,
    Dataset,
    Raw,
    Row,
    delete_namespace,
    read_all,
)

RAW, PLAIN, POPOTO = "raw", "raw-plain", "popoto"


@dataclass(frozen=True)
class Sizes:
    """Object and operation counts of one run."""

    saves: int = 2000
    bulk: tuple[int, ...] = (10_000, 100_000)
    gets: int = 2000
    stored: int = 100_000
    range_size: int = 1000
    range_queries: int = 20
    top_queries: int = 500
    color_queries: int = 20
    all_size: int = 5000
    counts: int = 2000
    memory: int = 10_000
    scale: tuple[int, ...] = (1_000, 100_000)
    reps: int = 7
    peer_divisor: int = 10  # peers run 1/10 of the ops in the slow read scenarios
    cluster_bulk: int = 10_000
    cluster_stored: int = 10_000
    cluster_queries: int = 200


QUICK = Sizes(saves=30, bulk=(300,), gets=30, stored=1500, range_size=100, range_queries=2,
              top_queries=10, color_queries=2, all_size=500, counts=50, memory=300,
              scale=(200, 1500), reps=2, peer_divisor=2, cluster_bulk=200, cluster_stored=600,
              cluster_queries=5)


@dataclass(frozen=True)
class Target:
    metric: str  # "throughput": raw_time/popoto_time >= limit; "time": popoto/raw <= limit
    limit: float

    def met(self, time_ratio: float) -> bool:
        if self.metric == "throughput":
            return 1 / time_ratio >= self.limit
        return time_ratio <= self.limit

    def text(self) -> str:
        if self.metric == "throughput":
            return f"throughput >= {self.limit:.2f}x raw"
        return f"time <= {self.limit:g}x raw"


@dataclass
class Impl:
    name: str
    run: Callable[[], Any]
    ops: int
    setup: Callable[[], Any] | None = None


@dataclass
class Result:
    scenario: str
    title: str
    stored: int
    target: Target | None
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def per_op(self, impl: str) -> float | None:
        t = self.timings.get(impl)
        return None if t is None else t["per_op_us"]

    @property
    def time_ratio(self) -> float | None:
        """Median over repetitions of popoto/raw, each pair timed back to back.

        The round trip of this shared machine drifts by tens of percent within a
        minute; a ratio of two medians taken at different moments carries that drift,
        a median of paired ratios cancels most of it.
        """
        raw, pop = self.timings.get(RAW), self.timings.get(POPOTO)
        if raw is None or pop is None:
            return None
        pairs = [(p / pop["ops"]) / (r / raw["ops"])
                 for r, p in zip(raw["samples_s"], pop["samples_s"])]
        return statistics.median(pairs)

    def as_dict(self) -> dict[str, Any]:
        ratio = self.time_ratio
        plain, pop = self.per_op(PLAIN), self.per_op(POPOTO)
        peers = {n: t["per_op_us"] for n, t in self.timings.items()
                 if n not in (RAW, PLAIN, POPOTO)}
        return {
            "scenario": self.scenario,
            "title": self.title,
            "stored_objects": self.stored,
            "timings": self.timings,
            "ratio_popoto_over_raw_time": ratio,
            "ratio_of_medians": None if not self.per_op(RAW) or pop is None
            else pop / self.per_op(RAW),
            "ratio_popoto_over_raw_throughput": None if not ratio else 1 / ratio,
            "ratio_popoto_over_plain_time": None if not plain or pop is None else pop / plain,
            "target": None if self.target is None else self.target.text(),
            "target_met": None if self.target is None or ratio is None
            else self.target.met(ratio),
            "faster_than_peers": None if not peers or pop is None
            else all(pop < v for v in peers.values()),
            "notes": self.notes,
        }


def measure(impls: list[Impl], reps: int) -> dict[str, dict[str, Any]]:
    """Run every impl ``reps`` times, interleaved (order flipped every repetition); medians."""
    # raw and popoto always run back to back (their ratio is taken per repetition)
    impls = sorted(impls, key=lambda i: {RAW: 0, POPOTO: 1}.get(i.name, 2))
    samples: dict[str, list[float]] = {i.name: [] for i in impls}
    for rep in range(reps):
        for impl in impls if rep % 2 == 0 else impls[::-1]:  # no side always goes first
            if impl.setup is not None:
                impl.setup()
            # the harness's own data (up to 1M rows) must not make the timed code's garbage
            # collections slower: freeze what exists, so only objects the run makes are scanned
            gc.collect()
            gc.freeze()
            try:
                start = time.perf_counter()
                impl.run()
                samples[impl.name].append(time.perf_counter() - start)
            finally:
                gc.unfreeze()
    out = {}
    for impl in impls:
        med = statistics.median(samples[impl.name])
        out[impl.name] = {"ops": impl.ops, "median_s": med, "per_op_us": med / impl.ops * 1e6,
                          "samples_s": samples[impl.name]}
    return out


class Bench:
    def __init__(self, url: str, sizes: Sizes, peers: bool, log: Callable[[str], None]) -> None:
        self.url = url
        self.sizes = sizes
        self.log = log
        popoto.configure(url=url)
        self.client = redis.Redis.from_url(url)
        self.raw = Raw(self.client)
        self.peers, self.peer_notes = load_peers(url, peers)
        self.results: list[Result] = []
        self.skipped: list[dict[str, str]] = []
        self.memory: dict[str, Any] = {}

    # --- helpers -------------------------------------------------------
    def clean(self) -> None:
        delete_namespace(self.client, POPOTO_PATTERNS)
        for peer in self.peers:
            peer.clear()

    def peer(self, name: str) -> Any | None:
        return next((p for p in self.peers if p.name == name), None)

    def record(self, scenario: str, title: str, stored: int, target: Target | None,
               impls: list[Impl], reps: int | None = None, notes: list[str] | None = None
               ) -> Result:
        self.log(f"  {scenario}: {title} ...")
        res = Result(scenario, title, stored, target, measure(impls, reps or self.sizes.reps),
                     list(notes or []))
        self.results.append(res)
        ratio = res.time_ratio
        shown = ", ".join(f"{k} {v['per_op_us']:.1f}us" for k, v in res.timings.items())
        self.log(f"    {shown}" + (f"  (popoto/raw {ratio:.2f})" if ratio else ""))
        return res

    def skip(self, scenario: str, reason: str) -> None:
        self.log(f"  {scenario}: SKIPPED - {reason}")
        self.skipped.append({"scenario": scenario, "reason": reason})

    # --- scenarios -----------------------------------------------------
    def run(self, scale: bool, million: bool) -> None:
        self.clean()
        try:
            self.log("writes")
            self.writes()
            self.log("reads")
            self.reads()
            self.log("memory")
            self.memory_usage()
            if scale:
                self.log("scaling")
                self.scaling(million)
        finally:
            self.clean()

    def writes(self) -> None:
        s = self.sizes
        rows = Dataset(s.saves, prefix="w").rows
        walrus, om = self.peer("walrus"), self.peer("redis-om")

        def fresh() -> None:
            self.clean()

        impls = [
            Impl(RAW, lambda: [self.raw.save(r) for r in rows], len(rows), fresh),
            Impl(PLAIN, lambda: [self.raw.save_plain(r) for r in rows], len(rows), fresh),
            Impl(POPOTO, lambda: [BenchItem(**r.kwargs()).save() for r in rows], len(rows),
                 fresh),
        ]
        for peer in (walrus, om):
            if peer is not None:
                impls.append(Impl(peer.name, lambda p=peer: [p.save(r) for r in rows],
                                  len(rows), fresh))
        self.record("1", "save() one object at a time", 0, Target("throughput", 0.70), impls,
                    notes=["raw = the same EVALSHA of the save script; raw-plain = "
                           "MULTI/HSET/SADD/ZADD/SADD/EXEC"])

        # partial update: objects exist, one plain field changes
        self.clean()
        self.raw.load(rows)
        objs = [BenchItem(**r.kwargs()) for r in rows]
        for o in objs:
            o.save()
        peer_objs = {}
        for peer in (walrus, om):
            if peer is not None:
                for r in rows:
                    peer.save(r)
                peer_objs[peer.name] = peer.instances(rows)
        counter = iter(range(10**9))

        def bump(o: Any) -> None:
            o.qty = next(counter) % 1000
            o.save(update_fields=["qty"])

        impls = [
            Impl(RAW, lambda: [self.raw.update_qty(r, next(counter) % 1000) for r in rows],
                 len(rows)),
            Impl(PLAIN, lambda: [self.raw.update_qty_plain(r, next(counter) % 1000)
                                 for r in rows], len(rows)),
            Impl(POPOTO, lambda: [bump(o) for o in objs], len(rows)),
        ]
        for peer in (walrus, om):
            if peer is not None:
                impls.append(Impl(
                    peer.name, lambda p=peer: [p.update_qty(o, next(counter) % 1000)
                                               for o in peer_objs[p.name]], len(rows)))
        self.record("8a", "save(update_fields=['qty'])", len(rows), None, impls,
                    notes=["raw-plain = HSET of the one field; walrus has no partial update "
                           "(save() rewrites the object); redis-om update(qty=...)"])

        # delete: objects exist (and are in memory) before each repetition
        victims: list[BenchItem] = []

        def restore() -> None:
            self.raw.load(rows)

        def restore_popoto() -> None:
            self.raw.load(rows)
            victims[:] = [BenchItem(**r.kwargs()) for r in rows]

        def restore_peer(peer: Any) -> Callable[[], None]:
            def setup() -> None:
                peer.clear()
                peer.load(rows)
                peer_objs[peer.name] = peer.instances(rows)
            return setup

        impls = [
            Impl(RAW, lambda: [self.raw.delete(r) for r in rows], len(rows), restore),
            Impl(PLAIN, lambda: [self.raw.delete_plain(r) for r in rows], len(rows), restore),
            Impl(POPOTO, lambda: [o.delete() for o in victims], len(rows), restore_popoto),
        ]
        for peer in (walrus, om):
            if peer is not None:
                impls.append(Impl(peer.name, lambda p=peer: [p.delete(o)
                                                             for o in peer_objs[p.name]],
                                  len(rows), restore_peer(peer)))
        self.record("8b", "delete()", len(rows), None, impls,
                    notes=["instances are in memory before the timer starts (not loaded); "
                           "raw = the same EVALSHA of the delete script; raw-plain = "
                           "MULTI/DEL/SREM/ZREM/SREM/EXEC"])
        self.clean()
        self.atomic_increment(rows)
        self.bulk_create()

    def atomic_increment(self, rows: list[Row]) -> None:
        if not hasattr(BenchItem, "atomic_increment"):
            for name in ("8c", "8d"):
                self.skip(name, "BenchItem.atomic_increment is not implemented yet "
                                "(popoto/models/bulk.py)")
            return
        walrus = self.peer("walrus")
        self.clean()
        self.raw.load(rows)
        objs = [BenchItem(**r.kwargs()) for r in rows]
        for o in objs:
            o.save()
        wobjs = []
        if walrus is not None:
            walrus.load(rows)
            wobjs = walrus.instances(rows)
        for scenario, name, kind, delta, zkey in (("8c", "qty", "i", 1, ""),
                                                  ("8d", "score", "f", 0.5, SCORE_KEY)):
            text = repr(delta) if isinstance(delta, float) else str(delta)
            impls = [
                Impl(RAW, lambda n=name, k=kind, t=text, z=zkey: [
                    self.raw.increment(r, n, k, t, z) for r in rows], len(rows)),
                Impl(POPOTO, lambda n=name, d=delta: [o.atomic_increment(n, d) for o in objs],
                     len(rows)),
            ]
            if walrus is not None:
                impls.append(Impl(walrus.name, lambda n=name, d=delta: [
                    walrus.increment(o, n, d) for o in wobjs], len(rows)))
            note = ("moves the sorted-set entry in the same script" if zkey
                    else "plain int field")
            self.record(scenario, f"atomic_increment('{name}', {delta!r})", len(rows), None,
                        impls, notes=[f"raw = the same EVALSHA of the increment script; {note}; "
                                      "walrus incr() = HINCRBY(FLOAT) plus index "
                                      "remove/re-add, not atomic"])
        self.clean()

    def bulk_create(self) -> None:
        if not hasattr(BenchItem, "bulk_create"):
            for n in self.sizes.bulk:
                self.skip(f"2/{n}", "BenchItem.bulk_create is not implemented yet "
                                    "(popoto/models/bulk.py)")
            return
        om = self.peer("redis-om")
        for n in self.sizes.bulk:
            rows = Dataset(n, prefix="b").rows
            impls = [
                Impl(RAW, lambda rs=rows: self.raw.bulk_create(rs), n, self.clean),
                Impl(PLAIN, lambda rs=rows: self.raw.bulk_create_plain(rs), n, self.clean),
                Impl(POPOTO, lambda rs=rows: BenchItem.bulk_create(
                    [BenchItem(**r.kwargs()) for r in rs]), n, self.clean),
            ]
            if om is not None:
                impls.append(Impl(om.name, lambda rs=rows: om.bulk_create(rs), n, self.clean))
            self.record(f"2/{n}", f"bulk_create of {n}", 0, Target("throughput", 0.60), impls,
                        reps=min(self.sizes.reps, 3),
                        notes=["3 repetitions; 1,000 create-only save-script calls per "
                               "pipeline; raw = the same EVALSHAs; raw-plain = "
                               "HSET/SADD/ZADD/SADD per row pipelined; "
                               "redis-om add() = one HSET per object in one pipeline"])
        self.clean()

    def reads(self) -> None:
        s = self.sizes
        data = Dataset(s.stored)
        rows = data.rows
        walrus, om = self.peer("walrus"), self.peer("redis-om")
        pdiv = s.peer_divisor
        first = rows[:s.all_size]
        self.raw.load(first)
        if walrus is not None:
            walrus.load(first)

        def popoto_all() -> list[Any]:
            return [read_all(o) for o in BenchItem.query.all()]

        impls = [Impl(RAW, self.raw.all, 1), Impl(POPOTO, popoto_all, 1)]
        if walrus is not None:
            impls.append(Impl(walrus.name, walrus.all, 1))
        self.record("7a", f"all() of {len(first)}", len(first), Target("time", 1.5), impls,
                    notes=["raw = SMEMBERS + pipelined HGETALL (1,000 per round trip); "
                           "every field of every object is read"])

        self.raw.load(rows[s.all_size:])
        if walrus is not None:
            walrus.load(rows[s.all_size:])
        if om is not None:
            om.load(rows[:s.gets])
        n = len(rows)

        # get by key
        step = max(1, n // s.gets)
        get_rows = rows[::step][:s.gets]

        def popoto_get() -> None:
            get = BenchItem.query.get
            for r in get_rows:
                read_all(get(sku=r.sku))

        impls = [Impl(RAW, lambda: [self.raw.get(r) for r in get_rows], len(get_rows)),
                 Impl(POPOTO, popoto_get, len(get_rows))]
        if om is not None:
            om_rows = rows[:s.gets]
            impls.append(Impl(om.name, lambda: [om.get(r) for r in om_rows], len(om_rows)))
        if walrus is not None:
            impls.append(Impl(walrus.name, lambda: [walrus.get(r) for r in get_rows],
                              len(get_rows)))
        self.record("3", "get() by key", n, Target("throughput", 0.70), impls,
                    notes=["every field of the object is read; raw = HGETALL + msgpack "
                           "decode of the seven fields"])

        # score range
        width = s.range_size
        lows = [float((i * 7919) % max(1, n - width)) for i in range(s.range_queries)]

        def pop_range(qs: list[float]) -> None:
            for lo in qs:
                found = [read_all(o) for o in
                         BenchItem.query.filter(score__between=(lo, lo + width - 1))]
                assert len(found) == width

        impls = [
            Impl(RAW, lambda: [self.raw.score_range(lo, lo + width - 1) for lo in lows],
                 len(lows)),
            Impl(POPOTO, lambda: pop_range(lows), len(lows)),
        ]
        if walrus is not None:
            wl = lows[:max(1, len(lows) // pdiv)]
            impls.append(Impl(walrus.name,
                              lambda: [walrus.score_range(lo, lo + width - 1) for lo in wl],
                              len(wl)))
        self.record("4", f"filter(score__between=...) returning {width} of {n}", n,
                    Target("time", 1.5), impls,
                    notes=["one op = one query, all fields of all results read; raw = "
                           "ZRANGEBYSCORE + pipelined HGETALL"])

        # top 10
        tops = [float((i * 104729) % max(1, n // 2)) for i in range(s.top_queries)]

        def pop_top(qs: list[float]) -> None:
            for lo in qs:
                [read_all(o) for o in BenchItem.query.filter(score__gte=lo)
                 .order_by("-score").limit(10)]

        impls = [Impl(RAW, lambda: [self.raw.top(lo, 10) for lo in tops], len(tops)),
                 Impl(POPOTO, lambda: pop_top(tops), len(tops))]
        if walrus is not None:
            wt = tops[:max(1, min(5, len(tops) // pdiv))]
            impls.append(Impl(walrus.name, lambda: [walrus.top(lo, 10) for lo in wt],
                              len(wt)))
        self.record("5", f"filter(score__gte=...).order_by('-score').limit(10) of {n}", n,
                    Target("time", 2.0), impls,
                    notes=["raw = ZREVRANGEBYSCORE LIMIT 0 10 + pipelined HGETALL; walrus "
                           "orders with SORT BY over the whole match"])

        # indexed equality
        colors = [f"c{i % data.n_colors}" for i in range(s.color_queries)]

        def pop_color(cs: list[str]) -> None:
            for c in cs:
                [read_all(o) for o in BenchItem.query.filter(color=c)]

        impls = [Impl(RAW, lambda: [self.raw.by_color(c) for c in colors], len(colors)),
                 Impl(POPOTO, lambda: pop_color(colors), len(colors))]
        if walrus is not None:
            wc = colors[:max(1, len(colors) // pdiv)]
            impls.append(Impl(walrus.name, lambda: [walrus.by_color(c) for c in wc], len(wc)))
        per_color = sum(1 for r in rows if r.color == "c0")
        self.record("6", f"filter(color=value) returning {per_color} of {n}", n, None, impls,
                    notes=["raw = SMEMBERS + pipelined HGETALL"])

        # count
        impls = [Impl(RAW, lambda: [self.raw.count() for _ in range(s.counts)], s.counts),
                 Impl(POPOTO, lambda: [BenchItem.query.count() for _ in range(s.counts)],
                      s.counts)]
        if walrus is not None:
            impls.append(Impl(walrus.name,
                              lambda: [walrus.count() for _ in range(s.counts)], s.counts))
        self.record("7b", f"count() of {n}", n, Target("time", 1.2), impls,
                    notes=["raw = SCARD of the class set"])
        self.clean()

    # --- memory --------------------------------------------------------
    def _usage(self, client: redis.Redis, pattern: str) -> dict[str, int]:
        keys = list(client.scan_iter(match=pattern, count=2000))
        pipe = client.pipeline(transaction=False)
        for k in keys:
            pipe.type(k)
            pipe.memory_usage(k, samples=0)
        replies = pipe.execute()
        out = {"hash_bytes": 0, "index_bytes": 0, "hashes": 0, "index_keys": 0}
        for kind, used in zip(replies[0::2], replies[1::2]):
            if kind in (b"hash", "hash"):
                out["hash_bytes"] += used or 0
                out["hashes"] += 1
            else:
                out["index_bytes"] += used or 0
                out["index_keys"] += 1
        return out

    def memory_usage(self) -> None:
        n = self.sizes.memory
        rows = Dataset(n, prefix="m").rows
        layouts: dict[str, dict[str, Any]] = {}

        def summarise(name: str, client: redis.Redis, patterns: tuple[str, ...],
                      note: str) -> None:
            total = {"hash_bytes": 0, "index_bytes": 0, "hashes": 0, "index_keys": 0}
            for p in patterns:
                for k, v in self._usage(client, p).items():
                    total[k] += v
            total["objects"] = n
            total["bytes_per_object"] = (total["hash_bytes"] + total["index_bytes"]) / n
            total["hash_bytes_per_object"] = total["hash_bytes"] / n
            total["index_bytes_per_object"] = total["index_bytes"] / n
            total["layout"] = note
            layouts[name] = total

        pats = (f"{MODEL}:*", CLASS_SET, SCORE_KEY, COLOR_PREFIX + "*")
        self.clean()
        self.raw.load(rows)
        summarise(POPOTO, self.client, pats, "hash (7 fields + 2 @idx owned-entry records), "
                  "class set, sorted set, equality sets")
        self.clean()
        self.raw.load_plain(rows)
        summarise(RAW, self.client, pats, "hash (7 fields), class set, sorted set, "
                  "equality sets")
        self.clean()
        for peer in self.peers:
            peer.load(rows)
            pattern = "benchwalrus:*" if peer.name == "walrus" else "benchom:*"
            summarise(peer.name, self.client, (pattern,), f"{peer.name} native layout")
            peer.clear()
        layouts[POPOTO]["ratio_popoto_over_raw"] = (
            layouts[POPOTO]["bytes_per_object"] / layouts[RAW]["bytes_per_object"])
        self.memory = layouts
        self.log("  9: memory per object: " + ", ".join(
            f"{k} {v['bytes_per_object']:.0f} B" for k, v in layouts.items()))

    # --- scaling -------------------------------------------------------
    def scaling(self, million: bool) -> None:
        s = self.sizes
        sizes = list(s.scale) + ([1_000_000] if million else [])
        self.clean()
        loaded = 0
        data = Dataset(max(sizes))
        new_rows = Dataset(s.saves, prefix="new", seed=11).rows
        for size in sizes:
            self.log(f"  stored objects: {size}")
            self.raw.load(data.rows[loaded:size], chunk=5000)
            loaded = size
            rows = data.rows[:size]

            def drop_new() -> None:
                self.raw.unload(new_rows)

            impls = [
                Impl(RAW, lambda: [self.raw.save(r) for r in new_rows], len(new_rows),
                     drop_new),
                Impl(POPOTO, lambda: [BenchItem(**r.kwargs()).save() for r in new_rows],
                     len(new_rows), drop_new),
            ]
            self.record(f"scale-1/{size}", "save() one object at a time", size,
                        Target("throughput", 0.70), impls)
            drop_new()
            step = max(1, size // s.gets)
            get_rows = rows[::step][:s.gets]

            def popoto_get(gr: list[Row] = get_rows) -> None:
                get = BenchItem.query.get
                for r in gr:
                    read_all(get(sku=r.sku))

            impls = [Impl(RAW, lambda gr=get_rows: [self.raw.get(r) for r in gr],
                          len(get_rows)),
                     Impl(POPOTO, popoto_get, len(get_rows))]
            self.record(f"scale-3/{size}", "get() by key", size, Target("throughput", 0.70),
                        impls)
            tops = [float((i * 104729) % max(1, size // 2)) for i in range(s.top_queries)]

            def pop_top(qs: list[float] = tops) -> None:
                for lo in qs:
                    [read_all(o) for o in BenchItem.query.filter(score__gte=lo)
                     .order_by("-score").limit(10)]

            impls = [Impl(RAW, lambda qs=tops: [self.raw.top(lo, 10) for lo in qs], len(tops)),
                     Impl(POPOTO, pop_top, len(tops))]
            self.record(f"scale-5/{size}", "filter(...).order_by('-score').limit(10)", size,
                        Target("time", 2.0), impls)


# --- environment, output ---------------------------------------------------
def environment(client: redis.Redis, sizes: Sizes, mode: str) -> dict[str, Any]:
    info = client.info("server")
    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:  # pragma: no cover - very old redis-py
        HIREDIS_AVAILABLE = False
    return {
        "redis_version": info.get("redis_version"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "redis_py": redis.__version__,
        "hiredis": bool(HIREDIS_AVAILABLE),
        "msgpack": ".".join(map(str, msgpack.version)),
        "popoto": getattr(popoto, "__version__", None) or _dist_version("popoto"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "mode": mode,
        "git": _git_state(),
        "repetitions": sizes.reps,
        "counts": {k: v for k, v in sizes.__dict__.items()},
    }


def _git_state() -> dict[str, Any] | None:
    """The commit measured and any uncommitted change to the library (None outside git)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "popoto"],
                               capture_output=True, text=True, check=True,
                               timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "uncommitted_popoto_changes": [d[3:] for d in dirty if d]}


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - metadata is informative only
        return None


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def markdown(results: list[dict[str, Any]], memory: dict[str, Any],
             skipped: list[dict[str, str]], env: dict[str, Any]) -> str:
    peers = sorted({n for r in results for n in r["timings"]} - {RAW, PLAIN, POPOTO})
    head = ["#", "scenario", "stored", "raw µs/op", "popoto µs/op", "popoto/raw time",
            "target", "met", "raw-plain µs/op", *[f"{p} µs/op" for p in peers]]
    lines = [
        f"Redis {env['redis_version']}, Python {env['python']}, redis-py {env['redis_py']}, "
        f"hiredis {'on' if env['hiredis'] else 'off'}, {env['cpus']} CPUs, "
        f"median of {env['repetitions']} repetitions ({env['mode']} run).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for r in results:
        t = r["timings"]
        met = r["target_met"]
        cells = [r["scenario"], r["title"], str(r["stored_objects"]),
                 _fmt(t.get(RAW, {}).get("per_op_us")), _fmt(t.get(POPOTO, {}).get("per_op_us")),
                 _fmt(r["ratio_popoto_over_raw_time"], ".2f"), r["target"] or "-",
                 "-" if met is None else ("yes" if met else "**no**"),
                 _fmt(t.get(PLAIN, {}).get("per_op_us")),
                 *[_fmt(t.get(p, {}).get("per_op_us")) for p in peers]]
        lines.append("| " + " | ".join(cells) + " |")
    for s in skipped:
        lines.append(f"| {s['scenario']} | skipped: {s['reason']} |" + " |" * (len(head) - 2))
    if memory:
        lines += ["", "| 9: memory per object | hash B | index B | total B |",
                  "|---|---|---|---|"]
        for name, m in memory.items():
            lines.append(f"| {name} | {m['hash_bytes_per_object']:.0f} | "
                         f"{m['index_bytes_per_object']:.0f} | {m['bytes_per_object']:.0f} |")
    return "\n".join(lines)


@contextmanager
def redis_url() -> Iterator[tuple[str, str]]:
    """REDIS_URL when set, otherwise a private embedded server for the run."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url, "REDIS_URL"
        return
    from popoto.testing.server import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server.url, "embedded"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts (smoke run)")
    parser.add_argument("--scale", action="store_true",
                        help="also run scenarios 1, 3, 5 at several stored sizes")
    parser.add_argument("--million", action="store_true", help="add 1M objects to --scale")
    parser.add_argument("--no-peers", action="store_true", help="skip walrus and redis-om")
    clusters = parser.add_mutually_exclusive_group()
    clusters.add_argument("--no-cluster", action="store_true",
                          help="skip the Redis Cluster scenarios (c1, c2)")
    clusters.add_argument("--cluster-only", action="store_true",
                          help="run only the Redis Cluster scenarios; their section replaces "
                               "the 'cluster' key of an existing --output file")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per scenario")
    parser.add_argument("--output", default="bench/results.json", help="JSON results path")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.reps:
        sizes = Sizes(**{**sizes.__dict__, "reps": args.reps})
    mode = "quick" if args.quick else "full"

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    doc: dict[str, Any] = {}
    if args.cluster_only and os.path.exists(args.output):
        with open(args.output) as fh:
            doc = json.load(fh)
    with redis_url() as (url, origin):
        if not args.cluster_only:
            bench = Bench(url, sizes, not args.no_peers, log)
            env = environment(bench.client, sizes, mode)
            env["server"] = origin
            for note in bench.peer_notes:
                log(f"peers: {note}")
            bench.run(args.scale or args.million, args.million)
            env["duration_s"] = round(time.time() - started, 1)
            doc = {"environment": env, "scenarios": [r.as_dict() for r in bench.results],
                   "memory": bench.memory, "skipped": bench.skipped,
                   "peer_notes": bench.peer_notes}
        if not args.no_cluster:
            log("cluster")
            section = run_cluster(url, sizes, log)
            if "environment" in section:
                section["environment"].update(mode=mode, repetitions=sizes.reps,
                                              git=_git_state())
            doc["cluster"] = section
    out_dir = os.path.dirname(args.output)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    with open(args.output, "w") as fh:
        json.dump(doc, fh, indent=1, default=str)
        fh.write("\n")
    if not args.cluster_only:
        print(markdown(doc["scenarios"], doc["memory"], doc["skipped"], doc["environment"]))
    if "cluster" in doc:
        print()
        print(cluster_markdown(doc["cluster"]))
    log(f"wrote {args.output} in {round(time.time() - started, 1)} s")
    return 0
