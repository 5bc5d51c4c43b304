"""Async query execution: the synchronous planner, ``redis.asyncio`` for the I/O.

Reads have no async copy: a QuerySet's evaluation is a generator of round
trips (see :mod:`popoto.engine.io`) that the async entry points below simply
run on the ``redis.asyncio`` client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import redis

from popoto.redis_db import get_async_client

if TYPE_CHECKING:
    from popoto.engine.scripts import AsyncScripting, LuaScript
    from popoto.query.queryset import QuerySet


async def run_script_async(script: LuaScript, keys_: list[str], args: list[Any]) -> Any:
    """EVALSHA on the loop's async client, loading the script when the server lacks it."""
    # both client kinds (plain, cluster) have the script commands
    client = cast("AsyncScripting", get_async_client())
    try:
        return await client.evalsha(script.sha, len(keys_), *keys_, *args)
    except redis.exceptions.NoScriptError:
        await client.script_load(script.body)
        return await client.evalsha(script.sha, len(keys_), *keys_, *args)


async def fetch_async(qs: QuerySet[Any]) -> list[Any]:
    """Evaluate ``qs`` (instances, or dicts after ``values()``) with async I/O."""
    return await qs.async_list()


async def keys_async(qs: QuerySet[Any]) -> list[str]:
    """``qs.keys()`` with async I/O (no hashes read when indexes cover the filter)."""
    return await qs.async_keys()
