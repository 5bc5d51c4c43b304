"""What makes a QuerySet read like a list, and the feature queries on a filter.

A QuerySet stays lazy: the first read evaluates it once (its result is cached), then
``==`` with a list (``qs == []``), ``in``, ``reversed``, ``+`` and ``index`` answer from
that result like a list does (``len``, indexing, slicing, ``bool`` and iteration are
QuerySet methods). ``Model.query.filter(...).top_by_decay(n=5)`` /
``.priority(n)`` run the feature a field or behaviour registered in
``_meta.query_features``, restricted to the filter's matches.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from popoto.engine.io import execute
from popoto.engine.sources import Program
from popoto.exceptions import QueryException
from popoto.keys import class_set_key, temp_key
from popoto.query.compiler import compile_q
from popoto.redis_db import get_client

if TYPE_CHECKING:
    from popoto.models.base import Model
    from popoto.query.expressions import Q
    from popoto.query.queryset import Plans

#: the model class a queryset reads
_M = TypeVar("_M", bound="Model")


class ResultsMixin(Generic[_M]):
    """List reads and feature queries of :class:`~popoto.query.queryset.QuerySet`."""

    model: type[_M]
    _where: Q
    _options: dict[str, Any]

    if TYPE_CHECKING:  # QuerySet's
        def __iter__(self) -> Iterator[_M]: ...
        def _plan(self) -> tuple[Plans, Any, bool]: ...

    # --- read as a list: == [], ==, +, index (evaluated once, then cached) --------
    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, ResultsMixin)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compares by its (mutable) results

    def __contains__(self, item: object) -> bool:
        return item in list(self)

    def __reversed__(self) -> Iterator[_M]:
        backwards: Iterator[_M] = reversed(list(self))  # typeshed: reversed() is Any
        return backwards

    def __add__(self, other: Iterable[Any]) -> list[Any]:
        return list(self) + list(other)

    def __radd__(self, other: Iterable[Any]) -> list[Any]:
        return list(other) + list(self)

    def index(self, value: Any) -> int:
        """Position of ``value`` in the results (ValueError when absent), like list.index."""
        return list(self).index(value)

    # --- feature queries on a filter: Model.query.filter(...).top_by_decay(n=5) ----
    def _feature(self, name: str, lacking: str) -> Any:
        """A query feature of ``_meta.query_features``, restricted to this filter's matches."""
        feature = self.model._meta.query_features.get(name)
        if feature is None:
            raise QueryException(f"{self.model.__name__}.query.{name}: the model has {lacking}")
        return functools.partial(feature, self.model, _within=self)

    def top_by_decay(self, field_name: str | None = None, n: int = 10,
                     decay_rate: float | None = None, base_score_field: str | None = None,
                     as_of: Any = None, **partition: Any) -> list[_M]:
        """The ``n`` best matches of this filter by decayed score (partition values the
        filter fixes with exact conditions need not be repeated)."""
        feature = self._feature("top_by_decay", "no DecayingSortedField")
        found: list[_M] = feature(field_name, n, decay_rate, base_score_field, as_of,
                                  **partition)
        return found

    def priority(self, n: int = 10) -> list[_M]:
        """The ``n`` matches of this filter with the highest write-filter score."""
        feature = self._feature("priority", "no WriteFilterMixin (priority() needs a model "
                                "with WriteFilterMixin)")
        found: list[_M] = feature(n)
        return found

    # --- keys(clean=True) -----------------------------------------------------------
    def _drop_stale(self, found: list[str]) -> list[str]:
        """``found`` without the keys whose hash is gone; those are removed from the
        indexes this query read (``Model.drop_stale_keys``, checked inside Redis)."""
        if not found:
            return found
        replies = execute(get_client(), [("exists", (key,)) for key in found])
        stale = {key for key, there in zip(found, replies) if not there}
        if not stale:
            return found
        self.model.drop_stale_keys(sorted(stale), self._read_index_keys())
        return [key for key in found if key not in stale]

    def _read_index_keys(self) -> list[str]:
        """The index keys (class sets included) the query's plan reads."""
        out: list[str] = []
        for ns, source in self._plan()[0]:
            if source is None:
                out.append(class_set_key(ns))
                continue
            prog = Program(temp_prefix=temp_key("drop", ns), ns=ns)
            source.emit(prog)
            out += [k for k in prog.keys if not k.startswith("$Tmp")]
        return out

    def exact_values(self) -> dict[str, Any]:
        """Field values the filter fixes with top-level exact conditions (e.g. partitions)."""
        return dict(compile_q(self.model, self._where, options=self._options).exact)
