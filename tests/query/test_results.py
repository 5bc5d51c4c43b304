"""Query results read like lists while staying lazy; feature queries chain on a filter."""

import asyncio

import pytest

from popoto import (
    DecayingSortedField,
    FloatField,
    IndexedField,
    IntField,
    KeyField,
    Model,
    QueryException,
    WriteFilterMixin,
)
from tests.helpers import count_round_trips

NOW = 1_700_000_000.0


class Book(Model):
    title = KeyField()
    genre = IndexedField(null=True)
    pages = IntField(default=0)


class ResItem(WriteFilterMixin, Model):
    name = KeyField()
    category = IndexedField(null=True)
    value = FloatField(default=0.9)
    votes = IntField(default=1)
    seen = DecayingSortedField(decay_rate=0.5, base_score_field="votes")

    def compute_filter_score(self) -> float:
        return self.value


class ResRanked(Model):
    name = KeyField()
    category = KeyField()
    seen = DecayingSortedField(decay_rate=1.0, partition_by="category")


def _books():
    return [Book.create(title=t, genre=g) for t, g in
            (("a", "sf"), ("b", "sf"), ("c", "crime"))]


def test_results_compare_equal_to_lists(r):
    """filter()/all() results == the list of their instances; no match == []."""
    a, b, c = _books()
    assert Book.query.filter(genre="nope") == []
    assert Book.query.filter(genre="sf").order_by("title") == [a, b]
    assert Book.query.all().order_by("title") == [a, b, c]
    assert Book.query.filter(genre="sf") != [a]
    assert Book.query.filter(genre="sf") == Book.query.filter(genre="sf")
    assert (Book.query.filter(genre="sf") == "sf") is False


def test_results_support_the_list_reads(r):
    """len, indexing, negative index, slicing, in, bool, iteration, reversed, + and index."""
    a, b, c = _books()
    qs = Book.query.all().order_by("title")
    assert len(qs) == 3 and qs[0] == a and qs[-1] == c and qs[1:] == [b, c]
    assert b in qs and Book(title="zz") not in qs
    assert bool(qs) and not bool(Book.query.filter(genre="none"))
    assert [x.title for x in qs] == ["a", "b", "c"]
    assert list(reversed(qs)) == [c, b, a] and qs.index(b) == 1
    assert qs + [a] == [a, b, c, a] and [c] + qs == [c, a, b, c]
    with pytest.raises(IndexError):
        _ = Book.query.filter(genre="sf")[5]


def test_results_stay_lazy_and_are_read_once(r):
    """Building a query touches no server; the first read evaluates it, later reads reuse it."""
    _books()
    with count_round_trips() as trips:
        qs = Book.query.filter(genre="sf").order_by("title")
    assert trips[0] == 0
    with count_round_trips() as trips:
        assert len(qs) == 2 and qs == qs[:] and qs[0].title == "a" and "x" not in qs
    first = trips[0]
    with count_round_trips() as trips:
        assert qs == list(qs) and bool(qs)
    assert first >= 1 and trips[0] == 0


def test_priority_chains_on_a_filter(r):
    """filter(...).priority(n) ranks only the filter's matches, best first."""
    for name, cat, value in (("a", "x", 0.8), ("b", "y", 0.99), ("c", "x", 0.95),
                             ("d", "x", 0.75), ("e", "x", 0.2)):
        ResItem.create(name=name, category=cat, value=value)
    assert [i.name for i in ResItem.query.filter(category="x").priority(2)] == ["c", "a"]
    assert [i.name for i in ResItem.query.filter(category="x").priority(10)] == ["c", "a", "d"]
    assert [i.name for i in ResItem.query.priority(2)] == ["b", "c"]
    assert ResItem.query.filter(category="none").priority(3) == []


def test_top_by_decay_chains_on_a_filter(r):
    """filter(...).top_by_decay(n) ranks only the matches, also past the first n overall."""
    for i in range(12):  # the newest, best-ranked ones are all category "y"
        cat = "x" if i < 3 else "y"
        ResItem(name=f"i{i:02d}", category=cat, seen=NOW - (12 - i) * 3600).save(
            skip_auto_now=True)
    best_x = ResItem.query.filter(category="x").top_by_decay(n=2, as_of=NOW)
    assert [i.name for i in best_x] == ["i02", "i01"]
    assert all(i._score > 0 for i in best_x)
    assert [i.name for i in ResItem.query.top_by_decay(n=2, as_of=NOW)] == ["i11", "i10"]


def test_top_by_decay_takes_partitions_from_the_filter(r):
    """A partitioned decaying field reads its partition from the filter's exact condition."""
    for name, cat, hours in (("p", "news", 1), ("q", "news", 5), ("s", "sport", 0)):
        ResRanked(name=name, category=cat, seen=NOW - hours * 3600).save(skip_auto_now=True)
    got = ResRanked.query.filter(category="news").top_by_decay(n=5, as_of=NOW)
    assert [x.name for x in got] == ["p", "q"]
    with pytest.raises(QueryException, match="partitioned"):
        ResRanked.query.filter(name="p").top_by_decay(n=5, as_of=NOW)


def test_features_missing_on_the_model_raise_query_exception(r):
    """A filter of a model without the feature raises QueryException naming it."""
    with pytest.raises(QueryException, match="Book.query.priority"):
        Book.query.filter(genre="sf").priority(3)
    with pytest.raises(QueryException, match="Book.query.top_by_decay"):
        Book.query.all().top_by_decay(n=3)


def test_manager_async_keys(r):
    """Model.query.async_keys(...) returns the same keys as keys(), on the asyncio client."""
    _books()
    got = asyncio.run(Book.query.async_keys(genre="sf"))
    assert sorted(got) == sorted(Book.query.keys(genre="sf")) and len(got) == 2
