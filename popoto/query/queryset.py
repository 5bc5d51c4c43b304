"""Lazy, chainable queries and the ``Model.query`` manager."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any
from collections.abc import Iterator

from .. import keys
from ..encoding import decode_field
from ..exceptions import QueryException
from ..redis_db import get_client
from .compiler import Compiled, compile_q, keep_scores, set_score_source
from .expressions import Q
from .sources import Program, ScoreRange, SetSource, Source

if TYPE_CHECKING:
    from ..models.base import Model

BATCH = 1000
RESERVED = ("limit", "order_by", "values")


class QuerySet:
    """A lazy query: nothing touches Redis until it is iterated, counted or sliced."""

    def __init__(self, model: type[Model], where: Q | None = None) -> None:
        self.model = model
        self._where = where or Q()
        self._order: str | None = model._meta.order_by
        self._offset = 0
        self._limit: int | None = None
        self._values: tuple[str, ...] | None = None
        self._options: dict[str, Any] = {}
        self._cache: list[Any] | None = None

    # --- building ------------------------------------------------------
    def _clone(self, **changes: Any) -> QuerySet:
        qs = QuerySet.__new__(QuerySet)
        qs.__dict__.update(self.__dict__)
        qs._options = dict(self._options)
        qs._cache = None
        for k, v in changes.items():
            setattr(qs, k, v)
        return qs

    def _split_kwargs(self, kwargs: dict[str, Any]) -> tuple[QuerySet, dict[str, Any]]:
        qs = self
        if "order_by" in kwargs:
            qs = qs.order_by(kwargs.pop("order_by"))
        if "limit" in kwargs:
            qs = qs.limit(kwargs.pop("limit"))
        if "values" in kwargs:
            values = kwargs.pop("values")
            qs = qs.values(*([values] if isinstance(values, str) else values))
        for name in list(kwargs):
            field_name = name.split("__", 1)[0]
            if self.model._meta.fields.get(field_name) is None:
                handler = self.model._meta.query_option_owner(name)
                if handler is not None:
                    qs._options[name] = kwargs.pop(name)
                    # an option may stand for a condition (geo_member=obj -> geo__exact=obj)
                    as_condition = getattr(handler, "option_condition", None)
                    if as_condition is not None:
                        kwargs.update(as_condition(name, qs._options[name]))
        return qs, kwargs

    def filter(self, *conditions: Q, **kwargs: Any) -> QuerySet:
        """AND more conditions (keyword lookups or Q objects / expressions)."""
        qs, kwargs = self._clone()._split_kwargs(kwargs)
        new = [c for c in (*conditions, Q(**kwargs)) if c]
        for c in new:
            if not isinstance(c, Q):
                raise QueryException(f"filter() takes Q objects or expressions, got {c!r}")
        where = Q(qs._where, *new) if qs._where else (Q(*new) if new else Q())
        qs._where = where
        # validate eagerly: bad filters fail at the call site
        compile_q(self.model, where, options=qs._options)
        return qs

    def exclude(self, *conditions: Q, **kwargs: Any) -> QuerySet:
        """AND NOT(conditions)."""
        return self.filter(~Q(*conditions, **kwargs))

    def order_by(self, field: str | None) -> QuerySet:
        if field is not None:
            name = field.lstrip("-")
            if name not in self.model._meta.fields:
                raise QueryException(f"{self.model.__name__}: cannot order by unknown field "
                                     f"{name!r} (fields: {', '.join(self.model._meta.fields)})")
        return self._clone(_order=field)

    def limit(self, n: int | None) -> QuerySet:
        if n is not None and (not isinstance(n, int) or n < 0):
            raise QueryException(f"limit must be a non-negative int, got {n!r}")
        return self._clone(_limit=n)

    def offset(self, n: int) -> QuerySet:
        if not isinstance(n, int) or n < 0:
            raise QueryException(f"offset must be a non-negative int, got {n!r}")
        return self._clone(_offset=n)

    def values(self, *fields: str) -> QuerySet:
        """Return dicts of the named fields (all public fields when none named)."""
        names = fields or tuple(self.model._meta.explicit_fields)
        for name in names:
            if name not in self.model._meta.fields:
                raise QueryException(f"{self.model.__name__}: values() got unknown field "
                                     f"{name!r}")
        return self._clone(_values=tuple(names))

    # --- evaluation ----------------------------------------------------
    def _plan(self) -> tuple[Source | None, Any, bool]:
        """(source, residual predicate, ordered-by-redis)."""
        compiled: Compiled = compile_q(self.model, self._where, options=self._options)
        source = compiled.source
        order = self._order
        redis_order = True
        if source is not None:
            source = keep_scores(source)
        if order is not None:
            field = self.model._meta.fields[order.lstrip("-")]
            if field.is_sorted:
                zkey = field.key_from_context(compiled.exact)
                if not (isinstance(source, ScoreRange) and source.key == zkey):
                    source = set_score_source(source, SetSource(zkey))
            elif (not field.is_key or len(self.model._meta.key_field_names) != 1
                  or (source is not None and source.scored)):
                # only an unscored result is in key order (ZRANGE of equal scores is by member)
                redis_order = False
        meta = self.model._meta
        owners = {id(f): f for o in self._options if (f := meta.query_option_owner(o))}
        for owner in owners.values():
            check = getattr(owner, "check_plan", None)  # e.g. distances need distance scores
            if check is not None:
                check(source, self._options)
        return source, compiled.residual, redis_order

    def _rev(self) -> bool:
        return bool(self._order and self._order.startswith("-"))

    def _page(self, source: Source | None, offset: int, count: int) -> tuple[int, list[Any]]:
        """(total, members[, scores]) of one page of ``source`` in Redis order."""
        from ..models import scripts

        client = get_client()
        rev = self._rev()
        if source is None:
            source = SetSource(self.model._meta.db_class_set_key)
        order = self._order and self.model._meta.fields[self._order.lstrip("-")]
        if count < 0 and not offset and type(source) is SetSource and not (
                order and order.is_sorted):  # (ordering by a sorted field: source is its zset)
            # a whole set needs no paging script: SMEMBERS, in the member order ZRANGE gives
            members = sorted(client.smembers(source.key), reverse=rev)
            return len(members), [(m, 0.0) for m in members]
        if isinstance(source, ScoreRange):
            # members only: a range's scores are the sorted field's own values, which the
            # hashes hold anyway (WITHSCORES made Redis format and redis-py parse every score)
            low, high = source.low, source.high
            pipe = client.pipeline(transaction=False)
            pipe.zcount(source.key, low, high)
            num = None if count < 0 else count
            page = {} if num is None else {"start": offset, "num": num}
            if rev:
                pipe.zrevrangebyscore(source.key, high, low, **page)
            else:
                pipe.zrangebyscore(source.key, low, high, **page)
            total, members = pipe.execute()
            if num is None and offset:
                members = members[offset:]
            return total, [(m, 0.0) for m in members]
        prog = Program(temp_prefix=keys.temp_key(uuid.uuid4().hex))
        result = source.emit(prog)
        conv = prog.temp()
        argv: list[Any] = [len(prog.ops)]
        for op in prog.ops:
            argv += op
        argv += [result, "page", offset, count, "1" if rev else "0", "1", conv]
        total, flat = scripts.QUERY(client, prog.keys, argv)
        return total, list(zip(flat[0::2], (float(s) for s in flat[1::2])))

    def _count_source(self, source: Source | None) -> int:
        from ..models import scripts

        client = get_client()
        if source is None:
            return client.scard(self.model._meta.db_class_set_key)
        if isinstance(source, SetSource):
            return client.scard(source.key)
        if isinstance(source, ScoreRange):
            return client.zcount(source.key, source.low, source.high)
        prog = Program(temp_prefix=keys.temp_key(uuid.uuid4().hex))
        result = source.emit(prog)
        conv = prog.temp()
        argv: list[Any] = [len(prog.ops)]
        for op in prog.ops:
            argv += op
        argv += [result, "count", 0, 0, "0", "0", conv]
        return scripts.QUERY(client, prog.keys, argv)[0]

    def _hydrate(self, rows: list[tuple[Any, float]]) -> list[Any]:
        """Load instances (or value dicts) for ``rows`` in one pipelined round trip per batch.

        Keys whose hash no longer exists (expired, deleted behind the ORM's
        back) are skipped.
        """
        out: list[Any] = []
        client = get_client()
        model = self.model
        for start in range(0, len(rows), BATCH):
            chunk = rows[start:start + BATCH]
            pipe = client.pipeline(transaction=False)
            if self._values is not None:
                for key, _score in chunk:
                    pipe.hmget(key, self._values)
            else:
                for key, _score in chunk:
                    pipe.hgetall(key)
            replies = pipe.execute()
            if self._values is None:  # the common case, kept tight: it runs once per result
                from_redis = model.from_redis
                for (key, score), reply in zip(chunk, replies):
                    if reply:
                        obj = from_redis(key.decode() if isinstance(key, bytes) else key, reply)
                        obj.__dict__["_score"] = score
                        out.append(obj)
                continue
            for (key, score), reply in zip(chunk, replies):
                skey = key.decode() if isinstance(key, bytes) else key
                if self._values is not None:
                    if all(v is None for v in reply):
                        if not client.exists(skey):
                            continue
                    out.append(self._value_dict(skey, reply))
                    continue
                if not reply:
                    continue
                obj = model.from_redis(skey, reply)
                obj.__dict__["_score"] = score
                out.append(obj)
        model._meta.after_load(out, self._options)
        return out

    def _value_dict(self, key: str, reply: list[bytes | None]) -> dict[str, Any]:
        fields = self.model._meta.fields
        out = {}
        for name, data in zip(self._values or (), reply):
            field = fields[name]
            out[name] = field.get_default() if data is None else field.from_db(
                decode_field(data, key, name))
        return out

    def _python_sort(self, objs: list[Any]) -> list[Any]:
        name = self._order.lstrip("-") if self._order else None
        if name is None:
            return objs

        def sort_key(obj: Any) -> tuple[bool, Any]:
            value = obj[name] if isinstance(obj, dict) else getattr(obj, name)
            return (value is None, value)

        return sorted(objs, key=sort_key, reverse=self._rev())

    def _fetch(self) -> list[Any]:
        source, residual, redis_order = self._plan()
        offset, limit = self._offset, self._limit
        if limit == 0:
            return []
        values = self._values
        if residual is not None or not redis_order:
            # Python has work to do: evaluate over every candidate Redis returns.
            if values is not None:
                self._values = None
            try:
                _total, rows = self._page(source, 0, -1)
                objs = [o for o in self._hydrate(rows) if residual is None or residual(o)]
            finally:
                self._values = values
            objs = self._python_sort(objs)
            end = None if limit is None else offset + limit
            objs = objs[offset:end]
            if values is not None:
                objs = [{n: getattr(o, n) for n in values} for o in objs]
            return objs
        if source is None and self._order is None and not offset and limit is None:
            return self._hydrate([(k, 0.0) for k in self._scan_class_set()])
        want = -1 if limit is None else limit
        total, rows = self._page(source, offset, want)
        objs = self._hydrate(rows)
        # stale index entries were skipped: top the page up from further down
        next_offset = offset + len(rows)
        while want > 0 and len(objs) < want and next_offset < total:
            _t, more = self._page(source, next_offset, want - len(objs))
            if not more:
                break
            next_offset += len(more)
            objs += self._hydrate(more)
        return objs

    def _scan_class_set(self) -> Iterator[bytes]:
        client = get_client()
        yield from client.sscan_iter(self.model._meta.db_class_set_key, count=BATCH)

    # --- public evaluation API -------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        if self._cache is None:
            self._cache = self._fetch()
        return iter(self._cache)

    def __len__(self) -> int:
        if self._cache is None:
            self._cache = self._fetch()
        return len(self._cache)

    def __bool__(self) -> bool:
        return self.exists()

    def __getitem__(self, item: int | slice) -> Any:
        if self._cache is not None:
            return self._cache[item]
        if isinstance(item, slice):
            if (item.step not in (None, 1) or (item.start or 0) < 0
                    or (item.stop is not None and item.stop < 0)):
                return list(self)[item]
            start = item.start or 0
            qs = self._clone(_offset=self._offset + start)
            if item.stop is not None:
                stop = max(item.stop - start, 0)
                qs._limit = stop if self._limit is None else min(stop, max(self._limit - start, 0))
            elif self._limit is not None:
                qs._limit = max(self._limit - start, 0)
            return list(qs)
        if not isinstance(item, int):
            raise TypeError(f"QuerySet indices must be int or slice, not {type(item).__name__}")
        if item < 0:
            return list(self)[item]
        found = self[item:item + 1]
        if not found:
            raise IndexError("QuerySet index out of range")
        return found[0]

    def __repr__(self) -> str:
        return f"<QuerySet {self.model.__name__} {self._where!r}>"

    def count(self) -> int:
        """Number of matches; answered by SCARD/ZCOUNT/ZCARD when indexes cover the filter."""
        if not self._where and not self._options and self._limit is None and not self._offset:
            return get_client().scard(self.model._meta.db_class_set_key)  # no plan to compile
        source, residual, _ = self._plan()
        if residual is None and self._limit is None and not self._offset:
            return self._count_source(source)
        return len(self._clone(_values=None))

    def exists(self) -> bool:
        return bool(self.limit(1)._fetch())

    def first(self) -> Any:
        found = self.limit(1)._fetch()
        return found[0] if found else None

    def last(self) -> Any:
        order = self._order
        if order is None:
            name = self.model._meta.key_field_names[0]
            order = name
        flipped = order[1:] if order.startswith("-") else f"-{order}"
        found = self._clone(_order=flipped, _limit=1)._fetch()
        return found[0] if found else None

    def keys(self) -> list[str]:
        """Instance keys of the matches (no hashes are read when indexes cover the filter)."""
        source, residual, redis_order = self._plan()
        if residual is not None or not redis_order:
            return [o.pk for o in self._clone(_values=None)]
        want = -1 if self._limit is None else self._limit
        _total, rows = self._page(source, self._offset, want)
        return [k.decode() if isinstance(k, bytes) else k for k, _s in rows]

    def get(self, *conditions: Q, **kwargs: Any) -> Any:
        """The single match, None when there is none; QueryException when several match."""
        found = self.filter(*conditions, **kwargs).limit(2)._fetch()
        if len(found) > 1:
            raise QueryException(f"{self.model.__name__}.get() matched more than one instance; "
                                 f"use filter() or add conditions")
        return found[0] if found else None

    def all(self) -> QuerySet:
        return self._clone()

    def no_track(self) -> QuerySet:
        """Do not record reads of these results as accesses (access-tracking models)."""
        qs = self._clone()
        qs._options["no_track"] = True
        return qs

    # --- async ---------------------------------------------------------
    async def async_list(self) -> list[Any]:
        from .async_exec import fetch_async

        return await fetch_async(self)

    async def async_count(self) -> int:
        from .async_exec import count_async

        return await count_async(self)


class Query:
    """``Model.query`` / ``Model.objects``: entry point that builds QuerySets."""

    def __init__(self, model: type[Model]) -> None:
        self.model = model

    def _qs(self) -> QuerySet:
        return QuerySet(self.model)

    def get(self, *conditions: Q, db_key: str | None = None, redis_key: str | None = None,
            **kwargs: Any) -> Any:
        """One instance by key fields, ``db_key``/``redis_key`` or any filter; None if absent."""
        key = db_key or redis_key
        if key is not None:
            if conditions or kwargs:
                raise QueryException("get() takes either db_key/redis_key or filters, not both")
            if not key.startswith(self.model._meta.db_class_key + keys.SEP):
                return None
            raw = get_client().hgetall(key)
            if not raw:
                return None
            obj = self.model.from_redis(key, raw)
            self.model._meta.after_load([obj], {})
            return obj
        meta = self.model._meta
        if not conditions and kwargs and set(kwargs) == set(meta.key_field_names):
            ordered = []
            for name in meta.key_field_names:
                field = meta.fields[name]
                ordered.append(field.coerce(kwargs[name]))
            return self.get(db_key=keys.instance_key(meta.model_name, ordered))
        return self._qs().get(*conditions, **kwargs)

    def filter(self, *conditions: Q, **kwargs: Any) -> QuerySet:
        return self._qs().filter(*conditions, **kwargs)

    def exclude(self, *conditions: Q, **kwargs: Any) -> QuerySet:
        return self._qs().exclude(*conditions, **kwargs)

    def all(self, **kwargs: Any) -> QuerySet:
        return self._qs().filter(**kwargs)

    def order_by(self, field: str) -> QuerySet:
        return self._qs().order_by(field)

    def limit(self, n: int) -> QuerySet:
        return self._qs().limit(n)

    def values(self, *fields: str) -> QuerySet:
        return self._qs().values(*fields)

    def count(self, *conditions: Q, **kwargs: Any) -> int:
        if not conditions and not kwargs:
            return self._qs().count()
        return self._qs().filter(*conditions, **kwargs).count()

    def exists(self, *conditions: Q, **kwargs: Any) -> bool:
        return self._qs().filter(*conditions, **kwargs).exists()

    def keys(self, *conditions: Q, **kwargs: Any) -> list[str]:
        return self._qs().filter(*conditions, **kwargs).keys()

    def first(self) -> Any:
        return self._qs().first()

    def last(self) -> Any:
        return self._qs().last()

    def no_track(self) -> QuerySet:
        return self._qs().no_track()

    def top_by_decay(self, field_name: str | None = None, n: int = 10,
                     decay_rate: float | None = None, base_score_field: str | None = None,
                     as_of: Any = None, **partition: Any) -> list[Any]:
        """The ``n`` best instances by decayed score (see ``popoto.fields.decaying``)."""
        from ..fields.decaying import top_by_decay

        return top_by_decay(self.model, field_name, n, decay_rate, base_score_field, as_of,
                            **partition)

    def priority(self, n: int = 10) -> list[Any]:
        """The ``n`` instances with the highest write-filter score (WriteFilterMixin)."""
        from ..behaviours.write_filter import priority

        return priority(self.model, n)

    # async reads (redis.asyncio)
    async def async_get(self, *conditions: Q, **kwargs: Any) -> Any:
        from .async_exec import get_async

        return await get_async(self, *conditions, **kwargs)

    async def async_filter(self, *conditions: Q, **kwargs: Any) -> list[Any]:
        return await self.filter(*conditions, **kwargs).async_list()

    async def async_all(self, **kwargs: Any) -> list[Any]:
        return await self.all(**kwargs).async_list()

    async def async_count(self, *conditions: Q, **kwargs: Any) -> int:
        return await self.filter(*conditions, **kwargs).async_count()

    def __repr__(self) -> str:
        return f"<Query {self.model.__name__}>"
