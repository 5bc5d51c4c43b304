"""StreamConsumer on the real Redis: groups, pending-first, reclaim, dead letters, trimming."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from popoto.workers import Event, HandlerRegistry, StreamConsumer, apply_once
from popoto.workers.streams import (
    dead_letter_key,
    replay_dead_letters,
    stream_info,
    stream_key,
    trim_acknowledged,
)

STREAM = "stream:mutations"


def add(r: redis.Redis, n: int = 1, model: str = "Order", op: str = "create",
        stream: str = STREAM, **extra: Any) -> list[str]:
    """XADD entries in the EventStreamMixin format."""
    ids = []
    for i in range(n):
        fields = {"model": model, "pk": f"{model}:{i}", "op": op, "ts": f"{time.time():.6f}",
                  "changed_fields": json.dumps(["status"]), **extra}
        ids.append(r.xadd(stream, fields).decode())
    return ids


def consumer(r: redis.Redis, reg: HandlerRegistry, name: str = "c1", **kw: Any) -> StreamConsumer:
    kw.setdefault("block_ms", 10)
    kw.setdefault("claim_idle_ms", 100)
    return StreamConsumer("mutations", "projections", name, registry=reg, client=r, **kw)


def pending(r: redis.Redis, group: str = "projections") -> int:
    return int(r.xpending(STREAM, group)["pending"])


def test_group_is_created_with_mkstream_and_existing_group_is_kept(r: redis.Redis) -> None:
    """ensure_group creates stream and group once; a second call keeps the group's position."""
    c = consumer(r, HandlerRegistry())
    assert c.ensure_group() is True
    assert r.exists(STREAM) == 1
    assert c.ensure_group() is False
    assert [g["name"] for g in r.xinfo_groups(STREAM)] == [b"projections"]


@pytest.mark.standalone_only
def test_stream_key_matches_the_event_stream_layout() -> None:
    """Bare names and partitions map to stream:<name>[:<partition>], escaped like keys.py."""
    assert stream_key("mutations") == "stream:mutations"
    assert stream_key("orders", "eu:west") == "stream:orders:eu%3Awest"
    assert stream_key("stream:orders:eu") == "stream:orders:eu"
    assert dead_letter_key("orders") == "dead:stream:orders"


def test_handlers_run_by_model_and_op_then_entries_are_acked(r: redis.Redis) -> None:
    """Handlers registered for (model, op), model-wide or '*' all run; the entry is acked."""
    reg = HandlerRegistry()
    seen: list[tuple[str, str, str]] = []
    reg.register("Order", "create", lambda e: seen.append(("exact", e.pk, e.op)))
    reg.register("app.models.Order", "*", lambda e: seen.append(("model", e.pk, e.op)))
    reg.register("*", "delete", lambda e: seen.append(("op", e.pk, e.op)))
    c = consumer(r, reg)
    c.ensure_group()
    add(r, 1, op="create")
    add(r, 1, op="delete")
    add(r, 1, model="Invoice", op="update")  # nobody listens: acked, skipped
    c.run(max_entries=3)
    assert seen == [("exact", "Order:0", "create"), ("model", "Order:0", "create"),
                    ("model", "Order:0", "delete"), ("op", "Order:0", "delete")]
    assert pending(r) == 0
    assert (c.stats.handled, c.stats.skipped) == (2, 1)


def test_event_fields_are_decoded(r: redis.Redis) -> None:
    """ts is a float, changed_fields a list, metadata JSON-decoded, old_pk kept."""
    reg = HandlerRegistry()
    got: list[Event] = []
    reg.register("Order", "update", got.append)
    c = consumer(r, reg)
    c.ensure_group()
    r.xadd(STREAM, {"model": "Order", "pk": "Order:9", "op": "update", "ts": "1700000000.5",
                    "changed_fields": '["id", "total"]', "old_pk": "Order:8",
                    "tenant": '"acme"', "total": "12.5"})
    c.run(max_entries=1)
    event = got[0]
    assert (event.model, event.pk, event.op, event.ts) == ("Order", "Order:9", "update",
                                                           1700000000.5)
    assert event.changed_fields == ["id", "total"] and event.old_pk == "Order:8"
    assert event.metadata == {"tenant": "acme", "total": 12.5}
    assert event.deliveries == 1 and event.event_id == event.entry_id


def test_own_pending_entries_come_before_new_ones(r: redis.Redis) -> None:
    """After a restart, a consumer first finishes what it had read but not acked."""
    c = consumer(r, HandlerRegistry())
    c.ensure_group()
    old = add(r, 3)
    r.xreadgroup("projections", "c1", {STREAM: ">"}, count=3)  # read, then "crashed"
    new = add(r, 2)
    order: list[str] = []
    reg = HandlerRegistry()
    reg.register("Order", "*", lambda e: order.append(e.entry_id))
    restarted = consumer(r, reg, claim_idle_ms=60_000)
    restarted.run(max_entries=5)
    assert order == old + new
    assert pending(r) == 0


def test_entries_of_a_dead_consumer_are_reclaimed(r: redis.Redis) -> None:
    """XAUTOCLAIM hands entries idle longer than claim_idle_ms to a live consumer."""
    c = consumer(r, HandlerRegistry())
    c.ensure_group()
    ids = add(r, 4)
    r.xreadgroup("projections", "dead-one", {STREAM: ">"}, count=4)
    got: list[Event] = []
    reg = HandlerRegistry()
    reg.register("Order", "*", got.append)
    alive = consumer(r, reg, name="alive", claim_idle_ms=50)
    time.sleep(0.1)
    alive.run(max_entries=4)
    assert [e.entry_id for e in got] == ids
    assert all(e.deliveries == 2 for e in got)
    assert alive.stats.reclaimed == 4 and pending(r) == 0


def test_failed_handler_is_retried_after_claim_idle_and_then_acked(r: redis.Redis) -> None:
    """A failure leaves the entry pending; it comes back after claim_idle_ms and succeeds."""
    attempts: list[int] = []

    def flaky(event: Event) -> None:
        attempts.append(event.deliveries)
        if len(attempts) == 1:
            raise RuntimeError("downstream unavailable")

    reg = HandlerRegistry()
    reg.register("Order", "*", flaky)
    c = consumer(r, reg, claim_idle_ms=50)
    c.ensure_group()
    add(r, 1)
    c.run(max_entries=1)
    assert pending(r) == 1 and c.stats.failed == 1
    time.sleep(0.1)
    c.run(max_entries=1)
    assert attempts == [1, 2]
    assert pending(r) == 0


@pytest.mark.standalone_only
def test_poison_entry_goes_to_dead_letters_after_n_deliveries_and_replays(
        r: redis.Redis) -> None:
    """A handler failing every time: after max_deliveries the entry is dead-lettered
    (XADD + XACK in one MULTI); replay puts it back and a fixed handler applies it once."""
    broken = True
    applied: list[str] = []

    def handler(event: Event) -> None:
        if broken:
            raise ValueError(f"cannot project {event.pk}")
        apply_once(r, "seen:projections", event.event_id, [("INCR", "orders:count")])
        applied.append(event.event_id)

    reg = HandlerRegistry()
    reg.register("Order", "*", handler)
    c = consumer(r, reg, claim_idle_ms=20, max_deliveries=3)
    c.ensure_group()
    (entry_id,) = add(r, 1)
    deadline = time.monotonic() + 10
    while c.stats.dead_lettered == 0 and time.monotonic() < deadline:
        c.run(max_seconds=0.05)
    assert c.stats.dead_lettered == 1 and c.stats.failed == 2
    assert pending(r) == 0
    ((dead_id, dead),) = r.xrange(dead_letter_key(STREAM))
    dead = {k.decode(): v.decode() for k, v in dead.items()}
    assert dead["dl_id"] == entry_id and dead["dl_deliveries"] == "3"
    assert dead["dl_group"] == "projections" and "cannot project Order:0" in dead["dl_error"]
    assert dead["model"] == "Order" and dead["pk"] == "Order:0"
    assert stream_info(r, "mutations").dead_letters == 1

    broken = False
    assert replay_dead_letters(r, "mutations") == 1
    assert r.xlen(dead_letter_key(STREAM)) == 0
    c.run(max_entries=1)
    assert applied == [entry_id]  # event_id survives the replay
    assert replay_dead_letters(r, "mutations") == 0
    assert int(r.get("orders:count")) == 1


@pytest.mark.standalone_only
def test_malformed_entry_is_dead_lettered_at_once(r: redis.Redis) -> None:
    """An entry without model/pk/op cannot succeed: it is dead-lettered on first delivery."""
    reg = HandlerRegistry()
    reg.register("*", "*", lambda e: None)
    c = consumer(r, reg)
    c.ensure_group()
    r.xadd(STREAM, {"hello": "world"})
    c.run(max_entries=1)
    assert c.stats.dead_lettered == 1 and pending(r) == 0
    ((_id, dead),) = r.xrange(dead_letter_key(STREAM))
    assert b"MalformedEntry" in dead[b"dl_error"]


def test_trimming_never_drops_unacknowledged_entries(r: redis.Redis) -> None:
    """Only entries acked by every group go; a lagging group's pending and unread stay."""
    ids = add(r, 10)
    r.xgroup_create(STREAM, "fast", id="0")
    r.xgroup_create(STREAM, "slow", id="0")
    r.xreadgroup("fast", "f", {STREAM: ">"}, count=10)
    r.xack(STREAM, "fast", *ids)
    r.xreadgroup("slow", "s", {STREAM: ">"}, count=6)
    r.xack(STREAM, "slow", *ids[:2], ids[3])  # ids[2] is still pending for "slow"
    assert trim_acknowledged(r, "mutations", approximate=False) == 2
    remaining = [i.decode() for i, _ in r.xrange(STREAM)]
    assert remaining == ids[2:]
    r.xack(STREAM, "slow", ids[2], ids[4], ids[5])
    assert trim_acknowledged(r, "mutations", approximate=False) == 4
    assert [i.decode() for i, _ in r.xrange(STREAM)] == ids[6:]  # never read by "slow"
    r.xgroup_create(STREAM, "late", id="$")
    trim_acknowledged(r, "mutations", approximate=False)
    assert r.xlen(STREAM) == 4


def test_stream_without_groups_is_never_trimmed(r: redis.Redis) -> None:
    """Nobody has read it yet: nothing is acknowledged, nothing goes."""
    add(r, 5)
    assert trim_acknowledged(r, "mutations", approximate=False) == 0
    assert r.xlen(STREAM) == 5
    assert trim_acknowledged(r, "nothing-here") == 0


@pytest.mark.standalone_only
def test_duplicate_delivery_has_exactly_once_effect(r: redis.Redis) -> None:
    """An entry handled twice (crash after the effect, before XACK) changes state once."""
    crash_once = {"armed": True}

    def project(event: Event) -> None:
        apply_once(r, "seen:projections", event.event_id,
                   [("HINCRBY", "totals", event.op, 1)])
        if crash_once["armed"]:
            crash_once["armed"] = False
            raise RuntimeError("process died before XACK")

    reg = HandlerRegistry()
    reg.register("Order", "*", project)
    c = consumer(r, reg, claim_idle_ms=20)
    c.ensure_group()
    add(r, 3, op="create")
    c.run(max_entries=3)
    time.sleep(0.05)
    c.run(max_entries=1)
    assert c.stats.failed == 1 and c.stats.handled == 3
    assert r.hget("totals", "create") == b"3"
    assert pending(r) == 0


def test_run_stops_at_max_entries_and_max_seconds(r: redis.Redis) -> None:
    """run() honours both bounds: N entries, or T seconds when entries are slow."""
    reg = HandlerRegistry()
    reg.register("Order", "*", lambda e: time.sleep(0.02))
    c = consumer(r, reg, batch_size=10)
    c.ensure_group()
    add(r, 50)
    c.run(max_entries=15)
    assert c.stats.handled == 15
    started = time.monotonic()
    c.run(max_seconds=0.3)
    elapsed = time.monotonic() - started
    assert 15 < c.stats.handled < 50
    assert elapsed < 0.3 + 10 * 0.02 + 0.2  # at most one batch past the deadline


def test_stream_info_reports_lag_pending_and_dead_letters(r: redis.Redis) -> None:
    """stream_info: length, per-group pending, lag (unread entries) and dead letters."""
    add(r, 8)
    r.xgroup_create(STREAM, "g", id="0")
    r.xreadgroup("g", "x", {STREAM: ">"}, count=3)
    r.xadd(dead_letter_key(STREAM), {"model": "Order"})
    info = stream_info(r, "mutations")
    assert info.length == 8 and info.dead_letters == 1
    (group,) = info.groups
    assert (group.name, group.pending, group.lag, group.lag_exact) == ("g", 3, 5, True)
    assert group.consumers == 1


def test_invalid_max_deliveries_is_rejected(r: redis.Redis) -> None:
    """max_deliveries below 1 is a configuration error."""
    with pytest.raises(ValueError, match="max_deliveries"):
        consumer(r, HandlerRegistry(), max_deliveries=0)


def test_comma_separated_changed_fields_are_a_list() -> None:
    """Entries in Popoto 1.x's form: "a,b" is ["a", "b"]; "" (create, full save) is None."""
    partial = Event.from_entry(STREAM, "1-0", {"model": "Order", "pk": "Order:1", "op": "update",
                                               "ts": "1.0", "changed_fields": "status,total"})
    assert partial.changed_fields == ["status", "total"]
    full = Event.from_entry(STREAM, "2-0", {b"model": b"Order", b"pk": b"Order:1",
                                            b"op": b"create", b"ts": b"1.0",
                                            b"changed_fields": b""})
    assert full.changed_fields is None
