"""``field__in=[]`` matches nothing, through every entry point and inside Q trees."""

import pytest

from popoto import IndexedField, KeyField, Model, Q, SortedField
from tests.helpers import db_keys


class Carton(Model):
    name = KeyField()
    color = IndexedField(null=True)
    weight = SortedField(type=int, null=True)


@pytest.fixture
def crates(r):
    for i in range(4):
        Carton.create(name=f"c{i}", color="red" if i % 2 else "blue", weight=i)


@pytest.mark.parametrize("field", ["name", "color", "weight"])
def test_in_empty_list_returns_nothing(crates, field):
    """filter/count/keys/exists with field__in=[] answer 'nothing', no Redis error."""
    condition = {f"{field}__in": []}
    assert list(Carton.query.filter(**condition)) == []
    assert Carton.query.count(**condition) == 0
    assert Carton.query.keys(**condition) == []
    assert Carton.query.filter(**condition).exists() is False


@pytest.mark.parametrize("field", ["name", "color", "weight"])
def test_in_empty_list_inside_q_trees(crates, field):
    """An empty IN is an empty set under OR, AND and NOT."""
    empty = Q(**{f"{field}__in": []})
    assert Carton.query.filter(empty | Q(color="red")).count() == 2
    assert Carton.query.filter(empty & Q(color="red")).count() == 0
    assert Carton.query.filter(~empty).count() == 4
    assert sorted(o.name for o in Carton.query.filter(empty | Q(weight__gte=3))) == ["c3"]


def test_in_empty_list_leaves_no_temporary_keys(r, crates):
    """The empty source is a temporary like any other: gone when the query returns."""
    before = db_keys(r)
    Carton.query.filter(color__in=[], weight__in=[]).count()
    assert db_keys(r) == before
