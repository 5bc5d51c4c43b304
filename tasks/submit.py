"""Enqueueing a maintenance job from outside a worker (the CLI, the web app, the dashboard).

The job's record is created first (status ``queued``, see
:func:`popoto.tasks.jobs.create_queued`), then its task is sent with the job id as its
task id, so ``GET /jobs/<id>``, ``popoto-ops jobs ID`` and the dashboard find it at
once; a send that fails forgets the record again.
"""

from __future__ import annotations

import uuid
from typing import Any

from . import jobs
from .app import app

#: the task that runs each kind of job
JOB_TASKS = {
    "rebuild": "popoto.maintenance.rebuild_indexes",
    "clean": "popoto.maintenance.clean_indexes",
    "check": "popoto.maintenance.check_indexes",
}


def submit_job(kind: str, label: str, kwargs: dict[str, Any] | None = None) -> str:
    """Enqueue a ``kind`` job (rebuild, clean, check) of model ``label``; its job id."""
    if kind not in JOB_TASKS:
        raise ValueError(f"unknown job kind {kind!r} (one of {', '.join(JOB_TASKS)})")
    job_id = str(uuid.uuid4())
    jobs.create_queued(job_id, kind, label)  # before the task can run: it finds it
    try:
        app.send_task(JOB_TASKS[kind], (label,), kwargs or {}, task_id=job_id)
    except BaseException:
        jobs.discard_queued(job_id)
        raise
    return job_id
