"""Async query execution: the synchronous planner, ``redis.asyncio`` for the I/O.

Reads have no async copy: a QuerySet's evaluation is a generator of round
trips (see :mod:`popoto.engine.io`) that the async entry points below simply
run on the ``redis.asyncio`` client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import redis

from popoto.redis_db import get_async_client

if TYPE_CHECKING:
    from popoto.engine.scripts import LuaScript
    from popoto.query.queryset import QuerySet


async def run_script_async(script: LuaScript, keys_: list[str], args: list[Any]) -> Any:
    """EVALSHA on the loop's async client, loading the script when the server lacks it."""
    client = get_async_client()
    # types-redis leaves these two unannotated: bound to typed callables
    evalsha: Callable[..., Awaitable[Any]] = client.evalsha
    script_load: Callable[[str], Awaitable[Any]] = client.script_load
    try:
        return await evalsha(script.sha, len(keys_), *keys_, *args)
    except redis.exceptions.NoScriptError:
        await script_load(script.body)
        return await evalsha(script.sha, len(keys_), *keys_, *args)


async def fetch_async(qs: QuerySet[Any]) -> list[Any]:
    """Evaluate ``qs`` (instances, or dicts after ``values()``) with async I/O."""
    return await qs.async_list()


async def keys_async(qs: QuerySet[Any]) -> list[str]:
    """``qs.keys()`` with async I/O (no hashes read when indexes cover the filter)."""
    return await qs.async_keys()
