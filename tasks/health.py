"""The last index check of each model, kept for the dashboard and ``/metrics``.

``$IndexHealth`` (``$IndexHealth:{popoto-jobs}`` in cluster mode) is a hash:
model label -> JSON ``{"at", "problems", "report", "job_id", "source"}``. A
check job writes it when its report is complete (a sharded model's: when every
group reported), and so does ``popoto-ops check-indexes``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from popoto.redis_db import get_client

from .jobs import _kind


def health_key() -> str:
    return _kind("IndexHealth")


def record_check(label: str, report: dict[str, Any], job_id: str | None = None,
                 source: str = "job") -> dict[str, Any]:
    """Keep ``report`` (of ``Model.check_indexes()``) as ``label``'s last check."""
    entry = {"at": time.time(), "problems": int(report.get("total", 0)),
             "report": report, "job_id": job_id, "source": source}
    get_client().hset(health_key(), label, json.dumps(entry, default=str))
    return entry


def last_checks() -> dict[str, dict[str, Any]]:
    """Every model's last check: label -> entry (see :func:`record_check`)."""
    found: dict[str, dict[str, Any]] = {}
    for label, raw in get_client().hgetall(health_key()).items():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            found[label.decode() if isinstance(label, bytes) else str(label)] = entry
    return found
