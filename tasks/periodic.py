"""Beat tasks: repair stalled jobs, and fan out checks and clean-ups to every model."""

from __future__ import annotations

import json
import time
from typing import Any

import structlog

from popoto.models.base import Model
from popoto.registry import all_models, label_of
from popoto.redis_db import get_client

from . import jobs
from .base import BoundTask, popoto_task, settings
from .bulk_update import bulk_update
from .check import check_indexes
from .clean import clean_indexes
from .jobs import Job, lease
from .rebuild import rebuild_indexes

log = structlog.stdlib.get_logger("popoto.tasks")

#: How many class-set members ``delete_expired_index_entries`` samples per model.
EXPIRY_SAMPLE = 200


# --- stalled jobs ---------------------------------------------------------------

def _repair(state: dict[str, Any]) -> bool:
    """Get a job that stopped making progress going again; False if it cannot be."""
    job = Job(state["id"], state["kind"], state["model"], settings.lock_ttl,
              state.get("scope", ""))
    if not job.renew():
        job.fail("lease taken by another run while the job was stalled")
        log.warning("stalled job abandoned", job_id=job.id, kind=job.kind, model=job.model)
        return False
    repairs = get_client().hincrby(job.key, "repairs", 1)
    job.set()  # touch: not stalled again until it has had time to move
    phase = state.get("phase", "")
    log.warning("job stalled: repairing", job_id=job.id, kind=job.kind, model=job.model,
                phase=phase, idle_seconds=round(time.time() - state.get("updated", 0)),
                repairs=repairs)
    task_id = f"{job.id}-repair-{repairs}"
    if job.kind == "check":
        check_indexes.apply_async((job.model,), {"job_id": job.id, "repair": True},
                                  task_id=task_id)
    elif phase == "reindex":
        job.restart_scan("reindex")  # the cursor may be fine, the lost chunks are unknown
        get_client().hdel(job.key, "reindex:scanned")
        job.set(scan_done=0)
        rebuild_indexes.apply_async((job.model,), {"job_id": job.id}, task_id=task_id)
    elif phase == "clean":
        clean_indexes.apply_async((job.model,), {"job_id": job.id, "repair": True},
                                  task_id=task_id)
    elif phase == "update":
        filter_, updates = json.loads(state["filter"]), json.loads(state["updates"])
        bulk_update.apply_async((job.model, filter_, updates),
                                {"job_id": job.id, "repair": True,
                                 "chunk_size": int(state.get("chunk_size", 0)) or None},
                                task_id=task_id)
    else:
        return False
    return True


@popoto_task("popoto.maintenance.resume_stalled_jobs")
def resume_stalled_jobs(self: Any) -> list[str]:
    """Beat: repair running jobs without progress for ``POPOTO_JOB_STALL_SECONDS``.

    The Redis broker can lose a message outright (a worker killed between
    taking it off the queue and recording it as unacknowledged), which would
    leave a job waiting forever for a chunk. Such a job is resumed: lost
    chunks are enqueued again (a reindex scan starts over), which is safe
    because every chunk is idempotent and counted once.
    """
    with lease("resume-stalled:all", ttl=settings.soft_time_limit) as acquired:
        if not acquired:
            log.info("job already running", job="resume_stalled_jobs")
            return []
        now = time.time()
        repaired = []
        for state in jobs.recent(jobs.RECENT_JOBS):
            idle = now - float(state.get("updated", now))
            if state.get("status") == "running" and idle > settings.stall_seconds:
                if _repair(state):
                    repaired.append(state["id"])
        if repaired:
            log.info("stalled jobs resumed", jobs=repaired)
        return repaired


# --- fan-out (beat) -------------------------------------------------------------

def _labels() -> list[str]:
    return sorted(label_of(m) for m in all_models())


def _fan_out(task: BoundTask[[str], Any], job: str) -> list[str]:
    """Enqueue ``task`` for every registered model; returns their labels."""
    labels = _labels()
    for label in labels:
        task.delay(label)
    log.info("fan-out", job=job, models=len(labels))
    return labels


@popoto_task("popoto.maintenance.check_all_indexes")
def check_all_indexes(self: Any) -> list[str]:
    """Beat: enqueue ``check_indexes`` for every registered model."""
    return _fan_out(check_indexes, "check_indexes")


@popoto_task("popoto.maintenance.clean_all_indexes")
def clean_all_indexes(self: Any) -> list[str]:
    """Beat: enqueue ``clean_indexes`` for every registered model."""
    return _fan_out(clean_indexes, "clean_indexes")


def _has_expired(model: type[Model]) -> bool:
    """True if sampled class-set members point at instances that no longer exist."""
    client = get_client()
    class_sets = model._meta.class_set_keys()
    per_set = max(1, EXPIRY_SAMPLE // len(class_sets))
    pipe = client.pipeline(transaction=False)
    for class_set in class_sets:
        pipe.srandmember(class_set, per_set)
    members = [m for sample in pipe.execute() for m in (sample or [])]
    if not members:
        return False
    pipe = client.pipeline(transaction=False)
    for member in members:
        pipe.exists(member)
    return not all(pipe.execute())


@popoto_task("popoto.maintenance.delete_expired_index_entries")
def delete_expired_index_entries(self: Any) -> list[str]:
    """TTL clean-up across all registered models.

    An instance that expired leaves its class-set entry and index entries
    behind (Redis expires only the hash). Models with ``Meta.ttl`` are always
    cleaned; other models (per-instance ``_ttl``/``_expire_at``) are cleaned
    when a sample of their class set finds an expired member. Each clean-up is
    a regular ``clean_indexes`` job, so it is chunked and never overlaps
    another clean-up of the same model.
    """
    with lease("ttl-cleanup:all", ttl=settings.soft_time_limit) as acquired:
        if not acquired:
            log.info("job already running", job="delete_expired_index_entries")
            return []
        scheduled = []
        for model in sorted(all_models(), key=label_of):
            if model._meta.ttl or _has_expired(model):
                clean_indexes.delay(label_of(model))
                scheduled.append(label_of(model))
        log.info("expired index clean-up scheduled", models=scheduled)
        return scheduled
