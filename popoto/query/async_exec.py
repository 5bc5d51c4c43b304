"""Async query execution: the synchronous planner, ``redis.asyncio`` for the I/O.

``QuerySet._plan`` (conditions -> index source + Python residue), the
:class:`~popoto.query.sources.Program` the QUERY script runs, result decoding
(``from_redis``, ``_value_dict``, ``_python_sort``) and load hooks are the
synchronous code; only the round trips below are awaited. The control flow of
``QuerySet._fetch`` is mirrored step for step (a differential test keeps the
two in agreement).

Also home of the small async helpers the model's async writes use
(:func:`run_script_async`, :func:`execute_calls_async`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis

from .. import keys
from ..exceptions import QueryException
from ..redis_db import get_async_client
from .expressions import Q
from .queryset import BATCH
from .sources import Program, ScoreRange, SetSource, Source

if TYPE_CHECKING:
    from ..models.bulk import Call
    from ..models.scripts import LuaScript
    from .queryset import Query, QuerySet


# --- scripts ---------------------------------------------------------------

async def run_script_async(script: LuaScript, keys_: list[str], args: list[Any]) -> Any:
    """EVALSHA on the loop's async client, loading the script when the server lacks it."""
    client = get_async_client()
    try:
        return await client.evalsha(script.sha, len(keys_), *keys_, *args)
    except redis.exceptions.NoScriptError:
        await client.script_load(script.body)
        return await client.evalsha(script.sha, len(keys_), *keys_, *args)


async def execute_calls_async(calls: Sequence[Call]) -> list[Any]:
    """Async twin of :func:`popoto.models.bulk.execute_calls` (one pipeline, errors inline)."""
    client = get_async_client()

    async def send(batch: Sequence[Call]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for call in batch:
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        return await pipe.execute(raise_on_error=False)

    replies = await send(calls)
    lost = [i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)]
    if lost:
        for script in {calls[i].script for i in lost}:
            await client.script_load(script.body)
        for i, reply in zip(lost, await send([calls[i] for i in lost])):
            replies[i] = reply
    return replies


def _query_args(source: Source, mode: str, offset: int, count: int,
                rev: bool) -> tuple[list[str], list[Any]]:
    """KEYS/ARGV of one QUERY script call for ``source`` (same layout as the sync path)."""
    prog = Program(temp_prefix=keys.temp_key(uuid.uuid4().hex))
    result = source.emit(prog)
    conv = prog.temp()
    argv: list[Any] = [len(prog.ops)]
    for op in prog.ops:
        argv += op
    scores = "1" if mode == "page" else "0"
    argv += [result, mode, offset, count, "1" if rev else "0", scores, conv]
    return prog.keys, argv


# --- reads -----------------------------------------------------------------

async def _page(qs: QuerySet, source: Source | None, offset: int,
                count: int) -> tuple[int, list[Any]]:
    from ..models import scripts

    client = get_async_client()
    rev = qs._rev()
    if source is None:
        source = SetSource(qs.model._meta.db_class_set_key)
    if isinstance(source, ScoreRange):
        low, high = source.low, source.high
        num = None if count < 0 else count
        pipe = client.pipeline(transaction=False)
        pipe.zcount(source.key, low, high)
        if rev:
            if num is not None:
                pipe.zrevrangebyscore(source.key, high, low, start=offset, num=num,
                                      withscores=True)
            else:
                pipe.zrevrangebyscore(source.key, high, low, withscores=True)
        elif num is not None:
            pipe.zrangebyscore(source.key, low, high, start=offset, num=num, withscores=True)
        else:
            pipe.zrangebyscore(source.key, low, high, withscores=True)
        total, rows = await pipe.execute()
        if num is None and offset:
            rows = rows[offset:]
        return total, rows
    keys_, argv = _query_args(source, "page", offset, count, rev)
    total, flat = await run_script_async(scripts.QUERY, keys_, argv)
    return total, list(zip(flat[0::2], (float(s) for s in flat[1::2])))


async def _count_source(qs: QuerySet, source: Source | None) -> int:
    from ..models import scripts

    client = get_async_client()
    if source is None:
        return await client.scard(qs.model._meta.db_class_set_key)
    if isinstance(source, SetSource):
        return await client.scard(source.key)
    if isinstance(source, ScoreRange):
        return await client.zcount(source.key, source.low, source.high)
    keys_, argv = _query_args(source, "count", 0, 0, False)
    return (await run_script_async(scripts.QUERY, keys_, argv))[0]


async def _hydrate(qs: QuerySet, rows: Sequence[tuple[Any, float]],
                   values: tuple[str, ...] | None) -> list[Any]:
    """Instances (or value dicts) for ``rows``; keys whose hash is gone are skipped."""
    out: list[Any] = []
    client = get_async_client()
    model = qs.model
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        pipe = client.pipeline(transaction=False)
        for key, _score in chunk:
            if values is not None:
                pipe.hmget(key, values)
            else:
                pipe.hgetall(key)
        replies = await pipe.execute()
        for (key, score), reply in zip(chunk, replies):
            skey = key.decode() if isinstance(key, bytes) else key
            if values is not None:
                if all(v is None for v in reply) and not await client.exists(skey):
                    continue
                out.append(qs._value_dict(skey, reply))
                continue
            if not reply:
                continue
            obj = model.from_redis(skey, reply)
            obj.__dict__["_score"] = score
            out.append(obj)
    model._meta.after_load(out, qs._options)
    return out


async def _scan_class_set(qs: QuerySet) -> list[Any]:
    client = get_async_client()
    return [k async for k in client.sscan_iter(qs.model._meta.db_class_set_key, count=BATCH)]


async def _fetch(qs: QuerySet) -> list[Any]:
    source, residual, redis_order = qs._plan()
    offset, limit, values = qs._offset, qs._limit, qs._values
    if limit == 0:
        return []
    if residual is not None or not redis_order:
        _total, rows = await _page(qs, source, 0, -1)
        objs = [o for o in await _hydrate(qs, rows, None) if residual is None or residual(o)]
        objs = qs._python_sort(objs)
        end = None if limit is None else offset + limit
        objs = objs[offset:end]
        if values is not None:
            objs = [{n: getattr(o, n) for n in values} for o in objs]
        return objs
    if source is None and qs._order is None and not offset and limit is None:
        return await _hydrate(qs, [(k, 0.0) for k in await _scan_class_set(qs)], values)
    want = -1 if limit is None else limit
    total, rows = await _page(qs, source, offset, want)
    objs = await _hydrate(qs, rows, values)
    next_offset = offset + len(rows)
    while want > 0 and len(objs) < want and next_offset < total:
        _t, more = await _page(qs, source, next_offset, want - len(objs))
        if not more:
            break
        next_offset += len(more)
        objs += await _hydrate(qs, more, values)
    return objs


async def fetch_async(qs: QuerySet) -> list[Any]:
    """Evaluate ``qs`` (instances, or dicts after ``values()``) with async I/O."""
    if qs._cache is None:
        qs._cache = await _fetch(qs)
    return list(qs._cache)


async def count_async(qs: QuerySet) -> int:
    """``qs.count()`` with async I/O: SCARD/ZCOUNT/QUERY when indexes cover the filter."""
    source, residual, _ = qs._plan()
    if residual is None and qs._limit is None and not qs._offset:
        return await _count_source(qs, source)
    return len(await _fetch(qs._clone(_values=None)))


async def keys_async(qs: QuerySet) -> list[str]:
    """``qs.keys()`` with async I/O (no hashes read when indexes cover the filter)."""
    source, residual, redis_order = qs._plan()
    if residual is not None or not redis_order:
        return [o.pk for o in await _fetch(qs._clone(_values=None))]
    want = -1 if qs._limit is None else qs._limit
    _total, rows = await _page(qs, source, qs._offset, want)
    return [k.decode() if isinstance(k, bytes) else k for k, _s in rows]


async def get_async(query: Query, *conditions: Q, db_key: str | None = None,
                    redis_key: str | None = None, **kwargs: Any) -> Any:
    """``Model.query.get`` with async I/O: by key, by key fields, or by any filter."""
    model = query.model
    meta = model._meta
    key = db_key or redis_key
    if key is not None:
        if conditions or kwargs:
            raise QueryException("get() takes either db_key/redis_key or filters, not both")
        if not key.startswith(meta.db_class_key + keys.SEP):
            return None
        raw = await get_async_client().hgetall(key)
        if not raw:
            return None
        obj = model.from_redis(key, raw)
        meta.after_load([obj], {})
        return obj
    if not conditions and kwargs and set(kwargs) == set(meta.key_field_names):
        ordered = [meta.fields[n].coerce(kwargs[n]) for n in meta.key_field_names]
        return await get_async(query, db_key=keys.instance_key(meta.model_name, ordered))
    found = await _fetch(query.filter(*conditions, **kwargs).limit(2))
    if len(found) > 1:
        raise QueryException(f"{model.__name__}.get() matched more than one instance; "
                             f"use filter() or add conditions")
    return found[0] if found else None
