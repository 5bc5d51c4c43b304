"""Stale index entries (hash expired or deleted behind the ORM's back) never reach results."""

import time

import pytest

from popoto import Field, IndexedField, KeyField, Model, SortedField
from tests.helpers import index_key, key_of


class Relic(Model):
    name = KeyField()
    color = IndexedField(null=True)
    score = SortedField(type=int)
    note = Field(null=True)


def key(i: int) -> str:
    return key_of(Relic, f"r{i:02d}")


@pytest.fixture
def relics():
    for i in range(30):
        Relic.create(name=f"r{i:02d}", color="red" if i % 2 else "blue", score=i, note=str(i))


def vanish(r, *numbers: int, expire: bool = False) -> None:
    """Remove hashes behind the ORM's back (DEL, or a TTL that runs out), leaving index entries."""
    for i in numbers:
        if expire:
            r.pexpire(key(i), 1)
        else:
            r.delete(key(i))
    if expire:
        time.sleep(0.01)


def names(qs) -> list[str]:
    return [o.name for o in qs]


def test_filter_skips_deleted_hashes(r, relics):
    """filter() on an indexed field leaves out instances whose hash was deleted."""
    vanish(r, 1, 3, 5)
    assert r.sismember(index_key(Relic, "color", "red", instance=key(1)), key(1))
    found = names(Relic.query.filter(color="red"))
    assert sorted(found) == [f"r{i:02d}" for i in range(7, 30, 2)]


def test_filter_skips_ttl_expired_hashes(r, relics):
    """filter() on a sorted field leaves out instances whose TTL ran out."""
    vanish(r, 0, 10, 20, expire=True)
    found = names(Relic.query.filter(score__gte=0))
    assert found == [f"r{i:02d}" for i in range(30) if i not in (0, 10, 20)]


def test_limit_page_on_sorted_range_is_topped_up(r, relics):
    """A limit page whose index entries are partly stale is filled from further down."""
    vanish(r, 0, 2, 4, 6, 8)
    found = names(Relic.query.filter(score__gte=0).limit(10))
    assert found == ["r01", "r03", "r05", "r07", "r09", "r10", "r11", "r12", "r13", "r14"]


def test_limit_page_with_order_by_desc_is_topped_up(r, relics):
    """order_by('-score').limit() skips stale entries at the top and still returns a full page."""
    vanish(r, 29, 28, 27)
    found = names(Relic.query.filter(score__lt=100).order_by("-score").limit(4))
    assert found == ["r26", "r25", "r24", "r23"]


def test_combined_query_page_is_topped_up(r, relics):
    """A page of an AND of two indexes (evaluated by the query script) is topped up too."""
    vanish(r, 1, 3, expire=True)
    found = names(Relic.query.filter(color="red", score__lt=20).order_by("score").limit(3))
    assert found == ["r05", "r07", "r09"]


def test_all_first_get_and_values_skip_stale(r, relics):
    """all(), first(), get() and values() never return a vanished instance."""
    vanish(r, 0, 1)
    assert len(Relic.query.all()) == 28
    assert Relic.query.filter(score__gte=0).first().name == "r02"
    assert Relic.query.get(score=1) is None
    assert Relic.query.get(name="r00") is None
    rows = Relic.query.filter(score__lt=4).values("name", "note")
    assert list(rows) == [{"name": "r02", "note": "2"}, {"name": "r03", "note": "3"}]
    assert len(Relic.query.all().limit(5)) == 5


def test_counts_match_results_after_clean_indexes(r, relics):
    """Counts answered from indexes agree with the results once clean_indexes ran."""
    vanish(r, 1, 2, 3)
    vanish(r, 4, expire=True)
    assert Relic.clean_indexes() == 12 + 8  # + 2 lex entries ($LexF:...:color[:r]) each
    assert Relic.query.count() == 26
    assert Relic.query.filter(color="red").count() == len(Relic.query.filter(color="red")) == 13
    assert Relic.query.filter(score__lt=10).count() == 6
