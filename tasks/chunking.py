"""The plumbing shared by every maintenance job family (see :mod:`popoto.tasks.maintenance`).

Opening a job (or picking it up again), settling after a chunk or a scan end
(end of the job, or the next phase's coordinator), the SCAN-server checks that
void a cursor after a restart or failover, the tag groups of a sharded model,
and the enqueueing of chunks cut up front (clean, check, bulk update),
resumably and with repair of lost chunk messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from popoto import get_model
from popoto.models.base import Model
from popoto.models.maintenance import group_client
from popoto.engine.scripts import LuaScript
from popoto.redis_db import get_client

from . import jobs
from .base import BoundTask, settings
from .jobs import ChunkResult, Job

log = structlog.stdlib.get_logger("popoto.tasks")

PHASES = {
    "rebuild": ("reindex", "clean"),
    "clean": ("clean",),
    "check": ("check",),
    "bulk_update": ("update",),
}

#: The coordinator task of each phase, enqueued by :func:`_settle` when the phase begins.
#: Filled in by the modules defining them (:mod:`popoto.tasks.rebuild`: ``reindex``,
#: :mod:`popoto.tasks.clean`: ``clean``), which import this one.
PHASE_COORDINATORS: dict[str, BoundTask[..., Any]] = {}


def _model(label: str) -> type[Model]:
    return get_model(label)


def _open_job(task: Any, kind: str, label: str, job_id: str | None, phase: str,
              scope: str = "", total: int = 0) -> Job | None:
    """Start the job (first run) or pick it up again (continuation, next phase, redelivery).

    Returns None when this coordinator must not run: another run of the same
    job holds the lease, the job is over or was superseded, or it is in
    another phase.
    """
    own_id = job_id or task.request.id
    if job_id is None:
        job, holder = Job.start(kind, label, settings.lock_ttl, PHASES[kind], total=total,
                                job_id=own_id, scope=scope)
        if job is not None:
            log.info("job started", job_id=job.id, kind=kind, model=label, total=total)
            job.set(**{f"{phase}:begun": 1})
            return job
        if holder != own_id:
            log.info("job already running", kind=kind, model=label, running_job_id=holder)
            return None
    job = Job.resume(own_id, settings.lock_ttl)
    if job is None:
        log.info("job no longer running", job_id=own_id, kind=kind, model=label)
        return None
    current = job.state().get("phase")
    if current != phase:
        log.info("coordinator not for the current phase", job_id=own_id, phase=phase,
                 current_phase=current)
        return None
    if not job.renew():
        job.fail("superseded: another run took the lease")
        log.warning("job superseded", job_id=own_id, kind=kind, model=label)
        return None
    job.set(**{f"{phase}:begun": 1})
    return job


def _settle(job: Job, result: ChunkResult) -> None:
    """After a chunk or a scan end: log the end of the job, or start the next phase.

    Whoever saw the phase begin enqueues its coordinator. A redelivered chunk
    enqueues it again (same task id) if it never started: the process that saw
    the phase begin may have died before enqueueing.
    """
    if result.finished:
        state = job.state()
        log.info("job finished", job_id=job.id, kind=job.kind, model=job.model,
                 done=result.done, total=result.total, removed=state.get("removed", 0),
                 seconds=round(state.get("finished", 0) - state.get("started", 0), 3))
        return
    coordinator = PHASE_COORDINATORS.get(result.phase)
    if coordinator is None:
        return
    if not result.phase_begun:
        if result.new:
            return
        state = job.state()
        if (state.get("status") != "running" or state.get("phase") != result.phase
                or state.get(f"{result.phase}:begun")):
            return
    log.info("phase begins", job_id=job.id, phase=result.phase)
    coordinator.apply_async((job.model,), {"job_id": job.id},
                            task_id=f"{job.id}-{result.phase}")


# popoto/lua/tasks_job_finish_scan.lua: Job.finish_scan, only while the phase is the job's
_FINISH_SCAN = LuaScript("tasks_job_finish_scan")


def _finish_scan(job: Job, phase: str) -> ChunkResult:
    """The coordinator of ``phase`` enqueued everything: total becomes exact (if still
    in ``phase``); then the job's completion is checked as after a chunk."""
    _FINISH_SCAN(get_client(), [job.key], [phase, time.time()])
    return job.complete_chunk("", 0)


def _already_scanned(job: Job, phase: str) -> bool:
    """A redelivered coordinator whose scan had ended: settle again instead of rescanning."""
    if not job.state().get(f"{phase}:scanned"):
        return False
    _settle(job, _finish_scan(job, phase))
    return True


def _continue(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], task_id: str) -> None:
    """Re-enqueue a coordinator or chunk to go on where it stopped (a short task each)."""
    task.apply_async(args, kwargs, task_id=task_id)


def _server_id(group: str | None = None) -> str:
    """The Redis server's ``run_id``: it changes when the server restarts or fails over.

    ``group``: the server (cluster node) holding that tag group.
    """
    client = get_client() if group is None else group_client(group)
    return str(client.info("server").get("run_id", ""))


def _scan_server(job: Job, prefix: str, group: str | None = None) -> str:
    """The server a stored SCAN cursor belongs to (recorded when the scan began).

    A cursor is a position in one server process's hash table: after a restart
    (new hash seed) or a failover it is meaningless, and following it would
    silently skip keys. Each scan step is therefore checked against this id.
    """
    client = get_client()
    client.hsetnx(job.key, f"{prefix}:server", _server_id(group))
    return (client.hget(job.key, f"{prefix}:server") or b"").decode()


def _restart_scan(job: Job, prefix: str, group: str | None = None) -> str:
    """Record the new server of a scan that must start over (its old cursor is void)."""
    server = _server_id(group)
    get_client().hset(job.key, f"{prefix}:server", server)
    log.warning("Redis restarted or failed over during a scan: starting the scan again",
                job_id=job.id, scan=prefix)
    return server


def _groups(model: type[Model]) -> tuple[str, ...] | None:
    """The tag groups of a sharded model (None: unsharded, worked on as one)."""
    meta = model._meta
    return meta.groups if meta.sharded else None


def _group_of(model: type[Model], index_key: str) -> str | None:
    """The tag group of one of a sharded model's index keys (None when unsharded)."""
    return model._index_group(index_key) if model._meta.sharded else None


def _load(model: type[Model], keys: list[str]) -> list[Model]:
    pipe = get_client().pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return [model.from_redis(key, raw) for key, raw in zip(keys, pipe.execute()) if raw]


def _snapshot(job: Job, phase: str, compute: Callable[[], list[str]]) -> list[str]:
    """The keys a phase works on, computed once and kept with the job.

    A resumed or repaired coordinator must cut exactly the same chunks, even
    when the data changed meanwhile (a bulk update changes what its filter
    matches).
    """
    client = get_client()
    list_key = jobs.job_list_key(job.id)
    if client.hget(job.key, f"{phase}:listed"):
        return [k.decode() for k in client.lrange(list_key, 0, -1)]
    found = compute()
    pipe = client.pipeline(transaction=True)
    pipe.delete(list_key)
    for start in range(0, len(found), 1000):
        pipe.rpush(list_key, *found[start:start + 1000])
    pipe.expire(list_key, jobs.JOB_TTL)
    pipe.hset(job.key, f"{phase}:listed", 1)
    pipe.execute()
    return found


def _enqueue_chunks(task: Any, job: Job, phase: str, chunks: list[Any],
                    send: Callable[[int, Any, str], None], repair: bool,
                    args: tuple[Any, ...], kwargs: dict[str, Any], **scan_info: Any) -> None:
    """Enqueue the chunks of a phase cut up front, resumably, then settle the scan.

    Goes on from the recorded position; after ``job_step_seconds`` the
    coordinator re-enqueues itself (``args``/``kwargs``) and stops. A
    redelivered coordinator whose scan had ended settles again instead.
    ``scan_info`` is logged with "scan finished".
    """
    if repair:
        _requeue_missing(job, phase, chunks, send)
    if _already_scanned(job, phase):
        return
    read_cursor, step = job.position(phase)
    since = (read_cursor, step)
    deadline = time.monotonic() + settings.job_step_seconds
    while step < len(chunks):
        send(step, chunks[step], f"{job.id}-{phase}-{step}")
        step += 1
        if not job.advance(phase, step, step, len(chunks[step - 1]), since=since):
            _another_copy_ahead(job, phase, step - 1)
            return
        since = (str(step), step)
        if step < len(chunks) and time.monotonic() > deadline:
            _continue(task, args, kwargs, f"{job.id}-{phase}-scan-{step}")
            return
    result = _finish_scan(job, phase)
    log.info("scan finished", job_id=job.id, model=job.model, phase=phase, chunks=len(chunks),
             **scan_info)
    _settle(job, result)


def _another_copy_ahead(job: Job, phase: str, step: int) -> None:
    """A copy of this coordinator moved past ``step`` first: it goes on, this one stops
    (the chunk this one just sent repeats one the other sent: same task id, counted once)."""
    log.info("coordinator stops: another copy went on first", job_id=job.id, phase=phase,
             step=step)


def _requeue_missing(job: Job, phase: str, chunks: list[Any],
                     send: Callable[[int, Any, str], None]) -> int:
    """Repair: enqueue again every chunk already cut whose completion was never recorded."""
    client = get_client()
    _cursor, step = job.position(phase)
    repairs = int(client.hget(job.key, "repairs") or 0)
    missing = [i for i in range(min(step, len(chunks)))
               if not client.sismember(job.done_key, f"{phase}:{i}")]
    for i in missing:
        send(i, chunks[i], f"{job.id}-{phase}-{i}-repair-{repairs}")
    if missing:
        log.warning("re-enqueued chunks whose messages were lost", job_id=job.id, phase=phase,
                    chunks=missing)
    return len(missing)
