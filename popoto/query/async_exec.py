"""Async query execution: the synchronous planner, ``redis.asyncio`` for the I/O.

Reads have no async copy: a QuerySet's evaluation is a generator of round
trips (see :mod:`popoto.query.io`) that the async entry points below simply
run on the ``redis.asyncio`` client.

Also home of the small async helpers the model's async writes use
(:func:`run_script_async`, :func:`run_inline_async`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import redis

from ..redis_db import get_async_client
from .expressions import Q
from .io import Command, Steps, run_async
from .io import _queue

if TYPE_CHECKING:
    from ..models.scripts import LuaScript
    from .queryset import Query, QuerySet


T = TypeVar("T")


# --- scripts ---------------------------------------------------------------

async def run_script_async(script: LuaScript, keys_: list[str], args: list[Any]) -> Any:
    """EVALSHA on the loop's async client, loading the script when the server lacks it."""
    client = get_async_client()
    try:
        return await client.evalsha(script.sha, len(keys_), *keys_, *args)
    except redis.exceptions.NoScriptError:
        await client.script_load(script.body)
        return await client.evalsha(script.sha, len(keys_), *keys_, *args)


async def send_inline_async(client: Any, commands: list[Command]) -> list[Any]:
    """Async twin of :func:`popoto.models.bulk.send_inline` (one pipeline, errors inline)."""
    from ..models.bulk import lost_scripts

    async def send(batch: list[Command]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        _queue(pipe, batch)
        return await pipe.execute(raise_on_error=False)

    replies = await send(commands)
    lost = [i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)]
    if lost:
        for script in lost_scripts(commands, lost):
            await client.script_load(script.body)
        for i, reply in zip(lost, await send([commands[i] for i in lost])):
            replies[i] = reply
    return replies


async def run_inline_async(steps: Steps[T]) -> T:
    """Async twin of :func:`popoto.models.bulk.run_inline`."""
    return await run_async(steps, send_inline_async)


# --- reads: the queryset's own steps, awaited ---------------------------------

async def fetch_async(qs: QuerySet) -> list[Any]:
    """Evaluate ``qs`` (instances, or dicts after ``values()``) with async I/O."""
    return await qs.async_list()


async def count_async(qs: QuerySet) -> int:
    """``qs.count()`` with async I/O: SCARD/ZCOUNT/QUERY when indexes cover the filter."""
    return await qs.async_count()


async def keys_async(qs: QuerySet) -> list[str]:
    """``qs.keys()`` with async I/O (no hashes read when indexes cover the filter)."""
    return await qs.async_keys()


async def get_async(query: Query, *conditions: Q, db_key: str | None = None,
                    redis_key: str | None = None, **kwargs: Any) -> Any:
    """``Model.query.get`` with async I/O: by key, by key fields, or by any filter."""
    return await query.async_get(*conditions, db_key=db_key, redis_key=redis_key, **kwargs)
