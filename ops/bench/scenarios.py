"""The standalone scenarios (1-9 and the scaling runs): ``Bench`` times raw redis-py,
Popoto and the installed peers on the same operations and collects the results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

import popoto

from .peers import load_peers
from .timing import PLAIN, POPOTO, RAW, Impl, Result, Sizes, Target, measure
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
        rows = Dataset(self.sizes.saves, prefix="w").rows
        peers = (self.peer("walrus"), self.peer("redis-om"))
        self.save_one_by_one(rows, peers)
        peer_objs = self.partial_update(rows, peers)
        self.delete_in_memory(rows, peers, peer_objs)
        self.clean()
        self.atomic_increment(rows)
        self.bulk_create()

    def save_one_by_one(self, rows: list[Row], peers: tuple[Any | None, ...]) -> None:
        """Scenario 1: save() of new objects, one at a time."""

        def fresh() -> None:
            self.clean()

        impls = [
            Impl(RAW, lambda: [self.raw.save(r) for r in rows], len(rows), fresh),
            Impl(PLAIN, lambda: [self.raw.save_plain(r) for r in rows], len(rows), fresh),
            Impl(POPOTO, lambda: [BenchItem(**r.kwargs()).save() for r in rows], len(rows),
                 fresh),
        ]
        for peer in peers:
            if peer is not None:
                impls.append(Impl(peer.name, lambda p=peer: [p.save(r) for r in rows],
                                  len(rows), fresh))
        self.record("1", "save() one object at a time", 0, Target("throughput", 0.70), impls,
                    notes=["raw = the same EVALSHA of the save script; raw-plain = "
                           "MULTI/HSET/SADD/ZADD/SADD/EXEC"])

    def partial_update(self, rows: list[Row], peers: tuple[Any | None, ...]
                       ) -> dict[str, Any]:
        """Scenario 8a: objects exist, one plain field changes; returns the peers' instances."""
        self.clean()
        self.raw.load(rows)
        objs = [BenchItem(**r.kwargs()) for r in rows]
        for o in objs:
            o.save()
        peer_objs = {}
        for peer in peers:
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
        for peer in peers:
            if peer is not None:
                impls.append(Impl(
                    peer.name, lambda p=peer: [p.update_qty(o, next(counter) % 1000)
                                               for o in peer_objs[p.name]], len(rows)))
        self.record("8a", "save(update_fields=['qty'])", len(rows), None, impls,
                    notes=["raw-plain = HSET of the one field; walrus has no partial update "
                           "(save() rewrites the object); redis-om update(qty=...)"])
        return peer_objs

    def delete_in_memory(self, rows: list[Row], peers: tuple[Any | None, ...],
                         peer_objs: dict[str, Any]) -> None:
        """Scenario 8b: objects exist (and are in memory) before each repetition."""
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
        for peer in peers:
            if peer is not None:
                impls.append(Impl(peer.name, lambda p=peer: [p.delete(o)
                                                             for o in peer_objs[p.name]],
                                  len(rows), restore_peer(peer)))
        self.record("8b", "delete()", len(rows), None, impls,
                    notes=["instances are in memory before the timer starts (not loaded); "
                           "raw = the same EVALSHA of the delete script; raw-plain = "
                           "MULTI/DEL/SREM/ZREM/SREM/EXEC"])

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
        self.all_objects(rows[:s.all_size], walrus)
        self.raw.load(rows[s.all_size:])
        if walrus is not None:
            walrus.load(rows[s.all_size:])
        if om is not None:
            om.load(rows[:s.gets])
        self.get_by_key(rows, walrus, om)
        self.score_range_query(len(rows), walrus)
        self.top_query(len(rows), walrus)
        self.equality_query(data, walrus)
        self.count_query(len(rows), walrus)
        self.clean()

    def all_objects(self, first: list[Row], walrus: Any | None) -> None:
        """Scenario 7a: all() of the first objects, the only ones stored so far."""
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

    def get_by_key(self, rows: list[Row], walrus: Any | None, om: Any | None) -> None:
        """Scenario 3: get() by key."""
        s = self.sizes
        n = len(rows)
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

    def score_range_query(self, n: int, walrus: Any | None) -> None:
        """Scenario 4: filter(score__between=...)."""
        s = self.sizes
        pdiv = s.peer_divisor
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

    def top_query(self, n: int, walrus: Any | None) -> None:
        """Scenario 5: filter(score__gte=...).order_by('-score').limit(10)."""
        s = self.sizes
        pdiv = s.peer_divisor
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

    def equality_query(self, data: Dataset, walrus: Any | None) -> None:
        """Scenario 6: filter(color=value) on the indexed field."""
        s = self.sizes
        rows = data.rows
        n = len(rows)
        pdiv = s.peer_divisor
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

    def count_query(self, n: int, walrus: Any | None) -> None:
        """Scenario 7b: count()."""
        s = self.sizes
        impls = [Impl(RAW, lambda: [self.raw.count() for _ in range(s.counts)], s.counts),
                 Impl(POPOTO, lambda: [BenchItem.query.count() for _ in range(s.counts)],
                      s.counts)]
        if walrus is not None:
            impls.append(Impl(walrus.name,
                              lambda: [walrus.count() for _ in range(s.counts)], s.counts))
        self.record("7b", f"count() of {n}", n, Target("time", 1.2), impls,
                    notes=["raw = SCARD of the class set"])

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

