"""Bulk operations and atomic counters (mixed into Model)."""

from __future__ import annotations


class BulkMixin:
    """bulk_create / bulk_update / bulk_delete / delete_all / atomic_increment / raw_update."""
