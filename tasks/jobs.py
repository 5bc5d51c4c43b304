"""Job progress and leases in Redis: what makes chunked jobs resumable and non-overlapping.

A job (a rebuild, clean-up or bulk update of one model) is a hash
``$Job:<id>`` holding its kind, model, status, cursor, ``done``/``total`` and
chunk counters, plus a set ``$JobDone:<id>`` of finished chunk ids. Finishing
a chunk is one script: the chunk id is added to the set and the counters move
only if it was new, so a redelivered or re-run chunk never counts twice, and
the chunk that brings ``chunks_done`` up to ``chunks`` (after the scan ended)
marks the job done and releases its lease.

A lease (``$Lock:<kind>:<model>``, value = job id, with a TTL renewed by every
step) makes two runs of the same job never overlap: a second start while the
first holds the lease returns ``None``. A job whose workers all vanished
loses its lease after ``lock_ttl`` seconds without progress.

``$Jobs`` is a sorted set of recent job ids by start time (``popoto-ops jobs``).

A job enqueued from outside (``popoto-ops rebuild-indexes --async``, the web
app) gets its hash at once, with status ``queued`` (:func:`create_queued`), so
"not started yet" and "no such job" differ. When its task starts the job, the
status becomes ``running``; when another run holds the lease instead, it
becomes ``skipped`` with ``running_job_id`` naming that run; when the task
fails before starting it, ``failed`` (:func:`fail_queued`).

In cluster mode every one of these keys carries the hash tag ``{popoto-jobs}``
(``$Job:{popoto-jobs}:<id>``): the scripts below touch a job's hash, its done
set, its lease and the index together, which a cluster allows in one slot only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import redis

from popoto.keys import SEP, escape
from popoto.engine.scripts import LuaScript
from popoto.redis_db import get_client, is_cluster

JOB_TTL = 7 * 24 * 3600
RECENT_JOBS = 500


JOBS_TAG = "{popoto-jobs}"


def _kind(kind: str) -> str:
    """``$<kind>``, followed by the shared hash tag in cluster mode (one slot for all)."""
    return f"${kind}{SEP}{JOBS_TAG}" if is_cluster() else f"${kind}"


def job_key(job_id: str) -> str:
    return f"{_kind('Job')}{SEP}{escape(job_id)}"


def job_done_key(job_id: str) -> str:
    return f"{_kind('JobDone')}{SEP}{escape(job_id)}"


def job_list_key(job_id: str) -> str:
    """A list the job keeps (e.g. the index keys a clean-up walks)."""
    return f"{_kind('JobKeys')}{SEP}{escape(job_id)}"


def jobs_index_key() -> str:
    return _kind("Jobs")


def lock_key(*parts: str) -> str:
    return SEP.join([_kind("Lock"), *(escape(p) for p in parts)])


# popoto/lua/tasks_job_start.lua: start a job under its lock (returns false, or the holder)
_START = LuaScript("tasks_job_start")

# popoto/lua/tasks_lock_renew.lua: renew a lock of ours, or take it when free
_RENEW = LuaScript("tasks_lock_renew")

# popoto/lua/tasks_lock_release.lua: release a lock of ours
_RELEASE = LuaScript("tasks_lock_release")

# popoto/lua/tasks_job_complete.lua: count a chunk done and settle the job's phase
_COMPLETE = LuaScript("tasks_job_complete")

# popoto/lua/tasks_job_advance.lua: move a coordinator's position (compare-and-set)
_ADVANCE = LuaScript("tasks_job_advance")


_INT_FIELDS = frozenset({"total", "done", "chunks", "chunks_done", "removed", "scan_done",
                         "enqueued", "problems", "epoch"})
_FLOAT_FIELDS = frozenset({"started", "finished", "updated", "queued_at"})


def _decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key, text = k.decode(), v.decode()
        if key in _INT_FIELDS:
            out[key] = int(text)
        elif key in _FLOAT_FIELDS:
            out[key] = float(text)
        else:
            out[key] = text
    return out


class ChunkResult(NamedTuple):
    new: bool  # False: this chunk id had already been counted (a redelivery)
    finished: bool  # this chunk finished the whole job
    phase_begun: bool  # this chunk finished a phase; ``phase`` is the next one
    done: int
    total: int
    phase: str


class Job:
    """Handle on one job's progress hash and lease.

    A job runs one or more phases in order (a rebuild: ``reindex`` then
    ``clean``). Each phase has a coordinator that scans and enqueues chunks;
    the chunk that completes a phase (after its scan ended) moves the job to
    the next phase, and the caller then starts that phase's coordinator.
    """

    def __init__(self, job_id: str, kind: str, model: str, lock_ttl: int,
                 scope: str = "") -> None:
        self.id = job_id
        self.kind = kind
        self.model = model
        self.scope = scope
        self.lock_ttl = lock_ttl
        self.key = job_key(job_id)
        self.done_key = job_done_key(job_id)
        self.lock = lock_key(kind, model, *([scope] if scope else []))

    @classmethod
    def start(cls, kind: str, model: str, lock_ttl: int, phases: tuple[str, ...],
              total: int = 0, job_id: str | None = None, scope: str = "",
              **fields: Any) -> tuple[Job | None, str]:
        """Take the lease and create the job; ``(None, holder_id)`` if a run holds it.

        The holder may be this very job (``job_id``) when its first message is
        redelivered: callers compare and :meth:`resume` in that case.
        """
        job = cls(job_id or uuid.uuid4().hex, kind, model, lock_ttl, scope)
        now = time.time()
        mapping = {"id": job.id, "kind": kind, "model": model, "scope": scope,
                   "status": "running", "phases": ",".join(phases), "phase": phases[0],
                   "total": total, "done": 0, "chunks": 0, "chunks_done": 0, "removed": 0,
                   "enqueued": 0, "scan_done": 0, "started": now, "updated": now, **fields}
        argv: list[Any] = [job.id, lock_ttl * 1000, now, JOB_TTL, RECENT_JOBS]
        for k, v in mapping.items():
            argv += [k, v]
        holder = _START(get_client(), [job.lock, job.key, jobs_index_key()], argv)
        if holder:
            return None, holder.decode() if isinstance(holder, bytes) else str(holder)
        return job, job.id

    @classmethod
    def resume(cls, job_id: str, lock_ttl: int) -> Job | None:
        """The running job ``job_id``, or None when it is gone or no longer running."""
        state = get(job_id)
        if state is None or state.get("status") != "running":
            return None
        return cls(job_id, state["kind"], state["model"], lock_ttl, state.get("scope", ""))

    def state(self) -> dict[str, Any]:
        return get(self.id) or {}

    def renew(self) -> bool:
        """Extend the lease; False when another job took it (this one must stop)."""
        return bool(_RENEW(get_client(), [self.lock], [self.id, self.lock_ttl * 1000]))

    def set(self, **fields: bytes | float | int | str) -> None:
        mapping: dict[str | bytes, bytes | float | int | str] = dict(fields.items())
        mapping["updated"] = time.time()
        get_client().hset(self.key, mapping=mapping)

    def position(self, phase: str) -> tuple[str, int]:
        """Where the coordinator of ``phase`` stopped: ``(cursor, next chunk number)``."""
        cursor, step = get_client().hmget(self.key, f"{phase}:cursor", f"{phase}:step")
        return (cursor.decode() if cursor else "0"), int(step or 0)

    def advance(self, phase: str, cursor: Any, step: int, enqueued: int = 0,
                since: tuple[str, int] | None = None, epoch: int | None = None) -> bool:
        """Record the coordinator's position and, atomically, the chunk it just enqueued.

        ``phase``: the position's field prefix (a phase, or one group's ``reindex:g3``).
        ``since``: the position this coordinator read (:meth:`position`, or its own last
        advance). When another copy of the coordinator moved on from there first (the
        same message delivered twice), nothing is written and False comes back: this copy
        must stop, or its chunks would be counted twice and the job never finish.
        ``epoch``: the scan epoch of the caller; False (nothing written) once the job
        moved to another one.
        """
        read_cursor, read_step = ("", "") if since is None else (since[0], str(since[1]))
        return bool(_ADVANCE(get_client(), [self.key],
                             [phase, read_cursor, read_step, str(cursor), step, enqueued,
                              time.time(), "" if epoch is None else epoch]))

    def complete_chunk(self, chunk_id: str, done: int, removed: int = 0,
                       epoch: int | None = None) -> ChunkResult:
        """Count a finished chunk once (a redelivered chunk id is not counted again).

        ``epoch``: the scan epoch the chunk was cut in; a chunk of an epoch that
        was abandoned (see :meth:`restart_scan`) is ignored.
        """
        new, outcome, total_done, total, phase = _COMPLETE(
            get_client(), [self.key, self.done_key, self.lock],
            [chunk_id, done, removed, time.time(), self.lock_ttl * 1000, JOB_TTL, self.id,
             "" if epoch is None else epoch],
        )
        phase = phase.decode() if isinstance(phase, bytes) else str(phase)
        return ChunkResult(bool(new), outcome == 1, outcome == 2, int(total_done),
                           int(total), phase)

    def epoch(self) -> int:
        return int(get_client().hget(self.key, "epoch") or 0)

    def restart_scan(self, phase: str) -> int:
        """Abandon the scan of ``phase`` (the job's first phase) and count from zero again.

        For a cursor that became meaningless (the server restarted): the scan
        starts over in a new epoch; chunks cut in the old epoch still do their
        idempotent work but are no longer counted, so progress and completion
        depend on the new scan alone. Returns the new epoch.
        """
        pipe = get_client().pipeline(transaction=True)
        pipe.hincrby(self.key, "epoch", 1)
        pipe.hset(self.key, mapping={"chunks": 0, "chunks_done": 0, "done": 0, "enqueued": 0,
                                     f"{phase}:cursor": "0", f"{phase}:step": 0,
                                     "updated": time.time()})
        return int(pipe.execute()[0])

    def finish_scan(self, phase: str) -> ChunkResult:
        """The coordinator of ``phase`` enqueued everything: total becomes exact."""
        client = get_client()
        enqueued = int(client.hget(self.key, "enqueued") or 0)
        self.set(scan_done=1, total=enqueued, **{f"{phase}:scanned": 1})
        return self.complete_chunk("", 0)

    def fail(self, reason: str) -> None:
        self.set(status="failed", error=reason[:500], finished=time.time())
        _RELEASE(get_client(), [self.lock], [self.id])


def create_queued(job_id: str, kind: str, model: str) -> None:
    """The record of a job about to be enqueued as task ``job_id`` (status ``queued``).

    Call it before sending the task, so the task always finds it.
    """
    now = time.time()
    key = job_key(job_id)
    pipe = get_client().pipeline(transaction=True)
    pipe.hset(key, mapping={"id": job_id, "kind": kind, "model": model, "status": "queued",
                            "queued_at": now, "updated": now})
    pipe.expire(key, JOB_TTL)
    pipe.zadd(jobs_index_key(), {job_id: now})
    pipe.zremrangebyrank(jobs_index_key(), 0, -RECENT_JOBS - 1)
    pipe.execute()


def discard_queued(job_id: str) -> None:
    """Forget the record of a job whose task could not be sent."""
    pipe = get_client().pipeline(transaction=True)
    pipe.delete(job_key(job_id))
    pipe.zrem(jobs_index_key(), job_id)
    pipe.execute()


def fail_queued(job_id: str, reason: str) -> bool:
    """Mark a still ``queued`` job failed (its task failed before starting it)."""
    state = get(job_id)
    if state is None or state.get("status") != "queued":
        return False
    get_client().hset(job_key(job_id), mapping={"status": "failed", "error": reason[:500],
                                                "finished": time.time(),
                                                "updated": time.time()})
    return True


def get(job_id: str) -> dict[str, Any] | None:
    """Progress of a job as a dict (``done``, ``total``, ``status``, ...) or None."""
    raw = get_client().hgetall(job_key(job_id))
    return _decode(raw) if raw else None


def recent(limit: int = 20) -> list[dict[str, Any]]:
    """The most recently started jobs, newest first."""
    client = get_client()
    ids = client.zrevrange(jobs_index_key(), 0, limit - 1)
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(job_key(job_id.decode()))
    return [_decode(raw) for raw in pipe.execute() if raw]


@contextmanager
def lease(name: str, ttl: int, owner: str | None = None) -> Iterator[bool]:
    """Hold ``$Lock:<name>`` for the duration of the block; yields False if it is taken.

    For single-task jobs (``check_indexes``, a stream drain): the lease is
    released on exit, or expires after ``ttl`` seconds if the process dies.
    """
    client = get_client()
    key = lock_key(*name.split(":"))
    token = owner or uuid.uuid4().hex
    acquired = bool(client.set(key, token, nx=True, ex=ttl))
    try:
        yield acquired
    finally:
        if acquired:
            try:
                _RELEASE(client, [key], [token])
            except redis.RedisError:
                pass  # the lease expires by itself after ``ttl``
