"""Lazy, chainable queries and the ``Model.query`` manager.

A sharded model (cluster mode, or ``Meta.shards`` > 1) is queried group by
group: the plan is compiled once per tag group, every group answers its part
in the same pipelined round trip (a cluster client sends each node its
groups), and the pages are merged here: a k-way merge by (score, key) gives
exactly the order one server would give, so ``order_by`` + ``limit`` stay
correct, and counts add up. Each group returns at most ``offset + limit``
rows, never its whole index.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from popoto import keys
from popoto.encoding import decode_field
from popoto.engine import scripts
from popoto.engine.io import Command, Steps, run, run_async
from popoto.engine.merge import scored_merge_key
from popoto.engine.sources import (
    NS_CONTEXT,
    PLAN_MEMO_CONTEXT,
    Program,
    ScoreRange,
    SetSource,
    Source,
)
from popoto.exceptions import QueryException
from popoto.protocol import text
from popoto.query.compiler import Compiled, compile_q, keep_scores, set_score_source
from popoto.query.expressions import Q
from popoto.query.results import ResultsMixin

if TYPE_CHECKING:
    from popoto.fields.sorted import SortedField
    from popoto.models.base import Model

BATCH = 1000
#: a page of at most this many rows comes back with its hashes from the script that
#: finds it: one round trip (larger reads stream their hashes BATCH at a time)
INLINE_MAX = 1000
Plans = list[tuple[str, "Source | None"]]  # (tag group, its source; None = the class set)


#: the model class a queryset reads
_M = TypeVar("_M", bound="Model")


class QuerySet(ResultsMixin[_M], Generic[_M]):
    """A lazy query: nothing touches Redis until it is iterated, counted or sliced."""

    def __init__(self, model: type[_M], where: Q | None = None) -> None:
        self.model = model
        self._where = where or Q()
        self._order: str | None = model._meta.order_by
        self._offset = 0
        self._limit: int | None = None
        self._values: tuple[str, ...] | None = None
        self._options: dict[str, Any] = {}
        self._cache: list[Any] | None = None

    # --- building ------------------------------------------------------
    def _clone(self, **changes: Any) -> QuerySet[_M]:
        qs: QuerySet[_M] = QuerySet.__new__(QuerySet)
        qs.__dict__.update(self.__dict__)
        qs._options = dict(self._options)
        qs._cache = None
        for k, v in changes.items():
            setattr(qs, k, v)
        return qs

    def _split_kwargs(self, kwargs: dict[str, Any]) -> tuple[QuerySet[_M], dict[str, Any]]:
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
                        kwargs.update(as_condition(name, qs._options[name], qs._options))
        return qs, kwargs

    def filter(self, *conditions: Q, **kwargs: Any) -> QuerySet[_M]:
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

    def exclude(self, *conditions: Q, **kwargs: Any) -> QuerySet[_M]:
        """AND NOT(conditions)."""
        return self.filter(~Q(*conditions, **kwargs))

    def order_by(self, field: str | None) -> QuerySet[_M]:
        if field is not None:
            name = field.lstrip("-")
            if name not in self.model._meta.fields:
                raise QueryException(f"{self.model.__name__}: cannot order by unknown field "
                                     f"{name!r} (fields: {', '.join(self.model._meta.fields)})")
        return self._clone(_order=field)

    def limit(self, n: int | None) -> QuerySet[_M]:
        if n is not None and (not isinstance(n, int) or n < 0):
            raise QueryException(f"limit must be a non-negative int, got {n!r}")
        return self._clone(_limit=n)

    def offset(self, n: int) -> QuerySet[_M]:
        if not isinstance(n, int) or n < 0:
            raise QueryException(f"offset must be a non-negative int, got {n!r}")
        return self._clone(_offset=n)

    def values(self, *fields: str) -> QuerySet[Any]:
        """Return dicts of the named fields (all public fields when none named)."""
        names = fields or tuple(self.model._meta.explicit_fields)
        for name in names:
            if name not in self.model._meta.fields:
                raise QueryException(f"{self.model.__name__}: values() got unknown field "
                                     f"{name!r}")
        return self._clone(_values=tuple(names))

    # --- evaluation ----------------------------------------------------
    def _plan(self) -> tuple[Plans, Any, bool]:
        """([(group, source)] for every tag group, residual predicate, ordered-by-redis).

        Compiled for the first group and retargeted to the others (the plan's shape
        does not depend on the group, only its keys do).
        """
        first, *others = self.model._meta.groups
        source, residual, redis_order = self._group_plan(first)
        plans: Plans = [(first, source)]
        plans += [(ns, None if source is None else source.retarget(first, ns)) for ns in others]
        return plans, residual, redis_order

    def _group_plan(self, ns: str, memo: dict[Any, Any] | None = None
                    ) -> tuple[Source | None, Any, bool]:
        """(source, residual predicate, ordered-by-redis) in the tag group ``ns``."""
        compiled: Compiled = compile_q(self.model, self._where, options=self._options, ns=ns,
                                       context={PLAN_MEMO_CONTEXT: {} if memo is None else memo})
        source = compiled.source
        order = self._order
        redis_order = True
        if source is not None:
            source = keep_scores(source)
        if order is not None:
            field = self.model._meta.fields[order.lstrip("-")]
            if field.is_sorted:  # a SortedField
                zkey = cast("SortedField[Any]", field).key_from_context(
                    {**compiled.exact, NS_CONTEXT: ns})
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

    # --- evaluation as I/O-free steps (run by popoto.engine.io, sync or async) ----
    def _inline_args(self, inline: bool) -> list[Any]:
        """The trailing ARGV of PAGE/QUERY asking for the page's rows (read_rows.lua)."""
        fields = list(self._values or ())
        return [INLINE_MAX if inline else -1, len(fields), *fields]

    def _query_call(self, source: Source, mode: str, offset: int = 0,
                    count: int = 0, ns: str = "", inline: bool = False) -> Command:
        """The QUERY script call evaluating ``source`` inside Redis (in tag group ``ns``)."""
        prog = Program(temp_prefix=keys.temp_key(uuid.uuid4().hex, ns), ns=ns)
        result = source.emit(prog)
        conv = prog.temp()
        argv: list[Any] = [len(prog.ops)]
        for op in prog.ops:
            argv += op
        scores = "1" if mode == "page" else "0"
        argv += [result, mode, offset, count, "1" if self._rev() else "0", scores, conv]
        if mode == "page":
            argv += self._inline_args(inline)
        return scripts.QUERY.command(prog.keys, argv)

    def _page_steps(self, plans: Plans, offset: int, count: int,
                    inline: bool = False) -> Steps[tuple[int, list[Any], list[Any] | None]]:
        """(total, [(member, score)], rows) of one page of the plans' result in Redis order.

        With ``inline`` (one tag group) the script that finds the page also reads its
        hashes when the page has at most INLINE_MAX rows: ``rows`` holds one HGETALL
        (or HMGET of ``values()``) per member, 0 for a hash gone meanwhile; else None.
        """
        if len(plans) > 1:
            total, members = yield from self._scatter_page_steps(plans, offset, count)
            return total, members, None
        ns, source = plans[0]
        rev = "1" if self._rev() else "0"
        if source is None:
            source = SetSource(keys.class_set_key(ns))
        order = self._order and self.model._meta.fields[self._order.lstrip("-")]
        if count < 0 and not offset and type(source) is SetSource and not (
                order and order.is_sorted):  # (ordering by a sorted field: source is its zset)
            # a whole set needs no paging script: SMEMBERS, in the member order ZRANGE gives
            (members,) = yield [("smembers", (source.key,))]
            members = sorted(members, reverse=rev == "1")
            return len(members), [(m, 0.0) for m in members], None
        if isinstance(source, ScoreRange):  # one sorted set: no temporary, paged by Redis
            call = scripts.PAGE.command([source.key], [
                source.low, source.high, offset, count, rev, *self._inline_args(inline)])
        else:
            call = self._query_call(source, "page", offset, count, ns, inline)
        ((total, flat, inlined, rows),) = yield [call]
        members = list(zip(flat[0::2], (float(s) for s in flat[1::2])))
        return total, members, rows if inlined else None

    def _scatter_page_steps(self, plans: Plans, offset: int,
                            count: int) -> Steps[tuple[int, list[Any]]]:
        """One page across tag groups: each group's first ``offset + count`` rows with
        their scores, in one round trip, merged by (score, key without its tag).

        The total is exact when every group's rows were counted by the query script;
        a group answered by a plain range read reports only the rows it returned,
        plus one when its page was full (more may follow), which is all the page
        top-up of :meth:`_fetch_steps` needs to know."""
        rev = self._rev()
        want = -1 if count < 0 else offset + count
        cmds: list[Command] = []
        for ns, source in plans:
            if source is None:
                source = SetSource(keys.class_set_key(ns))
            if isinstance(source, ScoreRange):  # no script needed: one sorted set
                low, high = source.low, source.high
                page = (None, None) if want < 0 else (0, want)
                cmds.append(("zrevrangebyscore", (source.key, high, low, *page, True)) if rev
                            else ("zrangebyscore", (source.key, low, high, *page, True)))
            else:
                cmds.append(self._query_call(source, "page", 0, want, ns))
        replies = iter((yield cmds))
        total, rows = 0, []
        for _ns, source in plans:
            if isinstance(source, ScoreRange):
                got = next(replies)
                total += len(got) + (1 if want >= 0 and len(got) == want else 0)
                rows += [(m, float(s)) for m, s in got]
            else:
                n, flat, *_rows = next(replies)
                total += n
                rows += zip(flat[0::2], (float(s) for s in flat[1::2]))
        rows.sort(key=scored_merge_key, reverse=rev)
        return total, rows[offset:] if count < 0 else rows[offset:offset + count]

    def _count_steps(self, plans: Plans) -> Steps[int]:
        cmds: list[Command] = []
        for ns, source in plans:
            if source is None:
                source = SetSource(keys.class_set_key(ns))
            if isinstance(source, SetSource):
                cmds.append(("scard", (source.key,)))
            elif isinstance(source, ScoreRange):
                cmds.append(("zcount", (source.key, source.low, source.high)))
            else:
                cmds.append(self._query_call(source, "count", ns=ns))
        replies = yield cmds
        return sum(r[0] if isinstance(r, list) else r for r in replies)

    def _hydrate_steps(self, rows: list[tuple[Any, float]],
                       replies: list[Any] | None = None) -> Steps[list[Any]]:
        """Instances (or value dicts) for ``rows``: from ``replies`` when the page's script
        read them (one per row, 0 for a hash gone), else one pipelined round trip per
        BATCH rows. Keys whose hash no longer exists (expired, deleted behind the ORM's
        back) are skipped."""
        out: list[Any] = []
        values = self._values
        for start in range(0, len(rows), BATCH):
            chunk = rows[start:start + BATCH]
            if replies is not None:
                got = replies[start:start + BATCH]
            elif values is None:
                got = yield [("hgetall", (key,)) for key, _score in chunk]
            else:
                got = yield from self._values_steps(chunk)
            out += self._build(chunk, got)
        if values is None:
            self.model._meta.after_load(out, self._options)
        return out

    def _values_steps(self, chunk: list[tuple[Any, float]]) -> Steps[list[Any]]:
        """HMGET of ``values()`` per row; 0 where the hash is gone (EXISTS asked only
        for rows whose fields are all missing)."""
        got = yield [("hmget", (key, self._values)) for key, _score in chunk]
        blank = [i for i, reply in enumerate(got) if all(v is None for v in reply)]
        if blank:  # all-None could be a missing hash: ask which ones still exist
            exists = yield [("exists", (chunk[i][0],)) for i in blank]
            for i, there in zip(blank, exists):
                if not there:
                    got[i] = 0
        return got

    def _build(self, chunk: list[tuple[Any, float]], got: list[Any]) -> list[Any]:
        if self._values is not None:
            return [self._value_dict(text(key), reply)
                    for (key, _score), reply in zip(chunk, got) if reply != 0]
        out = []
        model = self.model
        meta = model._meta
        prefixes = tuple(ns + keys.SEP for ns in meta.groups)
        n_sep = len(meta.key_field_names)
        load = model._load  # the common case, kept tight: one check per key, no re-decoding
        for (key, score), reply in zip(chunk, got):
            if not reply:
                continue
            name = key.decode() if isinstance(key, bytes) else key
            if not (name.startswith(prefixes) and name.count(keys.SEP) == n_sep):
                model.from_redis(name, {})  # raises: an index held another model's key
            pairs = (list(zip(reply[0::2], reply[1::2])) if isinstance(reply, list)
                     else list(reply.items()))  # a script's flat list, or an HGETALL dict
            try:
                decoded = {f.decode(): v for f, v in pairs}
            except AttributeError:  # str field names (a client with decode_responses)
                decoded = {text(f): v for f, v in pairs}
            obj = load(name, decoded)
            obj.__dict__["_score"] = score
            out.append(obj)
        return out

    def hydrate(self, rows: list[tuple[Any, float]]) -> list[Any]:
        """Load the instances for ``(key, score)`` rows (skipping vanished hashes)."""
        return run(self._hydrate_steps(rows))

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

        def sort_key(obj: Any) -> tuple[bool, Any]:  # None sorts first, as in Popoto 1.x
            value = obj[name] if isinstance(obj, dict) else getattr(obj, name)
            return (value is not None, value)

        return sorted(objs, key=sort_key, reverse=self._rev())

    def _fetch_steps(self) -> Steps[list[Any]]:
        plans, residual, redis_order = self._plan()
        offset, limit, values = self._offset, self._limit, self._values
        if limit == 0:
            return []
        if residual is not None or not redis_order:
            # Python has work to do: evaluate over every candidate Redis returns.
            plain = self._clone(_values=None)
            _total, rows, got = yield from plain._page_steps(plans, 0, -1, inline=True)
            loaded = yield from plain._hydrate_steps(rows, got)
            objs = self._python_sort([o for o in loaded if residual is None or residual(o)])
            objs = objs[offset:None if limit is None else offset + limit]
            if values is not None:
                objs = [{n: getattr(o, n) for n in values} for o in objs]
            return objs
        want = -1 if limit is None else limit
        total, rows, got = yield from self._page_steps(plans, offset, want, inline=True)
        objs = yield from self._hydrate_steps(rows, got)
        # stale index entries were skipped: top the page up from further down
        next_offset = offset + len(rows)
        while want > 0 and len(objs) < want and next_offset < total:
            _t, more, got = yield from self._page_steps(plans, next_offset, want - len(objs),
                                                        inline=True)
            if not more:
                break
            next_offset += len(more)
            objs += yield from self._hydrate_steps(more, got)
        return objs

    def _count_all_steps(self) -> Steps[int]:
        if not self._where and not self._options and self._limit is None and not self._offset:
            # no plan to compile
            return (yield from self._count_steps([(ns, None) for ns in self.model._meta.groups]))
        plans, residual, _ = self._plan()
        if residual is None and self._limit is None and not self._offset:
            return (yield from self._count_steps(plans))
        return len((yield from self._clone(_values=None)._fetch_steps()))

    def _keys_steps(self) -> Steps[list[str]]:
        plans, residual, redis_order = self._plan()
        if residual is not None or not redis_order:
            return [o.pk for o in (yield from self._clone(_values=None)._fetch_steps())]
        want = -1 if self._limit is None else self._limit
        _total, rows, _got = yield from self._page_steps(plans, self._offset, want)
        return [text(k) for k, _s in rows]

    def _get_steps(self) -> Steps[_M | None]:
        found = yield from self.limit(2)._fetch_steps()
        if len(found) > 1:
            raise QueryException(f"{self.model.__name__}.get() matched more than one instance; "
                                 f"use filter() or add conditions")
        return found[0] if found else None

    def _fetch(self) -> list[Any]:
        return run(self._fetch_steps())

    # --- public evaluation API -------------------------------------------
    def __iter__(self) -> Iterator[_M]:
        if self._cache is None:
            self._cache = self._fetch()
        return iter(self._cache)

    def __len__(self) -> int:
        if self._cache is None:
            self._cache = self._fetch()
        return len(self._cache)

    def __bool__(self) -> bool:
        if self._cache is not None:
            return bool(self._cache)
        return self.exists()

    @overload
    def __getitem__(self, item: int) -> _M: ...

    @overload
    def __getitem__(self, item: slice) -> list[_M]: ...

    def __getitem__(self, item: int | slice) -> _M | list[_M]:
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
        return run(self._count_all_steps())

    def exists(self) -> bool:
        return bool(self.limit(1)._fetch())

    def first(self) -> _M | None:
        found = self.limit(1)._fetch()
        return found[0] if found else None

    def last(self) -> _M | None:
        order = self._order
        if order is None:
            name = self.model._meta.key_field_names[0]
            order = name
        flipped = order[1:] if order.startswith("-") else f"-{order}"
        found = self._clone(_order=flipped, _limit=1)._fetch()
        return found[0] if found else None

    def keys(self, clean: bool = False) -> list[str]:
        """Instance keys of the matches (no hashes are read when indexes cover the filter).

        ``clean=True`` also checks that each hash still exists: keys whose hash is gone
        are left out and their entries dropped from the indexes this query read."""
        found = run(self._keys_steps())
        return self._drop_stale(found) if clean else found

    def get(self, *conditions: Q, **kwargs: Any) -> _M | None:
        """The single match, None when there is none; QueryException when several match."""
        return run(self.filter(*conditions, **kwargs)._get_steps())

    def all(self) -> QuerySet[_M]:
        return self._clone()

    def no_track(self) -> QuerySet[_M]:
        """Do not record reads of these results as accesses (access-tracking models)."""
        qs = self._clone()
        qs._options["no_track"] = True
        return qs

    # --- async: the same steps on redis.asyncio ---------------------------
    async def async_list(self) -> list[_M]:
        if self._cache is None:
            self._cache = await run_async(self._fetch_steps())
        return list(self._cache)

    async def async_count(self) -> int:
        return await run_async(self._count_all_steps())

    async def async_keys(self) -> list[str]:
        return await run_async(self._keys_steps())

    async def async_get(self) -> _M | None:
        return await run_async(self._get_steps())
