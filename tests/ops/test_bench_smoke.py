"""Benchmark harness: the raw floor does Popoto's exact Redis work, and a tiny run completes."""

from __future__ import annotations

import json

from ops.bench import runner
from ops.bench.workload import CLASS_SET, SCORE_KEY, BenchItem, Dataset, Raw


def _dump(r) -> dict:
    """Every key of the database with its full content."""
    out = {}
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == b"hash":
            out[key] = r.hgetall(key)
        elif kind == b"set":
            out[key] = r.smembers(key)
        elif kind == b"zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
    return out


class _Spy:
    """Stands in for the raw client to record the script calls Raw would send."""

    def __init__(self) -> None:
        self.calls: list[list] = []

    def evalsha(self, sha, *args):
        self.calls.append(list(args))

    def script_load(self, body):
        return "sha"


def test_raw_script_calls_equal_popotos(r):
    """Raw's hand-built save, create, partial-update, delete and increment calls equal Popoto's."""
    from popoto.models.bulk import increment_call

    raw = Raw(r)
    spy = raw.r = _Spy()
    for row in Dataset(20).rows:
        obj = BenchItem(**row.kwargs())
        keys, argv = obj.build_save().save_args()
        assert Raw.save_argv(row) == [len(keys), *keys, *argv]
        keys, argv = obj.build_save(must_not_exist=True).save_args()
        assert Raw.save_argv(row, "N") == [len(keys), *keys, *argv]
        obj.__dict__["_redis_key"] = row.key  # as if saved
        obj.qty = 5
        keys, argv = obj.build_save(update_fields=["qty"]).save_args()
        dkeys, dargv = obj.build_delete().delete_args()
        spy.calls.clear()
        raw.update_qty(row, 5)
        raw.delete(row)
        raw.increment(row, "qty", "i", "1", "")
        raw.increment(row, "score", "f", "0.5", SCORE_KEY)
        assert spy.calls == [
            [len(keys), *keys, *argv],
            [len(dkeys), *dkeys, *dargv],
            [2, *sum(increment_call(obj, BenchItem._meta.fields["qty"], 1), [])],
            [2, *sum(increment_call(obj, BenchItem._meta.fields["score"], 0.5), [])],
        ]


def test_raw_floor_stores_byte_identical_data(r):
    """Loading rows through the raw floor leaves Redis exactly as Popoto's saves do."""
    rows = Dataset(600).rows
    for row in rows:
        BenchItem(**row.kwargs()).save()
    via_popoto = _dump(r)
    r.flushdb()
    Raw(r).load(rows)
    assert _dump(r) == via_popoto
    assert r.scard(CLASS_SET) == len(rows)


def test_raw_reads_return_what_popoto_reads(r):
    """Raw range/top/equality/all reads decode the same values Popoto's queries return."""
    rows = Dataset(1000).rows
    raw = Raw(r)
    raw.load(rows)

    def fields(obj):
        return list(runner.read_all(obj))

    popoto_range = sorted(fields(o) for o in BenchItem.query.filter(score__between=(10, 59)))
    assert popoto_range == sorted(raw.score_range(10, 59))
    top = [fields(o) for o in BenchItem.query.filter(score__gte=0).order_by("-score").limit(10)]
    assert top == raw.top(0, 10)
    assert sorted(fields(o) for o in BenchItem.query.filter(color="c1")) == sorted(
        raw.by_color("c1"))
    assert len(raw.all()) == len(BenchItem.query.all()) == 1000
    assert raw.count() == BenchItem.query.count() == 1000


def test_quick_run_writes_results_json(tmp_path, redis_url, monkeypatch, capsys):
    """A --quick --scale run times raw and popoto per scenario, writes JSON, prints a table."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    out = tmp_path / "results.json"
    assert runner.main(["--quick", "--scale", "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    env = doc["environment"]
    assert env["redis_version"] and env["python"] and isinstance(env["hiredis"], bool)
    names = {s["scenario"] for s in doc["scenarios"]}
    assert {"1", "3", "4", "5", "6", "7a", "7b", "8a", "8b"} <= names
    assert {"scale-1/200", "scale-3/1500", "scale-5/1500"} <= names
    for s in doc["scenarios"]:
        for impl in ("raw", "popoto"):
            assert s["timings"][impl]["per_op_us"] > 0
        assert s["ratio_popoto_over_raw_time"] > 0
    memory = doc["memory"]
    assert memory["popoto"]["bytes_per_object"] > memory["raw"]["hash_bytes_per_object"]
    skipped = {s["scenario"] for s in doc["skipped"]}
    assert names.isdisjoint(skipped)
    table = capsys.readouterr().out
    assert "| 1 | save() one object at a time |" in table
