"""Test helpers shared by several test modules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis.connection


@contextlib.contextmanager
def count_round_trips() -> Iterator[list[int]]:
    """Count client->server writes (one per command or per pipeline batch)."""
    counter = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        counter[0] += 1
        return original(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = counting
    try:
        yield counter
    finally:
        redis.connection.AbstractConnection.send_packed_command = original
