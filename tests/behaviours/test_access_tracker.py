"""AccessTrackerMixin: reads that hydrate instances are counted and logged, in batches."""

import time

import pytest

from popoto import AccessTrackerMixin, Field, IndexedField, KeyField, Model, ModelException
from popoto import keys
from tests.helpers import count_round_trips, db_keys, key_of, same_group_value, servers_of


class Doc(AccessTrackerMixin, Model):
    _record_on_read = True  # every read recorded at once (not staged)
    name = KeyField()
    kind = IndexedField(null=True)
    body = Field(type=str, null=True)

    _max_access_log = 3


class TtlDoc(AccessTrackerMixin, Model):
    _record_on_read = True  # every read recorded at once (not staged)
    name = KeyField()

    class Meta:
        ttl = 600


class Staged(AccessTrackerMixin, Model):
    name = KeyField()

    _access_staging = True


def log_key(model, name):
    """The access log of the instance ``name`` of ``model``."""
    return keys.companion_key("AccessLog", key_of(model, name), "log")


@pytest.mark.standalone_only  # pins the unsharded key names (cluster: keys carry a group tag)
def test_unsharded_access_log_key_name(r):
    """An unsharded instance Doc:a logs its accesses in $AccessLog:Doc:a:log."""
    Doc.create(name="a")
    Doc.query.get(name="a")
    assert r.llen("$AccessLog:Doc:a:log") == 1
    assert int(r.hget("Doc:a", "@access:count")) == 1


def test_get_filter_all_each_record_one_access(r):
    """Every hydrating read records one access; the loaded object shows it."""
    Doc.create(name="a", kind="x")
    assert Doc.query.get(name="a").access_count == 1
    assert [d.access_count for d in Doc.query.filter(kind="x")] == [2]
    (doc,) = list(Doc.query.all())
    assert doc.access_count == 3
    assert abs(doc.last_accessed - time.time()) < 5
    assert int(r.hget(key_of(Doc, "a"), "@access:count")) == 3
    assert r.llen(log_key(Doc, "a")) == 3
    assert Doc.query.get(db_key=key_of(Doc, "a")).access_count == 4


def test_fresh_and_unread_instances_have_no_accesses():
    """A created instance has count 0 and last_accessed None until read."""
    doc = Doc.create(name="a")
    assert doc.access_count == 0 and doc.last_accessed is None
    assert doc.access_log() == []


def test_tracking_costs_one_round_trip_per_result(r):
    """Tracking 50 results adds exactly one round trip (per server holding them: one
    pipeline), not one per object."""
    for i in range(50):
        Doc.create(name=f"d{i}", kind="x")
    Doc.create(name="warm").record_access()  # script loaded on every server
    with count_round_trips() as untracked:
        assert len(Doc.query.no_track().filter(kind="x")) == 50
    with count_round_trips() as tracked:
        assert len(Doc.query.filter(kind="x")) == 50
    doc_keys = [key_of(Doc, f"d{i}") for i in range(50)]
    assert tracked[0] == untracked[0] + servers_of(r, doc_keys)
    assert {int(r.hget(k, "@access:count")) for k in doc_keys} == {1}


def test_no_track_count_and_keys_record_nothing(r):
    """no_track(), count() and keys() do not record accesses."""
    Doc.create(name="a", kind="x")
    assert Doc.query.no_track().get(name="a").access_count == 0
    list(Doc.query.no_track().all())
    Doc.query.count()
    Doc.query.keys()
    assert r.exists(key_of(Doc, "a"))
    assert r.hget(key_of(Doc, "a"), "@access:count") is None
    assert not r.exists(log_key(Doc, "a"))


def test_access_log_is_capped_and_ordered(r):
    """The log keeps the last _max_access_log access times, oldest first."""
    doc = Doc.create(name="a")
    for _ in range(5):
        Doc.query.get(name="a")
    log = doc.access_log()
    assert len(log) == 3 and log == sorted(log)
    assert Doc.query.no_track().get(name="a").last_accessed == log[-1]
    assert Doc.query.no_track().get(name="a").access_count == 5


def test_saves_keep_the_counters(r):
    """Full and partial saves do not reset access_count/last_accessed."""
    Doc.create(name="a")
    doc = Doc.query.get(name="a")
    doc.body = "x"
    doc.save()
    doc.save(update_fields=["body"])
    assert doc.access_count == 1
    assert Doc.query.no_track().get(name="a").access_count == 1


def test_tracking_data_is_deleted_with_the_instance(r):
    """delete() removes the counters (in the hash) and the access log."""
    Doc.create(name="a")
    Doc.query.get(name="a").delete()
    assert db_keys(r) == set()


def test_tracking_never_resurrects_a_deleted_instance(r):
    """Recording an access of an instance deleted meanwhile writes nothing."""
    doc = Doc.create(name="a")
    Doc.query.get(name="a").delete()
    assert doc.record_access() == 0
    assert db_keys(r) == set()
    with pytest.raises(ModelException, match="unsaved"):
        Doc(name="b").record_access()


def test_access_log_expires_with_the_instance(r):
    """The log gets the instance's TTL, on save and on every access."""
    TtlDoc.create(name="a")
    TtlDoc.query.get(name="a")
    assert 590 < r.ttl(log_key(TtlDoc, "a")) <= 600
    r.expire(key_of(TtlDoc, "a"), 100)
    TtlDoc.query.get(name="a")
    assert 90 < r.ttl(log_key(TtlDoc, "a")) <= 100


def test_key_migration_carries_counters_and_log(r):
    """save(migrate_key=True) keeps the access count and renames the log (to a key in the
    same tag group: a sharded instance with a log cannot move to another slot)."""
    Doc.create(name="a")
    doc = Doc.query.get(name="a")
    Doc.query.get(name="a")
    doc = Doc.query.no_track().get(name="a")
    new_name = same_group_value(Doc, doc)
    doc.name = new_name
    doc.save(migrate_key=True)
    moved = Doc.query.no_track().get(name=new_name)
    assert moved.access_count == 2
    assert len(moved.access_log()) == 2 == r.llen(log_key(Doc, new_name))
    assert not r.exists(log_key(Doc, "a")) and not r.exists(key_of(Doc, "a"))


def test_staged_accesses_need_confirmation(r):
    """With _access_staging, reads stage; confirm records, discard drops."""
    Staged.create(name="a")
    Staged.create(name="b")
    one = Staged.query.get(name="a")
    assert one.access_count == 0 and r.hget(key_of(Staged, "a"), "@access:count") is None
    assert one.confirm_access() == 1  # the number recorded (1.x)
    assert one.access_count == 1 and one.confirm_access() == 0
    two = Staged.query.get(name="a")
    assert two.discard_staged_access() is True and two.discard_staged_access() is False
    both = list(Staged.query.all())
    assert Staged.confirm_accesses(both) == 2
    assert int(r.hget(key_of(Staged, "a"), "@access:count")) == 2
    assert int(r.hget(key_of(Staged, "b"), "@access:count")) == 1
    assert Staged.query.get(name="a").record_access() == 3


def test_bad_log_size_is_refused():
    """_max_access_log must be a positive int."""
    with pytest.raises(ModelException, match="_max_access_log"):
        class BadLog(AccessTrackerMixin, Model):
            name = KeyField()
            _max_access_log = 0


# --- Popoto 1.x semantics: reads are staged until confirmed (issue 14) -------------------

class Note(AccessTrackerMixin, Model):
    name = KeyField()

    class Meta:
        namespace = "TrackNote"


def test_reads_are_staged_by_default(r):
    """Without options a read only stages an access: nothing is written until confirmed."""
    Note.create(name="a")
    loaded = Note.query.get(name="a")
    assert loaded.access_count == 0
    assert r.hget(key_of(Note, "a"), "@access:count") is None
    assert r.llen(keys.companion_key("AccessLog", key_of(Note, "a"), "log")) == 0


def test_confirm_access_returns_the_number_recorded(r):
    """confirm_access() records every staged read (on_read() stages one more) and returns
    how many; a second call returns 0."""
    Note.create(name="a")
    loaded = Note.query.get(name="a")
    loaded.on_read()
    loaded.on_read()
    assert loaded.confirm_access() == 3
    assert loaded.access_count == 3 and len(loaded.access_log()) == 3
    assert int(r.hget(key_of(Note, "a"), "@access:count")) == 3
    assert loaded.confirm_access() == 0


def test_discard_staged_access_drops_them(r):
    """discard_staged_access() forgets the staged reads; nothing is recorded."""
    Note.create(name="a")
    loaded = Note.query.get(name="a")
    loaded.on_read()
    assert loaded.discard_staged_access() is True
    assert loaded.confirm_access() == 0
    assert r.hget(key_of(Note, "a"), "@access:count") is None


def test_confirm_access_on_an_unsaved_instance_is_a_type_error(r):
    """confirm_access() (and record_access()) of an unsaved instance raise TypeError,
    also a ModelException naming the model; nothing is written."""
    fresh = Note(name="new")
    fresh.on_read()
    with pytest.raises(TypeError, match="TrackNote|Note") as info:
        fresh.confirm_access()
    assert isinstance(info.value, ModelException)
    with pytest.raises(TypeError):
        fresh.record_access()
    assert db_keys(r) == set()


def test_record_on_read_option_records_at_once(r):
    """_record_on_read = True records each hydrating read immediately (no staging)."""
    Doc.create(name="a")
    assert Doc.query.get(name="a").access_count == 1
    doc = Doc.query.get(name="a")
    assert doc.access_count == 2 and doc.confirm_access() == 0
    doc.on_read()
    assert int(r.hget(key_of(Doc, "a"), "@access:count")) == 3
