"""Index health: check_indexes / clean_indexes / rebuild_indexes (mixed into Model)."""

from __future__ import annotations


class MaintenanceMixin:
    """Index health checks and repairs."""
