"""The query planner: work proportional to the result, not to the index (structural checks
from the server's own counters, never client-side timings), and one round trip per page."""

from __future__ import annotations

from typing import Any

import pytest

from popoto import IndexedField, KeyField, Model, SortedField
from tests.helpers import command_calls, count_round_trips

pytestmark = pytest.mark.standalone_only  # one server's counters; one tag group per model


class Reading(Model):
    sensor = KeyField()
    value = SortedField(type=float)
    site = IndexedField(null=True)


MATERIALISING = ("zrangestore", "zinterstore", "zunionstore", "zdiffstore")


def _fill(r: Any, filler: int) -> list[str]:
    """10 real readings with values 500..509 and ``filler`` index members far outside the
    ranges queried (an index of ``filler + 10`` entries; only the range is ever read)."""
    made = Reading.bulk_create([Reading(sensor=f"s{i}", value=500.0 + i,
                                        site="north" if i % 2 else "south")
                                for i in range(10)])
    zkey = Reading.value.sorted_key()
    pipe = r.pipeline(transaction=False)
    for start in range(0, filler, 10_000):
        pipe.zadd(zkey, {f"Reading:f{i}": float(i % 400) if i % 2 else 1000.0 + i
                         for i in range(start, min(filler, start + 10_000))})
    pipe.execute()
    return [m.pk for m in made]


def _stats(r: Any) -> dict[str, tuple[int, int]]:
    """{command: (calls, usec)} from INFO commandstats."""
    return {name[len("cmdstat_"):]: (int(s["calls"]), int(s["usec"]))
            for name, s in r.info("commandstats").items()}


def _server_cost(r: Any, run: Any, times: int = 200) -> tuple[dict[str, int], float]:
    """(calls per command over ``times`` runs, server usec per run)."""
    r.config_resetstat()
    for _ in range(times):
        run()
    stats = _stats(r)
    calls = {name: c for name, (c, _u) in stats.items() if name not in ("config", "info")}
    usec = sum(u for name, (_c, u) in stats.items() if name not in ("config", "info"))
    return calls, usec / times


QUERIES = {
    "gte+lte": lambda: list(Reading.query.filter(value__gte=500, value__lte=509)),
    "gt+lt": lambda: list(Reading.query.filter(value__gt=499.5, value__lt=509.5)),
    "between": lambda: list(Reading.query.filter(value__between=(500, 509))),
    "range+limit+order": lambda: list(Reading.query.filter(
        value__gte=500, value__lte=600, order_by="-value", limit=10)),
    "range+equality": lambda: list(Reading.query.filter(value__gte=500, value__lte=509,
                                                        site="north")),
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_range_queries_never_materialise_the_index(r, name):
    """Two-sided ranges (any spelling), a range with an equality and an ordered, limited
    range create no temporary sorted set: no ZRANGESTORE/ZINTERSTORE/... runs."""
    _fill(r, 10_000)
    expected = 5 if name == "range+equality" else 10
    assert len(QUERIES[name]()) == expected
    calls, _usec = _server_cost(r, QUERIES[name], times=5)
    assert not any(calls.get(c) for c in MATERIALISING), calls


@pytest.mark.parametrize("name", ["gte+lte", "range+equality"])
def test_server_time_of_a_range_page_does_not_grow_with_the_index(r, name):
    """The same 10-row (5-row) result from a 10k and a 100k index costs the server about
    the same: O(log n + result), where materialising the range would cost O(n)."""
    _fill(r, 10_000)
    _calls, small = _server_cost(r, QUERIES[name])
    r.flushdb()
    _fill(r, 100_000)
    _calls, large = _server_cost(r, QUERIES[name])
    assert large < 3 * small + 20, (small, large)  # O(n) would be ~10x


def test_a_bounded_page_is_one_round_trip(r):
    """A range page, an ordered top-N and a filtered page read their hashes in the same
    script call that finds them: one round trip, no HGETALL from the client."""
    _fill(r, 1_000)
    for run in QUERIES.values():
        run()  # scripts loaded
    for name, run in QUERIES.items():
        before = command_calls(r, "hgetall")
        with count_round_trips() as trips:
            rows = run()
        assert trips[0] == 1, name
        assert command_calls(r, "hgetall") - before == len(rows)  # inside the script


def test_values_page_is_one_round_trip_and_skips_gone_hashes(r):
    """values() pages come back from the script too; a stale index entry is skipped."""
    pks = _fill(r, 100)
    r.delete(pks[0])  # behind the ORM's back: the index still lists it
    with count_round_trips() as trips:
        got = list(Reading.query.filter(value__gte=500, value__lte=509).values("value"))
    assert trips[0] == 1
    assert [row["value"] for row in got] == [501.0 + i for i in range(9)]
