"""Clean jobs: ``clean_indexes`` cuts a model's index keys into chunks and
``clean_index_keys`` removes the entries nobody owns (also a rebuild's clean phase)."""

from __future__ import annotations

import time
from typing import Any

import structlog

from popoto.models.base import Model
from popoto.registry import label_of
from popoto.redis_db import get_client

from . import jobs
from .base import popoto_task, settings
from .chunking import (
    PHASE_COORDINATORS,
    _continue,
    _enqueue_chunks,
    _group_of,
    _model,
    _open_job,
    _restart_scan,
    _scan_server,
    _server_id,
    _settle,
    _snapshot,
)
from .jobs import Job

log = structlog.stdlib.get_logger("popoto.tasks")

#: Index keys walked by one clean chunk (many indexes are small sets of one value).
CLEAN_KEYS_PER_CHUNK = 25


def _clean_chunks(model: type[Model], index_keys: list[str]) -> list[list[str]]:
    """Cut the index keys into chunks; a sharded model's chunks each hold ONE group's keys."""
    by_group: dict[str | None, list[str]] = {}
    for index_key in index_keys:
        by_group.setdefault(_group_of(model, index_key), []).append(index_key)
    return [part[i:i + CLEAN_KEYS_PER_CHUNK] for part in by_group.values()
            for i in range(0, len(part), CLEAN_KEYS_PER_CHUNK)]


@popoto_task("popoto.maintenance.clean_indexes")
def clean_indexes(self: Any, label: str, job_id: str | None = None,
                  repair: bool = False) -> str | None:
    """Remove index entries nobody owns: one ``clean_index_keys`` chunk per group of keys.

    Its own job (kind ``clean``), or the ``clean`` phase of a rebuild job.
    ``repair`` (from :func:`resume_stalled_jobs`) also re-enqueues chunks
    that were cut but never completed.
    """
    model = _model(label)
    label = label_of(model)
    job = _open_job(self, "clean", label, job_id, "clean")
    if job is None:
        return None
    index_keys = _snapshot(job, "clean", model.index_keys)
    groups = _clean_chunks(model, index_keys)

    def send(i: int, group: list[str], task_id: str) -> None:
        clean_index_keys.apply_async((label, job.id, i, group), task_id=task_id)

    _enqueue_chunks(self, job, "clean", groups, send, repair, (label,), {"job_id": job.id},
                    index_keys=len(index_keys))
    return job.id


@popoto_task("popoto.maintenance.clean_index_keys")
def clean_index_keys(self: Any, label: str, job_id: str, chunk: int,
                     index_keys: list[str]) -> int:
    """Walk index keys with SSCAN/ZSCAN/HSCAN, removing entries nobody owns.

    The position (key, cursor) is saved in the job hash after every batch,
    with the number removed, in one transaction: a redelivered or continued
    message resumes from it. A cursor saved on a server that has since
    restarted is not followed; that key's walk starts over.
    """
    model = _model(label)
    structlog.contextvars.bind_contextvars(model=label, job_id=job_id, chunk=chunk)
    state = jobs.get(job_id) or {}
    job = Job(job_id, state.get("kind", "clean"), label, settings.lock_ttl,
              state.get("scope", ""))
    client = get_client()
    prefix = f"clean:{chunk}"
    saved_pos, saved_cursor = client.hmget(job.key, f"{prefix}:key", f"{prefix}:cursor")
    position, cursor = int(saved_pos or 0), int(saved_cursor or 0)
    group = _group_of(model, index_keys[0]) if index_keys else None
    server = _scan_server(job, prefix, group)
    deadline = time.monotonic() + settings.job_step_seconds
    removed_here = 0
    while position < len(index_keys):
        next_cursor, removed = model.clean_index_chunk(index_keys[position], cursor=cursor,
                                                       count=settings.chunk_size)
        removed_here += removed
        cursor = int(next_cursor)
        if _server_id(group) != server:
            server, cursor = _restart_scan(job, prefix, group), 0
        elif cursor == 0:
            position += 1
        pipe = client.pipeline(transaction=True)
        pipe.hset(job.key, mapping={f"{prefix}:key": position, f"{prefix}:cursor": cursor,
                                    "updated": time.time()})
        if removed:
            pipe.hincrby(job.key, "removed", removed)
        pipe.execute()
        if position < len(index_keys) and time.monotonic() > deadline:
            log.info("chunk continues later", position=position, cursor=cursor,
                     removed=removed_here)
            _continue(self, (label, job_id, chunk, index_keys), {},
                      f"{job_id}-clean-{chunk}-{position}-{cursor}")
            return removed_here
    result = job.complete_chunk(f"clean:{chunk}", len(index_keys))
    log.info("chunk done", phase="clean", index_keys=len(index_keys), removed=removed_here,
             done=result.done, total=result.total, redelivered=not result.new)
    _settle(job, result)
    return removed_here


PHASE_COORDINATORS["clean"] = clean_indexes
