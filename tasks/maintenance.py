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
can follow it (``popoto.tasks.jobs.get(job_id)``, ``popoto-ops jobs``), and a
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

Where the code lives (this module only re-exports the tasks, so
``popoto.tasks.maintenance.rebuild_indexes`` and ``include=["popoto.tasks.maintenance"]`` keep
working; importing it registers every maintenance task):

* :mod:`popoto.tasks.chunking`: the job plumbing shared by every family (opening and
  settling jobs, scan-server checks, tag groups, chunks cut up front);
* :mod:`popoto.tasks.rebuild`, :mod:`popoto.tasks.clean`, :mod:`popoto.tasks.check`,
  :mod:`popoto.tasks.bulk_update`: one module per job family, coordinator and chunks;
* :mod:`popoto.tasks.periodic`: the beat tasks (stalled jobs, fan-outs, TTL clean-up).

To change a setting in a test, patch ``settings`` in the module that reads it
(e.g. ``popoto.tasks.rebuild.settings``), not the name re-exported here.
"""

from __future__ import annotations

from .base import settings
from .bulk_update import bulk_update, bulk_update_chunk
from .check import check_group, check_indexes
from .chunking import PHASE_COORDINATORS, PHASES
from .chunking import _finish_scan as _finish_scan
from .clean import CLEAN_KEYS_PER_CHUNK, clean_index_keys, clean_indexes
from .clean import _clean_chunks as _clean_chunks
from .periodic import (
    EXPIRY_SAMPLE,
    check_all_indexes,
    clean_all_indexes,
    delete_expired_index_entries,
    resume_stalled_jobs,
)
from .rebuild import rebuild_chunk, rebuild_group, rebuild_indexes
from .rebuild import _fan_out_groups as _fan_out_groups

__all__ = [
    "CLEAN_KEYS_PER_CHUNK",
    "EXPIRY_SAMPLE",
    "PHASES",
    "PHASE_COORDINATORS",
    "bulk_update",
    "bulk_update_chunk",
    "check_all_indexes",
    "check_group",
    "check_indexes",
    "clean_all_indexes",
    "clean_index_keys",
    "clean_indexes",
    "delete_expired_index_entries",
    "rebuild_chunk",
    "rebuild_group",
    "rebuild_indexes",
    "resume_stalled_jobs",
    "settings",
]
