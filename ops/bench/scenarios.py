# mypy: disable-error-code="func-returns-value"
# (the timed lambdas run None-returning calls inside list comprehensions: the list is built
# and dropped on purpose, the same way for every impl, as part of the timed work)
"""The standalone scenarios (1-9 and the scaling runs): ``Bench`` times the plain floor,
the same-script floor, Popoto and the installed peers on the same operations.

Popoto and the same-script floor (``workload.Raw``) use Popoto's layout (``BenchItem``);
the plain floor (``plain.Plain``) keeps its own copy of the data in the plain layout
(``PlainItem``: the hash holds the seven fields and nothing else), so neither floor
reads the other's bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

import popoto

from . import popoto1
from .peers import load_peers
from .plain import memory_usage, range_lows, top_lows
from .timing import PLAIN, POPOTO, SCRIPT, Impl, Result, Sizes, Target, measure
from .workload import (
    MODEL,
    PLAIN_LAYOUT,
    POPOTO_PATTERNS,
    BenchItem,
    Dataset,
    Plain,
    Raw,
    Row,
    delete_namespace,
    read_all,
)

# the targets of issue 13: Popoto's throughput / the plain floor's (paired median)
TARGETS = {
    "1": Target(0.85), "3": Target(0.90), "2": Target(0.75), "4a": Target(1.0),
    "4c": Target(1.0), "5": Target(1.0), "7a": Target(0.85), "7b": Target(0.95),
}
MEMORY_TARGET = 1.15  # Popoto's bytes per object / the plain layout's, at most

OM_NO_INDEX = ("redis-om HashModel has no secondary index without the RediSearch module "
               "(plain Redis here)")
WALRUS_NO_BULK = "walrus has no bulk create"
WALRUS_NO_FILTERED_COUNT = "walrus counts only a whole model (Model.count())"
WALRUS_NO_INCREMENT = "walrus incr() is not atomic with its index; not comparable"
P1_NOT_AT_SCALE = ("not run at the scaling sizes (loading 1M objects through popoto 1.10.1's "
                   "bulk_create takes about 8 minutes here)")


class Bench:
    def __init__(self, url: str, sizes: Sizes, peers: bool, log: Callable[[str], None],
                 popoto1_python: str | None = None) -> None:
        self.url = url
        self.sizes = sizes
        self.log = log
        popoto.configure(url=url)
        self.client = redis.Redis.from_url(url)
        self.raw = Raw(self.client)  # the same-script floor, over Popoto's layout
        self.plain = Plain(self.client, PLAIN_LAYOUT)  # the plain floor, its own data
        self.peers, self.peer_status = load_peers(url, peers)
        if not peers:
            self.peer_status[popoto1.IMPL] = {"status": "disabled", "reason": "--no-peers"}
        self.popoto1_python = popoto1_python if peers else None
        self.results: list[Result] = []
        self.skipped: list[dict[str, str]] = []
        self.memory: dict[str, Any] = {}

    # --- helpers -------------------------------------------------------
    def clean(self) -> None:
        delete_namespace(self.client, POPOTO_PATTERNS)
        delete_namespace(self.client, PLAIN_LAYOUT.patterns)
        for peer in self.peers:
            peer.clear()

    def load(self, rows: list[Row], chunk: int = 2000) -> None:
        """Store ``rows`` in Popoto's layout and in the plain floor's (setup)."""
        self.raw.load(rows, chunk)
        self.plain.load(rows, chunk)

    def peer(self, name: str) -> Any | None:
        return next((p for p in self.peers if p.name == name), None)

    def record(self, scenario: str, title: str, stored: int, impls: list[Impl],
               reps: int | None = None, notes: list[str] | None = None,
               unsupported: dict[str, str] | None = None) -> Result | None:
        self.log(f"  {scenario}: {title} ...")
        try:
            timings = measure(impls, reps or self.sizes.reps)
        except redis.RedisError as exc:  # e.g. an O(index) query past the socket timeout
            self.skip(scenario, f"FAILED: {type(exc).__name__}: {exc}")
            return None
        res = Result(scenario, title, stored, target_of(scenario), timings, list(notes or []))
        res.unsupported = {k: v for k, v in (unsupported or {}).items()
                           if self.peer(k) is not None or k == popoto1.IMPL}
        self.results.append(res)
        shown = ", ".join(f"{k} {v['per_op_us']:.1f}us" for k, v in res.timings.items())
        ratio, overhead = res.ratio_vs_plain, res.popoto_overhead
        self.log(f"    {shown}" + (f"  (popoto/plain {ratio:.2f}" if ratio else "")
                 + (f", popoto/same-script {overhead:.2f})" if overhead else ")"))
        return res

    def skip(self, scenario: str, reason: str) -> None:
        self.log(f"  {scenario}: SKIPPED - {reason}")
        self.skipped.append({"scenario": scenario, "reason": reason})

    def floors(self, fn: Callable[[Plain], Callable[[], Any]], ops: int,
               setup: Callable[[Plain], Callable[[], Any] | None] | None = None
               ) -> list[Impl]:
        """The plain and same-script impls of one operation written once for both."""
        return [Impl(name, fn(floor), ops, None if setup is None else setup(floor))
                for name, floor in ((PLAIN, self.plain), (SCRIPT, self.raw))]

    # --- scenarios -----------------------------------------------------
    def run(self, scale: tuple[int, ...] = (), range_scale: tuple[int, ...] = ()) -> None:
        self.clean()
        try:
            self.log("writes")
            self.writes()
            self.log("reads")
            self.reads()
            self.log("memory")
            self.memory_usage()
            if scale or range_scale:
                self.log("scaling")
                self.scaling(scale, range_scale)
        finally:
            self.clean()
        self.run_popoto1()

    def run_popoto1(self) -> None:
        """The popoto 1.10.1 peer, in its own interpreter (see ``popoto1``)."""
        if self.popoto1_python is None:
            return
        self.log(f"{popoto1.IMPL} (subprocess: {self.popoto1_python})")
        reply, status = popoto1.run_child(self.popoto1_python, self.url, self.sizes, self.log)
        self.peer_status[popoto1.IMPL] = status
        if reply is None:
            return
        unmatched = popoto1.merge(self.results, reply)
        if unmatched:
            status["unmatched_scenarios"] = unmatched
        if reply.get("memory"):
            self.memory[popoto1.IMPL] = reply["memory"]
        for res in self.results:
            if res.scenario.startswith("scale"):
                res.unsupported[popoto1.IMPL] = P1_NOT_AT_SCALE
        for res in self.results:
            r = res.ratio(popoto1.IMPL)
            if r is not None:
                self.log(f"  {res.scenario}: {popoto1.IMPL} / its plain floor {r:.2f}")

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
        n = len(rows)
        impls = self.floors(lambda f: lambda: [f.save(r) for r in rows], n,
                            lambda f: self.clean)
        impls.append(Impl(POPOTO, lambda: [BenchItem(**r.kwargs()).save() for r in rows], n,
                          self.clean))
        # the timed callables binding a loop value are defs with a default argument, not
        # lambdas with one (mypy cannot infer their type)
        for peer in peers:
            if peer is not None:
                def peer_saves(p: Any = peer) -> list[Any]:
                    return [p.save(r) for r in rows]

                impls.append(Impl(peer.name, peer_saves, n, self.clean))
        self.record("1", "save() one object at a time", 0, impls,
                    notes=["plain = MULTI/HSET/SADD/ZADD/SADD/EXEC; same-script = the "
                           "EVALSHA of Popoto's save script; redis-om save() = one HSET, "
                           "no index"])

    def partial_update(self, rows: list[Row], peers: tuple[Any | None, ...]
                       ) -> dict[str, Any]:
        """Scenario 8a: objects exist, one plain field changes; returns the peers' instances."""
        self.clean()
        self.load(rows)
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

        n = len(rows)
        impls = self.floors(lambda f: lambda: [f.update_qty(r, next(counter) % 1000)
                                               for r in rows], n)
        impls.append(Impl(POPOTO, lambda: [bump(o) for o in objs], n))
        for peer in peers:
            if peer is not None:
                def peer_updates(p: Any = peer) -> list[Any]:
                    return [p.update_qty(o, next(counter) % 1000) for o in peer_objs[p.name]]

                impls.append(Impl(peer.name, peer_updates, n))
        self.record("8a", "save(update_fields=['qty'])", n, impls,
                    notes=["plain = HSET of the one field; walrus has no partial update "
                           "(save() rewrites the object); redis-om update(qty=...)"])
        return peer_objs

    def delete_in_memory(self, rows: list[Row], peers: tuple[Any | None, ...],
                         peer_objs: dict[str, Any]) -> None:
        """Scenario 8b: objects exist (and are in memory) before each repetition."""
        victims: list[BenchItem] = []

        def restore_popoto() -> None:
            self.raw.load(rows)
            victims[:] = [BenchItem(**r.kwargs()) for r in rows]

        def restore_peer(peer: Any) -> Callable[[], None]:
            def setup() -> None:
                peer.clear()
                peer.load(rows)
                peer_objs[peer.name] = peer.instances(rows)
            return setup

        n = len(rows)
        impls = self.floors(lambda f: lambda: [f.delete(r) for r in rows], n,
                            lambda f: lambda: f.load(rows))
        impls.append(Impl(POPOTO, lambda: [o.delete() for o in victims], n, restore_popoto))
        for peer in peers:
            if peer is not None:
                def peer_deletes(p: Any = peer) -> list[Any]:
                    return [p.delete(o) for o in peer_objs[p.name]]

                impls.append(Impl(peer.name, peer_deletes, n, restore_peer(peer)))
        self.record("8b", "delete()", n, impls,
                    notes=["instances are in memory before the timer starts (not loaded); "
                           "plain = MULTI/DEL/SREM/ZREM/SREM/EXEC; same-script = the "
                           "EVALSHA of Popoto's delete script; redis-om delete = one DEL"])

    def atomic_increment(self, rows: list[Row]) -> None:
        walrus = self.peer("walrus")
        self.clean()
        self.load(rows)
        objs = [BenchItem(**r.kwargs()) for r in rows]
        for o in objs:
            o.save()
        wobjs = []
        if walrus is not None:
            walrus.load(rows)
            wobjs = walrus.instances(rows)
        n = len(rows)
        for scenario, name, kind, delta, zkey in (("8c", "qty", "i", 1, ""),
                                                  ("8d", "score", "f", 0.5,
                                                   self.raw.layout.score_key)):
            text = repr(delta) if isinstance(delta, float) else str(delta)

            def plain_increments(f: str = name, d: float = delta) -> list[Any]:
                return [self.plain.increment(r, f, d) for r in rows]

            def script_increments(f: str = name, k: str = kind, t: str = text,
                                  z: str = zkey) -> list[bytes]:
                return [self.raw.script_increment(r, f, k, t, z) for r in rows]

            def popoto_increments(f: str = name, d: float = delta) -> list[Any]:
                return [o.atomic_increment(f, d) for o in objs]

            impls = [
                Impl(PLAIN, plain_increments, n),
                Impl(SCRIPT, script_increments, n),
                Impl(POPOTO, popoto_increments, n),
            ]
            if walrus is not None:
                def walrus_increments(f: str = name, d: float = delta) -> list[Any]:
                    return [walrus.increment(o, f, d) for o in wobjs]

                impls.append(Impl(walrus.name, walrus_increments, n))
            note = ("moves the sorted-set entry in the same script" if zkey
                    else "plain int field")
            self.record(scenario, f"atomic_increment('{name}', {delta!r})", n, impls,
                        notes=[f"plain = one EVALSHA of a 4-line user script (HGET, "
                               f"cmsgpack add, HSET, ZADD for the sorted field); "
                               f"same-script = Popoto's increment script; {note}; walrus "
                               "incr() = HINCRBY(FLOAT) plus index remove/re-add, not "
                               "atomic"],
                        unsupported={"redis-om": "redis-om has no atomic increment"})
        self.clean()

    def bulk_create(self) -> None:
        om = self.peer("redis-om")
        for n in self.sizes.bulk:
            rows = Dataset(n, prefix="b").rows

            def floor_bulk(f: Plain, rs: list[Row] = rows) -> Callable[[], None]:
                return lambda: f.bulk_create(rs)

            def popoto_bulk(rs: list[Row] = rows) -> list[BenchItem]:
                return BenchItem.bulk_create([BenchItem(**r.kwargs()) for r in rs])

            impls = self.floors(floor_bulk, n, lambda f: self.clean)
            impls.append(Impl(POPOTO, popoto_bulk, n, self.clean))
            if om is not None:
                def om_bulk(rs: list[Row] = rows) -> Any:
                    return om.bulk_create(rs)

                impls.append(Impl(om.name, om_bulk, n, self.clean))
            self.record(f"2/{n}", f"bulk_create of {n}", 0, impls,
                        reps=min(self.sizes.reps, 3),
                        notes=["3 repetitions; one op = one object; plain = "
                               "HSET/SADD/ZADD/SADD per object, 1,000 objects per "
                               "non-transactional pipeline; same-script = 1,000 create-only "
                               "save-script calls per pipeline; redis-om add() = one HSET "
                               "per object in one pipeline"],
                        unsupported={"walrus": WALRUS_NO_BULK})
        self.clean()

    # --- reads -----------------------------------------------------------
    def reads(self) -> None:
        s = self.sizes
        data = Dataset(s.stored)
        rows = data.rows
        n = len(rows)
        walrus, om = self.peer("walrus"), self.peer("redis-om")
        self.all_objects(rows[:s.all_size], walrus)
        self.log(f"  loading {n} objects ...")
        self.load(rows[s.all_size:])
        if walrus is not None:
            walrus.load(rows[s.all_size:])
        if om is not None:
            om.load(rows[:s.gets])
        self.get_by_key(rows, walrus, om)
        self.ranges(data, walrus)
        self.top_query(n, walrus)
        self.equality_query(data, walrus)
        self.counts(n, walrus)
        self.clean()

    def all_objects(self, first: list[Row], walrus: Any | None) -> None:
        """Scenario 7a: all() of the first objects, the only ones stored so far."""
        self.load(first)
        if walrus is not None:
            walrus.load(first)

        def popoto_all() -> list[Any]:
            return [read_all(o) for o in BenchItem.query.all()]

        impls = [*self.floors(lambda f: f.all, 1), Impl(POPOTO, popoto_all, 1)]
        if walrus is not None:
            impls.append(Impl(walrus.name, walrus.all, 1))
        self.record("7a", f"all() of {len(first)}", len(first), impls,
                    notes=["plain = SMEMBERS + pipelined HGETALL (1,000 per round trip); "
                           "every field of every object is read"],
                    unsupported={"redis-om": OM_NO_INDEX})

    def get_impls(self, get_rows: list[Row]) -> list[Impl]:
        """The floors and Popoto reading every row of ``get_rows`` by key, one get() each."""

        def popoto_get() -> None:
            get = BenchItem.query.get
            for r in get_rows:
                read_all(get(sku=r.sku))

        return [*self.floors(lambda f: lambda: [f.get(r) for r in get_rows], len(get_rows)),
                Impl(POPOTO, popoto_get, len(get_rows))]

    def get_by_key(self, rows: list[Row], walrus: Any | None, om: Any | None) -> None:
        """Scenario 3: get() by key."""
        s = self.sizes
        n = len(rows)
        get_rows = rows[::max(1, n // s.gets)][:s.gets]
        impls = self.get_impls(get_rows)
        if om is not None:
            om_rows = rows[:s.gets]
            impls.append(Impl(om.name, lambda: [om.get(r) for r in om_rows], len(om_rows)))
        if walrus is not None:
            impls.append(Impl(walrus.name, lambda: [walrus.get(r) for r in get_rows],
                              len(get_rows)))
        self.record("3", "get() by key", n, impls,
                    notes=["every field of the object is read; plain = HGETALL + msgpack "
                           "decode of the seven fields"])

    def ranges(self, data: Dataset, walrus: Any | None) -> None:
        """Scenarios 4a-4e: the natural spellings of a score range."""
        s = self.sizes
        n = len(data.rows)
        w = s.range_size
        lows = range_lows(n, w, s.range_queries)
        wl = lows[:max(1, len(lows) // s.peer_divisor)]
        q = BenchItem.query

        def check(found: list[Any], size: int) -> list[Any]:
            assert len(found) == size, (len(found), size)
            return found

        forms: list[tuple[str, str, Callable[[Plain, float], Any], Callable[[float], Any],
                          str | None]] = [
            ("4a", f"filter(score__gte=a, score__lte=b) returning {w} of {n}",
             lambda f, lo: f.score_range(lo, lo + w - 1),
             lambda lo: q.filter(score__gte=lo, score__lte=lo + w - 1), "range_gte_lte"),
            ("4b", f"filter(score__gt=a, score__lt=b) returning {w} of {n}",
             lambda f, lo: f.score_range(f"({lo - 1}", f"({lo + w}"),
             lambda lo: q.filter(score__gt=lo - 1, score__lt=lo + w), "range_open"),
            ("4c", f"filter(score__between=(a, b)) returning {w} of {n}",
             lambda f, lo: f.score_range(lo, lo + w - 1),
             lambda lo: q.filter(score__between=(lo, lo + w - 1)), "score_range"),
        ]
        for scenario, title, floor_op, pop_op, walrus_op in forms:
            # defs with a default argument binding the loop value, not lambdas with one
            # (mypy cannot infer their type)
            def floor_reads(f: Plain, op: Callable[[Plain, float], Any] = floor_op
                            ) -> Callable[[], list[Any]]:
                return lambda: [check(op(f, lo), w) for lo in lows]

            def popoto_reads(op: Callable[[float], Any] = pop_op) -> list[Any]:
                return [check([read_all(o) for o in op(lo)], w) for lo in lows]

            impls = [*self.floors(floor_reads, len(lows)), Impl(POPOTO, popoto_reads, len(lows))]
            if walrus is not None and walrus_op:
                wop = getattr(walrus, walrus_op)
                if scenario == "4b":
                    def walrus_open_reads(wop: Any = wop) -> list[Any]:
                        return [wop(lo - 1, lo + w) for lo in wl]

                    impls.append(Impl(walrus.name, walrus_open_reads, len(wl)))
                else:
                    def walrus_reads(wop: Any = wop) -> list[Any]:
                        return [wop(lo, lo + w - 1) for lo in wl]

                    impls.append(Impl(walrus.name, walrus_reads, len(wl)))
            self.record(scenario, title, n, impls,
                        notes=["one op = one query, all fields of all results read; plain = "
                               "ZRANGEBYSCORE (open bounds as '(x') + pipelined HGETALL"],
                        unsupported={"redis-om": OM_NO_INDEX})

        cw = s.combo_width
        combos = [(lo, f"c{i % data.n_colors}")
                  for i, lo in enumerate(range_lows(n, cw, s.combo_queries))]
        wc = combos[:max(1, len(combos) // s.peer_divisor)]
        per = cw // max(1, data.n_colors)
        impls = [
            *self.floors(lambda f: lambda: [f.range_color(lo, lo + cw - 1, c)
                                            for lo, c in combos], len(combos)),
            Impl(POPOTO, lambda: [[read_all(o) for o in q.filter(
                score__gte=lo, score__lte=lo + cw - 1, color=c)] for lo, c in combos],
                len(combos)),
        ]
        if walrus is not None:
            impls.append(Impl(walrus.name, lambda: [walrus.range_color(lo, lo + cw - 1, c)
                                                    for lo, c in wc], len(wc)))
        self.record("4d", f"filter(score__gte=a, score__lte=b, color=c): a range of {cw} "
                          f"AND an IndexedField, about {per} of {n}", n, impls,
                    notes=["plain = one pipeline of ZRANGEBYSCORE + SMEMBERS of the color, "
                           "intersected in Python, then pipelined HGETALL"],
                    unsupported={"redis-om": OM_NO_INDEX})

        pw, pl = s.page_width, s.page_limit
        pages = range_lows(n, pw, s.page_queries)
        wp = pages[:max(1, min(20, len(pages) // s.peer_divisor))]
        impls = [
            *self.floors(lambda f: lambda: [f.range_page(lo, lo + pw - 1, pl) for lo in pages],
                         len(pages)),
            Impl(POPOTO, lambda: [check([read_all(o) for o in q.filter(
                score__gte=lo, score__lte=lo + pw - 1).order_by("score").limit(pl)], pl)
                for lo in pages], len(pages)),
        ]
        if walrus is not None:
            impls.append(Impl(walrus.name, lambda: [walrus.range_page(lo, lo + pw - 1, pl)
                                                    for lo in wp], len(wp)))
        self.record("4e", f"filter(score__gte=a, score__lte=b).order_by('score').limit({pl}), "
                          f"a range of {pw} of {n}", n, impls,
                    notes=["plain = ZRANGEBYSCORE a b LIMIT 0 n + pipelined HGETALL; walrus "
                           "sorts the whole match (SORT BY) before the page"],
                    unsupported={"redis-om": OM_NO_INDEX})

    def top_impls(self, tops: list[float]) -> list[Impl]:
        """The floors and Popoto reading the 10 highest scores above each of ``tops``."""

        def pop_top() -> None:
            for lo in tops:
                [read_all(o) for o in BenchItem.query.filter(score__gte=lo)
                 .order_by("-score").limit(10)]

        return [*self.floors(lambda f: lambda: [f.top(lo, 10) for lo in tops], len(tops)),
                Impl(POPOTO, pop_top, len(tops))]

    def top_query(self, n: int, walrus: Any | None) -> None:
        """Scenario 5: filter(score__gte=...).order_by('-score').limit(10)."""
        s = self.sizes
        tops = top_lows(n, s.top_queries)
        impls = self.top_impls(tops)
        if walrus is not None:
            wt = tops[:max(1, min(5, len(tops) // s.peer_divisor))]
            impls.append(Impl(walrus.name, lambda: [walrus.top(lo, 10) for lo in wt],
                              len(wt)))
        self.record("5", f"filter(score__gte=a).order_by('-score').limit(10) of {n}", n,
                    impls, notes=["plain = ZREVRANGEBYSCORE +inf a LIMIT 0 10 + pipelined "
                                  "HGETALL; walrus orders with SORT BY over the whole match"],
                    unsupported={"redis-om": OM_NO_INDEX})

    def equality_query(self, data: Dataset, walrus: Any | None) -> None:
        """Scenario 6: filter(color=value) on the indexed field."""
        s = self.sizes
        rows = data.rows
        n = len(rows)
        colors = [f"c{i % data.n_colors}" for i in range(s.color_queries)]

        def pop_color() -> None:
            for c in colors:
                [read_all(o) for o in BenchItem.query.filter(color=c)]

        impls = [*self.floors(lambda f: lambda: [f.by_color(c) for c in colors], len(colors)),
                 Impl(POPOTO, pop_color, len(colors))]
        if walrus is not None:
            wc = colors[:max(1, len(colors) // s.peer_divisor)]
            impls.append(Impl(walrus.name, lambda: [walrus.by_color(c) for c in wc], len(wc)))
        per_color = sum(1 for r in rows if r.color == "c0")
        self.record("6", f"filter(color=value) returning {per_color} of {n}", n, impls,
                    notes=["plain = SMEMBERS + pipelined HGETALL"],
                    unsupported={"redis-om": OM_NO_INDEX})

    def counts(self, n: int, walrus: Any | None) -> None:
        """Scenarios 7b, 7c: count() of the model, count() of a range."""
        s = self.sizes
        impls = [*self.floors(lambda f: lambda: [f.count() for _ in range(s.counts)], s.counts),
                 Impl(POPOTO, lambda: [BenchItem.query.count() for _ in range(s.counts)],
                      s.counts)]
        if walrus is not None:
            impls.append(Impl(walrus.name,
                              lambda: [walrus.count() for _ in range(s.counts)], s.counts))
        self.record("7b", f"count() of {n}", n, impls, notes=["plain = SCARD of the class set"],
                    unsupported={"redis-om": OM_NO_INDEX})
        w = s.range_size
        lows = range_lows(n, w, s.range_queries)
        impls = [*self.floors(lambda f: lambda: [f.count_range(lo, lo + w - 1) for lo in lows],
                              len(lows)),
                 Impl(POPOTO, lambda: [BenchItem.query.filter(
                     score__gte=lo, score__lte=lo + w - 1).count() for lo in lows], len(lows))]
        self.record("7c", f"filter(score__gte=a, score__lte=b).count() = {w} of {n}", n,
                    impls, notes=["plain = ZCOUNT"],
                    unsupported={"redis-om": OM_NO_INDEX, "walrus": WALRUS_NO_FILTERED_COUNT})

    # --- memory --------------------------------------------------------
    def memory_usage(self) -> None:
        n = self.sizes.memory
        rows = Dataset(n, prefix="m").rows
        layouts: dict[str, dict[str, Any]] = {}

        def summarise(name: str, patterns: tuple[str, ...], note: str) -> None:
            total: dict[str, Any] = memory_usage(self.client, patterns)
            total["objects"] = n
            total["bytes_per_object"] = (total["hash_bytes"] + total["index_bytes"]) / n
            total["hash_bytes_per_object"] = total["hash_bytes"] / n
            total["index_bytes_per_object"] = total["index_bytes"] / n
            total["layout"] = note
            layouts[name] = total

        self.clean()
        self.raw.load(rows)
        summarise(POPOTO, POPOTO_PATTERNS, "hash (7 fields + 2 @idx owned-entry records), "
                  "class set, sorted set, equality sets")
        self.clean()
        self.plain.load(rows)
        summarise(PLAIN, PLAIN_LAYOUT.patterns, "hash (7 fields), class set, sorted set, "
                  "equality sets")
        self.clean()
        for peer in self.peers:
            peer.load(rows)
            pattern = "benchwalrus:*" if peer.name == "walrus" else "benchom:*"
            summarise(peer.name, (pattern,), f"{peer.name} native layout")
            peer.clear()
        ratio = layouts[POPOTO]["bytes_per_object"] / layouts[PLAIN]["bytes_per_object"]
        layouts[POPOTO]["ratio_popoto_over_plain"] = ratio
        layouts[POPOTO]["target"] = f"<= {MEMORY_TARGET:.2f}x plain"
        layouts[POPOTO]["target_met"] = ratio <= MEMORY_TARGET
        self.memory = layouts
        self.log("  9: memory per object: " + ", ".join(
            f"{k} {v['bytes_per_object']:.0f} B" for k, v in layouts.items()))

    # --- scaling -------------------------------------------------------
    def scaling(self, scale: tuple[int, ...], range_scale: tuple[int, ...]) -> None:
        """Save, get, top-10 at ``scale`` stored objects; the range page at ``range_scale``."""
        s = self.sizes
        sizes = sorted(set(scale) | set(range_scale))
        self.clean()
        loaded = 0
        data = Dataset(max(sizes))
        new_rows = Dataset(s.saves, prefix="new", seed=11).rows
        for size in sizes:
            self.log(f"  stored objects: {size} (loading {size - loaded}) ...")
            self.load(data.rows[loaded:size], chunk=5000)
            loaded = size
            if size in scale:
                self.scale_point(size, data.rows[:size], new_rows)
            if size in range_scale:
                self.scale_range(size, len(data.rows))
        del data

    def scale_range(self, size: int, total: int) -> None:
        """The range page at ``size`` stored objects (the first ``size`` rows of a dataset of
        ``total``, whose scores are a permutation of 0..total-1): a score range ``total /
        size`` times wider than the page returns about ``range_size`` rows at every size."""
        page = self.sizes.range_size
        w = page * total // size
        # fewer queries on the big sizes: a plan that is O(index) takes seconds per query
        count = max(3, min(self.sizes.range_queries, self.sizes.range_queries * 100_000 // size))
        lows = range_lows(total, w, count)
        q = BenchItem.query
        impls = [*self.floors(lambda f: lambda: [f.score_range(lo, lo + w - 1)
                                                 for lo in lows], len(lows)),
                 Impl(POPOTO, lambda: [[read_all(o) for o in q.filter(
                     score__gte=lo, score__lte=lo + w - 1)] for lo in lows], len(lows))]
        self.record(f"scale-4a/{size}", f"filter(score__gte=a, score__lte=b) returning about "
                    f"{page}", size, impls)

    def scale_point(self, size: int, rows: list[Row], new_rows: list[Row]) -> None:
        s = self.sizes

        def drop_new(f: Plain) -> Callable[[], None]:
            return lambda: f.unload(new_rows)

        impls = [*self.floors(lambda f: lambda: [f.save(r) for r in new_rows], len(new_rows),
                              drop_new),
                 Impl(POPOTO, lambda: [BenchItem(**r.kwargs()).save() for r in new_rows],
                      len(new_rows), drop_new(self.raw))]
        self.record(f"scale-1/{size}", "save() one object at a time", size, impls)
        self.raw.unload(new_rows)
        self.plain.unload(new_rows)
        get_rows = rows[::max(1, size // s.gets)][:s.gets]
        impls = self.get_impls(get_rows)
        self.record(f"scale-3/{size}", "get() by key", size, impls)
        tops = top_lows(size, s.top_queries)
        impls = self.top_impls(tops)
        self.record(f"scale-5/{size}", "filter(score__gte=a).order_by('-score').limit(10)",
                    size, impls)


def target_of(scenario: str) -> Target | None:
    """The target of a scenario id: '2/10000' -> '2', 'scale-4a/20000' -> '4a'."""
    base = scenario.split("/")[0]
    return TARGETS.get(base.removeprefix("scale-"))


__all__ = ["MEMORY_TARGET", "MODEL", "TARGETS", "Bench"]
