"""EventStreamMixin: one stream entry per committed create/update/delete, none otherwise."""

import threading
import time

import pytest

from popoto import (
    DecayingSortedField,
    EventStreamMixin,
    Field,
    KeyField,
    ListField,
    Model,
    ModelException,
    UniqueViolation,
)
from popoto import keys
from popoto.behaviours import parse_event
from popoto.redis_db import get_client
from tests.helpers import db_keys, same_group_value, values_in_one_group


class Order(EventStreamMixin, Model):
    oid = KeyField()
    status = Field(type=str, null=True)
    email = Field(type=str, null=True, unique=True)
    seen = DecayingSortedField()
    log = ListField(max_length=3)

    class Meta:
        namespace = "StreamOrder"


class Tenanted(EventStreamMixin, Model):
    name = KeyField()
    tenant = Field(type=str, null=True)
    amount = Field(type=int, null=True)

    _stream_name = "billing"
    _stream_partition_field = "tenant"
    _stream_metadata_fields = ("tenant", "amount")


class Capped(EventStreamMixin, Model):
    name = KeyField()

    _stream_name = "small"
    _stream_max_length = 100


ALL_ORDER_FIELDS = sorted(["oid", "status", "email", "seen", "log"])


def events(model=Order, **kwargs):
    """Parsed events of a model's stream."""
    return [e for _id, e in model.stream_range(**kwargs)]


def home_stream(model, instance, partition=None):
    """The stream an instance's events go to (its tag group's stream when sharded)."""
    return model.stream_key(partition, ns=keys.ns_of(instance.pk))


@pytest.mark.standalone_only  # pins the unsharded stream names (cluster: one per tag group)
def test_unsharded_stream_key_names(r):
    """An unsharded model writes to stream:<name>[:<partition>], no group suffix."""
    assert Order.stream_key() == "stream:mutations" == Order.stream_keys()[0]
    assert Tenanted.stream_key("acme") == "stream:billing:acme"
    Order.create(oid="1")
    Tenanted.create(name="a", tenant="acme")
    assert r.xlen("stream:mutations") == 1 and r.xlen("stream:billing:acme") == 1


def test_create_update_delete_each_add_one_entry(r):
    """create -> 'create', save -> 'update', delete -> 'delete', in that order."""
    before = time.time()
    order = Order.create(oid="1", status="new")
    pk = order.pk
    order.status = "paid"
    order.save()
    order.delete()
    got = events()
    assert [e["op"] for e in got] == ["create", "update", "delete"]
    assert all(e["model"] == "Order" and e["pk"] == pk for e in got)
    # 1.x's form: no field names for creates, full saves and deletes
    assert got[0]["changed_fields"] == [] == got[1]["changed_fields"]
    assert got[2]["changed_fields"] == []
    assert all(before <= e["ts"] <= time.time() for e in got)
    assert Order.stream_len() == 3 == r.xlen(Order.stream_key(ns=keys.ns_of(pk)))


def test_raw_entry_is_strings_with_comma_separated_changed_fields(r):
    """Consumers in other processes read plain strings; changed_fields is "a,b" (1.x)."""
    Order.create(oid="1")
    order = Order.query.get(oid="1")
    order.status = "x"
    order.save(update_fields=["status", "email"])
    (_id1, first), (_id2, second) = r.xrange(home_stream(Order, order))
    assert set(first) == {b"model", b"pk", b"op", b"ts", b"changed_fields"}
    assert first[b"changed_fields"] == b""
    assert second[b"op"] == b"update"
    assert second[b"changed_fields"] == b"email,status"
    assert float(second[b"ts"]) > 0
    assert parse_event(second)["changed_fields"] == ["email", "status"]


def test_failing_writes_leave_no_entry(r):
    """A unique violation, a duplicate create or a delete of nothing adds no entry."""
    Order.create(oid="1", email="a@x.org")
    with pytest.raises(UniqueViolation):
        Order.create(oid="2", email="a@x.org")
    with pytest.raises(UniqueViolation):
        Order.create(oid="1")
    other = Order.query.get(oid="1")
    other.delete()
    assert other.delete() is False
    assert [e["op"] for e in events()] == ["create", "delete"]


def test_every_committed_write_has_an_entry_under_concurrency(r):
    """Racing creators of one key: exactly one wins and exactly one entry exists."""
    wins = []

    def attempt():
        try:
            Order.create(oid="race")
            wins.append(1)
        except UniqueViolation:
            pass

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert [e["op"] for e in events()] == ["create"]
    for _ in range(30):
        Order.query.get(oid="race").save()
    assert Order.stream_len() == 31


def test_partitions_and_metadata(r):
    """Partitioned models write to stream:<name>:<value>; metadata values are str(value),
    "" for None (1.x)."""
    Tenanted.create(name="a", tenant="acme", amount=5)
    b = Tenanted.create(name="b", tenant="globex", amount=None)
    c = Tenanted.create(name="c", tenant=None, amount=1)
    assert all(k.startswith("stream:billing:acme") for k in Tenanted.stream_keys("acme"))
    (acme,) = events(Tenanted, partition="acme")
    assert acme["tenant"] == "acme" and acme["amount"] == "5"
    (globex,) = events(Tenanted, partition="globex")
    assert globex["amount"] == ""
    assert r.xrange(home_stream(Tenanted, b, "globex"))[0][1][b"amount"] == b""
    assert [e["pk"] for e in events(Tenanted)] == [c.pk]


def test_partial_writes_by_field_methods_are_updates(r):
    """touch() and push() are partial saves: 'update' naming just that field."""
    order = Order.create(oid="1")
    order.touch("seen")
    order.log.push("shipped")
    assert [(e["op"], e["changed_fields"]) for e in events()[1:]] == [
        ("update", ["seen"]), ("update", ["log"])]


def test_key_migration_reports_the_old_key(r):
    """save(migrate_key=True) emits an update with pk = new key and old_pk = old key."""
    order = Order.create(oid="1")
    old_pk = order.pk
    order.oid = same_group_value(Order, order)  # its capped list moves within one slot
    order.save(migrate_key=True)
    last = events()[-1]
    assert old_pk != order.pk
    assert (last["op"], last["pk"], last["old_pk"]) == ("update", order.pk, old_pk)


def test_pipeline_entry_appears_on_execute(r):
    """With save(pipeline=p) the entry is written when p executes, with the write."""
    pipe = get_client().pipeline()
    Order(oid="1").save(pipeline=pipe)
    assert Order.stream_len() == 0
    pipe.execute()
    assert [e["op"] for e in events()] == ["create"]


def test_bulk_writes_emit_and_rebuilds_do_not(r):
    """bulk_create/bulk_delete emit one entry per instance; rebuild_indexes emits none."""
    Order.bulk_create([Order(oid=str(i)) for i in range(5)])
    Order.rebuild_indexes()
    assert Order.stream_len() == 5
    Order.bulk_delete(Order.query.all())
    assert [e["op"] for e in events()].count("delete") == 5


def test_stream_is_capped_approximately(r):
    """XADD MAXLEN ~ keeps the stream near _stream_max_length (each group's stream when
    sharded: all 400 instances are in one group here)."""
    made = [Capped.create(name=name) for name in values_in_one_group(Capped, 400)]
    assert 100 <= Capped.stream_len() < 400
    assert 100 <= r.xlen(home_stream(Capped, made[0])) < 400
    assert events(Capped)[-1]["pk"] == made[-1].pk


def test_stream_range_bounds_and_count(r):
    """stream_range passes start/end/count to XRANGE (on one stream: entry ids of different
    group streams are not comparable, so the instances share a group)."""
    made = [Order.create(oid=name) for name in values_in_one_group(Order, 5)]
    ids = [entry_id for entry_id, _e in Order.stream_range()]
    assert [e["pk"] for _i, e in Order.stream_range(count=2)] == [o.pk for o in made[:2]]
    assert len(Order.stream_range(start=ids[3])) == 2
    assert [e["pk"] for _i, e in Order.stream_range(end=ids[1])] == [o.pk for o in made[:2]]


def test_bad_definitions_raise(r):
    """Reserved metadata names, bad caps and unknown fields raise ModelException."""
    with pytest.raises(ModelException, match="reserved"):
        class Bad1(EventStreamMixin, Model):
            name = KeyField()
            _stream_metadata_fields = ("op",)
    with pytest.raises(ModelException, match="_stream_max_length"):
        class Bad2(EventStreamMixin, Model):
            name = KeyField()
            _stream_max_length = 0
    with pytest.raises(ModelException, match="_stream_name"):
        class Bad3(EventStreamMixin, Model):
            name = KeyField()
            _stream_name = ""

    class Bad4(EventStreamMixin, Model):
        name = KeyField()
        _stream_metadata_fields = ("missing",)

    with pytest.raises(ModelException, match="missing"):
        Bad4(name="x").save()
    assert db_keys(r) == set()


def test_xadd_event_appends_a_custom_event(r):
    """_xadd_event(op, extra_fields) appends an event for the instance (now or on a
    pipeline) with the standard fields, changed_fields "" and the extras as str."""
    t = Tenanted.create(name="a", tenant="acme", amount=3)
    entry_id = t._xadd_event("archived", {"reason": "old", "count": 2, "gone": None})
    assert isinstance(entry_id, str) and "-" in entry_id
    (_create, (got_id, last)) = Tenanted.stream_range(partition="acme")
    assert got_id == entry_id
    assert (last["op"], last["pk"], last["model"]) == ("archived", t.pk, "Tenanted")
    assert last["changed_fields"] == [] and last["tenant"] == "acme" and last["amount"] == "3"
    assert (last["reason"], last["count"], last["gone"]) == ("old", "2", "")
    pipe = get_client().pipeline()
    assert t._xadd_event("pinged", pipeline=pipe) is pipe
    assert Tenanted.stream_len("acme") == 2
    pipe.execute()
    assert [e["op"] for e in events(Tenanted, partition="acme")] == [
        "create", "archived", "pinged"]
    with pytest.raises(ModelException, match="_xadd_event"):
        t._xadd_event("x", {"pk": "forged"})
    with pytest.raises(ModelException, match="_xadd_event"):
        t._xadd_event("")
    assert Tenanted.stream_len("acme") == 3


def test_parse_event_reads_earlier_json_changed_fields():
    """parse_event splits "a,b" and still reads a JSON list written by earlier versions."""
    assert parse_event({b"changed_fields": b"a,b", b"ts": b"1.5"}) == {
        "changed_fields": ["a", "b"], "ts": 1.5}
    assert parse_event({"changed_fields": '["x"]'})["changed_fields"] == ["x"]
    assert parse_event({"changed_fields": ""})["changed_fields"] == []
