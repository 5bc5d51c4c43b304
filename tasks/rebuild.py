"""Rebuild jobs: ``rebuild_indexes`` (reindex phase, then clean), its chunks and,
for a sharded model, one ``rebuild_group`` scan per tag group (see
:mod:`popoto.tasks.maintenance`)."""

from __future__ import annotations

import time
from typing import Any

import structlog

from popoto.models.maintenance import class_set_size
from popoto.registry import label_of
from popoto.engine.scripts import LuaScript
from popoto.redis_db import get_client

from . import clean  # noqa: F401 -- registers clean_indexes, the coordinator of the clean phase
from .base import popoto_task, settings
from .chunking import (
    PHASE_COORDINATORS,
    _already_scanned,
    _another_copy_ahead,
    _continue,
    _finish_scan,
    _groups,
    _model,
    _open_job,
    _restart_scan,
    _scan_server,
    _server_id,
    _settle,
)
from .jobs import Job, lease

log = structlog.stdlib.get_logger("popoto.tasks")


@popoto_task("popoto.maintenance.rebuild_indexes")
def rebuild_indexes(self: Any, label: str, job_id: str | None = None,
                    chunk_size: int | None = None) -> str | None:
    """Rebuild every index of a model in place, as a job of two phases.

    ``reindex``: this coordinator SCANs the keyspace for the model's instance
    hashes (so hashes the class set lost are found too) and enqueues
    ``rebuild_chunk`` per batch, which re-writes their index entries through
    the single write path. ``clean``: once every reindex chunk is done,
    ``clean_indexes`` removes entries nobody owns. Nothing is deleted up
    front, so queries keep answering while it runs.

    If the server restarts or fails over mid-scan, the SCAN cursor means
    nothing any more: the scan starts again in a new epoch (chunks of the old
    one still re-index their keys, harmlessly, but are not counted).

    Returns the job id (None when skipped because a rebuild of the model runs).
    """
    model = _model(label)
    label = label_of(model)
    size = chunk_size or settings.chunk_size
    total = class_set_size(model) if job_id is None else 0
    job = _open_job(self, "rebuild", label, job_id, "reindex", total=total)
    if job is None:
        return None
    if _already_scanned(job, "reindex"):
        return job.id
    groups = _groups(model)
    if groups is not None:
        _fan_out_groups(job, label, len(groups), size)
        return job.id
    raw_cursor, step = job.position("reindex")
    since = (raw_cursor, step)
    cursor, epoch = int(raw_cursor), job.epoch()
    server = _scan_server(job, "reindex")
    deadline = time.monotonic() + settings.job_step_seconds
    while True:
        cursor, keys = model.scan_instance_keys(cursor=cursor, count=size)
        if _server_id() != server:
            server = _restart_scan(job, "reindex")
            epoch, cursor, step = job.restart_scan("reindex"), 0, 0
            since = ("0", 0)
            continue
        if keys:
            rebuild_chunk.apply_async((label, job.id, step, keys, epoch),
                                      task_id=f"{job.id}-reindex-{epoch}-{step}")
            step += 1
        if not job.advance("reindex", cursor, step, len(keys), since=since):
            _another_copy_ahead(job, "reindex", step)
            return job.id
        since = (str(cursor), step)
        if cursor == 0:
            break
        if time.monotonic() > deadline:
            log.info("coordinator continues later", job_id=job.id, model=label, cursor=cursor,
                     chunks=step)
            _continue(self, (label,), {"job_id": job.id, "chunk_size": size},
                      f"{job.id}-reindex-scan-{epoch}-{step}")
            return job.id
    result = _finish_scan(job, "reindex")
    log.info("scan finished", job_id=job.id, model=label, phase="reindex", chunks=step,
             total=result.total)
    _settle(job, result)
    return job.id


@popoto_task("popoto.maintenance.rebuild_chunk")
def rebuild_chunk(self: Any, label: str, job_id: str, chunk: int, keys: list[str],
                  epoch: int = 0, group: int | None = None) -> int:
    """Re-write the index entries of ``keys`` (idempotent); count the chunk once.

    ``group``: the tag group (index) the keys belong to, for a sharded model.
    """
    model = _model(label)
    structlog.contextvars.bind_contextvars(model=label, job_id=job_id, chunk=chunk)
    if group is not None:
        structlog.contextvars.bind_contextvars(group=group)
    written = model.reindex_keys(keys)
    job = Job(job_id, "rebuild", label, settings.lock_ttl)
    chunk_id = f"reindex:{epoch}:{chunk}" if group is None else f"reindex:{epoch}:g{group}:{chunk}"
    result = job.complete_chunk(chunk_id, len(keys), epoch=epoch)
    log.info("chunk done", phase="reindex", keys=len(keys), reindexed=written,
             done=result.done, total=result.total, redelivered=not result.new)
    _settle(job, result)
    return written


# --- rebuild of a sharded model: one scan per tag group -----------------------

# popoto/lua/tasks_job_group_scanned.lua: one tag group's scan ended; the last one ends
# the phase's scan
_GROUP_SCANNED = LuaScript("tasks_job_group_scanned")

# popoto/lua/tasks_job_restart_from.lua: Job.restart_scan, once per epoch seen
_RESTART_FROM = LuaScript("tasks_job_restart_from")

_GROUP_FIELDS = ("cursor", "step", "scanned", "server")


def _fan_out_groups(job: Job, label: str, n_groups: int, size: int) -> None:
    """Enqueue one ``rebuild_group`` scan per tag group, for the job's current epoch.

    The groups' positions are reset once per epoch (a redelivered coordinator
    re-sends the group scans, which then go on from the recorded positions: a
    group scan runs under a lease and reads its position when it starts).
    """
    client = get_client()
    epoch = job.epoch()
    if int(client.hget(job.key, "reindex:reset") or -1) != epoch:
        pipe = client.pipeline(transaction=True)
        pipe.hdel(job.key, *[f"reindex:g{i}:{f}" for i in range(n_groups) for f in _GROUP_FIELDS])
        pipe.hset(job.key, mapping={"reindex:reset": epoch, "groups": n_groups})
        pipe.execute()
    for i in range(n_groups):
        rebuild_group.apply_async((label, job.id, i, epoch), {"chunk_size": size},
                                  task_id=f"{job.id}-reindex-{epoch}-g{i}")
    log.info("group scans enqueued", job_id=job.id, model=label, groups=n_groups, epoch=epoch)


@popoto_task("popoto.maintenance.rebuild_group")
def rebuild_group(self: Any, label: str, job_id: str, group: int, epoch: int,
                  chunk_size: int | None = None) -> int:
    """The reindex scan of ONE tag group of a sharded model: enqueue its chunks.

    Resumable like the unsharded coordinator (position in the job hash, short
    steps, re-enqueues itself); a second copy of the same group scan (a
    redelivered fan-out) waits for the lease of the first and goes on from its
    position. Stops when the job moved to another epoch or phase. Returns the
    number of chunks it enqueued.
    """
    model = _model(label)
    size = chunk_size or settings.chunk_size
    groups = model._meta.groups
    ns = groups[group]
    structlog.contextvars.bind_contextvars(model=label, job_id=job_id, group=group)
    prefix = f"reindex:g{group}"
    job = Job.resume(job_id, settings.lock_ttl)
    if job is None or job.state().get("phase") != "reindex" or job.epoch() != epoch:
        log.info("group scan no longer needed", epoch=epoch)
        return 0
    sent = 0
    lease_name = f"job:{job_id}:reindex:{epoch}:g{group}"
    with lease(lease_name, ttl=settings.soft_time_limit) as acquired:
        if not acquired:
            log.info("group scan already running")
            return 0
        if not job.renew():
            job.fail("superseded: another run took the lease")
            log.warning("job superseded", kind=job.kind)
            return 0
        if job.state().get(f"{prefix}:scanned"):
            _group_scanned(job, group, len(groups), epoch)
            return 0
        raw_cursor, step = job.position(prefix)
        cursor = int(raw_cursor)
        server = _scan_server(job, prefix, ns)
        deadline = time.monotonic() + settings.job_step_seconds
        while True:
            cursor, keys = model.scan_instance_keys(cursor=cursor, count=size, group=ns)
            if _server_id(ns) != server:
                _restart_group_scans(job, label, len(groups), epoch, size)
                return sent
            if job.epoch() != epoch:
                return sent
            if keys:
                rebuild_chunk.apply_async((label, job.id, step, keys, epoch), {"group": group},
                                          task_id=f"{job.id}-reindex-{epoch}-g{group}-{step}")
                step += 1
                sent += 1
            if not job.advance(prefix, cursor, step, len(keys) if keys else 0, epoch=epoch):
                return sent  # the phase restarted meanwhile (its chunk is not counted)
            if cursor == 0 or time.monotonic() > deadline:
                break
    if cursor != 0:
        # enqueued once the lease is released, or the continuation could find it taken
        log.info("coordinator continues later", cursor=cursor, chunks=step)
        _continue(self, (label, job_id, group, epoch), {"chunk_size": size},
                  f"{job_id}-reindex-{epoch}-g{group}-scan-{step}")
        return sent
    log.info("group scan finished", phase="reindex", chunks=step)
    _group_scanned(job, group, len(groups), epoch)
    return sent


def _group_scanned(job: Job, group: int, n_groups: int, epoch: int) -> None:
    """Record the end of one group's scan; the last one ends the phase's scan."""
    ended = _GROUP_SCANNED(get_client(), [job.key],
                           ["reindex", "reindex:g", group, n_groups, epoch, time.time()])
    if int(ended):
        result = job.complete_chunk("", 0)
        log.info("scan finished", job_id=job.id, model=job.model, phase="reindex",
                 groups=n_groups, total=result.total)
        _settle(job, result)


def _restart_group_scans(job: Job, label: str, n_groups: int, epoch: int, size: int) -> None:
    """A group's server restarted or failed over: every group scans again in a new epoch."""
    new_epoch = int(_RESTART_FROM(get_client(), [job.key], [epoch, "reindex", time.time()]))
    if new_epoch < 0:
        return  # another group scan noticed it first and restarted the phase
    log.warning("Redis restarted or failed over during a scan: starting the scan again",
                job_id=job.id, scan="reindex", epoch=new_epoch)
    _fan_out_groups(job, label, n_groups, size)


PHASE_COORDINATORS["reindex"] = rebuild_indexes
