"""All behaviours and special fields on one model compose in one write per save/delete."""

from popoto import (
    AccessTrackerMixin,
    CyclicDecayField,
    EventStreamMixin,
    Field,
    FloatField,
    KeyField,
    ListField,
    Model,
    WriteFilterMixin,
    keys,
)
from tests.helpers import count_round_trips, db_keys


class Memory(WriteFilterMixin, EventStreamMixin, AccessTrackerMixin, Model):
    _record_on_read = True  # every read recorded at once (not staged)
    mid = KeyField()
    importance = FloatField(default=0.5)
    recalled = CyclicDecayField(cycles=[(86400.0, 1.0)], pressure_rate=0.1)
    trail = ListField(max_length=2)
    text = Field(type=str, null=True)

    _stream_name = "memories"

    def compute_filter_score(self) -> float:
        return self.importance


def test_one_round_trip_per_save_and_delete_with_everything_cleaned(r):
    """Save and delete stay one script call each; delete leaves no key behind but the stream."""
    Memory(mid="warm", importance=0.9).save()  # connection and script loading
    Memory.query.get(mid="warm").delete()
    for stream in Memory.stream_keys():
        r.delete(stream)
    memory = Memory(mid="m1", importance=0.9, trail=["a", "b", "c"])
    with count_round_trips() as trips:
        assert memory.save() is True
    assert trips[0] == 1
    ns = keys.ns_of(memory.pk)
    assert r.zscore(Memory.priority_key(ns), memory.pk) == 0.9
    assert Memory.stream_len() == 1
    loaded = Memory.query.get(mid="m1")
    assert loaded.access_count == 1
    loaded.trail.push("d")
    loaded.strengthen_cycle("recalled")
    assert r.hexists(Memory.recalled.cycles_key(ns), memory.pk)
    assert r.llen(keys.companion_key("List", memory.pk, "trail")) == 2
    with count_round_trips() as trips:
        assert loaded.delete() is True
    assert trips[0] == 1
    assert db_keys(r) == {Memory.stream_key(ns=ns)}
    assert [e["op"] for _i, e in Memory.stream_range()] == ["create", "update", "delete"]


def test_filtered_save_writes_no_behaviour_data(r):
    """A save vetoed by the write filter writes no list, companion state or event."""
    assert Memory(mid="m1", importance=0.01, trail=["x"]).save() is False
    assert db_keys(r) == set()
