"""Benchmark harness: the plain floor returns what Popoto returns with the fewest commands,
the same-script floor does Popoto's exact Redis work, the popoto 1.10.1 runner protocol
holds, every scenario has a plain-floor ratio, every peer is reported present or missing
with a reason, and a quick run never writes the tracked results. No timing assertions."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import redis

import popoto
from popoto.ops.bench import popoto1, runner
from popoto.ops.bench.cluster import BenchShard, ShardedRaw, group_tags
from popoto.ops.bench.plain import Layout, Plain
from popoto.ops.bench.timing import PLAIN, POPOTO, QUICK, Result, Sizes
from popoto.ops.bench.workload import CLASS_SET, SCORE_KEY, BenchItem, Dataset, Raw, row_key

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
        obj.__dict__["_redis_key"] = row_key(row)  # as if saved
        obj.qty = 5
        keys, argv = obj.build_save(update_fields=["qty"]).save_args()
        dkeys, dargv = obj.build_delete().delete_args()
        spy.calls.clear()
        raw.update_qty(row, 5)
        raw.delete(row)
        raw.script_increment(row, "qty", "i", "1", "")
        raw.script_increment(row, "score", "f", "0.5", SCORE_KEY)
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


def _calls(r) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()
            if k not in ("cmdstat_config", "cmdstat_info")}


def test_plain_floor_sends_the_fewest_commands(r):
    """save = MULTI/HSET/SADD/ZADD/SADD/EXEC, get = HGETALL, range = ZRANGEBYSCORE + HGETALLs,
    top-N = ZREVRANGEBYSCORE LIMIT + HGETALLs, count = SCARD / ZCOUNT."""
    plain = Plain(r, Layout("PlainItem"))
    rows = Dataset(50).rows
    r.config_resetstat()
    plain.save(rows[0])
    assert _calls(r) == {"multi": 1, "hset": 1, "sadd": 2, "zadd": 1, "exec": 1}
    plain.bulk_create(rows[1:])
    r.config_resetstat()
    plain.get(rows[3])
    assert _calls(r) == {"hgetall": 1}
    r.config_resetstat()
    assert len(plain.score_range(10, 19)) == 10
    assert _calls(r) == {"zrangebyscore": 1, "hgetall": 10}
    r.config_resetstat()
    assert len(plain.top(0, 5)) == 5
    assert _calls(r) == {"zrevrangebyscore": 1, "hgetall": 5}
    r.config_resetstat()
    assert plain.count() == 50 and plain.count_range(0, 9) == 10
    assert _calls(r) == {"scard": 1, "zcount": 1}


def test_plain_floor_returns_what_popoto_returns(r):
    """Every read of the plain floor, over its own layout, returns the rows Popoto returns."""
    rows = Dataset(1000).rows
    for row in rows[:20]:
        BenchItem(**row.kwargs()).save()
    Raw(r).load(rows[20:])
    plain = Plain(r, Layout("PlainItem"))
    plain.load(rows)
    q = BenchItem.query

    def fields(found):
        return [list(runner.read_all(o)) for o in found]

    assert sorted(plain.score_range(100, 199)) == sorted(
        fields(q.filter(score__gte=100, score__lte=199))) == sorted(
        fields(q.filter(score__between=(100, 199))))
    assert sorted(plain.score_range("(99", "(200")) == sorted(
        fields(q.filter(score__gt=99, score__lt=200)))
    combo = plain.range_color(0, 599, "c1")
    assert combo and sorted(combo) == sorted(
        fields(q.filter(score__gte=0, score__lte=599, color="c1")))
    assert plain.range_page(100, 900, 7) == fields(
        q.filter(score__gte=100, score__lte=900).order_by("score").limit(7))
    assert plain.top(0, 10) == fields(q.filter(score__gte=0).order_by("-score").limit(10))
    assert sorted(plain.by_color("c0")) == sorted(fields(q.filter(color="c0")))
    assert sorted(plain.all()) == sorted(fields(q.all()))
    assert plain.count() == q.count() == 1000
    assert plain.count_range(0, 99) == q.filter(score__gte=0, score__lte=99).count() == 100
    assert plain.get(rows[5]) == list(runner.read_all(q.get(sku=rows[5].sku)))


def test_quick_run_never_writes_the_tracked_results(tmp_path):
    """--quick defaults to a temporary file and refuses bench/results.json and docs/."""
    args = runner.build_parser().parse_args(["--quick"])
    output, plots = runner.resolve_paths(args)
    assert Path(output).resolve() != runner.DEFAULT_OUTPUT.resolve()
    assert Path(plots).resolve() == Path(output).resolve().parent
    for argv in (["--quick", "--output", str(runner.DEFAULT_OUTPUT)],
                 ["--quick", "--output", str(tmp_path / "r.json"), "--plots",
                  str(runner.DEFAULT_PLOTS)]):
        with pytest.raises(SystemExit):
            runner.resolve_paths(runner.build_parser().parse_args(argv))


def _timing(samples: list[float], ops: int = 10) -> dict:
    return {"ops": ops, "median_s": sorted(samples)[len(samples) // 2] if samples else 0,
            "per_op_us": 1.0, "samples_s": samples}


def test_popoto1_reply_is_merged_against_its_own_floor():
    """A reply in the runner's format adds popoto 1.10.1 and its own floor to the result of
    the same id; its ratio is against that floor, Popoto's against the parent's."""
    res = Result("3", "get", 10, None, {PLAIN: _timing([1.0, 1.0]),
                                        POPOTO: _timing([2.0, 2.0])})
    reply = popoto1.parse_reply({
        "protocol": 1, "impl": popoto1.IMPL, "environment": {"popoto": "1.10.1"},
        "scenarios": [
            {"scenario": "3", "title": "get()", "timings": {
                PLAIN: _timing([3.0, 3.0]), popoto1.IMPL: _timing([12.0, 12.0])}},
            {"scenario": "zz", "title": "?", "timings": {
                PLAIN: _timing([1.0]), popoto1.IMPL: _timing([1.0])}}],
        "unsupported": [], "memory": {}})
    assert popoto1.merge([res], reply) == ["zz"]
    doc = res.as_dict()
    assert doc["ratio_vs_plain"] == pytest.approx(0.5)
    assert doc["peer_ratios"] == {popoto1.IMPL: pytest.approx(0.25)}
    assert doc["floors"][popoto1.IMPL] == popoto1.FLOOR


@pytest.mark.parametrize("bad", [
    {"protocol": 2, "scenarios": []},
    {"protocol": 1, "error": "boom"},
    {"protocol": 1},
    {"protocol": 1, "scenarios": [{"scenario": "1", "timings": {PLAIN: _timing([1.0])}}]},
    {"protocol": 1, "scenarios": [{"scenario": "1", "timings": {
        PLAIN: _timing([1.0]), popoto1.IMPL: _timing([])}}]},
])
def test_popoto1_malformed_replies_are_refused(bad):
    with pytest.raises(popoto1.ReplyError):
        popoto1.parse_reply(bad)


def test_popoto1_runner_reports_a_missing_or_wrong_interpreter(redis_url):
    """No interpreter: 'missing' with how to get it; this venv's Python (whose popoto is
    this project's, not 1.x): 'failed' with the runner's own reason. Never silent."""
    reply, status = popoto1.run_child("/nonexistent/python", redis_url, QUICK, print)
    assert reply is None and status["status"] == "missing" and "make bench" in status["reason"]
    reply, status = popoto1.run_child(sys.executable, redis_url, QUICK, print)
    assert reply is None and status["status"] == "failed"
    assert "not popoto 1.x" in status["reason"]


TINY = Sizes(saves=10, bulk=(40,), gets=10, stored=700, range_size=50, range_queries=2,
             combo_width=300, combo_queries=2, page_width=300, page_limit=5, page_queries=2,
             top_queries=3, color_queries=1, all_size=100, counts=5, memory=40, scale=(),
             reps=1, peer_divisor=1)


def test_popoto1_runner_real_run(redis_url, r):
    """The real popoto 1.10.1 runs every scenario in its own interpreter and cleans up
    (``make test`` and ``make bench`` create its virtualenv; never skipped)."""
    assert Path(popoto1.default_python()).exists(), \
        "no .venv-popoto1: run `make test` (or `make bench`), which creates it"
    reply, status = popoto1.run_child(popoto1.default_python(), redis_url, TINY, print,
                                      timeout=120)
    assert status["status"] == "present", status
    assert status["version"] == "1.10.1"
    assert ".venv-popoto1" in status["environment"]["popoto_file"]
    ids = {s["scenario"] for s in reply["scenarios"]}
    assert {"1", "8a", "8b", "2/40", "3", "4a", "4b", "4c", "4d", "4e", "5", "6", "7a", "7b",
            "7c"} <= ids
    assert reply["memory"]["bytes_per_object"] > 0
    assert list(r.scan_iter(count=1000)) == []


@pytest.mark.slow
def test_quick_run_writes_results_json(tmp_path, redis_url, monkeypatch, capsys):
    """A --quick --no-cluster run: every scenario has a plain-floor ratio and a same-script
    one, every peer is present or loudly missing with a reason, the targets are listed."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    out = tmp_path / "results.json"
    assert runner.main(["--quick", "--no-cluster", "--output", str(out),
                        "--popoto1-python", str(tmp_path / "no-such-python")]) == 0
    doc = json.loads(out.read_text())
    assert "cluster" not in doc
    env = doc["environment"]
    assert env["redis_version"] and env["python"] and isinstance(env["hiredis"], bool)
    names = {s["scenario"] for s in doc["scenarios"]}
    assert {"1", "2/300", "3", "4a", "4b", "4c", "4d", "4e", "5", "6", "7a", "7b", "7c", "8a",
            "8b", "8c", "8d"} <= names
    assert {"scale-1/200", "scale-3/1500", "scale-5/1500", "scale-4a/1500"} <= names
    for s in doc["scenarios"]:
        assert s["timings"][PLAIN]["per_op_us"] > 0 and s["timings"][POPOTO]["per_op_us"] > 0
        assert s["ratio_vs_plain"] > 0 and s["popoto_overhead"] > 0
    peers = doc["peers"]
    assert set(peers) == {"walrus", "redis-om", popoto1.IMPL}
    for st in peers.values():
        assert st["status"] == "present" or (st["status"] in ("missing", "failed")
                                             and st["reason"])
    assert peers[popoto1.IMPL]["status"] == "missing"
    table = capsys.readouterr().out
    assert "**MISSING PEER popoto-1.10.1" in table
    assert "| 1 | save() one object at a time |" in table
    memory = doc["memory"]
    assert memory["popoto"]["bytes_per_object"] > memory[PLAIN]["hash_bytes_per_object"]
    assert {t["scenario"] for t in doc["targets"]} >= {"1", "3", "4a", "4c", "5", "7a", "7b",
                                                       "9"}
    plots = doc["plots"]
    assert plots.get("skipped") or all(os.path.exists(p) for p in plots["files"])


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


@pytest.mark.slow
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
