"""Sharded models (``Meta.shards``) on one server: layout, scatter/merge queries, global claims.

Standalone with ``shards=4`` builds exactly the key layout of cluster mode, so
these tests pin the logic; tests/cluster/ runs it on a real cluster, and so does
the cluster run of the suite (POPOTO_TEST_CLUSTER=1), where ``Flat`` is sharded
too (16 groups) and server counters are summed over the primaries.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest

import popoto
from popoto import (
    Field,
    GeoField,
    IndexedField,
    KeyField,
    Model,
    ModelException,
    SortedField,
    UniqueKeyField,
    UniqueViolation,
    keys,
)
from popoto.exceptions import KeyMutationError
from popoto.engine import claims
from popoto.engine.write import IDX_PREFIX, unpack_record
from tests.helpers import command_calls, db_keys, worker_url

CTX = multiprocessing.get_context("spawn")
N = 4


class Flat(Model):
    region = KeyField()
    name = KeyField()
    score = SortedField(type=int)
    color = IndexedField(null=True)
    email = Field(null=True, unique=True)
    place = GeoField(null=True)


class Spread(Model):
    region = KeyField()
    name = KeyField()
    score = SortedField(type=int)
    color = IndexedField(null=True)
    email = Field(null=True, unique=True)
    place = GeoField(null=True)

    class Meta:
        shards = N


class Coupon(Model):
    code = UniqueKeyField()
    owner = Field(null=True)

    class Meta:
        shards = N
        indexes = ((("owner",), True),)


def _fill(n: int = 60) -> None:
    for i in range(n):
        row = dict(region="eu" if i % 3 else "us:w", name=f"n{i:03d}", score=(i * 7) % 11,
                   color=("red", "blue", None)[i % 3], email=f"e{i}@x" if i % 4 else None,
                   place=(48.85 + i / 1000, 2.35) if i % 2 else None)
        Flat.create(**row)
        Spread.create(**row)


def _names(objs: list) -> list[tuple[str, str]]:
    return [(o.region, o.name) for o in objs]


@pytest.mark.standalone_only  # cluster mode shards every model
def test_an_unsharded_model_keeps_the_documented_layout(r):
    """Without Meta.shards a standalone model keeps untagged keys beside sharded ones."""
    _fill(12)
    flat = {k for k in db_keys(r) if "Flat" in k}
    assert "$Class:Flat" in flat and "$SortedF:Flat:score" in flat
    assert not any("{" in k for k in flat), flat


def test_layout_tags_every_key_and_keeps_an_instance_in_one_slot(r):
    """Every key of a sharded model carries its group's tag; an instance's hash, class-set
    entry and index entries share one slot."""
    meta = Spread._meta
    assert meta.sharded and len(meta.groups) == N
    assert all(ns.startswith("{Spread#") and ns.endswith("}") for ns in meta.groups)
    _fill(40)
    names = db_keys(r)
    spread = {k for k in names if "Spread" in k}
    assert all("{Spread#" in k for k in spread), spread
    members = {m.decode() for k in meta.class_set_keys() for m in r.smembers(k)}
    groups_used = {keys.ns_of(k) for k in members}
    assert groups_used == set(meta.groups)  # 40 instances reach all 4 groups
    obj = Spread.query.get(region="eu", name="n001")
    slot = keys.key_slot(obj.pk)
    assert r.sismember(keys.class_set_key(keys.ns_of(obj.pk)), obj.pk)
    for row in r.hgetall(obj.pk):
        if row.startswith(IDX_PREFIX.encode()):
            owner = row.decode()[len(IDX_PREFIX):]
            base = meta.record_bases(keys.ns_of(obj.pk)).get(owner, "")
            for kind, key, _member in unpack_record(r.hget(obj.pk, row), obj.pk, base):
                if kind != "C":  # claims live in the value's group, checked below
                    assert keys.key_slot(key) == slot, (owner, key)


def test_group_tags_spread_over_equal_slot_ranges():
    """Group k's tag hashes into the k-th of N equal slot ranges (even spread on a cluster)."""
    for n in (1, 3, 4, 16, 100):
        for k in range(n):
            slot = keys.key_slot(keys.group_tag("Spread", k, n))
            assert k * 16384 // n <= slot < (k + 1) * 16384 // n, (n, k, slot)


def test_meta_shards_is_validated():
    """Meta.shards must be an int in 1..16384; the error names the model and the value."""
    for bad in (0, -1, "4", 2.0, True, 16385):
        with pytest.raises(ModelException, match=r"Bad\.Meta\.shards"):
            type("Bad", (Model,), {"__module__": __name__, "k": KeyField(),
                                   "Meta": type("Meta", (), {"shards": bad})})


def test_sharded_queries_equal_the_unsharded_answer():
    """Filters, order_by + limit/offset, counts, keys order, values, geo distances and
    first/last across 4 groups give exactly what one unsharded model gives."""
    _fill()
    checks = [
        lambda q: q.all(),
        lambda q: q.filter(color="red"),
        lambda q: q.filter(color__isnull=True),
        lambda q: q.filter(score__gte=5).order_by("score"),
        lambda q: q.filter(score__gte=5).order_by("-score").limit(7),
        lambda q: q.order_by("score")[13:21],
        lambda q: q.order_by("-score")[50:],
        lambda q: q.filter(region="eu", score__lt=4).order_by("-score"),
        lambda q: q.filter(name__startswith="n01"),
        lambda q: q.filter(name="n017"),
        lambda q: q.filter(name__in=["n001", "n002", "n999"]),
        lambda q: q.exclude(color="blue").order_by("score").limit(9),
        lambda q: q.filter(popoto.Q(color="red") | popoto.Q(score=3)).order_by("score"),
        lambda q: q.filter(email="e5@x"),
        lambda q: q.filter(place=(48.85, 2.35), place_radius=20, place_radius_unit="km",
                           place_with_distances=True).limit(5),
    ]
    for i, check in enumerate(checks):
        want, got = check(Flat.query), check(Spread.query)
        if isinstance(want, list):
            assert _names(got) == _names(want), i
            continue
        assert _names(list(got)) == _names(list(want)), i
        assert got.count() == want.count(), i
        assert [k.split(":", 1)[1] for k in got.keys()] == \
            [k.split(":", 1)[1] for k in want.keys()], i
    near_f = Flat.query.filter(place=(48.85, 2.35), place_radius=20, place_radius_unit="km",
                               place_with_distances=True).limit(5)
    near_s = Spread.query.filter(place=(48.85, 2.35), place_radius=20, place_radius_unit="km",
                                 place_with_distances=True).limit(5)
    assert [round(o.place_distance, 3) for o in near_s] == \
        [round(o.place_distance, 3) for o in near_f]
    assert Spread.query.values("name", "score").order_by("score").limit(4)[:] == \
        Flat.query.values("name", "score").order_by("score").limit(4)[:]
    assert _names([Spread.query.order_by("score").first()]) == \
        _names([Flat.query.order_by("score").first()])
    assert _names([Spread.query.order_by("score").last()]) == \
        _names([Flat.query.order_by("score").last()])
    assert Spread.query.count() == Flat.query.count() == 60


def test_a_page_reads_at_most_offset_plus_limit_rows_per_group(r):
    """order_by + limit asks each group for offset+limit rows only (no whole index)."""
    _fill()
    Spread.query.order_by("score")[10:15]  # loads the query script on every node
    hgetall, evalsha = command_calls(r, "hgetall"), command_calls(r, "evalsha")
    got = Spread.query.order_by("score")[10:15]
    assert len(got) == 5
    # one ZRANGEBYSCORE-free plan: the query script per group, then 5 HGETALLs
    assert command_calls(r, "hgetall") - hgetall == 5
    assert command_calls(r, "evalsha") - evalsha == N


def test_unique_values_are_global_across_groups():
    """A unique value held in one group refuses a holder in any group; changing or
    deleting the holder frees it; the claim lives in the value's own group."""
    Spread.create(region="eu", name="a", score=1, email="x@m")
    for i in range(12):  # names hashing to every group
        with pytest.raises(UniqueViolation, match=r"email='x@m' is already held by"):
            Spread.create(region="us", name=f"b{i}", score=1, email="x@m")
    assert Spread.query.count() == 1
    holder = Spread.query.get(region="eu", name="a")
    holder.email = "y@m"
    holder.save()
    Spread.create(region="us", name="b0", score=1, email="x@m")
    with pytest.raises(UniqueViolation):
        Spread.create(region="us", name="b1", score=1, email="y@m")
    holder.delete()
    Spread.create(region="us", name="b1", score=1, email="y@m")
    field = Spread._meta.fields["email"]
    token = field.unique_token("y@m")
    claim_hash = field.unique_key(Spread._meta.claim_ns(token))
    assert popoto.redis_db.get_client().hget(claim_hash, token).decode() == \
        Spread._meta.instance_key(["b1", "us"])


def test_unique_key_field_and_composite_claims_are_global():
    """UniqueKeyField and a unique composite index on a sharded model: one holder each."""
    Coupon.create(code="c1", owner="ann")
    with pytest.raises(UniqueViolation):
        Coupon.create(code="c1", owner="bob")
    with pytest.raises(UniqueViolation, match="owner='ann'"):
        Coupon.create(code="c2", owner="ann")
    Coupon.create(code="c2", owner="bob")
    assert Coupon.query.count() == 2


def _claim_state(model: type[Model], field: str, value: str) -> tuple[str, str, bytes | None]:
    f = model._meta.fields[field]
    token = f.unique_token(value)
    h = f.unique_key(model._meta.claim_ns(token))
    return h, token, popoto.redis_db.get_client().hget(h, token)


def test_stale_claims_are_taken_over_live_ones_are_not(r):
    """A claim whose holder is gone (deleted behind the ORM's back, or no longer listing
    it) is taken over; a live holder's claim is not; a failed save rolls its claim back."""
    a = Spread.create(region="eu", name="a", score=1, email="x@m")
    r.delete(a.pk)  # holder vanishes without releasing
    b = Spread.create(region="eu", name="b", score=1, email="x@m")
    h, token, value = _claim_state(Spread, "email", "x@m")
    assert value.decode() == b.pk
    r.hset(h, token, Spread._meta.instance_key(["zz", "eu"]))  # names a non-existent holder
    Spread.create(region="eu", name="c", score=1, email="x@m")
    # the live holder c lists the claim in its record: d is refused
    with pytest.raises(UniqueViolation):
        Spread.create(region="eu", name="d", score=1, email="x@m")
    # a save that fails after claiming (its key exists) leaves the claim as it was
    with pytest.raises(UniqueViolation, match="already exists"):
        Spread.create(region="eu", name="c", score=2, email="new@m")
    assert _claim_state(Spread, "email", "new@m")[2] is None


def test_pending_claims_block_until_their_lease_ends(r):
    """A live pending claim of another writer is a violation; once its lease has passed
    and its holder does not list it, the value is free again."""
    h, token, _ = _claim_state(Spread, "email", "p@m")
    other = Spread._meta.instance_key(["w", "eu"])
    now_ms = int(time.time() * 1000)
    r.hset(h, token, f"~{now_ms + 60_000}~{other}")
    with pytest.raises(UniqueViolation, match="p@m"):
        Spread.create(region="eu", name="a", score=1, email="p@m")
    r.hset(h, token, f"~{now_ms - 1}~{other}")  # the other writer crashed; lease over
    obj = Spread.create(region="eu", name="a", score=1, email="p@m")
    assert r.hget(h, token).decode() == obj.pk


def test_a_save_past_its_lease_writes_nothing(r):
    """The save script refuses to write once the claims' lease deadline has passed."""
    obj = Spread(region="eu", name="late", score=1, email="l@m")
    batch = obj.build_save(must_not_exist=True)
    keys_, args = batch.save_args(lease_deadline=int(time.time() * 1000) - 1)
    with pytest.raises(popoto.redis_db.redis.exceptions.ResponseError, match="POPOTO_LEASE"):
        popoto.redis_db.get_client().evalsha(
            __import__("popoto.engine.scripts", fromlist=["x"]).SAVE.sha, len(keys_), *keys_,
            *args)
    assert not r.exists(obj.pk)
    assert claims.LEASE_MS - claims.LEASE_MARGIN_MS > 1000


def test_save_on_a_pipeline_refuses_claims_but_queues_plain_saves(r):
    """save(pipeline=p) of a sharded model with unique claims raises a clear error; without
    claims the call is queued as usual."""
    pipe = r.pipeline()
    with pytest.raises(ModelException, match="save\\(pipeline=...\\) cannot queue"):
        Spread(region="eu", name="p", score=1, email="q@m").save(pipeline=pipe)
    Spread(region="eu", name="p", score=1).save(pipeline=pipe)
    pipe.execute()
    assert Spread.query.get(region="eu", name="p").score == 1


def test_key_migration_across_groups_moves_indexes_and_claims(r):
    """migrate_key to a key in another group: the new key has every index entry and the
    claim; the old key, its entries and its class-set entry are gone."""
    obj = Spread.create(region="eu", name="m0", score=5, color="red", email="m@m")
    old = obj.pk
    target = next(f"m{i}" for i in range(1, 50)
                  if keys.ns_of(Spread._meta.instance_key([f"m{i}", "eu"])) != keys.ns_of(old))
    obj.name = target
    obj.save(migrate_key=True)
    assert keys.ns_of(obj.pk) != keys.ns_of(old)
    assert not r.exists(old)
    assert _names(Spread.query.filter(color="red")) == [("eu", target)]
    assert _names(Spread.query.filter(score=5)) == [("eu", target)]
    assert _claim_state(Spread, "email", "m@m")[2].decode() == obj.pk
    assert Spread.query.count() == 1
    with pytest.raises(UniqueViolation):
        Spread.create(region="us", name="x", score=1, email="m@m")
    obj.name, obj.email = "m0", None  # no claims: the refusal is about the two writes
    with pytest.raises(KeyMutationError, match="another tag group takes two writes"):
        obj.save(pipeline=r.pipeline(), migrate_key=True)


def _race_worker(url, barrier, me, out):
    popoto.configure(url=url)
    barrier.wait()
    try:
        Spread.create(region="eu", name=f"r{me}", score=me, email="race@m")
        out.put("ok")
    except UniqueViolation:
        out.put("unique")
    except Exception as exc:  # reported to the parent, which fails the test
        out.put(f"error {type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_8_processes_race_for_one_unique_value_across_groups(redis_url):
    """8 processes creating instances in different groups with one unique value: one wins."""
    barrier = CTX.Barrier(8)
    out = CTX.Queue()
    url = worker_url(redis_url)
    procs = [CTX.Process(target=_race_worker, args=(url, barrier, i, out))
             for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    results = sorted(out.get() for _ in range(8))
    assert results == ["ok"] + ["unique"] * 7, results
    assert Spread.query.filter(email="race@m").count() == 1
    assert Spread.query.count() == 1


def _touched_keys(r, action) -> set[str]:
    """Keys modified while ``action`` runs (keyspace notifications of the test server)."""
    r.config_set("notify-keyspace-events", "KA")
    pubsub = r.pubsub()
    pubsub.psubscribe("__keyspace@*__:*")
    pubsub.get_message(timeout=1)
    try:
        action()
        touched, deadline = set(), time.monotonic() + 0.5
        while time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.05)
            if msg and msg["type"] == "pmessage":
                touched.add(msg["channel"].decode().split(":", 1)[1])
        return touched
    finally:
        pubsub.close()
        r.config_set("notify-keyspace-events", "")


@pytest.mark.standalone_only  # keyspace notifications of one server
@pytest.mark.slow
def test_a_save_and_a_delete_declare_every_key_they_touch(r):
    """The save and delete scripts' KEYS name every key the call writes: the hash, class
    set, old and new index entries of a loaded instance (claims of a sharded model are
    settled outside the script, in their own slot)."""
    from popoto.engine import scripts

    for model in (Flat, Spread):
        model.create(region="eu", name="k", score=1, color="red", email="k@m", place=(1, 1))
        obj = model.query.get(region="eu", name="k")
        obj.color, obj.score, obj.email, obj.place = "blue", 2, "j@m", None
        batch = obj.build_save()
        call = batch.save_args()
        touched = _touched_keys(r, lambda b=batch, c=call: scripts.SAVE(
            popoto.redis_db.get_client(), *c))
        assert obj.pk in touched and len(touched) >= 5, touched
        declared = set(call[0])
        claims_elsewhere = {c.hash_key for c in batch.claims} if batch.external_claims else set()
        assert touched - claims_elsewhere <= declared, touched - declared
        obj = model.query.get(region="eu", name="k")
        dcall = obj.build_delete().delete_args()
        touched = _touched_keys(r, lambda c=dcall: scripts.DELETE(
            popoto.redis_db.get_client(), *c))
        assert obj.pk in touched
        assert touched - claims_elsewhere <= set(dcall[0]), touched - set(dcall[0])


def test_declared_keys_of_a_sharded_save_share_the_instance_slot():
    """Every key a sharded save or delete declares is in the instance's slot (so a cluster
    routes the one script call to one node); unique claims are not among them."""
    Spread.create(region="eu", name="s", score=1, color="red", email="s@m", place=(1, 1))
    obj = Spread.query.get(region="eu", name="s")
    obj.color = "blue"
    keys_, _argv = obj.build_save().save_args()
    ns = keys.ns_of(obj.pk)
    fields = Spread._meta.fields
    for expected in (fields["color"].index_key("red", ns), fields["color"].index_key("blue", ns),
                     fields["score"].sorted_key((), ns), fields["place"].geo_key(ns)):
        assert expected in keys_, expected
    assert {keys.key_slot(k) for k in keys_} == {keys.key_slot(obj.pk)}
    dkeys, _ = obj.build_delete().delete_args()
    assert fields["color"].index_key("red", ns) in dkeys
    assert {keys.key_slot(k) for k in dkeys} == {keys.key_slot(obj.pk)}


def test_a_takeover_loses_to_a_holder_that_resaved_the_value_meanwhile(r):
    """ABA: B finds A's claim stale and reads A's record; A then saves the same value
    again (claim, write, settle back to the same claim value) before B's compare-and-set,
    which therefore succeeds. B re-reads A's record, sees the claim listed and backs off:
    one holder, and the claim is A's again."""
    from popoto.engine.io import execute

    a = Spread.create(region="eu", name="a", score=1, email="v@m")
    h, token, _ = _claim_state(Spread, "email", "v@m")
    a.email = "other@m"
    a.save()
    r.hset(h, token, a.pk)  # A changed its value and "crashed" before releasing v@m
    b = Spread(region="us", name="b", score=1, email="v@m")
    batch = b.build_save(must_not_exist=True)
    gen = claims.acquire_steps(Spread, batch, batch.key)
    client = popoto.redis_db.get_client()
    cmds = next(gen)  # 1: claim -> HELD by A
    cmds = gen.send(execute(client, cmds))  # 2: read A's record: it does not list v@m
    cmds = gen.send(execute(client, cmds))  # 3: the compare-and-set is next
    a.email = "v@m"
    a.save()  # A takes v@m again in between: claim value ends as A's key, as B saw it
    assert r.hget(h, token).decode() == a.pk
    with pytest.raises(UniqueViolation, match="v@m"):
        while True:
            cmds = gen.send(execute(client, cmds))
    assert r.hget(h, token).decode() == a.pk  # B's pending claim rolled back
    assert Spread.query.filter(email="v@m").keys() == [a.pk]
