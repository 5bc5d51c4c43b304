"""``Model.query`` (also ``Model.objects``): the entry point of every read.

``get`` reads one hash by key (one round trip) or runs a filter; ``filter`` /
``all`` / ``exclude`` return lazy :class:`~popoto.query.queryset.QuerySet` s.
Feature queries (``top_by_decay``, ``priority``) are looked up in
``_meta.query_features``, where the fields and behaviours that provide them
registered them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from popoto.engine.io import Steps, run, run_async
from popoto.exceptions import QueryException
from popoto.query.expressions import Q
from popoto.query.queryset import QuerySet

if TYPE_CHECKING:
    from popoto.models.base import Model

#: the model class a manager serves
_M = TypeVar("_M", bound="Model")

if TYPE_CHECKING:
    class QueryDescriptor:
        """Typing only: ``Model.query`` read on ``Book`` (or a Book) is a ``Query[Book]``
        (at run time the metaclass sets a plain Query attribute on each model class)."""

        def __get__(self, instance: object, owner: type[_M]) -> Query[_M]: ...


class Query(Generic[_M]):
    """``Model.query`` / ``Model.objects``: entry point that builds QuerySets."""

    def __init__(self, model: type[_M]) -> None:
        self.model = model

    def _qs(self) -> QuerySet[_M]:
        return QuerySet(self.model)

    def _get_steps(self, conditions: tuple[Q, ...], db_key: str | None,
                   kwargs: dict[str, Any]) -> Steps[_M | None]:
        meta = self.model._meta
        if db_key is None and not conditions and kwargs and set(kwargs) == set(
                meta.key_field_names):
            ordered = [meta.fields[n].coerce(kwargs[n]) for n in meta.key_field_names]
            db_key, kwargs = meta.instance_key(ordered), {}
        if db_key is None:
            return (yield from self._qs().filter(*conditions, **kwargs)._get_steps())
        if conditions or kwargs:
            raise QueryException("get() takes either db_key/redis_key or filters, not both")
        if not meta.owns_key(db_key):
            return None
        (raw,) = yield [("hgetall", (db_key,))]
        if not raw:
            return None
        obj = self.model.from_redis(db_key, raw)
        meta.after_load([obj], {})
        return obj

    def get(self, *conditions: Q, db_key: str | None = None, redis_key: str | None = None,
            **kwargs: Any) -> _M | None:
        """One instance by key fields, ``db_key``/``redis_key`` or any filter; None if absent."""
        return run(self._get_steps(conditions, db_key or redis_key, kwargs))

    def filter(self, *conditions: Q, **kwargs: Any) -> QuerySet[_M]:
        return self._qs().filter(*conditions, **kwargs)

    def exclude(self, *conditions: Q, **kwargs: Any) -> QuerySet[_M]:
        return self._qs().exclude(*conditions, **kwargs)

    def all(self, **kwargs: Any) -> QuerySet[_M]:
        return self._qs().filter(**kwargs)

    def order_by(self, field: str) -> QuerySet[_M]:
        return self._qs().order_by(field)

    def limit(self, n: int) -> QuerySet[_M]:
        return self._qs().limit(n)

    def values(self, *fields: str) -> QuerySet[Any]:  # its results are dicts
        return self._qs().values(*fields)

    def count(self, *conditions: Q, **kwargs: Any) -> int:
        if not conditions and not kwargs:
            return self._qs().count()
        return self._qs().filter(*conditions, **kwargs).count()

    def exists(self, *conditions: Q, **kwargs: Any) -> bool:
        return self._qs().filter(*conditions, **kwargs).exists()

    def keys(self, *conditions: Q, clean: bool = False, **kwargs: Any) -> list[str]:
        """Instance keys of the matches; ``clean=True`` drops stale entries as it reads
        (keys whose hash is gone are left out and removed from the indexes read)."""
        return self._qs().filter(*conditions, **kwargs).keys(clean=clean)

    def first(self) -> _M | None:
        return self._qs().first()

    def last(self) -> _M | None:
        return self._qs().last()

    def no_track(self) -> QuerySet[_M]:
        return self._qs().no_track()

    def top_by_decay(self, field_name: str | None = None, n: int = 10,
                     decay_rate: float | None = None, base_score_field: str | None = None,
                     as_of: Any = None, **partition: Any) -> list[_M]:
        """The ``n`` best instances by decayed score (see ``popoto.fields.decaying``)."""
        feature = self._feature("top_by_decay", "no DecayingSortedField")
        found: list[_M] = feature(self.model, field_name, n, decay_rate, base_score_field,
                                  as_of, **partition)
        return found

    def priority(self, n: int = 10) -> list[_M]:
        """The ``n`` instances with the highest write-filter score (WriteFilterMixin)."""
        feature = self._feature("priority", "no WriteFilterMixin (priority() needs a model "
                                "with WriteFilterMixin)")
        found: list[_M] = feature(self.model, n)
        return found

    def _feature(self, name: str, lacking: str) -> Any:
        """A query method a field or behaviour registered in ``_meta.query_features``."""
        feature = self.model._meta.query_features.get(name)
        if feature is None:
            raise QueryException(f"{self.model.__name__}.query.{name}: the model has {lacking}")
        return feature

    # async reads (redis.asyncio): the same steps, awaited
    async def async_get(self, *conditions: Q, db_key: str | None = None,
                        redis_key: str | None = None, **kwargs: Any) -> _M | None:
        return await run_async(self._get_steps(conditions, db_key or redis_key, kwargs))

    async def async_filter(self, *conditions: Q, **kwargs: Any) -> list[_M]:
        return await self.filter(*conditions, **kwargs).async_list()

    async def async_all(self, **kwargs: Any) -> list[_M]:
        return await self.all(**kwargs).async_list()

    async def async_count(self, *conditions: Q, **kwargs: Any) -> int:
        return await self.filter(*conditions, **kwargs).async_count()

    async def async_keys(self, *conditions: Q, **kwargs: Any) -> list[str]:
        """``keys()`` awaited on the asyncio client (no hashes read when indexes cover it)."""
        return await self.filter(*conditions, **kwargs).async_keys()

    def __repr__(self) -> str:
        return f"<Query {self.model.__name__}>"
