"""CRUD: one-round-trip atomic saves, partial saves, key migration, TTL, delete.

Key names come from the model's layout (tests.helpers), so these tests run in the
cluster run too; only the test pinning the unsharded key layout is standalone_only.
"""

import datetime as dt
import re
import time

import pytest

from popoto import (
    Field,
    IndexedField,
    IntField,
    KeyField,
    KeyMutationError,
    Model,
    ModelException,
    SortedField,
    UniqueViolation,
    keys,
)
from popoto.redis_db import get_client
from tests.helpers import class_set_of, count_round_trips, db_size, index_key, key_of


class Person(Model):
    org = KeyField()
    email = KeyField()
    name = Field(null=True)
    age = SortedField(type=int, null=True)
    team = IndexedField(null=True)


class Temp(Model):
    key = KeyField()
    v = IntField(default=0)

    class Meta:
        ttl = 100


@pytest.mark.standalone_only  # pins the unsharded layout (cluster keys carry a group tag)
def test_key_is_class_then_key_values_by_field_name(r):
    """The hash lives at ClassName:v1:v2 with key values ordered by field name."""
    p = Person(org="acme", email="a@x.io", name="A")
    p.save()
    assert p.db_key == "Person:a@x.io:acme" == p.pk
    assert r.exists("Person:a@x.io:acme")
    assert r.sismember("$Class:Person", "Person:a@x.io:acme")


def test_save_is_one_round_trip_with_all_indexes(r):
    """save() writes hash, class set and every index entry in one round trip."""
    Person(org="o", email="warm", age=1).save()  # loads the script once
    p = Person(org="o", email="e", name="N", age=30, team="red")
    with count_round_trips() as trips:
        assert p.save() is True
    assert trips[0] == 1
    assert r.zscore(index_key(Person, "age", instance=p), p.pk) == 30
    assert r.sismember(index_key(Person, "team", "red", instance=p), p.pk)


def test_save_with_pipeline_only_queues():
    """save(pipeline=p) queues; nothing is visible until the pipeline executes."""
    pipe = get_client().pipeline()
    p = Person(org="o", email="e", age=3)
    assert p.save(pipeline=pipe) is pipe
    assert Person.query.count() == 0
    pipe.execute()
    assert Person.query.get(org="o", email="e").age == 3
    assert Person.query.filter(age__gte=3).count() == 1


def test_update_moves_index_entries(r):
    """Saving a loaded instance updates it and moves its index entries."""
    Person(org="o", email="e", age=1, team="red").save()
    p = Person.query.get(org="o", email="e")
    p.team, p.age = "blue", 5
    p.save()
    assert not r.exists(index_key(Person, "team", "red", instance=p))
    assert r.sismember(index_key(Person, "team", "blue", instance=p), p.pk)
    assert r.zscore(index_key(Person, "age", instance=p), p.pk) == 5


def test_stale_instance_cannot_leave_stale_index(r):
    """Two writers from stale copies never leave an index entry behind."""
    Person(org="o", email="e", team="red").save()
    a = Person.query.get(org="o", email="e")
    b = Person.query.get(org="o", email="e")
    a.team = "blue"
    a.save()
    b.team = "green"
    b.save()
    assert Person.query.filter(team="blue").count() == 0
    assert Person.query.filter(team="red").count() == 0
    assert Person.query.filter(team="green").keys() == [key_of(Person, "e", "o")]


def test_update_fields_writes_only_listed_fields(r):
    """update_fields writes only those fields and their indexes; [] is a no-op."""
    Person(org="o", email="e", name="old", age=1, team="red").save()
    p = Person.query.get(org="o", email="e")
    p.name, p.team = "new", "blue"
    p.save(update_fields=["team"])
    back = Person.query.get(org="o", email="e")
    assert back.name == "old" and back.team == "blue"
    assert Person.query.filter(team="blue").count() == 1
    with count_round_trips() as trips:
        assert p.save(update_fields=[]) is True
    assert trips[0] == 0
    with pytest.raises(ModelException, match="nope"):
        p.save(update_fields=["nope"])


def test_key_change_requires_migrate_key(r):
    """Changing a saved KeyField raises KeyMutationError unless migrate_key=True."""
    Person(org="o", email="e", age=7, team="red").save()
    p = Person.query.get(org="o", email="e")
    p.email = "f"
    old, new = key_of(Person, "e", "o"), key_of(Person, "f", "o")
    with pytest.raises(KeyMutationError):
        p.save()
    assert r.exists(old)
    p.save(migrate_key=True)
    assert not r.exists(old) and r.exists(new)
    assert {m for k in Person._meta.class_set_keys() for m in r.smembers(k)} == {new.encode()}
    assert r.smembers(class_set_of(new)) == {new.encode()}
    assert r.zrange(index_key(Person, "age", instance=new), 0, -1) == [new.encode()]
    assert r.smembers(index_key(Person, "team", "red", instance=new)) == {new.encode()}
    if keys.ns_of(old) != keys.ns_of(new):  # the old group keeps no entry
        assert not r.exists(index_key(Person, "age", instance=old))
        assert not r.exists(index_key(Person, "team", "red", instance=old))


def test_migrate_onto_existing_key_refused(r):
    """Migrating onto a key that already exists is refused and changes nothing."""
    Person(org="o", email="taken").save()
    Person(org="o", email="e").save()
    p = Person.query.get(org="o", email="e")
    p.email = "taken"
    with pytest.raises(UniqueViolation):
        p.save(migrate_key=True)
    assert r.exists(key_of(Person, "e", "o"))


def test_create_refuses_existing_key():
    """create() of an existing key raises; save() of a new instance overwrites."""
    Person.create(org="o", email="e", name="first")
    with pytest.raises(UniqueViolation, match=re.escape(key_of(Person, "e", "o"))):
        Person.create(org="o", email="e", name="second")
    assert Person.query.get(org="o", email="e").name == "first"
    Person(org="o", email="e", name="third").save()
    assert Person.query.get(org="o", email="e").name == "third"


def test_failed_validation_writes_nothing(r):
    """A save that fails validation writes nothing at all."""
    p = Person(org="o", email="e")
    p.age = "not a number"
    with pytest.raises(ModelException, match="age"):
        p.save()
    assert db_size(r) == 0
    assert p.save(ignore_errors=True) is False


def test_load_get_or_create_update_or_create():
    """load, get_or_create and update_or_create behave as documented."""
    obj, created = Person.get_or_create(org="o", email="e", defaults={"name": "N"})
    assert created and obj.name == "N"
    again, created = Person.get_or_create(org="o", email="e", defaults={"name": "X"})
    assert not created and again.name == "N"
    assert Person.load(org="o", email="e") == obj
    assert Person.load(db_key=key_of(Person, "e", "o")) == obj
    upd, created = Person.update_or_create(org="o", email="e", defaults={"name": "U"})
    assert not created and Person.load(org="o", email="e").name == "U"
    new, created = Person.update_or_create(org="o", email="z", defaults={"age": 3})
    assert created and new.age == 3


def test_delete_removes_everything(r):
    """delete() removes the hash, class-set entry and index entries; False if absent."""
    p = Person(org="o", email="e", age=1, team="red")
    p.save()
    assert p.delete() is True
    assert db_size(r) == 0
    assert Person(org="o", email="e").delete() is False


def test_delete_with_pipeline():
    """delete(pipeline=p) only queues."""
    Person(org="o", email="e").save()
    pipe = get_client().pipeline()
    assert Person.load(org="o", email="e").delete(pipeline=pipe) is pipe
    assert Person.query.count() == 1
    pipe.execute()
    assert Person.query.count() == 0


def test_meta_ttl_and_instance_ttl(r):
    """Meta.ttl applies by default; _ttl and _expire_at override; both at once is an error."""
    Temp(key="a").save()
    assert 0 < r.ttl(key_of(Temp, "a")) <= 100
    Temp(key="b", _ttl=5).save()
    assert 0 < r.ttl(key_of(Temp, "b")) <= 5
    at = dt.datetime.now(tz=dt.timezone.utc) + dt.timedelta(seconds=50)
    Temp(key="c", _ttl=None, _expire_at=at).save()
    assert 40 < r.ttl(key_of(Temp, "c")) <= 50
    with pytest.raises(ModelException, match="_ttl"):
        Temp(key="d", _ttl=5, _expire_at=at).save()


def test_expired_instance_not_returned(r):
    """An instance whose TTL ran out is not returned by get or filter."""
    Temp(key="x", _ttl=1).save()
    time.sleep(1.2)
    assert Temp.query.get(key="x") is None
    assert list(Temp.query.all()) == []


def test_equality_repr_to_dict():
    """Instances compare by class and key; repr shows the key; to_dict lists public fields."""
    a = Person(org="o", email="e", name="A")
    b = Person(org="o", email="e", name="B")
    assert a == b and hash(a) == hash(b)
    assert a != Person(org="o", email="f")
    assert repr(a) == f"<Person {key_of(Person, 'e', 'o')}>"
    assert a.to_dict() == {"org": "o", "email": "e", "name": "A", "age": None, "team": None}
    assert a.to_dict(include=["name"], exclude=[]) == {"name": "A"}
    assert "name" not in a.to_dict(exclude=["name"])


def test_unknown_init_kwarg_suggests():
    """An unknown constructor argument names the model and suggests the field."""
    with pytest.raises(ModelException, match="did you mean 'name'"):
        Person(org="o", email="e", nmae="x")


def test_missing_key_value_is_an_error():
    """Saving without a key value raises ModelException naming the field."""
    with pytest.raises(ModelException, match="email"):
        Person(org="o").save()


def test_corrupt_hash_value_raises_decode_error(r):
    """A corrupt stored value raises an error naming key and field when read."""
    Person(org="o", email="e", name="ok").save()
    r.hset(key_of(Person, "e", "o"), "name", b"\xc1")
    p = Person.query.get(org="o", email="e")
    with pytest.raises(ModelException, match="name.*" + re.escape(key_of(Person, "e", "o"))):
        _ = p.name
    assert p.org == "o"
