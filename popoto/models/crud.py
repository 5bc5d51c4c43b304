"""Class-level CRUD shortcuts, written once as steps and run sync or async.

``get_or_create`` / ``update_or_create`` and their ``async_`` twins drive the
same step generators (:mod:`popoto.engine.io`): the read, the create that must
not overwrite, the re-read after a concurrent creator won. How a round trip is
sent (and a lost script cache reloaded) is the driver's job, identical for both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar, cast

from popoto.engine.io import Steps, run, run_async
from popoto.exceptions import UniqueViolation

if TYPE_CHECKING:
    from typing_extensions import Self

    from popoto.models.base import Model

#: a model class
_M = TypeVar("_M", bound="Model")


def _get(model: type[_M], lookup: dict[str, Any]) -> Steps[_M | None]:
    return model.query._get_steps((), None, dict(lookup))


def get_or_create_steps(model: type[_M], defaults: dict[str, Any] | None,
                        lookup: dict[str, Any]) -> Steps[tuple[_M, bool]]:
    """``(instance, created)``; a concurrent creator of the same key wins cleanly."""
    found = yield from _get(model, lookup)
    if found is not None:
        return found, False
    instance = model(**{**lookup, **(defaults or {})})
    try:
        yield from instance.save_steps(None, False, False, None, False,
                                       {"_must_not_exist": True})
        return instance, True
    except UniqueViolation:
        found = yield from _get(model, lookup)
        if found is None:
            raise
        return found, False


def update_or_create_steps(model: type[_M], defaults: dict[str, Any] | None,
                           lookup: dict[str, Any]) -> Steps[tuple[_M, bool]]:
    """Update the instance matching ``lookup`` with ``defaults``, or create it."""
    found, created = yield from get_or_create_steps(model, defaults, lookup)
    if created:
        return found, True
    for name, value in (defaults or {}).items():
        setattr(found, name, value)
    yield from found.save_steps(None, False, False, None, False, {})
    return found, False


class CrudMixin:
    """create / load / get_or_create / update_or_create and their async twins.

    Mixed into Model only: ``cls`` is always a model class (hence the casts to
    ``type[Model]``, and of the results back to the caller's model, ``Self``).
    """

    @classmethod
    def create(cls, pipeline: Any = None, **kwargs: Any) -> Self:
        """Create and save; raises UniqueViolation if the key already exists."""
        instance = cast("type[Model]", cls)(**kwargs)
        instance.save(pipeline=pipeline, _must_not_exist=True)
        return cast("Self", instance)

    @classmethod
    async def async_create(cls, pipeline: Any = None, **kwargs: Any) -> Self:
        """Async ``create()``: raises UniqueViolation if the key already exists."""
        instance = cast("type[Model]", cls)(**kwargs)
        await instance.async_save(pipeline=pipeline, _must_not_exist=True)
        return cast("Self", instance)

    @classmethod
    def load(cls, db_key: str | None = None, **kwargs: Any) -> Self | None:
        """Load one instance by ``db_key`` or by its key field values (None if absent)."""
        return cast("Self | None", run(cast("type[Model]", cls).query._get_steps(
            (), db_key, {} if db_key is not None else kwargs)))

    @classmethod
    async def async_load(cls, db_key: str | None = None, **kwargs: Any) -> Self | None:
        """Async ``load()`` by ``db_key`` or key field values (None if absent)."""
        return cast("Self | None", await run_async(cast("type[Model]", cls).query._get_steps(
            (), db_key, {} if db_key is not None else kwargs)))

    @classmethod
    def get_or_create(cls, defaults: dict[str, Any] | None = None,
                      **lookup: Any) -> tuple[Self, bool]:
        """Return ``(instance, created)``; safe against a concurrent creator of the same key."""
        return cast("tuple[Self, bool]",
                    run(get_or_create_steps(cast("type[Model]", cls), defaults, lookup)))

    @classmethod
    async def async_get_or_create(cls, defaults: dict[str, Any] | None = None,
                                  **lookup: Any) -> tuple[Self, bool]:
        """Async ``get_or_create()``: the same steps, awaited."""
        return cast("tuple[Self, bool]", await run_async(
            get_or_create_steps(cast("type[Model]", cls), defaults, lookup)))

    @classmethod
    def update_or_create(cls, defaults: dict[str, Any] | None = None,
                         **lookup: Any) -> tuple[Self, bool]:
        """Update the matching instance with ``defaults`` or create it."""
        return cast("tuple[Self, bool]",
                    run(update_or_create_steps(cast("type[Model]", cls), defaults, lookup)))

    @classmethod
    async def async_update_or_create(cls, defaults: dict[str, Any] | None = None,
                                     **lookup: Any) -> tuple[Self, bool]:
        """Async ``update_or_create()``: the same steps, awaited."""
        return cast("tuple[Self, bool]", await run_async(
            update_or_create_steps(cast("type[Model]", cls), defaults, lookup)))
