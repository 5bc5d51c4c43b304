"""Capped lists: ListField(max_length=N) in its own Redis LIST beside the hash."""

import datetime as dt

import pytest

from popoto import (
    CappedListProxy,
    Field,
    FieldUsageError,
    KeyField,
    ListField,
    Model,
    ModelException,
    UniqueViolation,
    keys,
)
from popoto.fields.capped import CappedListField
from popoto.encoding import pack, unpack
from tests.helpers import (
    count_round_trips,
    db_keys,
    key_of,
    same_group_value,
    server_count,
    servers_of,
)


class Feed(Model):
    name = KeyField()
    items = ListField(max_length=3)
    title = Field(type=str, null=True)
    email = Field(type=str, null=True, unique=True)


class TwoLists(Model):
    name = KeyField()
    a = ListField(max_length=2)
    b = ListField(max_length=4)


class TtlFeed(Model):
    name = KeyField()
    items = ListField(max_length=5)
    title = Field(type=str, null=True)

    class Meta:
        ttl = 1000


class PlainList(Model):
    name = KeyField()
    items = ListField(null=True)


def list_key(key=None, field="items"):
    """The Redis LIST of a capped field of the instance at ``key`` (default: Feed "a")."""
    return keys.companion_key("List", key or key_of(Feed, "a"), field)


def stored(r, key=None, field="items"):
    """Decoded content of the Redis LIST of a capped field."""
    return [unpack(v) for v in r.lrange(list_key(key, field), 0, -1)]


@pytest.mark.standalone_only  # pins the unsharded key name (cluster: keys carry a group tag)
def test_unsharded_list_key_name(r):
    """An unsharded Feed:a keeps its capped list in $List:Feed:a:items."""
    feed = Feed.create(name="a", items=[1])
    assert Feed.items.list_key(feed.pk) == "$List:Feed:a:items"
    assert r.lrange("$List:Feed:a:items", 0, -1) == [pack(1)]


def test_listfield_with_max_length_is_capped():
    """ListField(max_length=N) builds a CappedListField; without it, a plain ListField."""
    assert isinstance(Feed._meta.fields["items"], CappedListField)
    assert isinstance(Feed._meta.fields["items"], ListField)
    assert type(PlainList._meta.fields["items"]) is ListField


def test_push_adds_newest_first_and_trims_oldest(r):
    """push() puts the item at index 0 (1.x) and drops the oldest items, at the end,
    beyond the cap, in Redis."""
    feed = Feed.create(name="a", items=[2, 1])
    feed.items.push(3)
    feed.items.push(4)
    assert stored(r) == [4, 3, 2]
    assert feed.items == [4, 3, 2]
    assert Feed.query.get(name="a").items == [4, 3, 2]


def test_hash_holds_no_copy_of_the_list(r):
    """The instance hash has no field for the capped list; the LIST is the only copy."""
    Feed.create(name="a", items=["x"])
    assert b"items" not in r.hgetall(key_of(Feed, "a"))
    assert stored(r) == ["x"]


def test_constructor_and_assignment_keep_the_newest_items(r):
    """A list longer than the cap keeps its first (newest) N items, locally and in Redis."""
    feed = Feed(name="a", items=[5, 4, 3, 2, 1])
    assert feed.items == [5, 4, 3]
    feed.save()
    assert stored(r) == [5, 4, 3]
    feed.items = ["d", "c", "b", "a"]
    assert feed.items == ["d", "c", "b"]
    feed.save()
    assert stored(r) == ["d", "c", "b"]


def test_list_protocol():
    """Indexing, slicing, len, iteration, in, reversed, index, count and == work like a list."""
    feed = Feed.create(name="a", items=["x", "y", "z"])
    loaded = Feed.query.get(name="a")
    items = loaded.items
    assert isinstance(items, CappedListProxy)
    assert items[0] == "x" and items[-1] == "z"
    assert items[1:] == ["y", "z"] and isinstance(items[1:], list)
    assert len(items) == 3
    assert list(items) == ["x", "y", "z"]
    assert list(reversed(items)) == ["z", "y", "x"]
    assert "y" in items and "q" not in items
    assert items.index("z") == 2 and items.count("x") == 1
    assert items == ["x", "y", "z"] and items != ["x"]
    assert items == feed.items
    assert items + ["w"] == ["x", "y", "z", "w"]
    assert repr(items) == "['x', 'y', 'z']"
    assert items.max_length == 3
    with pytest.raises(IndexError):
        items[3]


def test_append_and_extend_are_written_by_save_with_the_cap(r):
    """append/extend add newest items (index 0) to the local view (capped) and the next
    save writes them."""
    feed = Feed.create(name="a", items=[1])
    feed.items.append(2)
    feed.items.extend([3, 4])
    assert feed.items == [4, 3, 2]
    assert stored(r) == [1]
    feed.save()
    assert stored(r) == [4, 3, 2]
    feed.items += [5]
    feed.save()
    assert stored(r) == [5, 4, 3]


def test_save_of_appends_keeps_concurrent_pushes(r):
    """Appends saved from a stale copy are added as newer than items another writer pushed."""
    Feed.create(name="a", items=[1])
    mine = Feed.query.get(name="a")
    assert mine.items == [1]
    other = Feed.query.get(name="a")
    other.items.push(2)
    mine.items.append(3)
    mine.save()
    assert stored(r) == [3, 2, 1]


def test_save_without_list_changes_does_not_rewrite_it(r):
    """A save that did not change the list leaves items pushed meanwhile in place."""
    Feed.create(name="a", items=[1])
    mine = Feed.query.get(name="a")
    assert mine.items == [1]
    Feed.query.get(name="a").items.push(2)
    mine.title = "changed"
    mine.save()
    assert stored(r) == [2, 1]
    assert Feed.query.get(name="a").title == "changed"


@pytest.mark.parametrize("mutate, expected", [
    (lambda items: items.__setitem__(0, "z"), ["z", "b", "c"]),
    (lambda items: items.__delitem__(1), ["a", "c"]),
    (lambda items: items.insert(1, "q"), ["a", "q", "b"]),  # the oldest ("c") drops
    (lambda items: items.pop(0), ["b", "c"]),
    (lambda items: items.remove("c"), ["a", "b"]),
    (lambda items: items.clear(), []),
    (lambda items: items.reverse(), ["c", "b", "a"]),
    (lambda items: items.sort(reverse=True), ["c", "b", "a"]),
])
def test_other_mutations_rewrite_the_whole_list(r, mutate, expected):
    """setitem/del/insert/pop/remove/clear/reverse/sort rewrite the list on save (capped)."""
    feed = Feed.create(name="a", items=["a", "b", "c"])
    loaded = Feed.query.get(name="a")
    mutate(loaded.items)
    assert loaded.items == expected
    loaded.save()
    assert stored(r) == expected
    assert feed.items.has_unsaved_changes is False


def test_push_writes_pending_local_changes_in_the_same_step(r):
    """push() also writes unsaved appends/rewrites of the list, keeping the local order."""
    feed = Feed.create(name="a", items=[3, 2, 1])
    feed.items[0] = 9
    feed.items.push(4)
    assert stored(r) == [4, 9, 2]
    assert feed.items == [4, 9, 2]
    assert feed.items.has_unsaved_changes is False
    feed.items.append(5)
    feed.items.push(6)
    assert stored(r) == [6, 5, 4] == feed.items


def test_push_does_not_read_an_unloaded_list(r):
    """push() on a freshly loaded instance writes without reading the list first."""
    Feed.create(name="a", items=[1])
    loaded = Feed.query.get(name="a")
    with count_round_trips() as trips:
        loaded.items.push(2)
    assert trips[0] == 1
    assert loaded.items == [2, 1]


def test_push_on_unsaved_instance_raises():
    """push() needs a saved instance: FieldUsageError (a TypeError), nothing written."""
    feed = Feed(name="a")
    with pytest.raises(FieldUsageError, match="Feed.items"):
        feed.items.push(1)
    with pytest.raises(TypeError):
        feed.items.push(1)
    assert feed.items == []


def test_push_on_deleted_instance_raises_and_keeps_local_state(r):
    """push() on an instance deleted behind our back fails, writes nothing, rolls back."""
    feed = Feed.create(name="a", items=[1])
    Feed.query.get(name="a").delete()
    with pytest.raises(ModelException, match="no instance"):
        feed.items.push(2)
    assert feed.items == [1]
    assert db_keys(r) == set()


def test_push_of_unencodable_value_raises(r):
    """An item msgpack cannot encode is refused naming field and value; nothing written."""
    feed = Feed.create(name="a", items=[1])
    with pytest.raises(ModelException, match="Feed.items.*object"):
        feed.items.push(object())
    assert stored(r) == [1]
    feed.items.append(object())
    with pytest.raises(ModelException, match="Feed.items"):
        feed.save()
    assert stored(r) == [1]


def test_failed_save_keeps_pending_changes_and_retries_them_once(r):
    """A save that fails (unique violation) leaves list changes pending; the retry writes once."""
    Feed.create(name="other", email="taken@example.org")
    feed = Feed.create(name="a", items=[1])
    feed.items.append(2)
    feed.email = "taken@example.org"
    with pytest.raises(UniqueViolation):
        feed.save()
    assert stored(r) == [1]
    assert feed.items.has_unsaved_changes
    feed.email = "free@example.org"
    feed.save()
    assert stored(r) == [2, 1]
    feed.save()
    assert stored(r) == [2, 1]


def test_partial_save_writes_the_list_only_when_named(r):
    """save(update_fields=...) writes pending list changes only when the list is named."""
    feed = Feed.create(name="a", items=[1])
    feed.items.append(2)
    feed.title = "t"
    feed.save(update_fields=["title"])
    assert stored(r) == [1]
    feed.save(update_fields=["items"])
    assert stored(r) == [2, 1]


def test_list_is_deleted_with_its_instance(r):
    """delete() removes the LIST in the same script call."""
    feed = Feed.create(name="a", items=[1, 2])
    assert r.exists(list_key())
    Feed.query.get(name="a").delete()
    assert db_keys(r) == set()
    with pytest.raises(ModelException, match="no instance"):
        feed.items.push(3)


def test_key_migration_moves_the_list(r):
    """save(migrate_key=True) renames the LIST with the instance, without reading it (to a
    key in the same tag group: a sharded instance with a list cannot move to another slot)."""
    Feed.create(name="a", items=[1, 2])
    loaded = Feed.query.get(name="a")
    new_name = same_group_value(Feed, loaded)
    loaded.name = new_name
    with count_round_trips() as trips:
        loaded.save(migrate_key=True)
    assert trips[0] == 1
    assert not r.exists(list_key()) and not r.exists(key_of(Feed, "a"))
    assert stored(r, key_of(Feed, new_name)) == [1, 2]
    assert Feed.query.get(name=new_name).items == [1, 2]


def test_list_expires_with_its_instance(r):
    """With a TTL, save, push and partial saves give the LIST the instance's expiry."""
    feed = TtlFeed.create(name="a", items=[1])
    items_key = list_key(feed.pk)
    assert 990 < r.ttl(items_key) <= 1000
    r.expire(feed.pk, 500)
    feed.items.push(2)
    assert 990 < r.ttl(items_key) <= 1000  # a push is a write: it refreshes both
    assert 990 < r.ttl(feed.pk) <= 1000
    r.expire(items_key, 10)
    feed.title = "x"
    feed.save(update_fields=["title"])
    assert 990 < r.ttl(items_key) <= 1000


def test_list_expires_at_instance_expire_at(r):
    """_expire_at on the instance is applied to its LIST too."""
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    feed = Feed(name="a", items=[1], _expire_at=when)
    feed.save()
    assert 3500 < r.ttl(list_key()) <= 3600
    assert 3500 < r.ttl(key_of(Feed, "a")) <= 3600


def test_reads_are_lazy_and_prefetch_is_one_round_trip(r):
    """Loading instances does not read their lists; Model.field.prefetch reads all at once
    (one pipeline: one round trip per server holding the lists)."""
    for i in range(5):
        Feed.create(name=f"f{i}", items=[i])
    with count_round_trips() as trips:
        feeds = list(Feed.query.all())
    base = trips[0]
    with count_round_trips() as trips:
        Feed.items.prefetch(feeds)
    assert trips[0] == servers_of(r, [list_key(f.pk) for f in feeds])
    with count_round_trips() as trips:
        got = sorted(f.items[0] for f in feeds)
    assert trips[0] == 0 and got == [0, 1, 2, 3, 4]
    assert base <= 3 * server_count(r)


def test_refresh_rereads_and_drops_local_changes(r):
    """refresh() reloads the stored list and forgets unsaved local changes."""
    feed = Feed.create(name="a", items=[1])
    Feed.query.get(name="a").items.push(2)
    feed.items.append(9)
    feed.items.refresh()
    assert feed.items == [2, 1]
    assert not feed.items.has_unsaved_changes


def test_two_capped_lists_on_one_model(r):
    """Each capped field has its own LIST and cap."""
    obj = TwoLists.create(name="x", a=[3, 2, 1], b=[3, 2, 1])
    obj.a.push(4)
    obj.b.push(4)
    assert stored(r, obj.pk, "a") == [4, 3]
    assert stored(r, obj.pk, "b") == [4, 3, 2, 1]


def test_pipeline_push_is_queued(r):
    """push(pipeline=p) only queues the write; executing p applies it."""
    from popoto.redis_db import get_client

    feed = Feed.create(name="a", items=[1])
    pipe = get_client().pipeline()
    feed.items.push(2, pipeline=pipe)
    assert stored(r) == [1]
    pipe.execute()
    assert stored(r) == [2, 1]


def test_bulk_paths_keep_the_cap(r):
    """bulk_create and bulk_update write capped lists with the same order and cap."""
    Feed.bulk_create([Feed(name=f"b{i}", items=list(range(i + 3))[::-1]) for i in range(3)])
    made = [key_of(Feed, f"b{i}") for i in range(3)]
    assert [stored(r, k) for k in made] == [[2, 1, 0], [3, 2, 1], [4, 3, 2]]  # newest N
    Feed.bulk_update(Feed.query.all(), items=["s", "r", "q", "p"])
    assert [stored(r, k) for k in made] == [["s", "r", "q"]] * 3


def test_rebuild_indexes_keeps_the_list(r):
    """Index maintenance re-runs the write path without touching list contents."""
    Feed.create(name="a", items=[1, 2, 3])
    Feed.rebuild_indexes()
    assert stored(r) == [1, 2, 3]
    assert Feed.check_indexes()["total"] == 0
    Feed.query.get(name="a").delete()
    assert db_keys(r) == set()


def test_legacy_hash_copy_is_removed_on_save(r):
    """A value left in the hash by a plain ListField is dropped when the list is written."""
    feed = Feed.create(name="a", items=[1])
    r.hset(feed.pk, "items", pack([7, 8]))
    feed.items.append(2)
    feed.save()
    assert b"items" not in r.hgetall(feed.pk)
    assert stored(r) == [2, 1]


def test_bad_definitions_and_values_raise():
    """Invalid caps, unique lists and non-list values raise ModelException naming them."""
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ModelException, match="max_length"):
            ListField(max_length=bad)
    with pytest.raises(ModelException, match="unique"):
        ListField(max_length=3, unique=True)
    feed = Feed(name="a")
    with pytest.raises(ModelException, match="Feed.items.*expected a list"):
        feed.items = "abc"
    with pytest.raises(ModelException, match="Feed.items"):
        Feed(name="b", items={"a": 1})


def test_none_means_empty():
    """Assigning None gives an empty capped list, saved as such."""
    feed = Feed(name="a", items=None)
    assert feed.items == []
    feed.save()
    feed.items = None
    feed.save()
    assert Feed.query.get(name="a").items == []
