"""Index maintenance and bulk jobs as chunked, resumable, idempotent Celery tasks.

Tasks take primitives only: a model label (``"app.Model"`` or the bare class
name, resolved with :func:`popoto.get_model`), keys, cursors and JSON-able
filter/update dicts.

Large jobs are split in two kinds of task:

* a **coordinator** walks a cursor (SSCAN of the class set for a rebuild, the
  list of index keys for a clean-up, the sorted matching keys for a bulk
  update) and enqueues one **chunk** task per batch. It records its cursor in
  the job hash after each enqueue and re-enqueues itself after
  ``POPOTO_JOB_STEP_SECONDS``, so no single task runs long, and a redelivered
  coordinator resumes where the last one stopped;
* a **chunk** does the work for its keys. Every chunk is idempotent
  (re-indexing or removing orphans twice gives the same end state) and its id
  is counted once in the job's progress, however often it is delivered.

The job id is the coordinator's Celery task id, so whoever enqueued the job
can follow it (``tasks.jobs.get(job_id)``, ``popoto-ops jobs``), and a
redelivered first message recognises its own lease instead of reporting
"already running".

A **sharded model** (tag groups, see :mod:`popoto.models.maintenance`) is
worked on per group, so several workers run its groups in parallel and every
chunk stays inside one group (one cluster slot):

* rebuild: the coordinator fans out one ``rebuild_group`` coordinator per
  group; each SCANs only its group (on the node owning the group's slot in
  cluster mode), keeps its own cursor in the job hash (``reindex:g<i>:*``)
  and enqueues ``rebuild_chunk`` tasks with keys of its group only. The last
  group to finish its scan ends the phase's scan (one script, so the phase is
  never ended twice); progress counters are the job's, summed over groups;
* clean: the index keys are cut into chunks of one group each;
* check: one ``check_group`` chunk per group; their reports are summed
  (:func:`popoto.models.maintenance.merge_reports`) into the job's ``report``
  once every group has reported. The coordinator then returns the job id
  (the report of an unsharded model, checked in one task, is returned).

A SCAN cursor is only meaningful on the server (node) it came from: each
scan records the ``run_id`` of the server holding its group, and a change
(restart, failover) restarts the reindex scan of every group in a new epoch.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import structlog

from popoto import get_model
from popoto.models.base import Model
from popoto.models.maintenance import class_set_size, group_client, merge_reports
from popoto.registry import all_models, label_of
from popoto.engine.scripts import LuaScript
from popoto.redis_db import get_client

from .base import popoto_task, settings
from . import jobs
from .jobs import ChunkResult, Job, lease

log = structlog.stdlib.get_logger("popoto.tasks")

#: How many class-set members ``delete_expired_index_entries`` samples per model.
EXPIRY_SAMPLE = 200


# --- helpers ------------------------------------------------------------------

PHASES = {
    "rebuild": ("reindex", "clean"),
    "clean": ("clean",),
    "check": ("check",),
    "bulk_update": ("update",),
}


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


# KEYS: job. ARGV: phase, now. Job.finish_scan, but only while ``phase`` is the job's
# phase: a late or redelivered coordinator must never end the scan of the NEXT phase
# (its chunks_done >= chunks would then finish the job before its chunks were cut).
_FINISH_SCAN = LuaScript("job_finish_scan", r"""
if redis.call('HGET', KEYS[1], 'phase') ~= ARGV[1] then return 0 end
local enqueued = redis.call('HGET', KEYS[1], 'enqueued') or '0'
redis.call('HSET', KEYS[1], 'scan_done', 1, 'total', enqueued, ARGV[1] .. ':scanned', 1,
           'updated', ARGV[2])
return 1
""")


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


# --- rebuild ------------------------------------------------------------------

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
    cursor, epoch = int(raw_cursor), job.epoch()
    server = _scan_server(job, "reindex")
    deadline = time.monotonic() + settings.job_step_seconds
    while True:
        cursor, keys = model.scan_instance_keys(cursor=cursor, count=size)
        if _server_id() != server:
            server = _restart_scan(job, "reindex")
            epoch, cursor, step = job.restart_scan("reindex"), 0, 0
            continue
        if keys:
            rebuild_chunk.apply_async((label, job.id, step, keys, epoch),
                                      task_id=f"{job.id}-reindex-{epoch}-{step}")
            step += 1
        job.advance("reindex", cursor, step, len(keys))
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

# KEYS: job. ARGV: phase, group field prefix ('reindex:g'), group index, n groups, epoch,
# now. Marks the group's scan ended (in the current phase and epoch only); when every
# group's has, ends the phase's scan like Job.finish_scan, once. Returns 0 (groups still
# scanning, or a stale call), 1 (this call ended the scan) or 2 (it had ended before).
_GROUP_SCANNED = LuaScript("job_group_scanned", r"""
local job, phase, prefix = KEYS[1], ARGV[1], ARGV[2]
if redis.call('HGET', job, 'phase') ~= phase then return 0 end
if (redis.call('HGET', job, 'epoch') or '0') ~= ARGV[5] then return 0 end
redis.call('HSET', job, prefix .. ARGV[3] .. ':scanned', 1, 'updated', ARGV[6])
for i = 0, tonumber(ARGV[4]) - 1 do
  if not redis.call('HGET', job, prefix .. i .. ':scanned') then return 0 end
end
if redis.call('HGET', job, phase .. ':scanned') then return 2 end
local enqueued = redis.call('HGET', job, 'enqueued') or '0'
redis.call('HSET', job, 'scan_done', 1, 'total', enqueued, phase .. ':scanned', 1)
return 1
""")

# KEYS: job. ARGV: epoch the caller saw, phase, now. Job.restart_scan, but only when the
# epoch is still the one seen (several group scans notice one server restart at once)
# and the phase's scan is still going on. Returns the new epoch, or -1 when not.
_RESTART_FROM = LuaScript("job_restart_from", r"""
if (redis.call('HGET', KEYS[1], 'epoch') or '0') ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[1], 'phase') ~= ARGV[2] then return -1 end
if redis.call('HGET', KEYS[1], ARGV[2] .. ':scanned') then return -1 end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'chunks', 0, 'chunks_done', 0, 'done', 0, 'enqueued', 0,
           ARGV[2] .. ':cursor', '0', ARGV[2] .. ':step', 0, 'updated', ARGV[3])
return epoch
""")

# KEYS: job. ARGV: group field prefix ('reindex:g3'), cursor, step, keys enqueued, epoch,
# now. Job.advance for one group's scan, refused (0) once the job moved to another
# epoch: a scan of an abandoned epoch must not count its chunks in the new one.
_GROUP_ADVANCE = LuaScript("job_group_advance", r"""
if (redis.call('HGET', KEYS[1], 'epoch') or '0') ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1] .. ':cursor', ARGV[2], ARGV[1] .. ':step', ARGV[3],
           'updated', ARGV[6])
if tonumber(ARGV[4]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'chunks', 1)
  redis.call('HINCRBY', KEYS[1], 'enqueued', ARGV[4])
end
return 1
""")

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
            if not _GROUP_ADVANCE(get_client(), [job.key], [
                    prefix, cursor, step, len(keys) if keys else 0, epoch, time.time()]):
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


# --- clean --------------------------------------------------------------------

#: Index keys walked by one clean chunk (many indexes are small sets of one value).
CLEAN_KEYS_PER_CHUNK = 25


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
    _cursor, step = job.position(phase)
    deadline = time.monotonic() + settings.job_step_seconds
    while step < len(chunks):
        send(step, chunks[step], f"{job.id}-{phase}-{step}")
        step += 1
        job.advance(phase, step, step, len(chunks[step - 1]))
        if step < len(chunks) and time.monotonic() > deadline:
            _continue(task, args, kwargs, f"{job.id}-{phase}-scan-{step}")
            return
    result = _finish_scan(job, phase)
    log.info("scan finished", job_id=job.id, model=job.model, phase=phase, chunks=len(chunks),
             **scan_info)
    _settle(job, result)


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


# --- check --------------------------------------------------------------------

@popoto_task("popoto.maintenance.check_indexes")
def check_indexes(self: Any, label: str, job_id: str | None = None,
                  repair: bool = False) -> dict[str, Any] | str | None:
    """Read-only health report of one model, kept in the job hash (``problems``, ``report``).

    ``problems`` is the report's ``total`` (all problem kinds). A second check
    of the same model while one runs is skipped. An unsharded model is checked
    here and its report returned; a sharded model gets one ``check_group``
    chunk per tag group and the job id is returned (the summed report lands
    in the job hash). ``repair``: re-enqueue group chunks whose messages were lost.
    """
    model = _model(label)
    label = label_of(model)
    groups = _groups(model)
    job = _open_job(self, "check", label, job_id, "check",
                    total=1 if groups is None else len(groups))
    if job is None:
        return None
    if groups is not None:
        if job_id is None:
            job.set(groups=len(groups))

        def send(i: int, chunk: list[int], task_id: str) -> None:
            check_group.apply_async((label, job.id, chunk[0]), task_id=task_id)

        _enqueue_chunks(self, job, "check", [[i] for i in range(len(groups))], send, repair,
                        (label,), {"job_id": job.id}, groups=len(groups))
        return job.id
    structlog.contextvars.bind_contextvars(model=label, job_id=job.id)
    report = model.check_indexes(batch_size=settings.chunk_size)
    job.set(problems=int(report.get("total", 0)), report=json.dumps(report, default=str))
    job.advance("check", 0, 1, 1)
    _finish_scan(job, "check")
    result = job.complete_chunk("check:0", 1)
    log.info("index check", problems=report.get("total", 0), report=report)
    _settle(job, result)
    return report


@popoto_task("popoto.maintenance.check_group")
def check_group(self: Any, label: str, job_id: str, group: int) -> dict[str, Any]:
    """Check ONE tag group of a sharded model; the last group to report sums the reports.

    Each group's report is kept in the job hash (``report:g<i>``) before the
    chunk is counted, so whichever chunk sees every group's report writes the
    same sum (``report``, ``problems``); a redelivered chunk writes it again.
    """
    model = _model(label)
    groups = model._meta.groups
    structlog.contextvars.bind_contextvars(model=label, job_id=job_id, group=group)
    report = model.check_indexes(batch_size=settings.chunk_size, group=groups[group])
    job = Job(job_id, "check", label, settings.lock_ttl)
    client = get_client()
    client.hset(job.key, f"report:g{group}", json.dumps(report, default=str))
    parts = client.hmget(job.key, [f"report:g{i}" for i in range(len(groups))])
    if all(parts):
        total = merge_reports(json.loads(p) for p in parts)
        job.set(problems=int(total.get("total", 0)), report=json.dumps(total, default=str))
        log.info("index check", problems=total.get("total", 0), report=total)
    result = job.complete_chunk(f"check:{group}", 1)
    log.info("chunk done", phase="check", problems=report.get("total", 0), done=result.done,
             total=result.total, redelivered=not result.new)
    _settle(job, result)
    return report


# --- bulk update ----------------------------------------------------------------

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


PHASE_COORDINATORS = {"reindex": rebuild_indexes, "clean": clean_indexes}


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


def _fan_out(task: Any, job: str) -> list[str]:
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
