"""WriteFilterMixin: low-value saves are skipped, high-value instances are ranked."""

import pytest

from popoto import Field, FloatField, KeyField, Model, ModelException, QueryException
from popoto import WriteFilterMixin, keys
from popoto.redis_db import get_client
from tests.helpers import db_keys, key_of


class Note(WriteFilterMixin, Model):
    name = KeyField()
    value = FloatField(default=0.5)
    text = Field(type=str, null=True)

    def compute_filter_score(self) -> float:
        return self.value

    class Meta:
        namespace = "FilterNote"


class Strict(WriteFilterMixin, Model):
    name = KeyField()
    value = FloatField(default=0.0)

    _min_threshold = 0.5
    _priority_threshold = 0.9

    def compute_filter_score(self) -> float:
        return self.value


class Plainish(Model):
    name = KeyField()


def prio(model, name):
    """The priority set holding the instance ``name`` of ``model`` (its group's set)."""
    return model.priority_key(keys.ns_of(key_of(model, name)))


def ranked(r, model=Note):
    """Every (member, score) of the model's priority set(s), best first."""
    rows = [(m.decode(), s) for k in model.priority_keys()
            for m, s in r.zrange(k, 0, -1, withscores=True)]
    return sorted(rows, key=lambda row: (-row[1], row[0]))


@pytest.mark.standalone_only  # pins the unsharded set name (cluster: one per tag group)
def test_unsharded_priority_key_name(r):
    """An unsharded model ranks in $Priority:<Model>."""
    assert Note.priority_key() == "$Priority:FilterNote" == Note.priority_keys()[0]
    Note(name="a", value=0.9).save()
    assert r.zscore("$Priority:FilterNote", "FilterNote:a") == 0.9


def test_low_score_save_writes_nothing_and_returns_false(r):
    """Below _min_threshold save() returns False and nothing reaches Redis."""
    note = Note(name="a", value=0.05)
    assert note.save() is False
    assert db_keys(r) == set()
    assert note.is_persisted is False


def test_low_score_save_on_pipeline_queues_nothing(r):
    """save(pipeline=p) of a filtered instance returns p with nothing queued."""
    pipe = get_client().pipeline()
    assert Note(name="a", value=0.0).save(pipeline=pipe) is pipe
    assert len(pipe.command_stack) == 0


def test_threshold_is_inclusive(r):
    """A score equal to the minimum is saved; equal to the priority threshold is ranked."""
    assert Note(name="min", value=0.1).save() is True
    assert Note(name="prio", value=0.7).save() is True
    assert ranked(r) == [(key_of(Note, "prio"), 0.7)]
    assert Note.query.count() == 2


def test_mid_score_is_saved_but_not_ranked(r):
    """Between the thresholds the instance is saved and not in the priority set."""
    assert Note(name="a", value=0.5).save() is True
    assert Note.query.get(name="a").value == 0.5
    assert sum(r.exists(k) for k in Note.priority_keys()) == 0


def test_priority_membership_follows_the_score(r):
    """A save scoring lower leaves the priority set; delete removes the entry too."""
    note = Note(name="a", value=0.9)
    note.save()
    assert r.zscore(prio(Note, "a"), note.pk) == 0.9
    note.value = 0.95
    note.save(update_fields=["value"])
    assert r.zscore(prio(Note, "a"), note.pk) == 0.95
    note.value = 0.3
    note.save()
    assert r.zscore(prio(Note, "a"), note.pk) is None
    note.value = 0.8
    note.save()
    assert ranked(r) == [(note.pk, 0.8)]
    note.delete()
    assert db_keys(r) == set()


def test_vetoed_save_changes_nothing(r):
    """A filtered save of a ranked instance leaves its stored state and rank as they were."""
    note = Note.create(name="a", value=0.9, text="kept")
    note.value = 0.01
    note.text = "lost"
    assert note.save() is False
    stored = Note.query.get(name="a")
    assert (stored.value, stored.text) == (0.9, "kept")
    assert ranked(r) == [(note.pk, 0.9)]


def test_skip_write_filter_bypasses_the_minimum(r):
    """save(skip_write_filter=True) writes a low-value instance (and ranks from its score)."""
    assert Note(name="a", value=0.0).save(skip_write_filter=True) is True
    assert Note.query.get(name="a") is not None
    assert sum(r.exists(k) for k in Note.priority_keys()) == 0


def test_create_of_filtered_instance_is_not_persisted(r):
    """Model.create() of a low-value instance returns it unsaved."""
    note = Note.create(name="a", value=0.0)
    assert note.is_persisted is False
    assert db_keys(r) == set()


def test_per_model_thresholds(r):
    """_min_threshold/_priority_threshold are overridable per model."""
    assert Strict(name="a", value=0.4).save() is False
    assert Strict(name="b", value=0.6).save() is True
    assert Strict(name="c", value=0.95).save() is True
    assert ranked(r, Strict) == [(key_of(Strict, "c"), 0.95)]


def test_bulk_create_applies_the_filter(r):
    """bulk_create writes only the instances that pass the filter."""
    made = Note.bulk_create([Note(name=f"n{i}", value=i / 10) for i in range(10)])
    assert sorted(n.name for n in made) == [f"n{i}" for i in range(1, 10)]
    assert Note.query.count() == 9
    assert ranked(r) == [(key_of(Note, f"n{i}"), i / 10) for i in (9, 8, 7)]


def test_priority_query_orders_by_score_then_key(r):
    """query.priority(n) returns the n best instances, ties broken by key."""
    for name, value in (("c", 0.8), ("a", 0.8), ("b", 0.95), ("d", 0.75), ("e", 0.2)):
        Note(name=name, value=value).save()
    assert [n.name for n in Note.query.priority(3)] == ["b", "a", "c"]
    assert [n.name for n in Note.query.priority(10)] == ["b", "a", "c", "d"]
    assert Note.query.priority(0) == []
    top = Note.query.priority(1)[0]
    assert top._score == 0.95


def test_priority_query_drops_vanished_instances(r):
    """Entries whose instance hash expired are skipped and removed from the set."""
    for name, value in (("a", 0.9), ("b", 0.8), ("c", 0.75)):
        Note(name=name, value=value).save()
    r.delete(key_of(Note, "a"))
    assert [n.name for n in Note.query.priority(2)] == ["b", "c"]
    assert r.zscore(prio(Note, "a"), key_of(Note, "a")) is None
    assert ranked(r) == [(key_of(Note, "b"), 0.8), (key_of(Note, "c"), 0.75)]


def test_priority_query_errors():
    """priority() needs a WriteFilterMixin model and a non-negative int."""
    with pytest.raises(QueryException, match="WriteFilterMixin"):
        Plainish.query.priority(3)
    with pytest.raises(QueryException, match="n must be"):
        Note.query.priority(-2)


def test_bad_scores_and_definitions_raise(r):
    """A non-numeric score, a missing scorer or inverted thresholds raise ModelException."""

    class NoScore(WriteFilterMixin, Model):
        name = KeyField()

    with pytest.raises(ModelException, match="compute_filter_score"):
        NoScore(name="x").save()

    class NaNScore(WriteFilterMixin, Model):
        name = KeyField()

        def compute_filter_score(self):
            return float("nan")

    with pytest.raises(ModelException, match="finite"):
        NaNScore(name="x").save()
    with pytest.raises(ModelException, match="_min_threshold"):
        class Inverted(WriteFilterMixin, Model):
            name = KeyField()
            _min_threshold = 0.8
            _priority_threshold = 0.2
    assert db_keys(r) == set()


# --- Popoto 1.x spellings (issue 14) ---------------------------------------------------

class WfGated(WriteFilterMixin, Model):
    name = KeyField()
    value = FloatField(null=True)

    _wf_min_threshold = 0.4
    _wf_priority_threshold = 0.6

    def compute_filter_score(self):
        return self.value


def test_wf_thresholds_are_read(r):
    """_wf_min_threshold / _wf_priority_threshold decide skipping and ranking."""
    assert WfGated(name="low", value=0.39).save() is False
    assert WfGated(name="mid", value=0.5).save() is True
    assert WfGated(name="top", value=0.6).save() is True
    assert [g.name for g in WfGated.query.priority(5)] == ["top"]
    assert WfGated.query.get(name="low") is None
    assert WfGated._min_threshold == 0.4  # the old name reads the value in force


def test_old_threshold_names_warn_and_still_apply(r):
    """_min_threshold / _priority_threshold give a DeprecationWarning and keep working."""
    with pytest.warns(DeprecationWarning, match="_wf_min_threshold"):

        class OldStyle(WriteFilterMixin, Model):
            name = KeyField()
            value = FloatField(default=0.0)
            _min_threshold = 0.3

            def compute_filter_score(self):
                return self.value

    assert OldStyle._wf_min_threshold == 0.3 and OldStyle._wf_priority_threshold == 0.7
    assert OldStyle(name="a", value=0.29).save() is False
    assert OldStyle(name="b", value=0.3).save() is True


def test_none_score_counts_as_below_the_minimum(r):
    """compute_filter_score() returning None skips the save (False), writes nothing."""
    assert WfGated(name="n", value=None).save() is False
    assert WfGated.create(name="n2", value=None).is_persisted is False
    assert db_keys(r) == set()
    saved = WfGated.create(name="s", value=0.9)
    saved.value = None
    assert saved.save() is False
    assert saved.save(skip_write_filter=True) is True
    assert WfGated.query.priority(3) == []  # a None score is never ranked


def test_missing_compute_filter_score_is_not_implemented(r):
    """A write-filter model without compute_filter_score raises NotImplementedError too."""
    from popoto import NotImplementedMethodError

    class NoScore(WriteFilterMixin, Model):
        name = KeyField()

    with pytest.raises(NotImplementedError, match="compute_filter_score") as info:
        NoScore(name="x").save()
    assert isinstance(info.value, ModelException)
    assert isinstance(info.value, NotImplementedMethodError)
    assert db_keys(r) == set()
