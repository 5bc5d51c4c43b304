# mypy: disable-error-code="func-returns-value"
# (the timed lambdas run None-returning calls inside list comprehensions, as the parent's
# scenarios do: the list is built and dropped on purpose, as part of the timed work)
"""The popoto 1.10.1 runner: runs in ``.venv-popoto1``, where ``popoto`` is the upstream
library from PyPI, never in this project's virtualenv (both import as ``popoto``).

``popoto.ops.bench.popoto1`` starts it as a subprocess (see that module for the protocol): the
request (JSON on stdin) gives the Redis URL, the run's ``Sizes`` and the path to write
the reply to. The runner times popoto 1.10.1 and, interleaved with it in every
repetition, the plain floor (``plain.Plain``, the same hand-written redis-py code the
parent process times), so popoto 1.10.1's ratio is against a floor timed in its own
process, with its own redis-py. Scenario ids are the parent's.

Every call is written the way popoto 1.x's documentation writes it: ``save()``,
``Model.query.get(key=...)``, ``Model.bulk_create([...])``,
``Model.query.filter(score__gte=..., score__lte=...)``, ``.order_by("-score").limit(n)``,
``Model.query.all()``, ``Model.query.count(**filters)``, ``save(update_fields=[...])``,
``atomic_increment(name, delta)``, ``delete()``.

Imports ``plain`` and ``timing`` only (no module of this project's ``popoto``).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
import traceback
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import redis

from .plain import (
    FIELDS,
    Dataset,
    Layout,
    Plain,
    Row,
    delete_namespace,
    memory_usage,
    range_lows,
    top_lows,
)
from .timing import PLAIN, Impl, Sizes, measure

PROTOCOL = 1
IMPL = "popoto-1.10.1"
MODEL = "BenchP1"
PATTERNS = (f"{MODEL}:*", f"$*:{MODEL}:*", f"$Class:{MODEL}")  # every key popoto 1 makes
PLAIN_LAYOUT = Layout("PlainP1")
read_all = attrgetter(*FIELDS)


def define_model() -> type[Any]:
    """The benchmark model in popoto 1.x: same fields, same index kinds as ``BenchItem``.

    Its type is unknown to the type checker, which sees this project's ``popoto`` instead.
    """
    from popoto import Field, IndexedField, KeyField, Model, SortedField

    class BenchP1(Model):
        sku = KeyField()
        score = SortedField(type=float)
        color = IndexedField()
        name = Field(type=str)
        qty = Field(type=int)
        price = Field(type=float)
        created = Field(type=_dt.datetime)

    return BenchP1


class Runner:
    def __init__(self, url: str, sizes: Sizes, log: Callable[[str], None]) -> None:
        self.sizes = sizes
        self.log = log
        self.client = redis.Redis.from_url(url)
        self.plain = Plain(self.client, PLAIN_LAYOUT)
        self.model = define_model()
        self.scenarios: list[dict[str, Any]] = []
        self.unsupported: list[dict[str, str]] = []
        self.memory: dict[str, Any] = {}

    # --- helpers -------------------------------------------------------
    def clean(self) -> None:
        delete_namespace(self.client, PATTERNS)
        delete_namespace(self.client, PLAIN_LAYOUT.patterns)

    def obj(self, row: Row) -> Any:
        return self.model(**row.kwargs())

    def load(self, rows: list[Row]) -> list[Any]:
        """Store ``rows`` with popoto 1's ``bulk_create`` and the plain floor (setup)."""
        objs: list[Any] = self.model.bulk_create([self.obj(r) for r in rows])
        self.plain.load(rows)
        return objs

    def record(self, scenario: str, title: str, plain: Impl, popoto1: Impl,
               reps: int | None = None) -> None:
        self.log(f"  [{IMPL}] {scenario}: {title} ...")
        timings = measure([plain, popoto1], reps or self.sizes.reps)
        self.scenarios.append({"scenario": scenario, "title": title, "timings": timings})
        self.log("    " + ", ".join(f"{k} {v['per_op_us']:.1f}us" for k, v in timings.items()))

    # --- scenarios -----------------------------------------------------
    def run(self) -> None:
        self.clean()
        try:
            self.writes()
            self.reads()
            self.memory_usage()
        finally:
            self.clean()

    def writes(self) -> None:
        s = self.sizes
        rows = Dataset(s.saves, prefix="w").rows
        n = len(rows)
        model, plain = self.model, self.plain
        self.record("1", "save()",
                    Impl(PLAIN, lambda: [plain.save(r) for r in rows], n, self.clean),
                    Impl(IMPL, lambda: [self.obj(r).save() for r in rows], n, self.clean))
        self.clean()
        objs = self.load(rows)
        counter = iter(range(10**9))

        def bump(o: Any) -> None:
            o.qty = next(counter) % 1000
            o.save(update_fields=["qty"])

        self.record("8a", "save(update_fields=['qty'])",
                    Impl(PLAIN, lambda: [plain.update_qty(r, next(counter) % 1000)
                                         for r in rows], n),
                    Impl(IMPL, lambda: [bump(o) for o in objs], n))
        for scenario, name, delta in (("8c", "qty", 1), ("8d", "score", 0.5)):
            # defs, not lambdas with default arguments (whose type mypy cannot infer)
            def plain_increments(f: str = name, d: float = delta) -> list[Any]:
                return [plain.increment(r, f, d) for r in rows]

            def popoto1_increments(f: str = name, d: float = delta) -> list[Any]:
                return [o.atomic_increment(f, d) for o in objs]

            self.record(scenario, f"atomic_increment({name!r}, {delta!r})",
                        Impl(PLAIN, plain_increments, n), Impl(IMPL, popoto1_increments, n))
        victims: list[Any] = []

        def restore_plain() -> None:
            self.clean()
            plain.load(rows)

        def restore() -> None:
            self.clean()
            victims[:] = model.bulk_create([self.obj(r) for r in rows])

        self.record("8b", "delete()",
                    Impl(PLAIN, lambda: [plain.delete(r) for r in rows], n, restore_plain),
                    Impl(IMPL, lambda: [o.delete() for o in victims], n, restore))
        self.clean()
        for size in s.bulk:
            brows = Dataset(size, prefix="b").rows

            def plain_bulk(rs: list[Row] = brows) -> None:
                plain.bulk_create(rs)

            def popoto1_bulk(rs: list[Row] = brows) -> Any:
                return model.bulk_create([self.obj(r) for r in rs])

            self.record(f"2/{size}", f"bulk_create of {size}",
                        Impl(PLAIN, plain_bulk, size, self.clean),
                        Impl(IMPL, popoto1_bulk, size, self.clean),
                        reps=2 if size >= 100_000 else min(s.reps, 3))
        self.clean()

    def reads(self) -> None:
        s = self.sizes
        data = Dataset(s.stored)
        rows = data.rows
        n = len(rows)
        model, plain = self.model, self.plain
        self.load(rows[:s.all_size])
        self.record("7a", f"all() of {s.all_size}", Impl(PLAIN, plain.all, 1),
                    Impl(IMPL, lambda: [read_all(o) for o in model.query.all()], 1))
        self.log(f"  [{IMPL}] loading {n} objects ...")
        self.load(rows[s.all_size:])
        get_rows = rows[::max(1, n // s.gets)][:s.gets]
        get = model.query.get
        self.record("3", "get()", Impl(PLAIN, lambda: [plain.get(r) for r in get_rows],
                                       len(get_rows)),
                    Impl(IMPL, lambda: [read_all(get(sku=r.sku)) for r in get_rows],
                         len(get_rows)))
        width = s.range_size
        lows = range_lows(n, width, s.range_queries)
        q = model.query

        def each(fn: Callable[[float], Any]) -> Callable[[], list[Any]]:
            return lambda: [fn(lo) for lo in lows]

        forms = (
            ("4a", "filter(score__gte, score__lte)", lambda lo: plain.score_range(
                lo, lo + width - 1), lambda lo: q.filter(score__gte=lo, score__lte=lo + width - 1)),
            ("4b", "filter(score__gt, score__lt)", lambda lo: plain.score_range(
                f"({lo - 1}", f"({lo + width}"),
             lambda lo: q.filter(score__gt=lo - 1, score__lt=lo + width)),
            ("4c", "filter(score__between)", lambda lo: plain.score_range(lo, lo + width - 1),
             lambda lo: q.filter(score__between=(lo, lo + width - 1))),
        )
        for scenario, title, raw, pop in forms:
            def read(lo: float, p: Callable[[float], Any] = pop) -> list[Any]:
                return [read_all(o) for o in p(lo)]

            self.record(scenario, title, Impl(PLAIN, each(raw), len(lows)),
                        Impl(IMPL, each(read), len(lows)))
        cw = s.combo_width
        combos = [(lo, f"c{i % data.n_colors}")
                  for i, lo in enumerate(range_lows(n, cw, s.combo_queries))]
        self.record("4d", "filter(score range, color=...)",
                    Impl(PLAIN, lambda: [plain.range_color(lo, lo + cw - 1, c)
                                         for lo, c in combos], len(combos)),
                    Impl(IMPL, lambda: [[read_all(o) for o in q.filter(
                        score__gte=lo, score__lte=lo + cw - 1, color=c)] for lo, c in combos],
                        len(combos)))
        pw, pl = s.page_width, s.page_limit
        pages = range_lows(n, pw, s.page_queries)
        self.record("4e", "filter(range).order_by('score').limit(n)",
                    Impl(PLAIN, lambda: [plain.range_page(lo, lo + pw - 1, pl) for lo in pages],
                         len(pages)),
                    Impl(IMPL, lambda: [[read_all(o) for o in q.filter(
                        score__gte=lo, score__lte=lo + pw - 1).order_by("score").limit(pl)]
                        for lo in pages], len(pages)))
        tops = top_lows(n, s.top_queries)
        self.record("5", "filter(score__gte).order_by('-score').limit(10)",
                    Impl(PLAIN, lambda: [plain.top(lo, 10) for lo in tops], len(tops)),
                    Impl(IMPL, lambda: [[read_all(o) for o in q.filter(score__gte=lo)
                                         .order_by("-score").limit(10)] for lo in tops],
                         len(tops)))
        colors = [f"c{i % data.n_colors}" for i in range(s.color_queries)]
        self.record("6", "filter(color=...)",
                    Impl(PLAIN, lambda: [plain.by_color(c) for c in colors], len(colors)),
                    Impl(IMPL, lambda: [[read_all(o) for o in q.filter(color=c)]
                                        for c in colors], len(colors)))
        self.record("7b", "count()",
                    Impl(PLAIN, lambda: [plain.count() for _ in range(s.counts)], s.counts),
                    Impl(IMPL, lambda: [q.count() for _ in range(s.counts)], s.counts))
        self.record("7c", "count(score range)",
                    Impl(PLAIN, lambda: [plain.count_range(lo, lo + width - 1) for lo in lows],
                         len(lows)),
                    Impl(IMPL, lambda: [q.count(score__gte=lo, score__lte=lo + width - 1)
                                        for lo in lows], len(lows)))
        self.clean()

    def memory_usage(self) -> None:
        n = self.sizes.memory
        self.clean()
        self.model.bulk_create([self.obj(r) for r in Dataset(n, prefix="m").rows])
        used: dict[str, Any] = memory_usage(self.client, PATTERNS)
        used["objects"] = n
        used["bytes_per_object"] = (used["hash_bytes"] + used["index_bytes"]) / n
        used["hash_bytes_per_object"] = used["hash_bytes"] / n
        used["index_bytes_per_object"] = used["index_bytes"] / n
        used["layout"] = "popoto 1.10.1 native layout (hash, class set, sorted set, " \
                         "equality sets, per-key $KeyF set, per-field $IdxPtr string)"
        self.memory = used
        self.clean()


def environment() -> dict[str, Any]:
    import popoto

    try:
        from redis.utils import HIREDIS_AVAILABLE
    except ImportError:  # pragma: no cover
        HIREDIS_AVAILABLE = False
    return {"popoto": getattr(popoto, "__version__", None), "popoto_file": popoto.__file__,
            "python": platform.python_version(), "redis_py": redis.__version__,
            "hiredis": bool(HIREDIS_AVAILABLE), "executable": sys.executable}


def main(request: dict[str, Any]) -> int:
    """Run every scenario and write the reply to ``request["reply_path"]``."""

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    reply: dict[str, Any] = {"protocol": PROTOCOL, "impl": IMPL}
    try:
        reply["environment"] = env = environment()
        if not str(env["popoto"]).startswith("1."):
            raise RuntimeError(f"this interpreter's popoto is {env['popoto']} "
                               f"({env['popoto_file']}), not popoto 1.x")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in request["sizes"].items()}
        sizes = Sizes(**fields)
        runner = Runner(request["url"], sizes, log)
        runner.run()
        reply.update(scenarios=runner.scenarios, unsupported=runner.unsupported,
                     memory=runner.memory)
        status = 0
    except Exception as exc:  # noqa: BLE001 - the parent reports it, loudly
        reply["error"] = f"{type(exc).__name__}: {exc}"
        reply["traceback"] = traceback.format_exc()
        log(reply["traceback"])
        status = 1
    with open(request["reply_path"], "w") as fh:
        json.dump(reply, fh)
    return status
