"""bulk_create / bulk_update / bulk_delete / delete_all / raw_update against the real Redis."""

import pytest

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
    encoding,
    keys,
)
from tests.helpers import count_round_trips, db_size


class Shop(Model):
    name = KeyField()
    city = IndexedField(null=True)
    rating = SortedField(type=float, null=True)
    email = StringField(unique=True, null=True)
    note = StringField(null=True)

    class Meta:
        namespace = "BulkShop"


class Other(Model):
    name = KeyField()


class SkipDrafts:
    """Behaviour: drafts are never saved; deletes are logged with the instance's note."""

    popoto_behaviour = True

    def behaviour_allow_save(instance, **options):
        return not instance.draft

    def behaviour_on_delete(instance, batch):
        batch.command("RPUSH", keys.behaviour_key("Log", batch.ns), instance.note or "-")


class Doc(SkipDrafts, Model):
    name = KeyField()
    draft = IntField(default=0)
    note = StringField(null=True)

    class Meta:
        namespace = "BulkDoc"


def shops(n, start=0, **extra):
    return [Shop(name=f"s{i}", city="paris" if i % 2 else "rome", rating=float(i),
                 email=f"s{i}@x.io", **extra) for i in range(start, start + n)]


def index_keys(r):
    return sorted(k.decode() for k in r.keys("$*"))


def key(name):
    """The key of the Shop called ``name`` (whatever the layout)."""
    return Shop(name=name).db_key


def email_holders(r):
    """Holders of Shop's email claims, over every tag group."""
    return sorted(h for ns in Shop._meta.groups
                  for h in r.hvals(keys.field_index_key("UniqueF", ns, "email")))


@pytest.mark.standalone_only  # pins the unsharded key layout and one server's round trips
def test_bulk_create_writes_every_index_in_batches(r):
    """Instances, class set, sorted, indexed and unique entries; one pipeline per batch."""
    Shop.bulk_create(shops(1))  # loads the script once
    r.flushdb()
    with count_round_trips() as trips:
        created = Shop.bulk_create(shops(5), batch_size=2)
    assert trips[0] == 3
    assert [s.name for s in created] == ["s0", "s1", "s2", "s3", "s4"]
    assert all(s.is_persisted for s in created)
    assert Shop.query.count() == 5
    assert sorted(Shop.query.filter(city="paris").keys()) == ["BulkShop:s1", "BulkShop:s3"]
    assert Shop.query.filter(rating__gte=3).keys() == ["BulkShop:s3", "BulkShop:s4"]
    assert r.hlen("$UniqueF:BulkShop:email") == 5
    assert index_keys(r) == ["$Class:BulkShop", "$IndexF:BulkShop:city:paris",
                             "$IndexF:BulkShop:city:rome", "$LexF:BulkShop:city",
                             "$LexF:BulkShop:city:r", "$SortedF:BulkShop:rating",
                             "$UniqueF:BulkShop:email"]


def test_bulk_create_validates_everything_before_writing(r):
    """One invalid instance: ModelException naming it, and nothing at all is written."""
    batch = shops(3)
    batch[2].rating = "high"
    with pytest.raises(ModelException, match=r"Shop.rating.*'high'"):
        Shop.bulk_create(batch)
    assert db_size(r) == 0
    with pytest.raises(ModelException, match="every instance must be a Shop"):
        Shop.bulk_create([*shops(2), Other(name="o")])
    assert db_size(r) == 0
    with pytest.raises(ModelException, match="batch_size must be a positive int, got 0"):
        Shop.bulk_create(shops(2), batch_size=0)


def test_bulk_create_reports_every_conflict_and_writes_the_rest(r):
    """Taken keys and unique values fail individually; the rest is written; one error lists all."""
    Shop.create(name="s1", email="old@x.io")
    batch = shops(4)
    batch[3].email = "s0@x.io"  # same unique value as batch[0], in the same call
    with pytest.raises(BulkWriteError) as info:
        Shop.bulk_create(batch, batch_size=2)
    err = info.value
    assert err.succeeded == 2
    assert [i.name for i, _e in err.failures] == ["s1", "s3"]
    assert all(isinstance(e, UniqueViolation) for _i, e in err.failures)
    assert key("s1") in str(err.failures[0][1]) and "email='s0@x.io'" in str(err.failures[1][1])
    assert "2 instance(s) failed, 2 written" in str(err)
    assert Shop.query.get(name="s1").email == "old@x.io"  # not overwritten
    assert sorted(Shop.query.keys()) == sorted([key("s0"), key("s1"), key("s2")])
    assert not batch[3].is_persisted
    assert Shop.query.filter(rating__gte=0).keys() == [key("s0"), key("s2")]


def test_bulk_create_respects_behaviour_gates(r):
    """A behaviour vetoing a save leaves that instance out (not written, not returned)."""
    created = Doc.bulk_create([Doc(name="a"), Doc(name="b", draft=1), Doc(name="c")])
    assert [d.name for d in created] == ["a", "c"]
    assert sorted(d.name for d in Doc.query.all()) == ["a", "c"]


def test_bulk_update_from_query_moves_indexes_and_counts(r):
    """Updating a query's matches rewrites only those fields and moves their index entries."""
    Shop.bulk_create(shops(6))
    assert Shop.bulk_update(Shop.query.filter(city="rome"), city="oslo", rating=9.5) == 3
    assert not any(r.exists(Shop.city.index_key("rome", ns)) for ns in Shop._meta.groups)
    assert sorted(s.name for s in Shop.query.filter(city="oslo")) == ["s0", "s2", "s4"]
    assert sorted(s.name for s in Shop.query.filter(rating=9.5)) == ["s0", "s2", "s4"]
    assert Shop.query.filter(city="paris").count() == 3


def test_bulk_update_list_keeps_other_fields_and_skips_deleted(r):
    """Only the named fields are written; an instance deleted meanwhile is not recreated."""
    items = Shop.bulk_create(shops(3))
    fresh = Shop.query.get(name="s0")
    fresh.note = "written elsewhere"
    fresh.save()
    r.delete(key("s2"))  # gone behind the ORM's back
    assert Shop.bulk_update(items, city="lima") == 2
    assert Shop.query.get(name="s0").note == "written elsewhere"
    assert Shop.query.get(name="s0").city == "lima"
    assert not r.exists(key("s2"))
    assert Shop.bulk_update(items) == 0


def test_bulk_update_unique_conflict_reported(r):
    """Giving many instances the same unique value: one wins, the others are listed as failures."""
    items = Shop.bulk_create(shops(3))
    with pytest.raises(BulkWriteError) as info:
        Shop.bulk_update(items, email="same@x.io")
    assert info.value.succeeded == 1
    assert len(info.value.failures) == 2
    assert email_holders(r).count(key("s0").encode()) == 1
    assert Shop.query.get(name="s0").email == "same@x.io"
    assert Shop.query.get(name="s1").email == "s1@x.io"


@pytest.mark.parametrize("updates, match", [
    ({"citty": "x"}, "Shop has no field 'citty'; did you mean 'city'"),
    ({"name": "x"}, "Shop.name: bulk_update cannot change a key field"),
    ({"rating": "high"}, r"Shop.rating.*'high'"),
])
def test_bulk_update_bad_input_writes_nothing(r, updates, match):
    """Unknown fields, key fields and invalid values raise before anything is written."""
    items = Shop.bulk_create(shops(2))
    before = {o.pk: r.hgetall(o.pk) for o in items}
    assert all(before.values())
    with pytest.raises(ModelException, match=match):
        Shop.bulk_update(items, **updates)
    assert {o.pk: r.hgetall(o.pk) for o in items} == before


def test_bulk_update_refuses_unsaved_instances(r):
    """Instances that were never saved cannot be bulk-updated."""
    with pytest.raises(ModelException, match="was never saved"):
        Shop.bulk_update(shops(1), city="x")
    assert db_size(r) == 0


def test_bulk_delete_list_and_query_clean_every_index(r):
    """Deleting by list or by query removes hashes and all index entries; counts what existed."""
    items = Shop.bulk_create(shops(6))
    assert Shop.bulk_delete(Shop.query.filter(city="paris")) == 3
    assert Shop.bulk_delete([items[0], items[1]], batch_size=1) == 1  # s1 was already gone
    assert sorted(Shop.query.keys()) == sorted([key("s2"), key("s4")])
    assert Shop.query.filter(rating__gte=0).keys() == [key("s2"), key("s4")]
    assert email_holders(r) == sorted([key("s2").encode(), key("s4").encode()])
    assert not any(r.exists(Shop.city.index_key("paris", ns)) for ns in Shop._meta.groups)
    with pytest.raises(ModelException, match="the query is for Other"):
        Shop.bulk_delete(Other.query.all())


@pytest.mark.standalone_only  # reads one server's command statistics and key layout
def test_delete_all_uses_sscan_and_leaves_nothing(r):
    """delete_all walks the class set with SSCAN (no KEYS/SMEMBERS) and removes all indexes."""
    Shop.bulk_create(shops(2500))
    Other.create(name="keep")
    r.config_resetstat()
    assert Shop.delete_all(batch_size=1000) == 2500
    stats = r.info("commandstats")
    assert "cmdstat_sscan" in stats
    assert "cmdstat_keys" not in stats and "cmdstat_smembers" not in stats
    assert index_keys(r) == ["$Class:Other"]
    assert Shop.delete_all() == 0


def test_delete_all_drops_stale_class_entries_and_runs_hooks(r):
    """Stale class-set members (hash expired) are removed, not counted; delete hooks see data."""
    Doc.bulk_create([Doc(name="a", note="first"), Doc(name="b", note="second")])
    ns = Doc._meta.groups[0]
    r.sadd(keys.class_set_key(ns), f"{ns}:ghost")
    assert Doc.delete_all() == 2
    assert not any(r.exists(k) for k in Doc._meta.class_set_keys())
    logged = [v for ns in Doc._meta.groups
              for v in r.lrange(keys.behaviour_key("Log", ns), 0, -1)]
    assert sorted(logged) == [b"first", b"second"]


def test_raw_update_writes_without_hooks_or_creating(r):
    """raw_update HSETs encoded values into existing hashes only; indexes are left alone."""
    Shop.bulk_create(shops(3))
    targets = [key("s0"), key("s1"), key("missing")]
    assert Shop.raw_update(targets, batch_size=2, note="migrated", rating=7) == 2
    assert not r.exists(key("missing"))
    assert Shop.query.count() == 3
    assert Shop.query.get(name="s0").note == "migrated"
    assert Shop.query.get(name="s1").rating == 7.0
    assert r.hget(key("s0"), "rating") == encoding.pack(7.0)
    s1 = Shop.query.get(name="s1")
    assert r.zscore(Shop.rating.key_for(s1), key("s1")) == 1.0  # index untouched (no hooks)
    assert Shop.raw_update([], note="x") == 0


@pytest.mark.parametrize("targets, values, match", [
    (["Other:s0"], {"note": "x"}, r"'Other:s0' is not a Shop key"),
    (["BulkShop:s0"], {"nope": 1}, "Shop has no field 'nope'"),
    (["BulkShop:s0"], {"rating": "bad"}, r"Shop.rating.*'bad'"),
    (["BulkShop:s0"], {"name": "x"}, "Shop.name: raw_update cannot change a key field"),
])
def test_raw_update_bad_input_writes_nothing(r, targets, values, match):
    """Foreign keys, unknown/key fields and invalid values raise before writing."""
    Shop.create(name="s0", note="orig")
    with pytest.raises(ModelException, match=match):
        Shop.raw_update(targets, **values)
    assert Shop.query.get(name="s0").note == "orig"


@pytest.mark.standalone_only  # the unsharded layout: one bulk_save script call per chunk
def test_a_command_error_in_one_save_of_a_chunk_fails_that_instance_only(r):
    """One bulk_save call writes a chunk; a command error inside one instance's save
    (its index key holds another type) is reported for that instance, the others are
    written and reported written."""
    r.set("$IndexF:BulkShop:city:oslo", "not a set")
    rows = shops(4)
    rows[2].city = "oslo"
    with pytest.raises(BulkWriteError) as caught:
        Shop.bulk_create(rows)
    assert [obj.name for obj, _error in caught.value.failures] == ["s2"]
    assert caught.value.succeeded == 3
    assert sorted(Shop.query.keys(city="paris") + Shop.query.keys(city="rome")) == \
        ["BulkShop:s0", "BulkShop:s1", "BulkShop:s3"]
