"""``python -m popoto.workers consume`` as a real process: graceful SIGTERM, kill -9 and reclaim."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis

from popoto.tasks.testing import spawn_consumer, wait_until

pytestmark = pytest.mark.standalone_only  # the child process gets a standalone REDIS_URL

HERE = os.path.dirname(os.path.abspath(__file__))
STREAM = "stream:mutations"


def env(redis_url: str, **extra: str) -> dict[str, str]:
    path = os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])
    return {"REDIS_URL": redis_url, "PYTHONPATH": path, "POPOTO_LOG_FORMAT": "json",
            "POPOTO_HANDLER_MODULES": "subprocess_handlers", **extra}


def add_orders(r: redis.Redis, n: int) -> list[str]:
    return [r.xadd(STREAM, {"model": "Order", "pk": f"Order:{i}", "op": "create",
                            "ts": f"{time.time():.6f}", "changed_fields": "[]"}).decode()
            for i in range(n)]


def args(consumer: str, *extra: str) -> list[str]:
    return ["--stream", "mutations", "--group", "projections", "--consumer", consumer,
            "--block-ms", "200", *extra]


def test_sigterm_finishes_and_acks_the_current_batch_then_exits(
        r: redis.Redis, redis_url: str) -> None:
    """SIGTERM mid-batch: the batch is handled and acknowledged, the process exits 0."""
    add_orders(r, 30)
    proc = spawn_consumer(env(redis_url, TEST_HANDLER_SLEEP="0.1"),
                          args("graceful", "--batch-size", "10"))
    with proc:
        wait_until(lambda: int(r.get("proc:invocations") or 0) >= 2, timeout=20)
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(timeout=20) == 0
    assert r.hget("proc:totals", "handled") == b"10"
    assert r.xpending(STREAM, "projections")["pending"] == 0
    lines = [json.loads(x) for x in proc.output().splitlines() if x.startswith("{")]
    stopping = next(e for e in lines if e["event"] == "stopping after the current batch")
    assert stopping["signal"] == "SIGTERM"
    stopped = next(e for e in lines if e["event"] == "consumer stopped")
    assert stopped["handled"] == 10 and stopped["consumer"] == "graceful"


def test_killed_after_read_before_ack_entries_are_reclaimed_effect_once(
        r: redis.Redis, redis_url: str) -> None:
    """kill -9 while a batch is read but unacknowledged: another consumer reclaims it with
    XAUTOCLAIM; the idempotent handler runs twice for one entry yet applies it once."""
    add_orders(r, 5)
    doomed = spawn_consumer(env(redis_url, TEST_HANDLER_SLEEP="60"), args("doomed"))
    with doomed:
        # the handler counts its invocation, applies the effect, then sleeps: kill it asleep
        wait_until(lambda: r.get("proc:invocations") == b"1"
                   and r.hget("proc:totals", "handled") == b"1", timeout=20)
        doomed.kill9()
    assert r.xpending(STREAM, "projections")["pending"] == 5  # read, never acked
    assert r.hget("proc:totals", "handled") == b"1"  # its effect did happen
    rescuer = spawn_consumer(env(redis_url), args("rescuer", "--claim-idle-ms", "300"))
    with rescuer:
        wait_until(lambda: r.xpending(STREAM, "projections")["pending"] == 0, timeout=20)
        rescuer.terminate()
    assert int(r.get("proc:invocations")) == 6  # entry 0 was delivered twice
    assert r.hget("proc:totals", "handled") == b"5"  # ... and counted once
    lines = [json.loads(x) for x in rescuer.output().splitlines() if x.startswith("{")]
    assert any(e["event"] == "reclaimed idle entries" and e["entries"] == 5 for e in lines)
