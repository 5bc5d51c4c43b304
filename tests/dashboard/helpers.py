"""Helpers of the dashboard tests: logging in and acting like a browser does."""

from __future__ import annotations

import re
from typing import Any

import redis

from popoto.ops.examples.models import Order
from popoto.redis_db import get_client
from popoto.workers import HandlerRegistry, StreamConsumer
from popoto.workers.streams import stream_info

TOKEN = "dash-token-for-tests"
STREAM = "stream:orders"


def csrf_of(html: str) -> str:
    """The CSRF token of the first action form on a page."""
    found = re.search(r'name="csrf" value="([^"]*)"', html)
    assert found, "no action form on the page"
    return found.group(1)


def log_in(client: Any, token: str = TOKEN, base: str = "") -> Any:
    return client.post(f"{base}/login", data={"token": token, "next": f"{base}/"},
                       follow_redirects=False)


def make_dead_letter(order_id: str = "dl-1") -> str:
    """Create an order, then let a consumer whose handler fails read one entry of the
    stream (the oldest unread): it is dead-lettered at its first delivery. Returns the
    dead letter's id."""
    Order.create(order_id=order_id, customer="ann", total="1.00")

    def broken(event: Any) -> None:
        raise ValueError(f"cannot project {event.pk}")

    handlers = HandlerRegistry()
    handlers.register("Order", "*", broken)
    consumer = StreamConsumer("orders", "projections", "c1", registry=handlers,
                              max_deliveries=1, block_ms=50)
    consumer.run(max_entries=1, max_seconds=5)
    client: redis.Redis = get_client()
    assert stream_info(client, STREAM).dead_letters >= 1
    (entry_id, _), = client.xrevrange(f"dead:{STREAM}", count=1)
    return entry_id.decode()
