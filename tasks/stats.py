"""Task counts, durations and last runs, recorded by every worker in Redis.

Celery's ``task_prerun`` / ``task_postrun`` signals time every task a worker
runs; one pipeline per task adds it to ``$TaskStats`` (a hash: for each task
name and final state -- ``SUCCESS``, ``FAILURE``, ``RETRY``, ... -- a count, a
sum of seconds and a count per duration bucket of :data:`BUCKETS`) and sets its
entry in ``$TaskLastRun`` (task name -> JSON ``{"at", "state", "seconds",
"task_id"}``). Summed over every worker, they feed the dashboard (when each
periodic job last ran) and ``/metrics`` (``popoto_tasks_total``,
``popoto_task_duration_seconds``). Recording never fails a task: a Redis error
here is ignored (the task's own work decides its outcome).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from typing import Any

import redis
from celery import signals

from popoto.exceptions import PopotoError
from popoto.redis_db import get_client

from .jobs import _kind

#: upper bounds (seconds) of the duration buckets; a last one, +Inf, is implied
BUCKETS = (0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

_started: dict[str, float] = {}
_lock = threading.Lock()


def stats_key() -> str:
    return _kind("TaskStats")


def last_run_key() -> str:
    return _kind("TaskLastRun")


def _bucket(seconds: float) -> str:
    for bound in BUCKETS:
        if seconds <= bound:
            return repr(bound)
    return "+Inf"


def record(task: str, state: str, seconds: float, task_id: str | None = None) -> None:
    """Count one run of ``task`` that ended in ``state`` after ``seconds``."""
    field = f"{task}|{state}"
    pipe = get_client().pipeline(transaction=False)
    pipe.hincrby(stats_key(), f"count|{field}", 1)
    pipe.hincrbyfloat(stats_key(), f"sum|{field}", seconds)
    pipe.hincrby(stats_key(), f"bucket|{field}|{_bucket(seconds)}", 1)
    pipe.hset(last_run_key(), task, json.dumps({"at": time.time(), "state": state,
                                                "seconds": round(seconds, 6),
                                                "task_id": task_id}))
    pipe.execute()


def task_stats() -> dict[tuple[str, str], dict[str, Any]]:
    """``(task, state)`` -> ``{"count", "sum", "buckets": {bound: n}}`` (non-cumulative
    counts per bucket bound, ``"+Inf"`` last), summed over every worker."""
    out: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"count": 0, "sum": 0.0, "buckets": {}})
    for raw_field, raw_value in get_client().hgetall(stats_key()).items():
        parts = raw_field.decode().split("|")
        value = raw_value.decode()
        if parts[0] == "count" and len(parts) == 3:
            out[(parts[1], parts[2])]["count"] = int(value)
        elif parts[0] == "sum" and len(parts) == 3:
            out[(parts[1], parts[2])]["sum"] = float(value)
        elif parts[0] == "bucket" and len(parts) == 4:
            out[(parts[1], parts[2])]["buckets"][parts[3]] = int(value)
    return dict(out)


def last_runs() -> dict[str, dict[str, Any]]:
    """Task name -> its last run ``{"at", "state", "seconds", "task_id"}``."""
    found = {}
    for task, raw in get_client().hgetall(last_run_key()).items():
        try:
            found[task.decode()] = json.loads(raw)
        except ValueError:
            continue
    return found


def _on_prerun(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        with _lock:
            _started[task_id] = time.monotonic()


def _on_postrun(task_id: str | None = None, task: Any = None, state: str | None = None,
                **_: Any) -> None:
    with _lock:
        started = _started.pop(task_id or "", None)
    if started is None or task is None:
        return
    try:
        record(task.name, state or "UNKNOWN", time.monotonic() - started, task_id)
    except (redis.RedisError, PopotoError, OSError):
        pass  # stats are best effort; the task's outcome does not depend on them


def connect_signals() -> None:
    """Record every task this process runs (safe to call again: deduped by uid)."""
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="popoto-stats-prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="popoto-stats-postrun")
