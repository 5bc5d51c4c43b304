"""Celery beat schedule, built from :class:`~popoto.tasks.config.Settings`.

Beat only publishes: every tick is a fan-out task that enqueues one job per
registered model (models are looked up when the tick runs, in the worker).
Overlap is prevented where the work happens, not in beat: each job takes a
Redis lease (``$Lock:<kind>:<model>``) and a tick that finds the lease taken
logs ``job already running`` and does nothing, so a slow clean-up is never
run twice at once, however many beat processes or ticks there are. Ticks
expire after one interval, so a backlog built up during an outage does not
replay as a burst.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from .config import Settings


def _entry(task: str, seconds: int, args: tuple[Any, ...] = (),
           kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "task": task,
        "schedule": timedelta(seconds=seconds),
        "args": args,
        "kwargs": kwargs or {},
        "options": {"expires": seconds},
    }


def build_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The ``beat_schedule`` mapping (intervals of 0 switch an entry off)."""
    schedule: dict[str, dict[str, Any]] = {}
    if settings.check_interval > 0:
        schedule["popoto-check-indexes"] = _entry(
            "popoto.maintenance.check_all_indexes", settings.check_interval)
    if settings.clean_interval > 0:
        schedule["popoto-clean-indexes"] = _entry(
            "popoto.maintenance.clean_all_indexes", settings.clean_interval)
    if settings.ttl_cleanup_interval > 0:
        schedule["popoto-expired-index-entries"] = _entry(
            "popoto.maintenance.delete_expired_index_entries", settings.ttl_cleanup_interval)
    if settings.stall_check_interval > 0:
        schedule["popoto-resume-stalled-jobs"] = _entry(
            "popoto.maintenance.resume_stalled_jobs", settings.stall_check_interval)
    if settings.drain_interval > 0:
        for stream, group in settings.drain_streams:
            schedule[f"popoto-drain-{stream}-{group}"] = _entry(
                "popoto.events.drain_stream", settings.drain_interval, (stream, group),
                {"max_entries": settings.drain_max_entries,
                 "max_seconds": settings.drain_max_seconds},
            )
    return schedule
