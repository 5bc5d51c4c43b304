"""Differential property test: popoto against a plain in-memory model of the same data.

Random sequences of create / update / update_fields / delete / key migration
run against Redis and against a dict; after every step each supported filter
must give the same result set and ``check_indexes()`` must find nothing wrong.

In the cluster run (POPOTO_TEST_CLUSTER=1) the model is sharded into 16 tag groups
and every query scatters over them; fewer examples keep that run short.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popoto import Field, IndexedField, KeyField, Model, SortedField, UniqueViolation, keys
from popoto.fields.geo import Coordinates, GeoField, distance_m
from popoto.redis_db import get_client

REGIONS = ("eu", "us:w")  # ':' is escaped in keys and partition names
NAMES = ("a", "ab", "a*", "b:c", "%x", "b")
COLORS = ("red", "blue", None)
EMAILS = ("x@m", "y@m", "z@m", None)
PARIS, PARIS_NORTH, LONDON = (48.85, 2.35), (48.86, 2.35), (51.5, -0.12)  # ~1.1 km, ~340 km
PLACES = (PARIS, PARIS_NORTH, LONDON, None)
SCORE_BOUNDS = (-1, 0, 2)
CLUSTER_RUN = os.environ.get("POPOTO_TEST_CLUSTER", "").lower() in ("1", "true", "yes")
MAX_EXAMPLES = 40 if CLUSTER_RUN else 250

Key = tuple[str, str]  # (region, name)
Ref = dict[Key, dict[str, Any]]


class DiffItem(Model):
    region = KeyField()
    name = KeyField()
    color = IndexedField(null=True)
    score = SortedField(type=int, null=False, partition_by="region")
    email = Field(null=True, unique=True)
    place = GeoField(null=True)


FIELD_VALUES = {
    "color": st.sampled_from(COLORS),
    "score": st.integers(-3, 3),
    "email": st.sampled_from(EMAILS),
    "place": st.sampled_from(PLACES),
}
values = st.fixed_dictionaries(FIELD_VALUES)
changes = st.fixed_dictionaries({}, optional=FIELD_VALUES)
some_changes = st.sets(st.sampled_from(sorted(FIELD_VALUES)), min_size=1).flatmap(
    lambda names: st.fixed_dictionaries({n: FIELD_VALUES[n] for n in names}))
target = st.integers(0, 63)
create = st.tuples(st.just("create"), st.sampled_from(REGIONS), st.sampled_from(NAMES), values)
operations = st.one_of(
    create,
    create,
    st.tuples(st.just("update"), target, changes),
    st.tuples(st.just("update_fields"), target, some_changes),
    st.tuples(st.just("delete"), target),
    st.tuples(st.just("migrate"), target, st.sampled_from(REGIONS), st.sampled_from(NAMES),
              changes),
)


def email_taken(ref: Ref, email: str | None, owner: Key | None) -> bool:
    return email is not None and any(v["email"] == email for k, v in ref.items() if k != owner)


def apply(op: tuple, ref: Ref) -> None:
    """Run ``op`` on Redis and on ``ref``; a refused write must be refused by both."""
    kind = op[0]
    if kind == "create":
        _, region, name, vals = op
        ok = (region, name) not in ref and not email_taken(ref, vals["email"], None)
        try:
            DiffItem.create(region=region, name=name, **vals)
        except UniqueViolation:
            assert not ok, op
        else:
            assert ok, op
            ref[(region, name)] = dict(vals)
        return
    if not ref:
        return
    old = sorted(ref)[op[1] % len(ref)]
    obj = DiffItem.query.get(region=old[0], name=old[1])
    assert obj is not None, old
    if kind == "delete":
        assert obj.delete() is True
        del ref[old]
        return
    new_key, diff = (old, op[2]) if kind != "migrate" else ((op[2], op[3]), op[4])
    new = {**ref[old], **diff}
    ok = not email_taken(ref, new["email"], old) or (kind == "update_fields"
                                                     and "email" not in diff)
    if new_key != old and new_key in ref:
        ok = False
    for name, value in diff.items():
        setattr(obj, name, value)
    try:
        if kind == "update":
            obj.save()
        elif kind == "update_fields":
            obj.save(update_fields=list(diff))
        else:
            obj.region, obj.name = new_key
            obj.save(migrate_key=True)
    except UniqueViolation:
        assert not ok, op
    else:
        assert ok, op
        del ref[old]
        ref[new_key] = new


def found(qs: Any) -> set[Key]:
    return {(o.region, o.name) for o in qs}


def redis_order(key: Key) -> bytes:
    """Members with equal scores come back in byte order of their instance keys (without
    the namespace: one server's keys share it; groups are merged in that order)."""
    return keys.SEP.join(keys.escape(v) for v in (key[1], key[0])).encode()


def assert_same(ref: Ref) -> None:
    """Every supported filter gives the reference's answer; the indexes are healthy."""
    q = DiffItem.query

    def expect(pred: Any) -> set[Key]:
        return {k for k, v in ref.items() if pred(k, v)}

    for color in COLORS:
        want = expect(lambda k, v, c=color: v["color"] == c)
        assert found(q.filter(color=color)) == want, color
        assert q.filter(color=color).count() == len(want)
    assert found(q.filter(color__isnull=True)) == expect(lambda k, v: v["color"] is None)
    assert found(q.filter(color__isnull=False)) == expect(lambda k, v: v["color"] is not None)
    assert found(q.filter(color__in=["red", "blue"])) == expect(
        lambda k, v: v["color"] in ("red", "blue"))
    for region in REGIONS:
        for bound in SCORE_BOUNDS:
            for lookup, test in (("gt", lambda s, b: s > b), ("gte", lambda s, b: s >= b),
                                 ("lt", lambda s, b: s < b), ("lte", lambda s, b: s <= b),
                                 ("exact", lambda s, b: s == b)):
                want = expect(lambda k, v, r=region, t=test, b=bound: k[0] == r
                              and t(v["score"], b))
                qs = q.filter(region=region, **{f"score__{lookup}": bound})
                assert found(qs) == want, (region, lookup, bound)
                if lookup == "gte":
                    assert qs.count() == len(want)
        want = expect(lambda k, v, r=region: k[0] == r and -1 <= v["score"] <= 1)
        assert found(q.filter(region=region, score__between=(-1, 1))) == want
        assert found(q.filter(region=region, color="red", score__gte=0)) == expect(
            lambda k, v, r=region: k[0] == r and v["color"] == "red" and v["score"] >= 0)
        in_region = sorted((k for k in ref if k[0] == region),
                           key=lambda k: (ref[k]["score"], redis_order(k)))
        ordered = q.filter(region=region).order_by("score").limit(3)
        assert [(o.region, o.name) for o in ordered] == in_region[:3]
        ordered = q.filter(region=region).order_by("-score").limit(2)
        assert [(o.region, o.name) for o in ordered] == in_region[::-1][:2]
    for prefix in ("a", "b:", "%"):
        want = expect(lambda k, v, p=prefix: k[1].startswith(p))
        assert found(q.filter(name__startswith=prefix)) == want, prefix
    assert found(q.filter(region__startswith="us")) == expect(lambda k, v: k[0] == "us:w")
    assert found(q.filter(email="x@m")) == expect(lambda k, v: v["email"] == "x@m")
    for centre, radius_km in ((PARIS, 0.5), (PARIS, 2), (LONDON, 500)):
        want = expect(lambda k, v, c=centre, rk=radius_km: v["place"] is not None
                      and distance_m(Coordinates(*c), Coordinates(*v["place"])) <= rk * 1000)
        qs = q.filter(place=centre, place_radius=radius_km, place_radius_unit="km")
        assert found(qs) == want, (centre, radius_km)
        assert qs.count() == len(want)
    want = expect(lambda k, v: v["color"] == "blue" and v["place"] in (PARIS, PARIS_NORTH))
    assert found(q.filter(color="blue", place=PARIS, place_radius=5,
                          place_radius_unit="km")) == want
    assert q.count() == len(ref)
    assert found(q.all()) == set(ref)
    report = DiffItem.check_indexes()
    assert report["total"] == 0, report
    assert report["instances"] == len(ref)


@pytest.mark.slow
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(operations, min_size=1, max_size=25))
def test_popoto_matches_in_memory_reference(redis_url: str, ops: list[tuple]) -> None:
    """After every random write, every filter agrees with the reference and indexes are clean."""
    get_client().flushdb()  # a RedisCluster sends FLUSHDB to every primary
    ref: Ref = {}
    for op in ops:
        apply(op, ref)
        assert_same(ref)
