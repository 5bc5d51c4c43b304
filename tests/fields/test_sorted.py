"""SortedField options under their 1.x spellings, SortedKeyField and TemporalPeriod."""

import datetime as dt
import time
from decimal import Decimal

import pytest

from popoto import (
    CyclicDecayField,
    Field,
    KeyField,
    Model,
    ModelException,
    QueryException,
    SortedField,
    SortedKeyField,
    TemporalPeriod,
)


class StampEvent(Model):
    name = KeyField()
    created = SortedField(type=dt.datetime, auto_now_add=True, null=True)
    updated = SortedField(type=dt.datetime, auto_now=True, null=True)
    stamp = SortedField(type=float, auto_now=True, null=True)
    istamp = SortedField(type=int, auto_now_add=True, null=True)
    note = Field(type=str, null=True)


def test_auto_now_and_auto_now_add_stamp_saves(r):
    """auto_now stamps every save, auto_now_add only the first; both are range-queryable."""
    before = time.time()
    event = StampEvent.create(name="e")
    created, updated = event.created, event.updated
    assert created.tzinfo is not None and created.timestamp() >= before - 1
    assert before - 1 <= event.stamp <= time.time() and isinstance(event.istamp, int)
    time.sleep(0.01)
    event.note = "x"
    event.save()
    assert event.created == created and event.updated > updated
    loaded = StampEvent.query.get(name="e")
    assert loaded.created == created and loaded.updated == event.updated
    assert StampEvent.query.filter(updated__gte=created).keys() == [event.pk]
    kept = loaded.updated
    loaded.save(skip_auto_now=True)
    assert StampEvent.query.get(name="e").updated == kept


def test_auto_now_refused_on_dates_and_times():
    """auto_now on a date or time SortedField raises ModelException at definition."""
    with pytest.raises(ModelException, match="auto_now"):
        SortedField(type=dt.date, auto_now=True)


def test_sort_by_is_a_deprecated_partition_by(r):
    """SortedField(sort_by=...) warns DeprecationWarning and partitions like partition_by."""
    with pytest.warns(DeprecationWarning, match="partition_by"):

        class Score(Model):
            name = KeyField()
            board = KeyField()
            points = SortedField(type=int, sort_by="board")

    assert Score._meta.fields["points"].partition_by == ("board",)
    Score.create(name="a", board="x", points=3)
    Score.create(name="b", board="y", points=4)
    assert [s.name for s in Score.query.filter(board="x", points__gte=0)] == ["a"]
    with pytest.raises(QueryException, match="partitioned"):
        Score.query.filter(points__gte=0).keys()
    with pytest.raises(ModelException, match="not both"), pytest.warns(DeprecationWarning):
        SortedField(sort_by="a", partition_by="b")


class Release(Model):
    version = SortedKeyField(type=int)
    title = Field(type=str, null=True)


def test_sorted_key_field_is_a_key_and_a_range_index(r):
    """SortedKeyField is part of the key, answers exact lookups and ranges and orders."""
    for v in (3, 1, 2, 10):
        Release.create(version=v, title=f"v{v}")
    one = Release.query.get(version=2)
    assert one.title == "v2" and one.pk.endswith(":2")
    assert [x.version for x in Release.query.filter(version__gte=2).order_by("version")] == \
        [2, 3, 10]
    assert [x.version for x in Release.query.filter(version__between=(1, 3),
                                                    order_by="-version")] == [3, 2, 1]
    assert sorted(x.version for x in Release.query.filter(version__in=[1, 10])) == [1, 10]
    with pytest.raises(ModelException, match="Release.version"):
        Release.create(title="no key")
    with pytest.raises(ModelException, match="null=True"):
        class Bad(Model):
            version = SortedKeyField(type=int, null=True)


def test_temporal_period_values_are_seconds(r):
    """TemporalPeriod members are their length in seconds and serve as cycle periods."""
    assert TemporalPeriod.HOUR == 3600 and TemporalPeriod.DAY.seconds == 86400
    assert TemporalPeriod.WEEK == 7 * TemporalPeriod.DAY

    class SortedHabit(Model):
        name = KeyField()
        urge = CyclicDecayField(cycles=[(TemporalPeriod.WEEK, 1.5, 0)])

    habit = SortedHabit.create(name="gym")
    assert SortedHabit.urge.cycles_of(habit) == [(604800.0, 1.5, 0.0)]
    assert isinstance(Decimal(TemporalPeriod.MINUTE), Decimal)
