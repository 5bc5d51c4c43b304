"""Bulk writes, async bulk writes and atomic increments on a real 3-master Redis Cluster.

The model has a unique field and the cluster default of 16 tag groups, so every
bulk batch spreads over all masters and its claims live in other slots than
its instances. The cluster comes from the session ``cluster`` fixture
(conftest.py); ``cluster_mode`` configures Popoto for it per test.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import Counter

import pytest

import popoto
from popoto import (
    BulkWriteError,
    IndexedField,
    IntField,
    KeyField,
    Model,
    SortedField,
    StringField,
    UniqueViolation,
    keys,
)

pytestmark = pytest.mark.standalone_only  # these tests bring their own cluster

CTX = multiprocessing.get_context("spawn")


class Member(Model):  # no Meta.shards: 16 groups in cluster mode
    handle = KeyField()
    team = IndexedField(null=True)
    score = SortedField(type=int, null=True)
    email = StringField(unique=True, null=True)
    visits = IntField(default=0)
    badge = IntField(unique=True, null=True)


def members(n, start=0):
    return [Member(handle=f"h{i}", team=f"t{i % 5}", score=i, email=f"h{i}@x.io")
            for i in range(start, start + n)]


def email_claims(client):
    """{claim field: holder} over every group's email claims hash."""
    out = {}
    for ns in Member._meta.groups:
        for value, holder in client.hgetall(keys.field_index_key("UniqueF", ns, "email")).items():
            out[value.decode()] = holder.decode()
    return out


def no_pending_claims(client):
    return not any(v.startswith(b"~") for ns in Member._meta.groups
                   for f in ("email", "badge")
                   for v in client.hvals(keys.field_index_key("UniqueF", ns, f)))


def test_bulk_create_update_delete_with_claims_on_three_masters(cluster_mode):
    """bulk_create spreads over every master; duplicates fail alone; bulk_update re-indexes;
    bulk_delete and delete_all free every unique value (no cross-slot command anywhere)."""
    client = cluster_mode.client()
    created = Member.bulk_create(members(1500), batch_size=400)
    assert len(created) == 1500
    per_master: Counter[int] = Counter()
    for set_key in Member._meta.class_set_keys():
        per_master[cluster_mode.node_for_key(set_key).port] += client.scard(set_key)
    assert len(per_master) == 3 and min(per_master.values()) > 300
    assert Member.query.count() == 1500
    assert Member.query.filter(team="t2").count() == 300

    batch = members(4, start=1500)
    batch[1].email = "h7@x.io"            # held by a stored instance
    batch[3].email = batch[0].email       # a duplicate inside the call
    with pytest.raises(BulkWriteError) as info:
        Member.bulk_create(batch)
    assert sorted(i.handle for i, _e in info.value.failures) == ["h1501", "h1503"]
    assert all(isinstance(e, UniqueViolation) for _i, e in info.value.failures)
    assert Member.query.count() == 1502
    assert not client.exists(Member(handle="h1501").db_key)

    assert Member.bulk_update(Member.query.filter(team="t0"), team="z", score=-1) == 301
    assert Member.query.filter(team="t0").count() == 0
    assert Member.query.filter(team="z", score__lte=-1).count() == 301
    with pytest.raises(BulkWriteError) as info:
        Member.bulk_update(created[:3], email="same@x.io")
    assert info.value.succeeded == 1
    assert Member.query.get(email="same@x.io").handle == "h0"

    assert Member.bulk_delete(Member.query.filter(team="t1")) == 300
    freed = [Member(handle=f"n{i}", email=f"h{i}@x.io") for i in range(1, 1500, 5)]
    assert len(Member.bulk_create(freed)) == 300  # h1, h6, ... were deleted: values free
    assert Member.raw_update(Member.query.filter(team="z").keys(), visits=3) == 301
    assert Member.query.get(handle="h5").visits == 3
    assert no_pending_claims(client)
    assert Member.delete_all(batch_size=250) == 1502 - 300 + 300
    assert email_claims(client) == {}
    assert sum(cluster_mode.key_counts().values()) == 0


def test_atomic_increment_scripted_and_watched_on_a_cluster(cluster_mode):
    """The increment script and the WATCH/MULTI path of a unique field run in one slot each;
    claims of the unique field move across slots."""
    a = Member.create(handle="a", score=1, badge=1)
    Member.create(handle="b", badge=3)
    assert a.atomic_increment("score", 41) == 42
    assert a.atomic_increment("visits") == 1
    assert [m.handle for m in Member.query.filter(score__gte=42)] == ["a"]
    assert a.atomic_increment("badge") == 2
    with pytest.raises(UniqueViolation, match="badge=3"):
        a.atomic_increment("badge")
    Member.create(handle="c", badge=1)  # freed by the first badge increment
    assert Member.query.get(badge=2).handle == "a"
    pipe = popoto.redis_db.get_client().pipeline()
    a.atomic_increment("score", 8, pipeline=pipe)
    assert pipe.execute() == [b"50"]
    assert no_pending_claims(cluster_mode.client())


def test_async_bulk_and_increments_on_a_cluster(cluster_mode):
    """Async bulk create/update/delete/delete_all and both increment paths on the cluster."""

    async def scenario():
        created = await Member.async_bulk_create(members(300), batch_size=120)
        with pytest.raises(BulkWriteError) as info:
            await Member.async_bulk_create([Member(handle="x", email="h3@x.io")])
        assert len(info.value.failures) == 1
        assert await Member.async_bulk_update(Member.query.filter(team="t4"), team="q") == 60
        assert await Member.query.async_count(team="q") == 60
        assert await Member.async_bulk_delete(created[:10]) == 10
        await Member.async_bulk_create([Member(handle="y", email="h3@x.io")])
        m = await Member.async_create(handle="m", badge=10)
        await asyncio.gather(*(m.async_atomic_increment("score") for _ in range(40)))
        assert await m.async_atomic_increment("badge", 5) == 15
        back = await Member.async_load(handle="m")
        deleted = await Member.async_delete_all(batch_size=70)
        return back, deleted

    back, deleted = asyncio.run(scenario())
    assert back.score == 40 and back.badge == 15
    assert deleted == 300 - 10 + 2
    assert email_claims(cluster_mode.client()) == {}


def _increment_worker(url, barrier, n, out):
    popoto.configure(url=url, cluster=True)
    member = Member.query.get(handle="t")
    barrier.wait()
    for i in range(n):
        member.atomic_increment("visits")
        if i % 10 == 0:
            member.atomic_increment("badge")
    out.put("done")


@pytest.mark.slow
def test_4_processes_increment_one_member_on_a_cluster(cluster_mode):
    """4 processes x 100 increments (plus contended unique increments) -> exact totals."""
    Member.create(handle="t", badge=0)
    barrier = CTX.Barrier(4)
    out = CTX.Queue()
    procs = [CTX.Process(target=_increment_worker, args=(cluster_mode.url, barrier, 100, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 4
    assert sorted(out.get(timeout=5) for _ in range(4)) == ["done"] * 4
    back = Member.query.get(handle="t")
    assert back.visits == 400 and back.badge == 40
    assert no_pending_claims(cluster_mode.client())
    Member.bulk_create([Member(handle=f"b{v}", badge=v) for v in range(40)])  # all free
