"""Async model operations and async query reads, on redis.asyncio against the real Redis."""

import asyncio
import re
from decimal import Decimal

import pytest
import redis

from popoto import (
    BulkWriteError,
    IndexedField,
    IntField,
    KeyField,
    Model,
    ModelException,
    Q,
    QueryException,
    SortedField,
    StringField,
    UniqueViolation,
    keys,
)


class Gadget(Model):
    maker = KeyField()
    code = KeyField()
    color = IndexedField(null=True)
    price = SortedField(type=Decimal, null=True)
    stock = IntField(default=0)
    serial = StringField(unique=True, null=True)
    note = StringField(null=True)


def key_count(r):
    """Keys in the test database (every node of a cluster)."""
    return sum(1 for _ in r.scan_iter())


def run(coro):
    return asyncio.run(coro)


def refuse(self, *args, **kwargs):
    raise AssertionError(f"synchronous Redis call during an async operation: {args[:1]}")


def run_async_only(coro):
    """Run ``coro``, failing loudly if anything uses the synchronous redis client."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(redis.Redis, "execute_command", refuse)
        mp.setattr(redis.client.Pipeline, "execute", refuse)
        return asyncio.run(coro)


def make_gadgets():
    items = []
    for i in range(12):
        items.append(Gadget(maker="acme" if i % 3 else "zeta", code=f"c{i:02d}",
                            color=("red", "blue", None)[i % 3], price=Decimal(i) / 4,
                            stock=i * 10, serial=f"sn{i}", note="odd" if i % 2 else "even"))
    Gadget.bulk_create(items)


def test_create_load_save_delete_maintain_indexes(r):
    """async_create/async_load/async_save/async_delete keep the hash and every index in step."""

    async def scenario():
        g = await Gadget.async_create(maker="m", code="1", color="red", price=Decimal("2.50"),
                                      serial="x1")
        loaded = await Gadget.async_load(maker="m", code="1")
        assert loaded.price == Decimal("2.50") and loaded.color == "red"
        assert (await Gadget.async_load(db_key=g.pk)).serial == "x1"
        loaded.color, loaded.price = "blue", Decimal("3")
        assert await loaded.async_save() is True
        assert await Gadget.query.async_count(color="blue") == 1
        assert await Gadget.query.async_count(color="red") == 0
        assert await g.async_delete() is True
        assert await Gadget.async_load(maker="m", code="1") is None
        return True

    assert run_async_only(scenario())
    assert key_count(r) == 0


def test_async_create_conflicts_and_invalid_values(r):
    """Duplicate keys and unique values raise UniqueViolation; invalid values ModelException."""

    async def scenario():
        first = await Gadget.async_create(maker="m", code="1", serial="s")
        with pytest.raises(UniqueViolation, match=re.escape(first.pk)):
            await Gadget.async_create(maker="m", code="1")
        with pytest.raises(UniqueViolation, match="serial='s'"):
            await Gadget.async_create(maker="m", code="2", serial="s")
        g = Gadget(maker="m", code="3")
        g.stock = "many"
        with pytest.raises(ModelException, match=r"Gadget.stock.*'many'"):
            await g.async_save()
        assert await g.async_save(ignore_errors=True) is False

    run_async_only(scenario())
    assert Gadget.query.keys() == [Gadget(maker="m", code="1").db_key]
    assert not any(r.exists(Gadget(maker="m", code=c).db_key) for c in ("2", "3"))


def test_async_get_or_create_and_update_or_create():
    """async_get_or_create / async_update_or_create return (instance, created)."""

    async def scenario():
        g, created = await Gadget.async_get_or_create(maker="m", code="1",
                                                      defaults={"stock": 5})
        assert created and g.stock == 5
        g, created = await Gadget.async_get_or_create(maker="m", code="1",
                                                      defaults={"stock": 9})
        assert not created and g.stock == 5
        g, created = await Gadget.async_update_or_create(maker="m", code="1",
                                                         defaults={"stock": 7})
        assert not created and (await Gadget.async_load(maker="m", code="1")).stock == 7
        g, created = await Gadget.async_update_or_create(maker="m", code="2",
                                                         defaults={"stock": 1})
        assert created and g.stock == 1

    run_async_only(scenario())


QUERIES = [
    lambda q: q.all(),
    lambda q: q.filter(color="red"),
    lambda q: q.filter(color__in=["red", "blue"]),
    lambda q: q.filter(color__isnull=True),
    lambda q: q.filter(price__gte=1),
    lambda q: q.filter(price__between=(Decimal("0.5"), 2)).order_by("-price"),
    lambda q: q.filter(maker="acme"),
    lambda q: q.filter(Q(color="red") | Q(price__lt=1)),
    lambda q: q.filter(~Q(color="red"), price__gte=0),
    lambda q: q.filter(note="odd"),
    lambda q: q.filter(Q(note="odd") | Q(color="blue")).order_by("stock"),
    lambda q: q.order_by("price").limit(4),
    lambda q: q.order_by("-price").offset(3).limit(5),
    lambda q: q.order_by("stock").limit(3),
    lambda q: q.filter(price__gte=1).values("code", "price"),
    lambda q: q.filter(note="even").values("code").order_by("code"),
    lambda q: q.filter(price__gt=100),
]


def normalise(rows):
    return [r if isinstance(r, dict) else r.pk for r in rows]


@pytest.mark.parametrize("build", QUERIES)
def test_async_reads_match_sync_reads(build):
    """async_filter/async_all/async_count give exactly what the sync query gives."""
    make_gadgets()
    qs = build(Gadget.query)
    expected = normalise(list(qs))
    expected_count = qs.count()

    async def scenario():
        got = await build(Gadget.query).async_list()
        count = await build(Gadget.query).async_count()
        return normalise(got), count

    got, count = run(scenario())
    if qs._order is None:
        got, expected = sorted(got, key=repr), sorted(expected, key=repr)
    assert got == expected
    assert count == expected_count


def test_async_reads_do_not_use_the_sync_client():
    """Async reads go through redis.asyncio only (planning is shared, I/O is not)."""

    async def scenario():
        await Gadget.async_bulk_create([Gadget(maker="m", code=str(i), color="red",
                                               price=Decimal(i)) for i in range(5)])
        assert len(await Gadget.query.async_filter(color="red", price__gte=2)) == 3
        assert len(await Gadget.query.async_all()) == 5
        assert await Gadget.query.async_count(Q(color="red") | Q(price__lt=1)) == 5
        assert (await Gadget.query.async_get(maker="m", code="3")).price == 3
        return True

    assert run_async_only(scenario())


def test_async_get_variants():
    """async_get by key fields, by db_key and by filter; None when absent; error when ambiguous."""
    make_gadgets()

    async def scenario():
        assert (await Gadget.query.async_get(maker="zeta", code="c00")).serial == "sn0"
        key = Gadget(maker="acme", code="c01").db_key
        assert (await Gadget.query.async_get(db_key=key)).serial == "sn1"
        assert (await Gadget.query.async_get(serial="sn4")).code == "c04"  # residual filter
        assert (await Gadget.query.async_get(price=Decimal("1.25"))).code == "c05"
        assert await Gadget.query.async_get(maker="nobody", code="x") is None
        assert await Gadget.query.async_get(db_key="Other:x") is None
        with pytest.raises(QueryException, match="more than one"):
            await Gadget.query.async_get(color="red")
        with pytest.raises(QueryException, match="has no field 'colour'"):
            await Gadget.query.async_get(colour="red")

    run(scenario())


def test_async_bulk_operations_match_sync_semantics(r):
    """async_bulk_create/update/delete and async_delete_all keep every index right."""

    async def scenario():
        items = [Gadget(maker="m", code=f"{i}", color="red" if i % 2 else "blue",
                        price=Decimal(i), serial=f"s{i}") for i in range(10)]
        created = await Gadget.async_bulk_create(items, batch_size=3)
        assert len(created) == 10
        with pytest.raises(BulkWriteError) as info:
            await Gadget.async_bulk_create([Gadget(maker="m", code="0"),
                                            Gadget(maker="m", code="new", serial="s1"),
                                            Gadget(maker="m", code="ok")])
        assert info.value.succeeded == 1 and len(info.value.failures) == 2
        n = await Gadget.async_bulk_update(Gadget.query.filter(color="red"), color="green",
                                           batch_size=2)
        assert n == 5
        assert await Gadget.query.async_count(color="green") == 5
        assert await Gadget.query.async_count(color="red") == 0
        assert await Gadget.async_bulk_delete(Gadget.query.filter(price__gte=8)) == 2
        assert await Gadget.async_bulk_delete(created[:2]) == 2
        assert await Gadget.query.async_count() == 7
        assert await Gadget.async_delete_all(batch_size=2) == 7
        return True

    assert run_async_only(scenario())
    assert key_count(r) == 0


def test_async_atomic_increment_is_exact_under_concurrency(r):
    """200 concurrent async increments (script path and save path) lose no update."""

    class Meter(Model):
        name = KeyField()
        total = SortedField(type=Decimal, default=Decimal(0))
        level = IndexedField(type=int, default=0)

    Meter.create(name="m")

    async def scenario():
        m = await Gadget.query.async_get(maker="none", code="none")
        assert m is None
        meter = await Meter.async_load(name="m")
        await asyncio.gather(*(meter.async_atomic_increment("total", Decimal("0.01"))
                               for _ in range(200)))
        await asyncio.gather(*(meter.async_atomic_increment("level") for _ in range(40)))
        return await Meter.async_load(name="m")

    back = run(scenario())
    assert back.total == Decimal("2.00")
    assert back.level == 40
    assert r.zscore(Meter.total.key_for(back), back.pk) == 2.0
    assert r.smembers(Meter.level.index_key(40, keys.ns_of(back.pk))) == {back.pk.encode()}


def test_async_client_survives_successive_event_loops():
    """Each asyncio.run gets a working client (no client bound to a closed loop is reused)."""
    for i in range(5):
        run(Gadget.async_create(maker="m", code=str(i)))
        assert run(Gadget.query.async_count()) == i + 1
