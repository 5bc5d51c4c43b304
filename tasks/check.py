"""Check jobs: a read-only index health report per model, one ``check_group`` chunk
per tag group of a sharded model (reports summed into the job hash)."""

from __future__ import annotations

import json
from typing import Any

import structlog

from popoto.models.maintenance import merge_reports
from popoto.registry import label_of
from popoto.redis_db import get_client

from .base import popoto_task, settings
from .chunking import _enqueue_chunks, _finish_scan, _groups, _model, _open_job, _settle
from .health import record_check
from .jobs import Job

log = structlog.stdlib.get_logger("popoto.tasks")


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
    record_check(label, report, job.id)
    # a second copy of this message counts nothing more (it still settles: idempotent)
    job.advance("check", 0, 1, 1, since=("0", 0))
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
    reports = [p for p in parts if p]
    if len(reports) == len(parts):
        total = merge_reports(json.loads(p) for p in reports)
        job.set(problems=int(total.get("total", 0)), report=json.dumps(total, default=str))
        record_check(label, total, job_id)
        log.info("index check", problems=total.get("total", 0), report=total)
    result = job.complete_chunk(f"check:{group}", 1)
    log.info("chunk done", phase="check", problems=report.get("total", 0), done=result.done,
             total=result.total, redelivered=not result.new)
    _settle(job, result)
    return report
