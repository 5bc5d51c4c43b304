"""Benchmark harness: the raw floor does Popoto's exact Redis work, and a tiny run completes."""

from __future__ import annotations

import json
import math

import pytest
import redis

import popoto
from ops.bench import runner
from ops.bench.cluster import BenchShard, ShardedRaw, group_tags
from ops.bench.workload import CLASS_SET, SCORE_KEY, BenchItem, Dataset, Raw

pytestmark = pytest.mark.standalone_only  # the raw floor writes the unsharded layout


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
    from popoto.models.counters import increment_call

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


@pytest.mark.slow
def test_quick_run_writes_results_json(tmp_path, redis_url, monkeypatch, capsys):
    """A --quick --scale --no-cluster run times raw and popoto per scenario, writes JSON,
    prints a table."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    out = tmp_path / "results.json"
    assert runner.main(["--quick", "--scale", "--no-cluster", "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert "cluster" not in doc
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


def test_sharded_raw_save_calls_equal_popotos(r):
    """ShardedRaw's groups and create-only save calls equal BenchShard's (16 tag groups)."""
    raw = ShardedRaw(r)
    assert group_tags() == list(BenchShard._meta.groups)
    for row in Dataset(50).rows:
        keys, argv = BenchShard(**row.kwargs()).build_save(must_not_exist=True).save_args()
        assert raw.save_argv(row) == [len(keys), *keys, *argv]


def test_sharded_raw_floor_stores_and_reads_what_popoto_does(r):
    """ShardedRaw's bulk create leaves Redis byte-identical to BenchShard.bulk_create, and
    its merged top-20 read equals Popoto's sorted, limited filter."""
    rows = Dataset(600).rows
    BenchShard.bulk_create([BenchShard(**row.kwargs()) for row in rows])
    via_popoto = _dump(r)
    assert len({k for k in via_popoto if k.startswith(b"$Class:")}) == 16
    r.flushdb()
    raw = ShardedRaw(r)
    raw.bulk_create(rows)
    assert _dump(r) == via_popoto
    for low in (0.0, 100.0, 590.0):
        top = [list(runner.read_all(o)) for o in
               BenchShard.query.filter(score__gte=low).order_by("-score").limit(20)]
        assert top == raw.top(low, 20)
        assert len(top) == min(20, 600 - int(low))


def _command_calls(cluster) -> int:
    """COMMAND calls (e.g. COMMAND GETKEYS) the cluster's masters have served so far."""
    total = 0
    for node in cluster.masters():
        client = redis.Redis.from_url(node.url)
        total += client.info("commandstats").get("cmdstat_command", {}).get("calls", 0)
        client.close()
    return total


def test_cluster_floors_write_and_read_what_popoto_does(cluster_mode):
    """On the cluster, the raw floor (target_nodes) and raw-getkeys (redis-py routing) leave
    the data BenchShard.bulk_create leaves, the floor and Popoto send no COMMAND GETKEYS,
    and the merged top-20 equals Popoto's."""
    client = cluster_mode.client()
    raw = ShardedRaw(client)
    assert BenchShard.query.count() == 0  # both clients connected (COMMAND sent once each)
    rows = Dataset(300).rows
    before = _command_calls(cluster_mode)
    BenchShard.bulk_create([BenchShard(**row.kwargs()) for row in rows])
    via_popoto = _dump(client)
    for write in (raw.bulk_create, raw.bulk_create_getkeys):
        cluster_mode.flushall()
        write(rows)
        assert _dump(client) == via_popoto
        if write == raw.bulk_create:
            assert _command_calls(cluster_mode) == before
    top = [list(runner.read_all(o)) for o in
           BenchShard.query.filter(score__gte=50).order_by("-score").limit(20)]
    assert top == raw.top(50, 20) and len(top) == 20
    client.close()


def test_quick_cluster_run_writes_sane_ratios(tmp_path, redis_url, cluster, r, monkeypatch):
    """A --quick --cluster-only run times every layout, writes positive finite ratios under
    "cluster", removes its keys and leaves Popoto configured for the standalone server."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REDIS_CLUSTER_URL", cluster.url)
    out = tmp_path / "results.json"
    assert runner.main(["--quick", "--cluster-only", "--output", str(out)]) == 0
    section = json.loads(out.read_text())["cluster"]
    assert section["environment"]["masters"] == 3
    assert section["environment"]["server"] == "REDIS_CLUSTER_URL"
    assert [s["scenario"] for s in section["scenarios"]] == ["c1/200", "c2/600"]
    for s, impls in zip(section["scenarios"], (7, 6)):  # c1 adds cluster/raw-getkeys
        assert len(s["timings"]) == impls
        for value in (*s["per_op_us"].values(), *s["ops_per_s"].values(),
                      *s["ratios"].values()):
            assert value > 0 and math.isfinite(value)
    assert not popoto.redis_db.is_cluster()
    assert popoto.redis_db.current_url() == redis_url
    assert list(r.scan_iter(count=1000)) == []
    assert list(cluster.client().scan_iter(match="*BenchShard*")) == []
