"""Bulk update jobs: set values on every instance matching a filter, chunk by chunk."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import structlog

from popoto.registry import label_of

from . import jobs
from .base import popoto_task, settings
from .chunking import _enqueue_chunks, _load, _model, _open_job, _settle, _snapshot
from .jobs import Job

log = structlog.stdlib.get_logger("popoto.tasks")


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@popoto_task("popoto.maintenance.bulk_update")
def bulk_update(self: Any, label: str, filter: dict[str, Any], updates: dict[str, Any],
                job_id: str | None = None, chunk_size: int | None = None,
                repair: bool = False) -> str | None:
    """Set ``updates`` on every instance matching ``filter``, chunk by chunk.

    The matching keys are listed once, sorted, and kept with the job, so a
    resumed coordinator cuts the same chunks; a redelivered chunk sets the
    same values again.
    """
    model = _model(label)
    label = label_of(model)
    size = chunk_size or settings.chunk_size
    query = model.query.filter(**filter)  # a bad filter fails here, before any job exists
    job = _open_job(self, "bulk_update", label, job_id, "update",
                    scope=_digest(filter, updates))
    if job is None:
        return None
    if job_id is None:
        job.set(filter=json.dumps(filter, default=str), updates=json.dumps(updates, default=str),
                chunk_size=size)
    keys = _snapshot(job, "update", lambda: sorted(query.keys()))
    if job_id is None:
        job.set(total=len(keys))
    chunks = [keys[i:i + size] for i in range(0, len(keys), size)]

    def send(i: int, chunk: list[str], task_id: str) -> None:
        bulk_update_chunk.apply_async((label, job.id, i, chunk, updates), task_id=task_id)

    _enqueue_chunks(self, job, "update", chunks, send, repair, (label, filter, updates),
                    {"job_id": job.id, "chunk_size": size}, total=len(keys))
    return job.id


@popoto_task("popoto.maintenance.bulk_update_chunk")
def bulk_update_chunk(self: Any, label: str, job_id: str, chunk: int, keys: list[str],
                      updates: dict[str, Any]) -> int:
    """Apply ``updates`` to the instances at ``keys`` that still exist."""
    model = _model(label)
    structlog.contextvars.bind_contextvars(model=label, job_id=job_id, chunk=chunk)
    instances = _load(model, keys)
    if instances:
        model.bulk_update(instances, batch_size=len(instances), **updates)
    state = jobs.get(job_id) or {}
    job = Job(job_id, "bulk_update", label, settings.lock_ttl, state.get("scope", ""))
    result = job.complete_chunk(f"update:{chunk}", len(keys))
    log.info("chunk done", phase="update", keys=len(keys), updated=len(instances),
             done=result.done, total=result.total, redelivered=not result.new)
    _settle(job, result)
    return len(instances)
