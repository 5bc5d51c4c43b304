"""Partial saves used by field methods (``touch``, ``push``): the single write path, no veto."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..exceptions import FieldUsageError
from ..models import scripts
from ..query.io import run

if TYPE_CHECKING:
    from ..models.base import Model
    from ..models.write import WriteBatch


def save_fields(instance: Model, names: Iterable[str], pipeline: Any = None,
                skip_auto_now: bool = False, action: str = "this") -> WriteBatch:
    """Save just ``names`` of an instance that must still exist, in one script call.

    Every field and behaviour hook runs as for ``save(update_fields=names)``
    (index entries, event stream, TTL refresh), but behaviour gates (a write
    filter) cannot veto it. Raises FieldUsageError for an unsaved instance and
    ModelException when the instance no longer exists in Redis.
    """
    if instance._redis_key is None:
        raise FieldUsageError(
            f"Cannot call {action}() on an unsaved {type(instance).__name__} instance; "
            f"save it first"
        )
    batch = instance.build_save(update_fields=list(names), skip_auto_now=skip_auto_now)
    batch.must_exist = True
    run(instance._write_steps(scripts.SAVE, batch.save_args(), pipeline, batch))
    instance._saved(batch)
    return batch
