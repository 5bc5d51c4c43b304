"""Index health: check_indexes / clean_indexes / rebuild_indexes and the chunk API."""

import asyncio
import logging
import threading
import time

import msgpack
import pytest

from popoto import Field, IndexedField, KeyField, Model, ModelException, SortedField
from popoto import encoding
from popoto.redis_db import get_client

pytestmark = pytest.mark.standalone_only  # pins the unsharded key layout and uses MONITOR


class Shop(Model):
    region = KeyField()
    name = KeyField()
    color = IndexedField(null=True)
    score = SortedField(type=int, null=True, partition_by="region")
    score_2 = SortedField(type=float, null=True)
    email = Field(null=True, unique=True)
    a = Field(null=True)
    b = Field(null=True)

    class Meta:
        indexes = ((("a", "b"), True), (("color", "a"), False))


class ShopX(Model):
    """Name shares the prefix of Shop: its keys must never be taken for Shop's."""

    name = KeyField()
    score = SortedField(type=int, null=True)


class Twin(Model):
    name = KeyField()
    grp = Field(null=True)
    score = SortedField(type=int, null=True, partition_by="grp")
    score_2 = SortedField(type=int, null=True)


class Bulk(Model):
    name = KeyField()
    color = IndexedField()
    score = SortedField(type=int)
    rank = SortedField(type=int)


class Counter(Model):
    name = KeyField()
    v = SortedField(type=int)


RED = "$IndexF:Shop:color:red"
SCORE_EU = "$SortedF:Shop:score:eu"
SCORE_2 = "$SortedF:Shop:score_2"
CLAIMS = "$UniqueF:Shop:email"
CLASS = "$Class:Shop"


def key(i: int) -> str:
    return f"Shop:n{i:02d}:eu"


def token(value: object) -> str:
    return encoding.pack(value).hex()


def make_shops(n: int = 12) -> None:
    for i in range(n):
        Shop.create(region="eu", name=f"n{i:02d}", color="red", score=i, score_2=i / 2,
                    email=f"e{i}", a="x", b=str(i))


def corrupt(r) -> None:
    """Damage Shop's indexes in every way (see test_check_counts_every_kind_of_damage)."""
    ghost = "Shop:ghost:eu"
    r.sadd(RED, ghost)
    r.zadd(SCORE_EU, {ghost: 5})
    r.hset(CLAIMS, token("ghost@x"), ghost)
    r.sadd(CLASS, ghost)
    r.sadd(CLASS, "Other:thing")
    r.delete(key(0))
    r.pexpire(key(1), 1)
    r.srem(RED, key(2))
    r.zrem(SCORE_2, key(3))
    r.srem(CLASS, key(4))
    r.hdel(CLAIMS, token("e5"))
    r.zadd(SCORE_2, {key(6): 999})
    r.sadd("$IndexF:Shop:color:blue", key(7))
    r.hset(CLAIMS, token("old@x"), key(8))
    r.hset(key(9), "color", encoding.pack("green"))
    time.sleep(0.01)


def snapshot(r) -> dict:
    """Logical content of every key (DUMP is not stable for hashtable-encoded sets)."""
    out = {}
    for k in r.scan_iter():
        typ = r.type(k)
        if typ == b"set":
            out[k] = r.smembers(k)
        elif typ == b"zset":
            out[k] = dict(r.zscan_iter(k))
        elif typ == b"hash":
            out[k] = r.hgetall(k)
        else:
            out[k] = r.dump(k)
    return out


def live_names(qs) -> list[str]:
    return [o.name for o in qs]


def assert_queries_right() -> None:
    live = [f"n{i:02d}" for i in range(2, 12)]
    assert sorted(live_names(Shop.query.filter(color="red"))) == [n for n in live if n != "n09"]
    assert Shop.query.filter(color="red").count() == 9
    assert live_names(Shop.query.filter(color="green")) == ["n09"]
    assert Shop.query.filter(color="blue").count() == 0
    assert live_names(Shop.query.filter(region="eu", score__gte=0)) == live
    assert Shop.query.filter(region="eu", score__gte=0).count() == 10
    assert live_names(Shop.query.filter(score_2__gte=0)) == live
    assert live_names(Shop.query.filter(score_2__gt=5.2)) == ["n11"]
    assert Shop.query.count() == 10
    assert sorted(Shop.query.keys()) == [key(i) for i in range(2, 12)]


def test_healthy_model_reports_zero_and_lists_every_index():
    """A model written only through the ORM has no problems; every index is listed."""
    make_shops(3)
    report = Shop.check_indexes()
    assert report["total"] == 0
    assert report["instances"] == 3
    assert report["sorted_fields"] == {"score": 0, "score_2": 0}
    assert report["indexed_fields"] == {"color": 0}
    assert report["unique_fields"] == {"email": 0}
    assert report["composite_indexes"] == {"$Index:Shop:a:b": 0, "$Index:Shop:color:a": 0}
    assert report["class_set"] == 0


def test_check_counts_every_kind_of_damage(r):
    """check_indexes counts orphans, missing, wrong entries and stale @idx records per index."""
    make_shops()
    before = snapshot(r)
    corrupt(r)
    damaged = snapshot(r)
    report = Shop.check_indexes()
    assert snapshot(r) == damaged  # read only
    assert before != damaged
    # color's lex index ($LexF:Shop:color[:r]) adds 2 orphans for each of the 2 vanished
    # instances and 2 wrong scores for n09, whose value changed behind the ORM
    assert report["orphans"] == 19 + 4
    assert report["missing"] == 6
    assert report["wrong"] == 5 + 2
    assert report["owner_records"] == 2
    assert report["total"] == 32 + 6
    assert report["class_set"] == 5
    assert report["indexed_fields"] == {"color": 8 + 6}
    assert report["sorted_fields"] == {"score": 3, "score_2": 4}
    assert report["unique_fields"] == {"email": 5}
    assert report["composite_indexes"] == {"$Index:Shop:a:b": 2, "$Index:Shop:color:a": 5}
    assert report["instances"] == 10


def test_clean_then_rebuild_repairs_everything(r):
    """clean removes orphans, wrong-set entries and stale claims; rebuild fixes the rest."""
    make_shops()
    corrupt(r)
    assert Shop.clean_indexes() == 21 + 4  # + the lex orphans of the 2 vanished instances
    report = Shop.check_indexes()
    # + n09's 2 wrong lex scores (its value changed behind the ORM): rebuild fixes them
    assert (report["orphans"], report["missing"], report["wrong"]) == (0, 6, 3 + 2)
    assert report["owner_records"] == 2
    assert Shop.clean_indexes() == 0
    assert Shop.rebuild_indexes() == 10
    assert Shop.check_indexes()["total"] == 0
    assert_queries_right()


def test_rebuild_alone_repairs_everything_and_unique_claims_work(r):
    """rebuild_indexes alone repairs all damage; restored and freed unique claims behave."""
    make_shops()
    corrupt(r)
    assert Shop.rebuild_indexes(batch_size=3) == 10
    assert Shop.check_indexes(batch_size=3)["total"] == 0
    assert_queries_right()
    assert not r.sismember(CLASS, "Other:thing")
    with pytest.raises(ModelException):
        Shop.create(region="eu", name="dup", email="e5")  # claim of n05 restored
    Shop.create(region="eu", name="old", email="old@x")  # stale claim of n08 freed
    Shop.create(region="eu", name="ghost", email="ghost@x")  # orphan claim freed
    assert Shop.check_indexes()["total"] == 0


def test_reports_and_repairs_records_of_an_owner_the_model_no_longer_has(r):
    """An @idx record of a removed field counts as an owner-record problem; rebuild drops it."""
    make_shops(2)
    stale_key = "$IndexF:Shop:old:x"
    r.hset(key(1), "@idx:old", msgpack.packb([["S", stale_key, key(1)]]))
    r.sadd(stale_key, key(1))
    report = Shop.check_indexes()
    assert report["other_indexes"] == {"old": 1}
    assert report["total"] == 1
    Shop.rebuild_indexes()
    assert not r.exists(stale_key)
    assert not r.hexists(key(1), "@idx:old")
    assert Shop.check_indexes()["total"] == 0


def test_duplicate_unique_values_are_reported_not_fatal(r, caplog):
    """Two live instances with one unique value: rebuild logs it, repairs the rest, check says 2."""
    Shop.create(region="eu", name="n00", email="same", color="red")
    Shop.create(region="eu", name="n01", email="other", color="red")
    r.hset(key(1), mapping={"email": encoding.pack("same"), "color": encoding.pack("blue")})
    with caplog.at_level(logging.ERROR, logger="popoto.maintenance"):
        assert Shop.rebuild_indexes() == 2
    assert "another instance holds it" in caplog.text
    assert live_names(Shop.query.filter(color="blue")) == ["n01"]
    assert r.hget(CLAIMS, token("same")) == key(0).encode()
    assert not r.hexists(CLAIMS, token("other"))
    report = Shop.check_indexes()
    assert report["unique_fields"] == {"email": 2}  # claim missing + its @idx record
    assert report["total"] == 2


def test_unreadable_hash_is_reported_and_left_alone(r, caplog):
    """A hash that cannot be decoded is counted as unreadable, logged, and its entries kept."""
    make_shops(2)
    r.hset(key(1), "score", b"\xc1")
    with caplog.at_level(logging.WARNING, logger="popoto.maintenance"):
        report = Shop.check_indexes()
        Shop.rebuild_indexes()
    assert report["unreadable"] == 1
    assert report["total"] == 0
    assert "cannot rebuild" in caplog.text
    assert r.sismember(RED, key(1))


def test_index_keys_match_exactly():
    """index_keys() classifies keys by segments: score vs score_2, Shop vs ShopX."""
    Twin.create(name="t1", grp="a:b*", score=1, score_2=2)
    Twin.create(name="t2", grp="g", score=3, score_2=4)
    ShopX.create(name="s", score=1)
    Shop.create(region="eu", name="n", score=1)
    assert Twin.index_keys() == ["$Class:Twin", "$SortedF:Twin:score:a%3Ab%2A",
                                 "$SortedF:Twin:score:g", "$SortedF:Twin:score_2"]
    assert Twin._index_owner("$SortedF:Twin:score_2") == "score_2"
    assert Twin._index_owner("$SortedF:Twin:score:g") == "score"
    assert Twin._index_owner("$SortedF:Twin:scor") is None
    assert "$SortedF:ShopX:score" not in Shop.index_keys()
    assert "$Class:ShopX" not in Shop.index_keys()


def test_fields_score_and_score_2_never_touch_each_others_keys(r):
    """Damage in score_2 is reported and cleaned under score_2 only; score's keys stay intact."""
    Twin.create(name="t1", grp="g", score=1, score_2=2)
    r.zadd("$SortedF:Twin:score_2", {"Twin:gone": 1})
    r.zadd("$SortedF:Twin:score:g", {"Twin:t1": 1})  # correct entry
    report = Twin.check_indexes()
    assert report["sorted_fields"] == {"score": 0, "score_2": 1}
    assert Twin.clean_index_chunk("$SortedF:Twin:score:g") == (0, 0)
    assert r.zscore("$SortedF:Twin:score_2", "Twin:gone") == 1
    assert Twin.clean_index_chunk("$SortedF:Twin:score_2") == (0, 1)
    assert Twin.check_indexes()["total"] == 0


def test_clean_index_chunk_rejects_foreign_keys():
    """clean_index_chunk refuses a key that is not one of the model's index keys."""
    with pytest.raises(ModelException, match="not an index key of Twin"):
        Twin.clean_index_chunk("$SortedF:ShopX:score")
    with pytest.raises(ModelException):
        Twin.clean_index_chunk("Twin:t1")


def test_clean_index_chunk_pages_and_is_idempotent(r):
    """Small SCAN steps cover a large set; a second pass removes nothing."""
    for i in range(60):
        Shop.create(region="eu", name=f"n{i:02d}", color="red")
    r.sadd(RED, *[f"Shop:gone{i}:eu" for i in range(200)])
    cursor, removed, steps = 0, 0, 0
    while True:
        cursor, n = Shop.clean_index_chunk(RED, cursor, count=20)
        removed += n
        steps += 1
        if cursor == 0:
            break
    assert removed == 200
    assert steps > 1
    assert r.scard(RED) == 60
    assert Shop.clean_index_chunk(RED, 0, count=1000) == (0, 0)


def test_clean_index_chunk_on_claims_and_class_set(r):
    """Claims of gone or non-owning holders and class-set entries of gone hashes are removed."""
    make_shops(3)
    r.hset(CLAIMS, mapping={token("x"): "Shop:gone:eu", token("y"): key(1)})
    r.sadd(CLASS, "Shop:gone:eu", "Shop:bad", "junk")
    assert Shop.clean_index_chunk(CLAIMS) == (0, 2)
    assert r.hlen(CLAIMS) == 3
    assert Shop.clean_index_chunk(CLASS) == (0, 3)
    assert r.scard(CLASS) == 3


def test_scan_class_set_and_instance_keys_page_through_everything(r):
    """scan_class_set / scan_instance_keys return every key over their steps."""
    for i in range(50):
        Shop.create(region="eu", name=f"n{i:02d}")
    r.srem(CLASS, key(0))
    expected = {key(i) for i in range(50)}

    def collect(step):
        cursor, seen = 0, set()
        while True:
            cursor, found = step(cursor, 7)
            seen.update(found)
            if cursor == 0:
                return seen

    assert collect(Shop.scan_class_set) == expected - {key(0)}
    assert collect(Shop.scan_instance_keys) == expected


def test_reindex_keys_restores_given_keys_only_and_is_idempotent(r):
    """reindex_keys rewrites the listed instances' entries (class set too) and nothing else."""
    make_shops(4)
    r.srem(RED, key(0), key(1))
    r.zadd(SCORE_2, {key(0): 100, key(1): 100})
    r.srem(CLASS, key(0))
    assert Shop.reindex_keys([key(0), "Other:x", key(0)]) == 1
    assert r.sismember(RED, key(0)) and not r.sismember(RED, key(1))
    assert r.zscore(SCORE_2, key(0)) == 0.0 and r.zscore(SCORE_2, key(1)) == 100
    assert r.sismember(CLASS, key(0))
    assert Shop.reindex_keys([key(1)]) == 1
    repaired = snapshot(r)
    assert Shop.reindex_keys([key(i) for i in range(4)]) == 4
    assert snapshot(r) == repaired
    assert Shop.check_indexes()["total"] == 0


def test_reindex_keys_drops_keys_whose_hash_is_gone(r):
    """A gone key leaves the class set and the unpartitioned sorted sets; it is not counted."""
    make_shops(2)
    r.delete(key(0))
    assert Shop.reindex_keys([key(0), key(1)]) == 1
    assert not r.sismember(CLASS, key(0))
    assert r.zscore(SCORE_2, key(0)) is None
    assert r.sismember(RED, key(0))  # value-addressed: found by clean_index_chunk
    assert Shop.clean_indexes() == 5 + 2  # + its 2 lex entries ($LexF:Shop:color[:r])
    assert Shop.check_indexes()["total"] == 0


def test_reindex_keeps_values_ttl_and_does_not_resurrect(r):
    """Reindexing writes no field value, keeps the TTL, and never recreates a deleted hash."""
    shop = Shop(region="eu", name="n00", color="red", score=1, _ttl=1000)
    shop.save()
    r.pexpire(key(0), 500_000)
    values = {k: v for k, v in r.hgetall(key(0)).items() if not k.startswith(b"@idx:")}
    r.srem(RED, key(0))
    assert Shop.reindex_keys([key(0)]) == 1
    assert r.sismember(RED, key(0))
    assert 0 < r.pttl(key(0)) <= 500_000
    assert {k: v for k, v in r.hgetall(key(0)).items() if not k.startswith(b"@idx:")} == values
    shop.delete()
    assert Shop.reindex_keys([key(0)]) == 0
    assert not r.exists(key(0))


def test_reindex_never_undoes_concurrent_saves():
    """Saves racing a rebuild win: final values, scores and indexes agree with the last save."""
    names = [f"c{i:03d}" for i in range(200)]
    for name in names:
        Counter.create(name=name, v=0)
    stop = threading.Event()
    last: dict[str, int] = {}
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set():
                name = names[i % len(names)]
                obj = Counter.query.get(name=name)
                obj.v += 1
                obj.save()
                last[name] = obj.v
                i += 7
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(5):
            Counter.rebuild_indexes(batch_size=25)
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert last
    client = get_client()
    for name, v in last.items():
        assert Counter.query.get(name=name).v == v
        assert client.zscore("$SortedF:Counter:v", f"Counter:{name}") == v
    assert Counter.check_indexes()["total"] == 0


@pytest.mark.slow
def test_queries_stay_correct_during_rebuild_of_20k_objects(r):
    """A rebuild repairs in place: queries on 20k objects keep answering right while it runs."""
    n = 20_000
    colors = ("red", "blue", "green", "gold")
    client = get_client()
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        Bulk(name=f"b{i:05d}", color=colors[i % 4], score=i, rank=i).save(pipeline=pipe)
        if i % 1000 == 999:
            pipe.execute()
            pipe = client.pipeline(transaction=False)
    damage = client.pipeline(transaction=False)
    for i in range(n):
        damage.zadd("$SortedF:Bulk:rank", {f"Bulk:b{i:05d}": -i})
    damage.execute()
    result: list[int] = []
    errors: list[BaseException] = []

    def rebuild() -> None:
        try:
            result.append(Bulk.rebuild_indexes(batch_size=500))
        except BaseException as exc:
            errors.append(exc)

    expected_page = [f"b{i:05d}" for i in range(1000, 1010)]
    expected_blue = {f"Bulk:b{i:05d}" for i in range(1, 100, 4)}
    thread = threading.Thread(target=rebuild)
    started = time.monotonic()
    thread.start()
    rounds = 0
    while thread.is_alive():
        assert Bulk.query.filter(color="red").count() == n // 4
        assert [b.name for b in Bulk.query.filter(score__gte=1000, score__lt=1010)] \
            == expected_page
        assert set(Bulk.query.filter(color="blue", score__lt=100).keys()) == expected_blue
        assert Bulk.query.count() == n
        rounds += 1
    thread.join()
    elapsed = time.monotonic() - started
    assert not errors
    assert result == [n]
    assert rounds >= 5, f"only {rounds} query rounds ran during a {elapsed:.1f}s rebuild"
    assert [b.name for b in Bulk.query.filter(rank__lt=3)] == ["b00000", "b00001", "b00002"]
    assert Bulk.check_indexes()["total"] == 0


def test_maintenance_never_reads_an_index_whole(r, redis_url):
    """check/clean/rebuild use SCAN-family commands: no KEYS, SMEMBERS, HKEYS/HVALS or ZRANGE."""
    import redis as redis_py

    make_shops()
    corrupt(r)
    monitor_client = redis_py.Redis.from_url(redis_url)
    seen: list[str] = []
    ready = threading.Event()

    def watch() -> None:
        with monitor_client.monitor() as m:
            ready.set()
            for event in m.listen():
                command = event["command"]
                if command == "ECHO popoto-monitor-stop":
                    return
                seen.append(command)

    thread = threading.Thread(target=watch)
    thread.start()
    ready.wait(5)
    time.sleep(0.1)
    Shop.check_indexes()
    Shop.clean_indexes()
    Shop.rebuild_indexes()
    r.echo("popoto-monitor-stop")
    thread.join(10)
    monitor_client.close()
    names = {c.split(" ", 1)[0].upper() for c in seen}
    assert {"SCAN", "SSCAN", "ZSCAN", "HSCAN"} <= names
    forbidden = {"KEYS", "SMEMBERS", "HKEYS", "HVALS", "ZRANGE", "ZREVRANGE", "ZRANGEBYSCORE",
                 "SUNION", "SINTER", "SORT"}
    assert not names & forbidden
    assert not [c for c in seen if c.upper().startswith("HGETALL $")]


def test_async_variants():
    """async_check_indexes / async_clean_indexes / async_rebuild_indexes do the same work."""
    make_shops(3)
    client = get_client()
    client.sadd(RED, "Shop:gone:eu")
    client.srem(RED, key(0))

    async def run():
        before = await Shop.async_check_indexes()
        removed = await Shop.async_clean_indexes()
        rebuilt = await Shop.async_rebuild_indexes()
        after = await Shop.async_check_indexes()
        return before, removed, rebuilt, after

    before, removed, rebuilt, after = asyncio.run(run())
    assert before["total"] == 2
    assert removed == 1
    assert rebuilt == 3
    assert after["total"] == 0
