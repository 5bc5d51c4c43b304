"""Exactly-once effects: by event id (apply_once) and by object version (apply_if_newer)."""

from __future__ import annotations

import pytest
import redis

from popoto.ops.examples import handlers as example_handlers
from popoto.ops.examples.models import Order
from popoto.workers import HandlerRegistry, StreamConsumer, apply_if_newer, apply_once


@pytest.mark.standalone_only  # its marker and effect keys are in different slots
def test_apply_once_runs_the_commands_once_per_event_id(r: redis.Redis) -> None:
    """The marker and the writes commit together: a repeat of the id changes nothing."""
    cmds = [("HINCRBY", "totals", "n", 1), ("SADD", "ids", "a")]
    assert apply_once(r, "seen", "1700000000000-0", cmds) is True
    assert apply_once(r, "seen", "1700000000000-0", cmds) is False
    assert apply_once(r, "seen", "1700000000001-0", cmds) is True
    assert r.hget("totals", "n") == b"2"


def test_apply_once_trims_markers_older_than_the_retention(r: redis.Redis) -> None:
    """Markers older than retention_ms (by the id's time) are dropped in the same call."""
    apply_once(r, "seen", "1000-0", [], retention_ms=500)
    apply_once(r, "seen", "2000-0", [], retention_ms=500)
    assert [m for m in r.zrange("seen", 0, -1)] == [b"2000-0"]


@pytest.mark.standalone_only  # its marker and effect keys are in different slots
def test_apply_if_newer_ignores_old_and_repeated_versions(r: redis.Redis) -> None:
    """Out-of-order or repeated events never roll a projection back."""
    assert apply_if_newer(r, "v", "Order:1", 2.0, [("HSET", "latest", "Order:1", "paid")])
    assert not apply_if_newer(r, "v", "Order:1", 1.0, [("HSET", "latest", "Order:1", "new")])
    assert not apply_if_newer(r, "v", "Order:1", 2.0, [("HSET", "latest", "Order:1", "x")])
    assert r.hget("latest", "Order:1") == b"paid"
    assert apply_if_newer(r, "v", "Order:1", 3.5, [("HDEL", "latest", "Order:1")])
    assert r.hget("latest", "Order:1") is None


@pytest.mark.standalone_only  # its marker and effect keys are in different slots
def test_real_event_stream_entries_drive_the_example_projection(r: redis.Redis) -> None:
    """Saves of an EventStreamMixin model, consumed twice over: the projection is exact."""
    reg = HandlerRegistry()
    reg.register("Order", "*", example_handlers.project_order)
    for i in range(3):
        Order(order_id=str(i), customer="ann", total="10.00").save()
    order = Order.query.get(order_id="1")
    order.status = "paid"
    order.save()
    Order.query.get(order_id="2").delete()
    stream = Order.stream_key()
    first = StreamConsumer(stream, "projection", "c1", registry=reg, client=r, block_ms=10)
    first.run(max_entries=5)
    # the group is rewound as after a crash that lost every ack: all five come again
    r.xgroup_setid(stream, "projection", "0")
    again = StreamConsumer(stream, "projection", "c2", registry=reg, client=r, block_ms=10)
    again.run(max_entries=5)
    assert again.stats.handled == 5
    assert r.hgetall(example_handlers.EVENTS) == {b"create": b"3", b"update": b"1",
                                                   b"delete": b"1"}
    assert r.hgetall(example_handlers.LATEST) == {b"Order:0": b"new", b"Order:1": b"paid"}
