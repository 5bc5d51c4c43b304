"""What the dashboard shows, read from Redis with the synchronous client.

Every function here does blocking I/O: the app calls them in Starlette's
threadpool. Values are returned as plain data; escaping is the templates' job
(Jinja2 autoescape), so nothing here builds HTML.
"""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from popoto.models.base import Model
from popoto.models.maintenance import class_set_size
from popoto.models.maintenance.keyspace import key_type
from popoto.protocol import lenient_text
from popoto.redis_db import get_client
from popoto.registry import all_models, label_of
from popoto.tasks import health, jobs, stats
from popoto.workers.streams import StreamInfo, dead_letter_key, iter_streams, stream_info

#: the longest text of a value shown in a table cell (the rest is cut, with "…")
MAX_CELL = 200
#: job statuses that no longer change
FINAL = ("done", "failed", "skipped")


def cell(value: Any) -> str:
    """A value as the text of one table cell (the template escapes it): text as it is,
    numbers and dates as text, anything else as its repr; cut after MAX_CELL."""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    elif isinstance(value, (bool, int, float, Decimal)):
        text = str(value)
    elif isinstance(value, (datetime.date, datetime.time)):
        text = value.isoformat()
    else:
        text = repr(value)
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…"


# --- models and index health ---------------------------------------------------

@dataclass
class ModelRow:
    label: str
    name: str
    instances: int
    groups: int
    last_check: dict[str, Any] | None


def models() -> list[type[Model]]:
    return sorted(all_models(), key=label_of)


def find_model(label: str) -> type[Model] | None:
    """The registered model whose label is exactly ``label`` (None if there is none)."""
    return next((m for m in all_models() if label_of(m) == label), None)


def model_row(model: type[Model], checks: dict[str, Any] | None = None) -> ModelRow:
    label = label_of(model)
    checks = health.last_checks() if checks is None else checks
    return ModelRow(label=label, name=model.__name__, instances=class_set_size(model),
                    groups=len(model._meta.groups), last_check=checks.get(label))


def model_rows() -> list[ModelRow]:
    checks = health.last_checks()
    return [model_row(m, checks) for m in models()]


def last_check(label: str) -> dict[str, Any] | None:
    return health.last_checks().get(label)


@dataclass
class Sample:
    fields: list[str]
    rows: list[tuple[str, list[str]]]  # (instance key, one cell per field)


def sample_keys(model: type[Model], limit: int) -> list[str]:
    """Up to ``limit`` instance keys from the class set(s), read with SSCAN: the cost does
    not grow with the number of instances."""
    client = get_client()
    keys: list[str] = []
    for class_set in model._meta.class_set_keys():
        cursor, steps = 0, 0
        while len(keys) < limit and steps < 100:
            cursor, found = client.sscan(class_set, cursor, count=limit)
            keys.extend(lenient_text(k) for k in found)
            steps += 1
            if int(cursor) == 0:
                break
        if len(keys) >= limit:
            break
    return sorted(set(keys))[:limit]


def sample(model: type[Model], limit: int = 25) -> Sample:
    """Up to ``limit`` instances of ``model``, each field's value as cell text."""
    names = list(model._meta.fields)
    found = [model.load(db_key=key) for key in sample_keys(model, limit)]
    rows = [(cell(obj.pk), [cell(getattr(obj, name, None)) for name in names])
            for obj in found if obj is not None]
    return Sample(fields=names, rows=rows)


def report_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """A check report flattened into (what, count) rows (per-index counts indented)."""
    rows: list[tuple[str, str]] = []
    for name, value in report.items():
        if isinstance(value, dict):
            rows.extend((f"{name}: {k}", cell(v)) for k, v in sorted(value.items()))
        else:
            rows.append((name, cell(value)))
    return rows


# --- jobs --------------------------------------------------------------------------

def job_view(state: dict[str, Any]) -> dict[str, Any]:
    """A job's record plus ``percent`` (0-100) for its progress bar."""
    done, total = int(state.get("done", 0)), int(state.get("total", 0))
    status = state.get("status", "")
    if status == "done":
        percent = 100.0
    elif total > 0:
        percent = min(100.0, 100.0 * done / total)
    else:
        percent = 0.0
    return {**state, "id": str(state.get("id", "")), "status": status, "done": done,
            "total": total, "percent": round(percent, 1), "final": status in FINAL,
            "phase": state.get("phase", ""), "error": state.get("error", "")}


def recent_jobs(limit: int = 30) -> list[dict[str, Any]]:
    return [job_view(s) for s in jobs.recent(limit)]


def job(job_id: str) -> dict[str, Any] | None:
    state = jobs.get(job_id)
    return job_view(state) if state is not None else None


def jobs_by_id(ids: list[str]) -> list[dict[str, Any]]:
    return [view for view in (job(i) for i in ids) if view is not None]


# --- streams -----------------------------------------------------------------------

@dataclass
class DeadLetter:
    id: str
    fields: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""
    group: str = ""
    deliveries: str = ""
    at: float | None = None


#: above this many keys in the database, the list of streams (found with SCAN) is
#: reused for STREAM_LIST_SECONDS instead of scanning the keyspace for every page
#: and every scrape
LARGE_KEYSPACE = 100_000
STREAM_LIST_SECONDS = 60.0
_stream_list: dict[str, Any] = {"at": 0.0, "keys": []}
_stream_list_lock = threading.Lock()


def stream_keys() -> list[str]:
    """Keys of the event streams (``stream:*``), rescanned at most once a minute on a
    large keyspace."""
    client = get_client()
    with _stream_list_lock:
        fresh = time.monotonic() - _stream_list["at"] < STREAM_LIST_SECONDS
        if fresh and int(client.dbsize()) > LARGE_KEYSPACE:
            return list(_stream_list["keys"])
        keys = list(iter_streams(client))
        _stream_list.update(at=time.monotonic(), keys=keys)
        return keys


def streams() -> list[StreamInfo]:
    client = get_client()
    return [stream_info(client, key) for key in stream_keys()]


def stream(key: str) -> StreamInfo | None:
    """The stream at ``key`` (None unless ``key`` is a stream, or a stream's key whose
    dead letters exist)."""
    client = get_client()
    if not key.startswith("stream:"):
        return None
    kind = key_type(client, key)
    if kind != "stream" and not (kind == "none" and client.exists(dead_letter_key(key))):
        return None
    return stream_info(client, key)


def dead_letters(key: str, limit: int = 50) -> list[DeadLetter]:
    """The newest ``limit`` dead letters of stream ``key``."""
    rows = get_client().xrevrange(dead_letter_key(key), count=limit)
    letters = []
    for entry_id, raw in rows:
        data = {lenient_text(k): lenient_text(v) for k, v in raw.items()}
        try:
            at = float(data.get("dl_ts", ""))
        except ValueError:
            at = None
        letters.append(DeadLetter(
            id=lenient_text(entry_id), error=cell(data.get("dl_error", "")),
            group=data.get("dl_group", ""), deliveries=data.get("dl_deliveries", ""), at=at,
            fields=[(k, cell(v)) for k, v in sorted(data.items()) if not k.startswith("dl_")]))
    return letters


# --- the beat schedule ------------------------------------------------------------

def schedule(beat_schedule: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each beat entry with its interval and its task's last run (any worker's)."""
    runs = stats.last_runs()
    now = time.time()
    rows = []
    for name, entry in sorted(beat_schedule.items()):
        every = entry.get("schedule")
        seconds = (every.total_seconds()
                   if every is not None and hasattr(every, "total_seconds") else None)
        last = runs.get(entry.get("task", ""))
        late = bool(last and seconds and now - float(last.get("at", now)) > 2 * seconds)
        rows.append({"name": name, "task": entry.get("task", ""), "every": seconds,
                     "args": cell(list(entry.get("args", ()))) if entry.get("args") else "",
                     "last": last, "late": late})
    return rows
