"""Hostile input: every public entry point answers a bad value with a Popoto exception that
names model, field and value (shortly), and writes nothing: the keyspace is byte-identical
afterwards (a SCAN + DUMP fingerprint). Key values full of separators and of the layout's
own prefixes round-trip and never reach another model's keys.
"""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popoto import (
    DecayingSortedField,
    DecimalField,
    DictField,
    FloatField,
    IndexedField,
    IntField,
    KeyField,
    Model,
    ModelException,
    QueryException,
    SortedField,
    StringField,
    WriteFilterMixin,
)
from tests.helpers import db_keys

POPOTO_ERRORS = (ModelException, QueryException)


class Target(Model):
    k = KeyField()
    name = StringField(null=True, max_length=100)
    score = SortedField(type=float, null=True)
    tag = IndexedField(null=True)
    amount = DecimalField(null=True)
    data = DictField(null=True)
    count = IntField(default=0)
    email = StringField(null=True, unique=True)
    seen = DecayingSortedField(null=True)


class ScoreGated(WriteFilterMixin, Model):
    k = KeyField()
    weight = FloatField(null=True)

    def compute_filter_score(self) -> Any:
        return self.weight


class Neighbour(Model):
    k = KeyField()
    body = StringField(null=True)


def _self_referencing() -> dict[str, Any]:
    box: dict[str, Any] = {}
    box["me"] = box
    return box


HUGE = 10**400
TEN_MB = "x" * (10 * 2**20)
SURROGATE = "a\ud800b"
DEEP = functools.reduce(lambda inner, _: {"x": inner}, range(5000), {})
UNENCODABLE = object()

#: field -> values the field must refuse
BAD_VALUES: dict[str, list[Any]] = {
    "k": [None, "", TEN_MB, SURROGATE, UNENCODABLE, [1], True],
    "name": [UNENCODABLE, [1], {"a": 1}, b"\xff\xfe", TEN_MB, SURROGATE, True],
    "score": [float("nan"), float("inf"), float("-inf"), HUGE, Decimal("sNaN"),
              Decimal("1e400"), "abc", [1], UNENCODABLE, True],
    "tag": [SURROGATE, UNENCODABLE, [1], {"a": 1}],
    "amount": [Decimal("sNaN"), "abc", UNENCODABLE, [1], True],
    "data": [_self_referencing(), DEEP, {"o": UNENCODABLE}, {"s": SURROGATE}, [1], "text",
             {1j: 2}],
    "count": [1.5, "abc", float("nan"), float("inf"), Decimal("sNaN"), UNENCODABLE, True],
    "email": [SURROGATE, UNENCODABLE, [1]],
}
#: fields that have an index a filter can use
QUERYABLE = ("k", "score", "tag", "email")
BAD_DELTAS = [float("nan"), float("inf"), "1", None, True, Decimal("sNaN"), UNENCODABLE, [1]]
BAD_FILTERS: list[tuple[str, Any]] = [
    ("score__gte", HUGE), ("score__lt", float("nan")), ("score__between", (1, HUGE)),
    ("score__in", [1, Decimal("sNaN")]), ("tag__in", [SURROGATE]), ("k__startswith", 5),
    ("tag__isnull", "yes"), ("nope", 1), ("score__gtee", 1), ("k", SURROGATE),
    ("k__in", "abc"), ("email", UNENCODABLE),
]


def fingerprint(r: Any) -> dict[str, bytes]:
    """Every key of the test database with its DUMP (values, types and TTL-free state)."""
    return {key: r.dump(key) for key in sorted(db_keys(r))}


@pytest.fixture
def base(r: Any) -> Target:
    """One saved instance the update paths modify (in place or in bulk)."""
    return Target.create(k="base", name="n", score=1.0, tag="t", amount=Decimal("1.5"),
                         data={"a": 1}, count=3, email="base@x.io")


def _entry_points(field: str, value: Any) -> list[tuple[str, Any]]:
    given = {"k": "new", field: value}

    def construct_and_save() -> None:
        Target(**given).save()

    def create() -> None:
        Target.create(**given)

    def bulk_create() -> None:
        Target.bulk_create([Target(k="new2"), Target(**given)])

    def update_in_place() -> None:
        obj = Target.query.get(k="base")
        setattr(obj, field, value)
        obj.save()

    def update_fields() -> None:
        obj = Target.query.get(k="base")
        setattr(obj, field, value)
        obj.save(update_fields=[field])

    def bulk_update() -> None:
        Target.bulk_update(Target.query.all(), **{field: value})

    points = [("construct+save", construct_and_save), ("create", create),
              ("bulk_create", bulk_create), ("save", update_in_place),
              ("save(update_fields)", update_fields)]
    if field != "k":
        points.append(("bulk_update", bulk_update))
    if field in QUERYABLE and not (field == "k" and value in (None, "", TEN_MB)):
        # (a query for no key, an empty or a huge one is valid: it matches nothing)
        points += [("filter", lambda: list(Target.query.filter(**{field: value}))),
                   ("count", lambda: Target.query.count(**{field: value})),
                   ("get", lambda: Target.query.get(**{field: value}))]
    return points


MATRIX = [(field, i, name, point) for field, values in BAD_VALUES.items()
          for i, value in enumerate(values) for name, point in _entry_points(field, value)]


def _assert_refused(r: Any, action: Any) -> None:
    before = fingerprint(r)
    with pytest.raises(POPOTO_ERRORS) as caught:
        action()
    message = str(caught.value)
    assert len(message) < 600, f"the error message is {len(message)} characters long"
    assert fingerprint(r) == before, "a refused write changed the keyspace"


@pytest.mark.parametrize("field,index,entry,action", MATRIX,
                         ids=[f"{f}[{i}]-{e}" for f, i, e, _a in MATRIX])
def test_bad_values_are_refused_and_write_nothing(r, base, field, index, entry, action):
    """Every (field, bad value, entry point) raises a Popoto exception naming the model
    and field, and the keyspace stays byte-identical."""
    before = fingerprint(r)
    with pytest.raises(POPOTO_ERRORS) as caught:
        action()
    message = str(caught.value)
    assert len(message) < 600, f"the error message is {len(message)} characters long"
    if entry not in ("filter", "count", "get") or field != "k":
        assert "Target" in message and (field in message or entry == "get"), message
    assert fingerprint(r) == before


INCREMENTS = [(field, delta) for field in ("count", "score", "amount") for delta in BAD_DELTAS]
INCREMENTS += [("score", HUGE), ("name", 1), ("k", 1), ("nope", 1)]


@pytest.mark.parametrize("field,delta", INCREMENTS, ids=[f"{f}-{d!r:.20}" for f, d in INCREMENTS])
def test_bad_increments_are_refused(r, base, field, delta):
    """atomic_increment with a bad delta or field (ints and Decimals of any size are exact,
    so only a float field refuses a huge int): a ModelException, nothing written."""
    _assert_refused(r, lambda: Target.query.get(k="base").atomic_increment(field, delta))


@pytest.mark.parametrize("lookup,value", BAD_FILTERS, ids=[f[0] for f in BAD_FILTERS])
def test_bad_filters_are_query_exceptions(r, base, lookup, value):
    """Bad lookups and lookup values: QueryException (or ModelException), never a Redis
    or Python error."""
    _assert_refused(r, lambda: Target.query.filter(**{lookup: value}).count())
    _assert_refused(r, lambda: Target.query.keys(**{lookup: value}))


@pytest.mark.parametrize("call", ["touch-unknown", "touch-plain", "touch-unsaved",
                                  "filter-score-nan", "filter-score-text"])
def test_bad_input_to_field_methods_and_behaviours(r, base, call):
    """touch() on a wrong field or an unsaved instance, and a write filter whose score is
    not a number: Popoto exceptions, nothing written."""
    actions = {
        "touch-unknown": lambda: Target.query.get(k="base").touch("nope"),
        "touch-plain": lambda: Target.query.get(k="base").touch("name"),
        "touch-unsaved": lambda: Target(k="fresh").touch("seen"),
        "filter-score-nan": lambda: ScoreGated(k="g", weight=float("nan")).save(),
        "filter-score-text": lambda: ScoreGated.create(k="g", weight="heavy"),
    }
    _assert_refused(r, actions[call])


SEPARATORS = ":*?[]{}%\\\n"
PREFIXES = ["$Class:", "@idx:", "{Neighbour#1}", "$IndexF:", "Neighbour:", "$Tmp:"]
key_values = st.one_of(
    st.text(alphabet=st.sampled_from(list(SEPARATORS) + ["a", "é", "0"]), min_size=1,
            max_size=12),
    st.builds(lambda p, s: p + s, st.sampled_from(PREFIXES), st.text(max_size=6)),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=key_values)
def test_separators_and_layout_prefixes_in_keys_round_trip(r, value):
    """A key value made of separators, glob characters or the layout's own prefixes is
    stored under the model's namespace only, reads back equal and deletes cleanly."""
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        return  # lone surrogates are bad values, refused above
    neighbour = Neighbour.create(k="n1", body="keep")
    before = fingerprint(r)
    obj = Target.create(k=value, name="x", tag=value, score=1.0, email=f"{value}@x")
    written = set(fingerprint(r)) - set(before)
    own = set(Target._meta.groups)
    assert all(key.split(":", 1)[0].lstrip("$") in {"Class", "IndexF", "SortedF", "UniqueF",
                                                    "GeoF", "DecayF", "LexF"}
               or key.split(":", 1)[0] in own for key in written), written
    assert Target.query.get(k=value).tag == value
    assert Target.query.filter(tag=value).keys() == [obj.pk]
    assert obj.delete() is True
    assert fingerprint(r) == before
    assert Neighbour.query.get(k="n1") == neighbour
    r.flushdb()
