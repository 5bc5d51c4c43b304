"""Behaviours of sharded models (Meta.shards = 4 on one server: the exact tag-group layout)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from popoto import (
    AccessTrackerMixin,
    EventStreamMixin,
    Field,
    FloatField,
    KeyField,
    ListField,
    Model,
    ModelException,
    WriteFilterMixin,
)
from popoto import keys
from popoto.behaviours import access_tracker
from popoto.engine.write import CLAIM, WriteBatch


class ShardNote(WriteFilterMixin, Model):
    name = KeyField()
    value = FloatField(default=0.5)

    class Meta:
        shards = 4

    def compute_filter_score(self) -> float:
        return self.value


class FlatNote(WriteFilterMixin, Model):
    """The unsharded twin of ShardNote: priority() must give the same answer."""

    name = KeyField()
    value = FloatField(default=0.5)

    def compute_filter_score(self) -> float:
        return self.value


class ShardOrder(EventStreamMixin, Model):
    oid = KeyField()
    status = Field(type=str, null=True)

    _stream_name = "shard:orders"
    _stream_metadata_fields = ("status",)

    class Meta:
        shards = 4


class ShardBill(EventStreamMixin, Model):
    name = KeyField()
    tenant = Field(type=str, null=True)

    _stream_name = "shard-bills"
    _stream_partition_field = "tenant"

    class Meta:
        shards = 4


class ShardDoc(AccessTrackerMixin, Model):
    _record_on_read = True  # every read recorded at once (not staged)
    name = KeyField()
    body = Field(type=str, null=True)

    _max_access_log = 3

    class Meta:
        shards = 4


class ShardAll(WriteFilterMixin, EventStreamMixin, AccessTrackerMixin, Model):
    """Every behaviour and a capped list on one sharded model."""

    _record_on_read = True  # every read recorded at once (not staged)
    name = KeyField()
    value = FloatField(default=0.9)
    feed = ListField(max_length=2)

    _stream_name = "shard-all"

    class Meta:
        shards = 4
        ttl = 600

    def compute_filter_score(self) -> float:
        return self.value


def names_in_groups(model: type[Model], n: int, groups: int = 2) -> list[str]:
    """``n`` key values whose instances spread over at least ``groups`` tag groups."""
    out = [f"k{i}" for i in range(n)]
    assert len({keys.ns_of(model._meta.instance_key([v])) for v in out}) >= groups
    return out


def other_group_name(model: type[Model], instance: Model) -> str:
    """A key value whose instance falls in another tag group than ``instance``."""
    here = keys.ns_of(instance.pk)
    return next(f"m{i}" for i in range(100)
                if keys.ns_of(model._meta.instance_key([f"m{i}"])) != here)


def touched_keys(batch: WriteBatch, save: bool = True) -> set[str]:
    """Every key one SAVE/DELETE script call touches (KEYS, entries, behaviour commands);
    unique claims of a sharded model are settled outside the script and left out."""
    call_keys = batch.save_args()[0] if save else batch.delete_args()[0]
    found = set(call_keys)
    found |= {k for rows in batch.entries.values() for kind, k, _m, _s in rows
              if kind != CLAIM}
    found |= {str(cmd[1]) for cmd in batch.commands}
    return found


# --- write filter --------------------------------------------------------------------

def test_priority_set_is_per_group_beside_its_members(r: redis.Redis) -> None:
    """Each ranked instance is in $Priority:<its group>, and only there."""
    for i, name in enumerate(names_in_groups(ShardNote, 12, groups=3)):
        ShardNote.create(name=name, value=0.7 + i / 100)
    assert ShardNote.priority_keys() == [f"$Priority:{ns}" for ns in ShardNote._meta.groups]
    total = 0
    for ns, key in zip(ShardNote._meta.groups, ShardNote.priority_keys()):
        members = [m.decode() for m in r.zrange(key, 0, -1)]
        assert all(keys.ns_of(m) == ns for m in members)
        assert all(keys.key_slot(m) == keys.key_slot(key) for m in members)
        total += len(members)
    assert total == 12 and not r.exists("$Priority:ShardNote")
    with pytest.raises(ModelException, match="priority_keys"):
        ShardNote.priority_key()


@pytest.mark.standalone_only  # pins the unsharded names (cluster mode shards every model)
def test_unsharded_behaviour_keys_are_unchanged() -> None:
    """An unsharded model keeps $Priority:<Model> and stream:<name> (no group suffix)."""
    assert FlatNote.priority_key() == "$Priority:FlatNote" == FlatNote.priority_keys()[0]
    assert keys.stream_key("m", None, "Order") == "stream:m"


def test_priority_top_n_across_groups_equals_the_unsharded_answer(r: redis.Redis) -> None:
    """priority(n) merges every group's best: same instances, order and ties as unsharded."""
    values = [0.95, 0.8, 0.8, 0.71, 0.99, 0.5, 0.8, 0.9, 0.75, 0.99, 0.2, 0.85]
    for i, value in enumerate(values):
        ShardNote.create(name=f"n{i:02d}", value=value)
        FlatNote.create(name=f"n{i:02d}", value=value)
    for n in (1, 3, 5, 9, 20):
        sharded = [(x.name, x._score) for x in ShardNote.query.priority(n)]
        flat = [(x.name, x._score) for x in FlatNote.query.priority(n)]
        assert sharded == flat
    assert [x.name for x in ShardNote.query.priority(4)] == ["n04", "n09", "n00", "n07"]
    assert ShardNote.query.priority(0) == []


def test_priority_drops_vanished_members_in_every_group(r: redis.Redis) -> None:
    """A ranked instance whose hash is gone is skipped and its entry removed, in any group."""
    made = [ShardNote.create(name=name, value=0.9) for name in names_in_groups(ShardNote, 8)]
    for note in made[:5]:
        r.delete(note.pk)
    assert sorted(x.name for x in ShardNote.query.priority(10)) == sorted(
        x.name for x in made[5:])
    assert sum(r.zcard(k) for k in ShardNote.priority_keys()) == 3


def test_priority_entry_follows_a_move_to_another_group(r: redis.Redis) -> None:
    """save(migrate_key=True) into another group leaves no priority entry in the old one."""
    note = ShardNote.create(name="a", value=0.9)
    old_key = note.pk
    note.name = other_group_name(ShardNote, note)
    note.save(migrate_key=True)
    assert keys.ns_of(note.pk) != keys.ns_of(old_key)
    assert r.zscore(ShardNote.priority_key(keys.ns_of(old_key)), old_key) is None
    assert r.zscore(ShardNote.priority_key(keys.ns_of(note.pk)), note.pk) == 0.9
    assert [x.pk for x in ShardNote.query.priority(5)] == [note.pk]


# --- event stream --------------------------------------------------------------------

def test_stream_keys_carry_the_group_tag_and_escape_the_name(r: redis.Redis) -> None:
    """stream:<escaped name>:{group}: in the group's slot; unsharded keys are unchanged."""
    groups = ShardOrder._meta.groups
    assert ShardOrder.stream_keys() == [f"stream:shard%3Aorders:{ns}" for ns in groups]
    assert ShardBill.stream_keys("a:b") == [f"stream:shard-bills:a%3Ab:{ns}"
                                            for ns in ShardBill._meta.groups]
    for ns, key in zip(groups, ShardOrder.stream_keys()):
        assert ShardOrder.stream_key(ns=ns) == key
        assert keys.key_slot(key) == keys.key_slot(f"{ns}:x")
    assert keys.stream_key("{m}", "{p}", "") == "stream:%7Bm%7D:%7Bp%7D"
    with pytest.raises(ModelException, match="stream_keys"):
        ShardOrder.stream_key()


def test_every_write_lands_in_the_stream_of_its_group(r: redis.Redis) -> None:
    """create/update/delete of each instance append to its group's stream; reads merge all."""
    names = names_in_groups(ShardOrder, 10, groups=3)
    for name in names:
        ShardOrder.create(oid=name, status="new")
    for name in names[:4]:
        order = ShardOrder.query.get(oid=name)
        order.status = "paid"
        order.save()
        order.delete()
    for key in ShardOrder.stream_keys():
        ns = key.rsplit(":", 1)[1]
        entries = r.xrange(key)
        assert all(keys.ns_of(f[b"pk"].decode()) == ns for _id, f in entries)
    assert not r.exists("stream:shard%3Aorders")
    assert ShardOrder.stream_len() == 10 + 2 * 4
    events = [e for _id, e in ShardOrder.stream_range()]
    assert len(events) == 18
    for name in names[:4]:
        mine = [e["op"] for e in events if e["pk"].endswith(f":{name}")]
        assert mine == ["create", "update", "delete"]
    assert [e["status"] for e in events if e["op"] == "update"] == ["paid"] * 4
    assert len(ShardOrder.stream_range(count=5)) == 5
    first_ids = [i for i, _e in ShardOrder.stream_range()][:5]
    assert [i for i, _e in ShardOrder.stream_range(count=5)] == first_ids


def test_partitioned_sharded_stream(r: redis.Redis) -> None:
    """A partitioned stream of a sharded model has one stream per (partition, group)."""
    for name in names_in_groups(ShardBill, 6):
        ShardBill.create(name=name, tenant="acme")
    ShardBill.create(name="z", tenant="other")
    assert ShardBill.stream_len("acme") == 6 and ShardBill.stream_len("other") == 1
    assert {e["pk"] for _i, e in ShardBill.stream_range(partition="other")} == {
        ShardBill.query.get(name="z").pk}


def test_move_to_another_group_reports_old_pk_in_the_new_groups_stream(r: redis.Redis) -> None:
    """A save moving the instance across groups is an update with old_pk, in the new group."""
    order = ShardOrder.create(oid="a")
    old_key = order.pk
    order.oid = other_group_name(ShardOrder, order)
    order.save(migrate_key=True)
    entries = r.xrange(ShardOrder.stream_key(ns=keys.ns_of(order.pk)))
    (_id, moved), = entries
    assert moved[b"op"] == b"update" and moved[b"old_pk"].decode() == old_key
    assert moved[b"pk"].decode() == order.pk
    assert r.xlen(ShardOrder.stream_key(ns=keys.ns_of(old_key))) == 1  # just the create


# --- access tracker ------------------------------------------------------------------

def test_accesses_across_groups_are_one_script_call_per_group(
        r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """A query over many groups records every access; each script call stays in one slot."""
    names = names_in_groups(ShardDoc, 20, groups=4)
    for name in names:
        ShardDoc.create(name=name)
    calls: list[set[int]] = []
    real = access_tracker.execute

    def spy(client: Any, commands: list[Any]) -> list[Any]:
        for _name, args in commands:
            n_keys = args[1]
            calls.append({keys.key_slot(k) for k in args[2:2 + n_keys]})
        return real(client, commands)

    monkeypatch.setattr(access_tracker, "execute", spy)
    docs = ShardDoc.query.all()
    assert len(docs) == 20 and all(d.access_count == 1 for d in docs)
    assert len(calls) == len({keys.ns_of(d.pk) for d in docs}) and all(
        len(slots) == 1 for slots in calls)
    list(ShardDoc.query.all())
    list(ShardDoc.query.all())
    list(ShardDoc.query.all())
    again = ShardDoc.query.no_track().get(name=names[7])
    assert again.access_count == 4 and len(again.access_log()) == 3
    assert r.exists(f"$AccessLog:{again.pk}:log")
    again.delete()
    assert not r.exists(f"$AccessLog:{again.pk}:log")


def test_staged_accesses_of_many_groups_confirm_in_one_call(r: redis.Redis) -> None:
    """confirm_accesses records staged accesses of instances of several groups."""
    for name in names_in_groups(ShardDoc, 8):
        ShardDoc.create(name=name)
    docs = ShardDoc.query.no_track().all()
    for doc in docs:
        doc.__dict__["_staged_access"] = 1_700_000_000.0
    assert ShardDoc.confirm_accesses(docs) == 8
    assert all(int(r.hget(d.pk, "@access:count")) == 1 for d in docs)


# --- everything together: one slot per script ----------------------------------------

def test_save_and_delete_with_every_behaviour_touch_one_slot(r: redis.Redis) -> None:
    """The SAVE and DELETE scripts of a sharded model with every behaviour (priority entry,
    stream XADD, access log, capped list, TTLs) only touch keys of the instance's slot."""
    for name in names_in_groups(ShardAll, 6):
        item = ShardAll(name=name)
        item.feed.append(1)
        batch = item.build_save()
        slot = keys.key_slot(batch.key)
        assert {keys.key_slot(k) for k in touched_keys(batch)} == {slot}
        item.save()
        loaded = ShardAll.query.get(name=name)
        assert {keys.key_slot(k) for k in touched_keys(loaded.build_delete(), False)} == {slot}
    assert ShardAll.stream_len() == 6
    assert len(ShardAll.query.priority(10)) == 6


def test_sharded_instance_with_every_behaviour_round_trips(r: redis.Redis) -> None:
    """Saves, pushes and a delete of a sharded model with every behaviour keep all data right
    and leave only the group streams behind."""
    item = ShardAll.create(name="a", feed=[3, 2, 1])  # newest first: 1 is the oldest
    assert list(ShardAll.query.get(name="a").feed) == [3, 2]
    loaded = ShardAll.query.get(name="a")
    loaded.feed.push(4)
    loaded.value = 0.95
    loaded.save()
    assert list(ShardAll.query.no_track().get(name="a").feed) == [4, 3]
    assert 590 < r.ttl(f"$List:{item.pk}:feed") <= 600
    assert ShardAll.query.no_track().get(name="a").access_count == 2
    assert ShardAll.query.priority(1)[0]._score == 0.95
    assert [e["op"] for _i, e in ShardAll.stream_range()] == ["create", "update", "update"]
    loaded.delete()
    left = {k.decode() for k in r.scan_iter(match="*")}
    assert left == {ShardAll.stream_key(ns=keys.ns_of(item.pk))}
