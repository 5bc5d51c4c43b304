"""Atomicity under real concurrency: separate OS processes (multiprocessing, spawn).

Workers configure Popoto like the parent (``worker_url``), so in the cluster run
the same races run against the sharded layout and the global claim protocol.
"""

import multiprocessing
import time
from decimal import Decimal

import pytest

import popoto
from popoto import (
    BulkWriteError,
    DecimalField,
    IntField,
    KeyField,
    Model,
    SortedField,
    StringField,
    UniqueKeyField,
    UniqueViolation,
)
from tests.helpers import index_key, key_of, worker_url

CTX = multiprocessing.get_context("spawn")


class Tally(Model):
    name = KeyField()
    count = SortedField(type=int, default=0)
    cents = DecimalField(default=Decimal("0"))

    class Meta:
        namespace = "RaceTally"


class Account(Model):
    handle = KeyField()
    email = StringField(unique=True, null=True)


class Badge(Model):
    code = UniqueKeyField()
    region = KeyField()


class Seat(Model):
    ident = KeyField()
    row = IntField(null=True)
    number = IntField(null=True)

    class Meta:
        indexes = ((("row", "number"), True),)


class Ticket(Model):
    ident = KeyField()
    holder = StringField(null=True)

    class Meta:
        namespace = "RaceTicket"


def _increment_worker(url, barrier, n, out):
    popoto.configure(url=url)
    tally = Tally.query.get(name="t")
    barrier.wait()
    for i in range(n):
        tally.atomic_increment("count", 1)
        if i % 5 == 0:
            tally.atomic_increment("cents", Decimal("0.01"))
    out.put("done")


# Each scenario: every process tries to write the SAME unique thing.
def _race(scenario, me):
    if scenario == "unique_field":
        Account.create(handle=f"user{me}", email="same@x.io")
    elif scenario == "unique_key_field":
        Badge.create(code="gold", region=f"r{me}")
    elif scenario == "composite":
        Seat.create(ident=f"s{me}", row=3, number=7)
    elif scenario == "same_key":
        Ticket.create(ident="t1", holder=f"p{me}")
    elif scenario == "nulls":
        Account.create(handle=f"anon{me}", email=None)
        Seat.create(ident=f"n{me}", row=None, number=1)
    elif scenario == "bulk":
        Account.bulk_create([Account(handle=f"b{me}-{i}", email=f"bulk{i}@x.io")
                             for i in range(50)])


SCENARIOS = ("unique_field", "unique_key_field", "composite", "same_key", "nulls", "bulk")


def _race_worker(url, barrier, me, out):
    popoto.configure(url=url)
    for scenario in SCENARIOS:
        barrier.wait()
        try:
            _race(scenario, me)
            out.put((scenario, me, "ok", 0))
        except BulkWriteError as exc:
            kinds = {type(e).__name__ for _i, e in exc.failures}
            out.put((scenario, me, f"bulk:{','.join(sorted(kinds))}", exc.succeeded))
        except UniqueViolation:
            out.put((scenario, me, "unique", 0))
        except Exception as exc:  # reported to the parent, which fails the test
            out.put((scenario, me, f"error {type(exc).__name__}: {exc}", 0))


def _run_processes(target, n, args_for):
    barrier = CTX.Barrier(n)
    out = CTX.Queue()
    procs = [CTX.Process(target=target, args=(*args_for(i, barrier), out)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    results = []
    while not out.empty():
        results.append(out.get())
    return results


@pytest.mark.slow
def test_16_processes_x_500_increments_lose_nothing(redis_url, r):
    """16 processes x 500 increments of 1 -> exactly 8000 (score too); Decimal sum exact."""
    Tally.create(name="t")
    started = time.perf_counter()
    url = worker_url(redis_url)
    results = _run_processes(_increment_worker, 16, lambda i, b: (url, b, 500))
    elapsed = time.perf_counter() - started
    assert results == ["done"] * 16
    back = Tally.query.get(name="t")
    assert back.count == 8000
    assert back.cents == Decimal("16.00")
    assert r.zscore(index_key(Tally, "count", instance=back), back.pk) == 8000
    assert Tally.query.filter(count__gte=8000).keys() == [key_of(Tally, "t")]
    assert elapsed < 20


@pytest.mark.slow
def test_8_processes_race_for_unique_values(redis_url, r):
    """Of 8 processes creating the same unique value/key/composite, exactly one wins."""
    url = worker_url(redis_url)
    results = _run_processes(_race_worker, 8, lambda i, b: (url, b, i))
    by_scenario = {s: sorted(o for sc, _me, o, _n in results if sc == s) for s in SCENARIOS}
    for scenario in ("unique_field", "unique_key_field", "composite", "same_key"):
        assert by_scenario[scenario] == ["ok"] + ["unique"] * 7, (scenario, by_scenario)
    assert by_scenario["nulls"] == ["ok"] * 8  # NULLs never collide
    assert Account.query.filter(email="same@x.io").count() == 1
    assert sum(r.scard(k) for k in Badge._meta.class_set_keys()) == 1
    assert Seat.query.filter(row=3).count() == 1
    assert Ticket.query.count() == 1
    # bulk: 8 processes x the same 50 unique emails -> each email owned exactly once
    written = sum(n for sc, _me, o, n in results if sc == "bulk" and o.startswith("bulk"))
    written += sum(50 for sc, _me, o, _n in results if sc == "bulk" and o == "ok")
    assert written == 50
    assert {o for sc, _me, o, _n in results if sc == "bulk"} <= {"ok", "bulk:UniqueViolation"}
    email = Account._meta.fields["email"]
    assert sum(r.hlen(email.unique_key(ns)) for ns in Account._meta.groups) == 1 + 50
    assert Account.query.count() == 1 + 8 + 50


def test_dependent_field_increments_under_contention():
    """The WATCH/MULTI increment path (indexed counter) retries until no update is lost."""
    import threading

    from popoto import IndexedField

    class Gauge(Model):
        name = KeyField()
        level = IndexedField(type=int, default=0)

    Gauge.create(name="g")

    def work():
        g = Gauge.query.get(name="g")
        for _ in range(25):
            g.atomic_increment("level")

    n_threads = 8
    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Gauge.query.get(name="g").level == 25 * n_threads
    assert Gauge.query.filter(level=25 * n_threads).keys() == [key_of(Gauge, "g")]
    assert Gauge.query.filter(level__in=list(range(25 * n_threads))).count() == 0
