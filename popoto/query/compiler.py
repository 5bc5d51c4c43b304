"""Compile a Q tree against a model into an index source plus a Python residue.

Every condition answerable from an index becomes a :class:`Source` that Redis
evaluates. Conditions on plain fields become predicates run over the
candidates Redis returns. Under OR/NOT a plain condition forces the whole
branch into Python (over the class set), since Redis cannot evaluate it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from popoto import keys
from popoto.engine.sources import (
    NS_CONTEXT,
    Combine,
    GeoRadius,
    ScoreRange,
    SetSource,
    Source,
    merge_ranges,
)
from popoto.exceptions import QueryException
from popoto.query.expressions import Q
from popoto.query.lookups import Exact, Lookup

if TYPE_CHECKING:
    from popoto.models.base import Model

Predicate = Callable[[Any], bool]


@dataclass
class Compiled:
    source: Source | None  # None: no index narrows this node
    residual: Predicate | None  # what the source does not already guarantee
    full: Predicate  # the whole node evaluated in Python
    exact: dict[str, Any]


def _all(preds: list[Predicate]) -> Predicate:
    return lambda obj: all(p(obj) for p in preds)


def _any(preds: list[Predicate]) -> Predicate:
    return lambda obj: any(p(obj) for p in preds)


def resolve_lookup(model: type[Model], name: str, value: Any) -> Lookup:
    """Turn ``field__lookup`` and a value into a Lookup, with helpful errors."""
    meta = model._meta
    field_name, _, lookup_name = name.partition("__")
    field = meta.fields.get(field_name)
    if field is None:
        valid = meta.query_filters()
        close = difflib.get_close_matches(name, valid, n=1) or difflib.get_close_matches(
            field_name, list(meta.fields), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise QueryException(
            f"{model.__name__} has no field {field_name!r} to filter on.{hint} "
            f"Valid filters: {', '.join(valid)}"
        )
    related = getattr(field, "related_lookup", None)
    if related is not None and lookup_name and lookup_name not in field.get_lookups():
        found: Lookup = related(lookup_name, value)
        return found
    return field.get_lookup(lookup_name or "exact")(field, value)


def compile_q(model: type[Model], q: Q, context: dict[str, Any] | None = None,
              options: dict[str, Any] | None = None, ns: str | None = None) -> Compiled:
    """Compile ``q`` for the tag group ``ns`` (default: the model's first, the only one
    when unsharded); ``options`` (e.g. ``geo_radius``) reach every lookup via its context."""
    ns = ns or model._meta.groups[0]
    context = {**(options or {}), **(context or {}), NS_CONTEXT: ns}
    leaves = [c for c in q.children if isinstance(c, tuple)]
    lookups = [resolve_lookup(model, name, value) for name, value in leaves]
    exact = {lk.field.name: lk.value for lk in lookups if type(lk) is Exact}
    if q.connector == Q.AND and not q.negated:
        context.update(exact)
    parts: list[Compiled] = []
    for lookup in lookups:
        src = lookup.source(context)
        name = lookup.field.name
        match = lookup.matches

        def leaf(obj: Any, _n: str = name, _m: Callable[[Any], bool] = match) -> bool:
            return _m(getattr(obj, _n))

        parts.append(Compiled(src, None if src is not None else leaf, leaf, {}))
    for child in q.children:
        if isinstance(child, Q):
            parts.append(compile_q(model, child, context if q.connector == Q.AND else None,
                                   options, ns))
    universe = SetSource(keys.class_set_key(ns))
    if not parts:
        node = Compiled(None, None, lambda obj: True, exact)
    elif q.connector == Q.AND:
        srcs = merge_ranges([p.source for p in parts if p.source is not None])
        residual = [p.residual for p in parts if p.residual is not None]
        source = srcs[0] if len(srcs) == 1 else (Combine("AND", srcs) if srcs else None)
        # exact values of nested AND children (filter() nests) also hold here: order_by
        # on a partitioned SortedField needs them
        merged = {k: v for p in parts for k, v in p.exact.items()}
        node = Compiled(source, _all(residual) if residual else None,
                        _all([p.full for p in parts]), {**merged, **exact})
    else:
        full = _any([p.full for p in parts])
        sources = [p.source for p in parts if p.source is not None]
        if len(sources) == len(parts) and all(p.residual is None for p in parts):
            node = Compiled(Combine("OR", sources), None, full, {})
        else:
            node = Compiled(None, full, full, {})
    if q.negated:
        full = node.full

        def negated(obj: Any, _f: Predicate = full) -> bool:
            return not _f(obj)

        if node.source is not None and node.residual is None:
            return Compiled(Combine("NOT", [universe, node.source]), None, negated, {})
        return Compiled(None, negated, negated, {})
    return node


def set_score_source(source: Source | None, scored: SetSource) -> Source:
    """AND ``source`` with the sorted set ``scored``, keeping its scores (for ordering).

    A range of that same sorted set already in the AND carries the scores: it becomes
    the scored part, and the whole sorted set is not added."""
    if source is None:
        return scored
    if isinstance(source, ScoreRange) and source.key == scored.key:
        return source
    if isinstance(source, Combine) and source.kind == "AND":
        for i, part in enumerate(source.parts):
            if isinstance(part, ScoreRange) and part.key == scored.key:
                return Combine("AND", list(source.parts), score_from=i)
        return Combine("AND", [*source.parts, scored], score_from=len(source.parts))
    return Combine("AND", [source, scored], score_from=1)


def keep_scores(source: Source) -> Source:
    """For an AND, keep the scores of its first distance part, else of its first scored part."""
    if isinstance(source, Combine) and source.kind == "AND" and source.score_from is None:
        scored = [i for i, part in enumerate(source.parts) if part.scored]
        near = [i for i in scored if isinstance(source.parts[i], GeoRadius)]
        if scored:
            source.score_from = (near or scored)[0]
    return source
