"""Consumers of a sharded model's events read every tag group's stream (Meta.shards = 4)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from popoto import EventStreamMixin, Field, KeyField, Model
from popoto import keys
from popoto.workers import Event, HandlerRegistry, StreamConsumer, registry
from popoto.workers.streams import dead_letter_key, replay_dead_letters, stream_keys
from popoto.workers.tasks import drain_stream

NAME = "shard-events"


class Ticket(EventStreamMixin, Model):
    tid = KeyField()
    state = Field(type=str, null=True)

    _stream_name = NAME

    class Meta:
        shards = 4


def make(n: int, start: int = 0) -> list[Ticket]:
    """``n`` tickets (spread over the tag groups), one create event each."""
    made = [Ticket.create(tid=f"t{i:03d}", state="open") for i in range(start, start + n)]
    assert n < 8 or len({keys.ns_of(t.pk) for t in made}) == 4
    return made


def consumer(r: redis.Redis, reg: HandlerRegistry, name: str = "c1", stream: Any = NAME,
             **kw: Any) -> StreamConsumer:
    kw.setdefault("block_ms", 10)
    kw.setdefault("claim_idle_ms", 100)
    return StreamConsumer(stream, "proj", name, registry=reg, client=r, **kw)


def pending(r: redis.Redis) -> int:
    return sum(int(r.xpending(k, "proj")["pending"]) for k in Ticket.stream_keys())


def collect(reg: HandlerRegistry) -> list[Event]:
    got: list[Event] = []
    reg.register("Ticket", "*", got.append)
    return got


def test_a_stream_name_resolves_to_every_group_stream() -> None:
    """The name gives stream:<name> plus each group's stream; a full key is itself."""
    plain = f"stream:{NAME}"
    assert stream_keys(NAME) == [plain, *sorted(Ticket.stream_keys())]
    assert stream_keys(Ticket.stream_keys()[2]) == [Ticket.stream_keys()[2]]
    assert stream_keys("nobody-writes-this") == ["stream:nobody-writes-this"]
    c = StreamConsumer(NAME, "proj", "c", registry=HandlerRegistry())
    assert c.streams == stream_keys(NAME) and c.stream == plain
    assert StreamConsumer(Ticket.stream_keys(), "proj", "c").streams == Ticket.stream_keys()


def test_real_consumer_handles_the_events_of_every_group(r: redis.Redis) -> None:
    """Creates, updates and deletes of instances in all groups reach the handlers once each,
    in commit order per instance, and are acknowledged on their own group's stream."""
    tickets = make(12)
    for t in tickets[:5]:
        t.state = "closed"
        t.save()
    tickets[0].delete()
    reg = HandlerRegistry()
    got = collect(reg)
    c = consumer(r, reg)
    c.run(until_idle=True)
    assert len(got) == 12 + 5 + 1 and c.stats.handled == 18
    assert {e.pk for e in got} == {t.pk for t in tickets}
    first = [e.op for e in got if e.pk == tickets[0].pk]
    assert first == ["create", "update", "delete"]
    assert all(keys.key_slot(e.stream) == keys.key_slot(e.pk) for e in got)
    assert pending(r) == 0
    more = make(3, start=50)
    c.run(until_idle=True)
    assert {e.pk for e in got[18:]} == {t.pk for t in more}


def test_step_handles_at_most_count_and_keeps_the_rest_for_the_next(r: redis.Redis) -> None:
    """A multi-stream read beyond the step's budget is handled by the next steps, each entry
    delivered once (run(max_entries) stays exact)."""
    make(20)
    reg = HandlerRegistry()
    got = collect(reg)
    c = consumer(r, reg, batch_size=6)
    c.ensure_group()
    assert c.step(3) == 3 and len(got) == 3
    c.run(max_entries=10)
    assert len(got) == 13
    c.run(until_idle=True)
    assert len(got) == 20 and len({e.entry_id + e.stream for e in got}) == 20
    assert all(e.deliveries == 1 for e in got) and pending(r) == 0


def test_pending_entries_of_every_group_are_resumed_and_reclaimed(r: redis.Redis) -> None:
    """Own pending entries are finished after a restart; a dead consumer's entries in every
    group stream are reclaimed by another."""
    make(10)
    reg = HandlerRegistry()
    got = collect(reg)
    first = consumer(r, HandlerRegistry(), name="crashed")
    first.ensure_group()
    for key in Ticket.stream_keys():
        r.xreadgroup("proj", "crashed", {key: ">"}, count=100)  # read, never acked
    assert pending(r) == 10
    restarted = consumer(r, reg, name="crashed", claim_idle_ms=60_000)
    restarted.run(until_idle=True)
    assert len(got) == 10 and pending(r) == 0
    make(6, start=100)
    for key in Ticket.stream_keys():
        r.xreadgroup("proj", "dead", {key: ">"}, count=100)
    alive = consumer(r, reg, name="alive", claim_idle_ms=30)
    time.sleep(0.06)
    alive.run(max_entries=6)
    assert len(got) == 16 and alive.stats.reclaimed == 6 and pending(r) == 0


def test_dead_letters_stay_in_their_groups_slot_and_replay(r: redis.Redis) -> None:
    """A poison entry of a group stream goes to that stream's dead-letter key (same slot)
    and replays back into the same stream."""
    (ticket,) = make(1)
    home = Ticket.stream_key(ns=keys.ns_of(ticket.pk))
    broken = True
    applied: list[str] = []

    def handler(event: Event) -> None:
        if broken:
            raise ValueError("nope")
        applied.append(event.event_id)

    reg = HandlerRegistry()
    reg.register("Ticket", "*", handler)
    c = consumer(r, reg, max_deliveries=1)
    c.run(until_idle=True)
    assert c.stats.dead_lettered == 1 and pending(r) == 0
    dead = dead_letter_key(home)
    assert keys.key_slot(dead) == keys.key_slot(home) and r.xlen(dead) == 1
    broken = False
    assert replay_dead_letters(r, home) == 1
    c.run(until_idle=True)
    assert len(applied) == 1 and r.xlen(home) == 2


def test_trim_covers_every_group_stream(r: redis.Redis) -> None:
    """trim_now drops what the group acknowledged in each group stream."""
    make(16)
    reg = HandlerRegistry()
    collect(reg)
    c = consumer(r, reg, trim_approximate=False)
    c.run(until_idle=True)
    assert c.trim_now() == 16
    assert sum(r.xlen(k) for k in Ticket.stream_keys()) == 0


@pytest.mark.standalone_only  # Celery's broker is a standalone Redis
@pytest.mark.usefixtures("worker", "idle_after")
def test_drain_task_drains_every_group_stream(r: redis.Redis) -> None:
    """popoto.events.drain_stream on a real worker handles the events of all groups."""
    make(12)
    seen: list[str] = []
    registry.register("Ticket", "create", lambda e: seen.append(e.pk))
    stats = drain_stream.apply_async((NAME, "drainers"), {"max_seconds": 5.0,
                                                          "max_entries": 8}).get(timeout=30)
    assert stats["handled"] == 8
    stats = drain_stream.apply_async((NAME, "drainers"), {"max_seconds": 5.0}).get(timeout=30)
    assert stats["handled"] == 4 and len(set(seen)) == 12
    assert sum(int(r.xpending(k, "drainers")["pending"]) for k in Ticket.stream_keys()) == 0
