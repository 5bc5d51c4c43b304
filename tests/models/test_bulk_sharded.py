"""Bulk writes, async writes and atomic increments of sharded models (Meta.shards=4, standalone).

Standalone Redis with ``Meta.shards = 4`` gives exactly the key layout of cluster
mode (four hash-tagged groups); tests/models/test_bulk_cluster.py runs the same
operations on a real three-master cluster.
"""

import asyncio
import multiprocessing

import pytest
import redis
import redis.cluster

import popoto
from popoto import (
    BulkWriteError,
    IndexedField,
    IntField,
    KeyField,
    Model,
    ModelException,
    SortedField,
    StringField,
    UniqueViolation,
    keys,
)
from popoto.engine import io
from popoto.models import counters
from tests.helpers import count_round_trips

CTX = multiprocessing.get_context("spawn")


class Store(Model):
    name = KeyField()
    city = IndexedField(null=True)
    rating = SortedField(type=float, null=True)
    email = StringField(unique=True, null=True)
    note = StringField(null=True)

    class Meta:
        shards = 4


class Crate(Model):
    """Sharded, without any unique value."""

    name = KeyField()
    city = IndexedField(null=True)
    weight = SortedField(type=int, null=True)

    class Meta:
        shards = 4


class Slot(Model):
    """Sharded, with a unique composite index."""

    ident = KeyField()
    row = IntField(null=True)
    seat = IntField(null=True)

    class Meta:
        shards = 4
        indexes = ((("row", "seat"), True),)


class Logged:
    """Behaviour: deletes are logged with the instance's note (so hashes are read first)."""

    popoto_behaviour = True

    def behaviour_on_delete(instance, batch):
        batch.command("RPUSH", keys.behaviour_key("Log", batch.ns), instance.note or "-")


class Memo(Logged, Model):
    name = KeyField()
    note = StringField(null=True)
    code = StringField(unique=True, null=True)

    class Meta:
        shards = 4


class Tally(Model):
    name = KeyField()
    count = SortedField(type=int, default=0)
    cents = IntField(default=0)
    ticket = IntField(unique=True, null=True)
    level = IndexedField(type=int, default=0)

    class Meta:
        shards = 4


def stores(n, start=0, **extra):
    return [Store(name=f"s{i}", city="paris" if i % 2 else "rome", rating=float(i),
                  email=f"s{i}@x.io", **extra) for i in range(start, start + n)]


def claims_of(r, model, field):
    """{token or hex value: holder} of every group's claims hash of ``field``."""
    out = {}
    for ns in model._meta.groups:
        for value, holder in r.hgetall(keys.field_index_key("UniqueF", ns, field)).items():
            out[value.decode()] = holder.decode()
    return out


def pending_claims(r):
    """Claim values still pending (``~deadline~key``) anywhere: settled writes leave none."""
    return [v for pattern in ("$UniqueF:*", "$Index:*") for k in r.scan_iter(match=pattern)
            for v in r.hvals(k) if v.startswith(b"~")]


def refuse_sync(self, *args, **kwargs):
    raise AssertionError(f"synchronous Redis call during an async operation: {args[:1]}")


def email_token(value):
    return Store.email.unique_token(value)


def test_bulk_create_2000_spreads_over_every_group_and_queries_see_all(r):
    """2000 instances land in all 4 groups; counts, index and range queries see every one."""
    created = Store.bulk_create(stores(2000))
    assert len(created) == 2000 and all(s.is_persisted for s in created)
    per_group = [r.scard(k) for k in Store._meta.class_set_keys()]
    assert sum(per_group) == 2000 and min(per_group) > 350
    assert Store.query.count() == 2000
    assert Store.query.filter(city="paris").count() == 1000
    assert len(Store.query.filter(rating__gte=1990).keys()) == 10
    assert Store.query.get(email="s1234@x.io").name == "s1234"
    held = claims_of(r, Store, "email")
    assert len(held) == 2000 and held[email_token("s7@x.io")] == Store(name="s7").db_key
    assert all(r.hlen(keys.field_index_key("UniqueF", ns, "email")) > 350
               for ns in Store._meta.groups)  # claims live in their values' groups
    assert pending_claims(r) == []


@pytest.mark.standalone_only  # a cluster pipeline is one round trip per node
def test_bulk_create_round_trips_per_batch(r):
    """Claims, scripts, settling: 3 round trips per batch with unique values, 1 without."""
    Store.bulk_create(stores(1))
    Crate.bulk_create([Crate(name="warm")])  # scripts loaded
    r.flushdb()
    with count_round_trips() as trips:
        Store.bulk_create(stores(10), batch_size=4)
    assert trips[0] == 3 * 3
    with count_round_trips() as trips:
        Crate.bulk_create([Crate(name=f"c{i}", weight=i) for i in range(10)], batch_size=4)
    assert trips[0] == 3
    assert Crate.query.filter(weight__gte=0).count() == 10


def test_bulk_create_reports_exactly_the_duplicates_and_writes_nothing_for_them(r):
    """Duplicates (within the call, across batches, against stored data) fail alone, unwritten."""
    Store.create(name="old", email="taken@x.io")
    batch = stores(8)
    batch[2].email = "taken@x.io"      # held by a stored instance
    batch[5].email = "s0@x.io"         # same value as batch[0], same batch
    batch[7].email = "s1@x.io"         # same value as batch[1], a later batch
    batch[6].name = "old"              # key already taken
    with pytest.raises(BulkWriteError) as info:
        Store.bulk_create(batch, batch_size=6)
    err = info.value
    assert err.succeeded == 4
    assert sorted(i.name for i, _e in err.failures) == ["old", "s2", "s5", "s7"]
    assert all(isinstance(e, UniqueViolation) for _i, e in err.failures)
    by_name = {i.name: str(e) for i, e in err.failures}
    assert "email='taken@x.io'" in by_name["s2"] and Store(name="old").db_key in by_name["s2"]
    assert "email='s0@x.io'" in by_name["s5"] and Store(name="s0").db_key in by_name["s5"]
    assert "already exists" in by_name["old"]
    assert sorted(s.name for s in Store.query.all()) == ["old", "s0", "s1", "s3", "s4"]
    for failed in ("s2", "s5", "s7"):
        assert not r.exists(Store(name=failed).db_key)
        assert not any(r.sismember(k, Store(name=failed).db_key)
                       for k in r.scan_iter(match="$IndexF:*"))
    assert Store.query.get(name="old").email == "taken@x.io"  # stored instance untouched
    held = claims_of(r, Store, "email")
    assert held == {email_token(v): Store(name=n).db_key for n, v in [
        ("old", "taken@x.io"), ("s0", "s0@x.io"), ("s1", "s1@x.io"),
        ("s3", "s3@x.io"), ("s4", "s4@x.io")]}
    assert pending_claims(r) == []
    assert not batch[5].is_persisted


def test_bulk_create_of_a_unique_composite(r):
    """A unique composite of a sharded model: duplicates fail, NULL members never collide."""
    with pytest.raises(BulkWriteError) as info:
        Slot.bulk_create([Slot(ident="a", row=1, seat=1), Slot(ident="b", row=1, seat=1),
                          Slot(ident="c", row=1, seat=2), Slot(ident="d", row=None, seat=1),
                          Slot(ident="e", row=None, seat=1)])
    assert [i.ident for i, _e in info.value.failures] == ["b"]
    assert Slot.query.count() == 4
    assert pending_claims(r) == []


def test_bulk_update_reindexes_across_groups_and_moves_claims(r):
    """Index entries move in every group; a new unique value frees the old one for reuse."""
    items = Store.bulk_create(stores(40))
    assert Store.bulk_update(Store.query.filter(city="rome"), city="oslo", rating=9.5) == 20
    assert Store.query.filter(city="rome").count() == 0
    assert not any(r.exists(keys.field_index_key("IndexF", ns, "city", "rome"))
                   for ns in Store._meta.groups)
    assert Store.query.filter(city="oslo").count() == 20
    assert Store.query.filter(rating=9.5).count() == 20
    assert Store.bulk_update(items[:10], note="n", batch_size=3) == 10  # no claim touched
    assert sum(Store.bulk_update([item], email=f"new{item.name}@x.io")
               for item in items[:10]) == 10
    held = claims_of(r, Store, "email")
    assert email_token("s3@x.io") not in held
    assert held[email_token("news3@x.io")] == Store(name="s3").db_key
    Store.create(name="reuse", email="s3@x.io")  # the old value is free again
    assert pending_claims(r) == []


def test_bulk_update_unique_conflicts_one_wins(r):
    """Giving many instances one unique value: one wins, every other is a reported failure."""
    items = Store.bulk_create(stores(6))
    with pytest.raises(BulkWriteError) as info:
        Store.bulk_update(items, email="same@x.io", batch_size=4)
    assert info.value.succeeded == 1 and len(info.value.failures) == 5
    assert Store.query.get(email="same@x.io").name == "s0"
    assert Store.query.get(name="s1").email == "s1@x.io"
    held = claims_of(r, Store, "email")
    assert held[email_token("same@x.io")] == Store(name="s0").db_key
    assert email_token("s0@x.io") not in held  # released by the winner
    assert held[email_token("s5@x.io")] == Store(name="s5").db_key
    assert pending_claims(r) == []


def test_bulk_update_to_null_releases_and_skips_deleted(r):
    """Setting a unique field to None releases its claims; deleted instances are not recreated."""
    items = Store.bulk_create(stores(4))
    r.delete(items[3].db_key)
    assert Store.bulk_update(items, email=None) == 3
    assert not r.exists(items[3].db_key)
    assert set(claims_of(r, Store, "email")) == {email_token("s3@x.io")}  # the deleted one's
    Store.bulk_create([Store(name="again", email="s1@x.io")])


def test_bulk_delete_releases_claims_for_reuse(r):
    """bulk_delete by list and by query removes every index entry and frees unique values."""
    items = Store.bulk_create(stores(30))
    assert Store.bulk_delete(Store.query.filter(city="paris"), batch_size=7) == 15
    assert Store.bulk_delete(items[:4], batch_size=3) == 2  # s1 and s3 were already gone
    assert Store.query.count() == 13
    assert Store.query.filter(city="paris").count() == 0
    assert len(claims_of(r, Store, "email")) == 13
    Store.bulk_create([Store(name=f"n{i}", email=f"s{i}@x.io") for i in range(4)])
    assert Store.query.get(email="s0@x.io").name == "n0"
    assert pending_claims(r) == []
    with pytest.raises(ModelException, match="the query is for Crate"):
        Store.bulk_delete(Crate.query.all())


def test_delete_all_walks_every_group(r):
    """delete_all SSCANs the class set of every group; hooks see the data; claims are freed."""
    Memo.bulk_create([Memo(name=f"m{i}", note=f"note{i}", code=f"c{i}") for i in range(50)])
    r.sadd(Memo._meta.class_set_keys()[2], f"{Memo._meta.groups[2]}:ghost")
    assert Memo.delete_all(batch_size=8) == 50
    assert [k for k in r.scan_iter() if not k.startswith(b"$Log:")] == []
    logged = sorted(v.decode() for k in r.scan_iter(match="$Log:*") for v in r.lrange(k, 0, -1))
    assert logged == sorted(f"note{i}" for i in range(50))
    assert Memo.delete_all() == 0


@pytest.mark.standalone_only  # counts the script calls of the one server
def test_raw_update_sends_one_script_call_per_group(r):
    """raw_update groups each batch's keys by tag group (one slot per script call)."""
    items = Store.bulk_create(stores(20))
    targets = [*items, Store(name="missing").db_key]
    r.config_resetstat()
    assert Store.raw_update(targets, batch_size=100, note="migrated") == 20
    assert int(r.info("commandstats")["cmdstat_evalsha"]["calls"]) == 4
    assert all(s.note == "migrated" for s in Store.query.all())
    with pytest.raises(ModelException, match=r"'Crate:x' is not a Store key \(expected \{Store"):
        Store.raw_update(["Crate:x"], note="x")


def test_scripted_increment_keys_stay_in_the_instance_group(r):
    """The increment script's keys are all in the instance's slot; scores follow in its group."""
    tally = Tally.create(name="t")
    for name in ("count", "cents"):
        call_keys, _args = counters.increment_call(tally, Tally._meta.fields[name], 1)
        assert len(call_keys) == 2 and "" not in call_keys
        assert {keys.key_slot(k) for k in call_keys} == {keys.key_slot(tally.db_key)}
    assert tally.atomic_increment("count", 5) == 5
    assert tally.atomic_increment("cents", 7) == 7
    ns = keys.ns_of(tally.db_key)
    assert r.zscore(keys.field_index_key("SortedF", ns, "count"), tally.db_key) == 5
    r.zrem(keys.field_index_key("SortedF", ns, "count"), tally.db_key)
    r.hdel(tally.db_key, "@idx:count")  # as if the entry was never written
    assert tally.atomic_increment("count") == 6
    assert r.zscore(keys.field_index_key("SortedF", ns, "count"), tally.db_key) == 6
    assert Tally.query.filter(count__gte=6).keys() == [tally.db_key]


def test_watched_increment_of_a_unique_field_settles_claims(r):
    """Incrementing a unique (sharded) field takes the new value's claim and frees the old one."""
    a = Tally.create(name="a", ticket=1)
    Tally.create(name="b", ticket=3)
    assert a.atomic_increment("ticket") == 2
    held = claims_of(r, Tally, "ticket")
    assert held == {Tally.ticket.unique_token(2): a.db_key, Tally.ticket.unique_token(3):
                    Tally(name="b").db_key}
    with pytest.raises(UniqueViolation, match="ticket=3"):
        a.atomic_increment("ticket")
    assert Tally.query.get(name="a").ticket == 2
    assert claims_of(r, Tally, "ticket") == held
    assert a.atomic_increment("level", 4) == 4
    assert Tally.query.filter(level=4).keys() == [a.db_key]
    Tally.create(name="c", ticket=1)  # released by a's first increment
    assert pending_claims(r) == []


def _increment_worker(url, cluster, barrier, n, out):
    popoto.configure(url=url, cluster=cluster)
    tally = Tally.query.get(name="t")
    barrier.wait()
    for i in range(n):
        tally.atomic_increment("count", 1)
        if i % 10 == 0:
            tally.atomic_increment("ticket", 1)  # unique: WATCH/MULTI with claims
    out.put("done")


@pytest.mark.slow
def test_8_processes_x_200_increments_on_a_sharded_model(redis_url, r):
    """8 processes x 200 increments -> exactly 1600; the contended increments of a unique
    field (WATCH/MULTI plus claims) are exact and leave every old value free."""
    Tally.create(name="t", ticket=0)
    barrier = CTX.Barrier(8)
    out = CTX.Queue()
    cluster = popoto.redis_db.is_cluster()
    procs = [CTX.Process(target=_increment_worker, args=(redis_url, cluster, barrier, 200, out))
             for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 8
    assert sorted(out.get(timeout=5) for _ in range(8)) == ["done"] * 8
    back = Tally.query.get(name="t")
    assert back.count == 1600
    assert back.ticket == 8 * 20
    ns = keys.ns_of(back.db_key)
    assert r.zscore(keys.field_index_key("SortedF", ns, "count"), back.db_key) == 1600
    assert claims_of(r, Tally, "ticket")[Tally.ticket.unique_token(160)] == back.db_key
    assert pending_claims(r) == []
    Tally.bulk_create([Tally(name=f"n{v}", ticket=v) for v in range(160)])  # all free again
    with pytest.raises(UniqueViolation):
        Tally.create(name="late", ticket=160)


def test_async_bulk_and_increment_of_a_sharded_model(r):
    """Async bulk create/update/delete/delete_all and increments: same results as sync."""

    async def scenario():
        created = await Store.async_bulk_create(stores(60), batch_size=25)
        assert len(created) == 60
        with pytest.raises(BulkWriteError) as info:
            await Store.async_bulk_create([Store(name="x1", email="s3@x.io"),
                                           Store(name="x2", email="fresh@x.io"),
                                           Store(name="x3", email="fresh@x.io")])
        assert sorted(i.name for i, _e in info.value.failures) == ["x1", "x3"]
        assert await Store.async_bulk_update(Store.query.filter(city="rome"), city="lima",
                                             batch_size=7) == 30
        assert await Store.query.async_count(city="lima") == 30
        assert await Store.async_bulk_delete(Store.query.filter(city="paris")) == 30
        await Store.async_bulk_create([Store(name="again", email="s1@x.io")])
        tally = await Tally.async_create(name="t", ticket=10)
        await asyncio.gather(*(tally.async_atomic_increment("count") for _ in range(50)))
        assert await tally.async_atomic_increment("ticket", 5) == 15
        with pytest.raises(UniqueViolation):
            other = await Tally.async_create(name="o", ticket=16)
            await other.async_atomic_increment("ticket", -1)
        assert await Store.async_delete_all(batch_size=9) == 32
        return await Tally.async_load(name="t")

    with pytest.MonkeyPatch.context() as mp:  # no synchronous Redis call may sneak in
        for cls in (redis.Redis, redis.cluster.RedisCluster):
            mp.setattr(cls, "execute_command", refuse_sync)
        mp.setattr(redis.client.Pipeline, "execute", refuse_sync)
        mp.setattr(redis.cluster.ClusterPipeline, "execute", refuse_sync)
        back = asyncio.run(scenario())
    assert back.count == 50 and back.ticket == 15
    assert claims_of(r, Store, "email") == {}
    assert set(claims_of(r, Tally, "ticket")) == {Tally.ticket.unique_token(15),
                                                 Tally.ticket.unique_token(16)}
    assert pending_claims(r) == []


def test_async_save_and_delete_of_a_sharded_model_settle_claims(r):
    """async_save/async_delete run the sync steps: claims taken, moved and released."""

    async def scenario():
        s = await Store.async_create(name="a", email="one@x.io")
        with pytest.raises(UniqueViolation):
            await Store.async_create(name="b", email="one@x.io")
        s.email = "two@x.io"
        await s.async_save()
        await Store.async_create(name="c", email="one@x.io")
        assert await s.async_delete() is True
        await Store.async_create(name="d", email="two@x.io")

    asyncio.run(scenario())
    assert claims_of(r, Store, "email") == {email_token("one@x.io"): Store(name="c").db_key,
                                            email_token("two@x.io"): Store(name="d").db_key}
    assert pending_claims(r) == []


def test_lost_script_cache_mid_bulk_is_recovered(r):
    """After SCRIPT FLUSH a sharded bulk write reloads the scripts and writes everything."""
    Store.bulk_create(stores(3))
    r.script_flush()
    Store.bulk_create(stores(5, start=3))
    r.script_flush()
    assert Store.bulk_delete(Store.query.all()) == 8
    assert claims_of(r, Store, "email") == {}


def test_connection_loss_mid_bulk_raises(r, embedded_server, monkeypatch):
    """A round trip that fails as a whole raises the Redis error (nothing is reported as done)."""
    calls = {"n": 0}
    original = io.send_inline

    def flaky(client, commands):
        calls["n"] += 1
        if calls["n"] == 2:  # the scripts' round trip, after the claims were taken
            raise redis.exceptions.ConnectionError("lost")
        return original(client, commands)

    monkeypatch.setattr(io, "send_inline", flaky)
    with pytest.raises(redis.exceptions.ConnectionError, match="lost"):
        Store.bulk_create(stores(5))
    monkeypatch.undo()
    assert Store.query.count() == 0
    assert claims_of(r, Store, "email") == {}  # pending claims were rolled back
