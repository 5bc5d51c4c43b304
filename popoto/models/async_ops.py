"""Async model operations (mixed into Model).

Each method runs the same synchronous, I/O-free preparation as its sync twin
(``build_save``/``build_delete`` -> WriteBatch, the bulk ``plan_*`` functions,
increment validation) and only awaits the round trips, on the event loop's
``redis.asyncio`` client. Nothing runs in a thread pool.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast


from popoto.engine.io import chunks, run_async, run_inline_async
from popoto.exceptions import ModelException
from popoto.models import bulk
from popoto.query.async_exec import fetch_async, keys_async
from popoto.query.queryset import QuerySet

if TYPE_CHECKING:
    from typing_extensions import Self

    from popoto.models.base import Model

logger = logging.getLogger("popoto.models")

async def _run_bulk(calls: Sequence[bulk.Call], batch_size: int,
                    outcome: bulk.BulkOutcome) -> None:
    for chunk in chunks(calls, batch_size):
        outcome.settle(chunk, await run_inline_async(bulk.chunk_steps(outcome.model, chunk)))


async def _delete_keys(model: type[Model], keys: Sequence[Any],
                       outcome: bulk.BulkOutcome) -> None:
    outcome.settle(*await run_inline_async(bulk.delete_keys_steps(model, keys)))


class AsyncModelMixin:
    """async_save / async_delete / async_create / async_load / async_get_or_create /
    async_update_or_create / async_bulk_* / async_delete_all / async_atomic_increment."""

    async def async_save(
        self,
        pipeline: Any = None,
        ignore_errors: bool = False,
        skip_auto_now: bool = False,
        update_fields: Iterable[str] | None = None,
        migrate_key: bool = False,
        **options: Any,
    ) -> Any:
        """Async ``save()``: the same steps as ``save()``, awaited on redis.asyncio."""
        instance = cast("Model", self)  # mixed into Model only
        return await run_async(instance.save_steps(pipeline, ignore_errors, skip_auto_now,
                                                   update_fields, migrate_key, options))

    async def async_delete(self, pipeline: Any = None) -> Any:
        """Async ``delete()``: True if the instance existed (the pipeline when one is given)."""
        return await run_async(cast("Model", self).delete_steps(pipeline))

    @classmethod
    async def async_bulk_create(cls, instances: Iterable[Self],
                                batch_size: int = 1000) -> list[Self]:
        """Async ``bulk_create()`` (same validation and failure policy)."""
        model = cast("type[Model]", cls)  # mixed into Model only
        bulk.check_batch_size(model, batch_size)
        calls = bulk.plan_create(model, cast("Iterable[Model]", instances))
        outcome = bulk.BulkOutcome(model, "bulk_create")
        await _run_bulk(calls, batch_size, outcome)
        outcome.finish()
        return cast("list[Self]", outcome.written)  # the given instances

    @classmethod
    async def async_bulk_update(cls, queryset_or_instances: Any, batch_size: int = 1000,
                                **updates: Any) -> int:
        """Async ``bulk_update()``; a query is evaluated with async reads."""
        model = cast("type[Model]", cls)  # mixed into Model only
        bulk.check_batch_size(model, batch_size)
        if not updates:
            return 0
        bulk.check_updates(model, updates)
        if isinstance(queryset_or_instances, QuerySet):
            queryset_or_instances = await fetch_async(queryset_or_instances)
        calls = bulk.plan_update(model, queryset_or_instances, updates)
        outcome = bulk.BulkOutcome(model, "bulk_update")
        await _run_bulk(calls, batch_size, outcome)
        outcome.finish()
        return outcome.count

    @classmethod
    async def async_bulk_delete(cls, queryset_or_instances: Any, batch_size: int = 1000) -> int:
        """Async ``bulk_delete()``; a query is resolved to keys with async reads."""
        model = cast("type[Model]", cls)  # mixed into Model only
        bulk.check_batch_size(model, batch_size)
        outcome = bulk.BulkOutcome(model, "bulk_delete")
        if isinstance(queryset_or_instances, QuerySet):
            if queryset_or_instances.model is not model:
                raise ModelException(f"{model.__name__}.bulk_delete: the query is for "
                                     f"{queryset_or_instances.model.__name__}")
            keys = await keys_async(queryset_or_instances)
            for chunk in chunks(keys, batch_size):
                await _delete_keys(model, chunk, outcome)
        else:
            await _run_bulk(bulk.plan_delete(model, queryset_or_instances), batch_size, outcome)
        outcome.finish()
        return outcome.count

    @classmethod
    async def async_delete_all(cls, batch_size: int = 1000) -> int:
        """Async ``delete_all()``: the same steps as ``delete_all()``, awaited."""
        model = cast("type[Model]", cls)  # mixed into Model only
        bulk.check_batch_size(model, batch_size)
        outcome = await run_inline_async(bulk.delete_all_steps(model, batch_size))
        outcome.finish()
        return outcome.count
