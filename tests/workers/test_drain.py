"""The beat-driven drain task on a real worker: bounded by entries and seconds, never twice."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from popoto.tasks.jobs import lease
from popoto.workers import Event, apply_once, registry
from popoto.workers.tasks import drain_stream

pytestmark = [pytest.mark.usefixtures("worker", "idle_after"),
              pytest.mark.standalone_only]  # Celery's broker is a standalone Redis
STREAM = "stream:audit"


def add(r: redis.Redis, n: int) -> None:
    for i in range(n):
        r.xadd(STREAM, {"model": "Invoice", "pk": f"Invoice:{i}", "op": "update",
                        "ts": f"{time.time():.6f}", "changed_fields": '["paid"]'})


def project(r: redis.Redis, delay: float = 0.0) -> Any:
    def handler(event: Event) -> None:
        apply_once(r, "seen:audit", event.event_id, [("INCR", "audit:count")])
        time.sleep(delay)

    registry.register("Invoice", "update", handler)


def test_drain_handles_at_most_n_entries(r: redis.Redis) -> None:
    """max_entries bounds one run; the next run continues where it stopped."""
    project(r)
    add(r, 25)
    stats = drain_stream.apply_async(("audit", "billing"), {"max_entries": 10}).get(timeout=30)
    assert stats["handled"] == 10 and r.get("audit:count") == b"10"
    stats = drain_stream.apply_async(("audit", "billing"), {"max_entries": 100,
                                                            "max_seconds": 1.0}).get(timeout=30)
    assert stats["handled"] == 15 and r.get("audit:count") == b"25"
    assert r.xpending(STREAM, "billing")["pending"] == 0
    assert r.xlen(STREAM) <= 25  # acknowledged entries may be trimmed, never others


@pytest.mark.slow
def test_drain_stops_after_t_seconds(r: redis.Redis) -> None:
    """max_seconds bounds one run even mid-batch; what it read is finished by the next run."""
    project(r, delay=0.02)
    add(r, 100)
    started = time.monotonic()
    stats = drain_stream.apply_async(("audit", "billing"), {"max_seconds": 0.3}).get(timeout=30)
    assert time.monotonic() - started < 10
    assert 0 < stats["handled"] < 100
    assert r.xpending(STREAM, "billing")["pending"] < 20  # at most the rest of one batch
    drained = drain_stream.apply_async(("audit", "billing"),
                                       {"max_seconds": 20.0, "max_entries": 1000})
    assert drained.get(timeout=60)["handled"] == 100 - stats["handled"]
    assert r.get("audit:count") == b"100"
    assert r.xpending(STREAM, "billing")["pending"] == 0


def test_overlapping_drains_of_one_group_do_not_both_run(r: redis.Redis) -> None:
    """While a drain of (stream, group) holds the lease, another drain returns at once."""
    project(r)
    add(r, 3)
    with lease("drain:stream:audit:billing", ttl=30) as held:
        assert held
        assert drain_stream.apply_async(("audit", "billing")).get(timeout=30) is None
    assert r.get("audit:count") is None
    stats = drain_stream.apply_async(("audit", "billing"), {"max_seconds": 1.0}).get(timeout=30)
    assert stats["handled"] == 3
