"""Index health as Popoto 1.x reports it: per-KeyField counts, partial writes, keys(clean=True)."""

import pytest

from popoto import (
    AutoKeyField,
    Field,
    IndexedField,
    KeyField,
    Model,
    SortedField,
    get_redis,
)
from popoto import encoding
from tests.helpers import key_of


class HealthGadget(Model):
    maker = KeyField()
    name = KeyField()
    color = IndexedField(null=True)
    rank = SortedField(type=int, null=True)


class HealthMemo(Model):
    id = AutoKeyField()
    text = Field(type=str, null=True)


def _gadgets(n: int = 4) -> list[HealthGadget]:
    return [HealthGadget.create(maker="acme", name=f"g{i}", color="red", rank=i) for i in range(n)]


def test_report_lists_every_key_field_and_partial_writes(r):
    """A healthy model reports 0 for each KeyField (the auto key too) and 0 partial_writes."""
    _gadgets(2)
    HealthMemo.create(text="x")
    report = HealthGadget.check_indexes()
    assert report["key_fields"] == {"maker": 0, "name": 0}
    assert report["partial_writes"] == 0 and report["total"] == 0
    assert HealthMemo.check_indexes()["key_fields"] == {"id": 0}


def test_partial_writes_are_counted_per_key_field(r):
    """Hashes at instance keys missing a key field's value count as partial writes."""
    _gadgets(2)
    lone = key_of(HealthGadget, "acme", "ghost")  # written outside the ORM: no key values at all
    r.hset(lone, "color", encoding.pack("red"))
    half = key_of(HealthGadget, "acme", "g1")  # a key field's value removed behind the ORM
    r.hdel(half, "name")
    memo_key = key_of(HealthMemo, "abc")
    r.hset(memo_key, "text", encoding.pack("no id"))
    report = HealthGadget.check_indexes()
    assert report["partial_writes"] == 2
    assert report["key_fields"] == {"maker": 1, "name": 2}
    assert report["total"] == 2 and report["unreadable"] == 0
    memo = HealthMemo.check_indexes()
    assert memo["partial_writes"] == 1 and memo["key_fields"] == {"id": 1}


def test_clean_indexes_removes_partial_writes_and_their_entries(r):
    """clean_indexes() deletes partial writes (and what their records list); the rest stays."""
    gadgets = _gadgets(3)
    half = gadgets[1].pk
    r.hdel(half, "name")
    r.hset(key_of(HealthMemo, "abc"), "text", encoding.pack("no id"))
    kept = HealthMemo.create(text="ok")
    assert HealthGadget.clean_indexes() == 1
    assert not r.exists(half)
    assert HealthGadget.query.filter(color="red").keys() and half not in HealthGadget.query.keys()
    assert half not in HealthGadget.query.filter(rank__gte=0).keys()
    assert HealthGadget.check_indexes()["total"] == 0
    assert HealthMemo.clean_indexes() == 1
    assert HealthMemo.query.keys() == [kept.pk] and HealthMemo.check_indexes()["total"] == 0


def test_partial_write_completed_meanwhile_is_kept(r):
    """A hash that is a complete instance again when cleaning reaches it is not deleted."""
    gadget = _gadgets(1)[0]
    assert HealthGadget._drop_partial(get_redis(), gadget.pk) == 0
    assert r.exists(gadget.pk) and HealthGadget.check_indexes()["total"] == 0


def test_keys_clean_drops_stale_entries_as_it_reads(r):
    """keys(clean=True) leaves out keys whose hash is gone and removes them from the
    indexes read; plain keys() still reports them until then."""
    gadgets = _gadgets(4)
    gone = [gadgets[0].pk, gadgets[2].pk]
    for key in gone:
        r.delete(key)
    assert sorted(HealthGadget.query.keys(color="red")) == sorted(g.pk for g in gadgets)
    live = sorted(g.pk for g in gadgets if g.pk not in gone)
    assert sorted(HealthGadget.query.keys(color="red", clean=True)) == live
    assert sorted(HealthGadget.query.keys(color="red")) == live
    assert sorted(HealthGadget.query.filter(rank__gte=0).keys()) == live
    assert HealthGadget.query.count() == 2
    assert HealthGadget.query.filter(color="red").count() == 2
    assert sorted(HealthGadget.query.filter(rank__gte=0).keys(clean=True)) == live


@pytest.mark.standalone_only  # counts the entries of the unsharded layout
def test_keys_clean_leaves_live_and_resaved_keys_alone(r):
    """A key saved again between the read and the clean keeps every entry."""
    gadgets = _gadgets(2)
    r.delete(gadgets[0].pk)
    gadgets[0].save()
    assert sorted(HealthGadget.query.keys(clean=True)) == sorted(g.pk for g in gadgets)
    assert r.scard("$IndexF:HealthGadget:color:red") == 2
    assert r.zcard("$SortedF:HealthGadget:rank") == 2
