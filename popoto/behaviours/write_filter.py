"""WriteFilterMixin: drop low-value saves, keep high-value instances in a priority set.

The model implements ``compute_filter_score() -> float`` (a model without it raises
``NotImplementedMethodError``, a ModelException and a NotImplementedError). On ``save()``:

* score < ``_wf_min_threshold`` (default 0.1), or a score of None: nothing is
  written and ``save()`` returns False (``save(pipeline=p)`` returns ``p`` with
  nothing queued). The internal :class:`SkipSaveException` never escapes ``save()``.
* score >= ``_wf_priority_threshold`` (default 0.7): the instance is also a member
  of the sorted set ``$Priority:<Model>`` scored by its filter score, written in
  the same script call as the save; a later save scoring lower removes it, and
  so does ``delete()``. A sharded model has one such set per tag group,
  ``$Priority:{Model#k}``, in the group (slot) of its members.
* ``save(skip_write_filter=True)`` bypasses the minimum (the priority set is
  still maintained from the score).

``bulk_create``/``bulk_update`` apply the same filter per instance. Partial
writes made by field methods (``touch()``, ``CappedListProxy.push()``) are not
filtered; they re-score the priority entry like any save.

``_min_threshold`` / ``_priority_threshold`` are the deprecated names of the two
thresholds: a model setting them gets a DeprecationWarning and the values apply.

``Model.query.priority(n)`` returns the n instances with the highest filter
score (ties by key), dropping entries whose instance has expired. For a
sharded model it asks every group for its n best in one pipelined round trip
and merges them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from popoto import keys
from popoto.encoding import is_finite_number as _finite
from popoto.engine import scripts
from popoto.engine.io import Steps, run
from popoto.engine.merge import best_rows
from popoto.engine.write import ZSET
from popoto.exceptions import (
    ModelException,
    NotImplementedMethodError,
    PopotoError,
    QueryException,
)
from popoto.query.queryset import QuerySet

if TYPE_CHECKING:
    from popoto.engine.write import WriteBatch
    from popoto.models.base import Model
    from popoto.models.options import ModelOptions

logger = logging.getLogger("popoto.behaviours")

#: Owner name of the priority entry in each instance's ``@idx`` records.
OWNER = "@write_filter"

# popoto/lua/write_filter_priority.lua: the n best members of a priority zset whose hash
# exists
PRIORITY = scripts.LuaScript("write_filter_priority")


class SkipSaveException(PopotoError):
    """Internal signal: the write filter rejected a save. Never escapes ``save()``."""

    def __init__(self, score: float | None) -> None:
        super().__init__(f"filter score {score!r} is below the minimum")
        self.score = score


#: deprecated threshold names -> the names Popoto 1.x reads
_ALIASES = (("_min_threshold", "_wf_min_threshold"),
            ("_priority_threshold", "_wf_priority_threshold"))
_NO_SCORE = object()


class WriteFilterMixin:
    """Skip saves scoring below ``_wf_min_threshold``; rank the best in a priority set.

    Class attributes (override per model): ``_wf_min_threshold`` (0.1),
    ``_wf_priority_threshold`` (0.7), or their deprecated names ``_min_threshold`` /
    ``_priority_threshold``; the model must implement ``compute_filter_score()``
    (None counts as below the minimum).
    """

    popoto_behaviour = True
    _wf_min_threshold: float = 0.1
    _wf_priority_threshold: float = 0.7
    _min_threshold: float = 0.1  # deprecated name of _wf_min_threshold
    _priority_threshold: float = 0.7  # deprecated name of _wf_priority_threshold
    #: query methods of the models (set below: ``priority``)
    popoto_query_features: ClassVar[dict[str, Callable[..., Any]]]
    # provided by the host Model
    _meta: ClassVar[ModelOptions]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for old, new in _ALIASES:
            if old in cls.__dict__:
                warnings.warn(f"{cls.__name__}.{old} is deprecated; name it {new}",
                              DeprecationWarning, stacklevel=3)
                if new not in cls.__dict__:
                    setattr(cls, new, cls.__dict__[old])
            setattr(cls, old, getattr(cls, new))  # the old name reads the value in force
        low, high = cls._wf_min_threshold, cls._wf_priority_threshold
        if not _finite(low) or not _finite(high) or low > high:
            raise ModelException(
                f"{cls.__name__}: _wf_min_threshold and _wf_priority_threshold must be finite "
                f"numbers with _wf_min_threshold <= _wf_priority_threshold, got {low!r} and "
                f"{high!r}")

    def compute_filter_score(self) -> float | None:
        """The value of this instance, compared with the thresholds on every save."""
        raise NotImplementedMethodError(f"{type(self).__name__} uses WriteFilterMixin and must "
                                        f"implement compute_filter_score()")

    # --- scoring ---------------------------------------------------------
    def filter_score(self) -> float | None:
        """``compute_filter_score()``, checked to be a finite number (or None: no score)."""
        score = self.compute_filter_score()
        if score is None:
            return None
        if not _finite(score):
            raise ModelException(f"{type(self).__name__}.compute_filter_score() must return a "
                                 f"finite number or None, got {score!r}")
        return float(score)

    def _check_write_filter(self) -> float | None:
        """The filter score; raises SkipSaveException when it is None or below the minimum."""
        score = self.filter_score()
        if score is None or score < self._wf_min_threshold:
            raise SkipSaveException(score)
        return score

    @classmethod
    def priority_key(cls, ns: str | None = None) -> str:
        """The priority set of tag group ``ns`` (may be omitted for an unsharded model)."""
        if ns is None:
            ns = cls._meta.single_group("priority_key() (one set per group: priority_keys())")
        return keys.behaviour_key("Priority", ns)

    @classmethod
    def priority_keys(cls) -> list[str]:
        """The priority set of every tag group (one for an unsharded model)."""
        return [cls.priority_key(ns) for ns in cls._meta.groups]

    # --- behaviour hooks ---------------------------------------------------
    def behaviour_allow_save(self, skip_write_filter: bool = False, **_options: Any) -> bool:
        try:
            score = self.filter_score() if skip_write_filter else self._check_write_filter()
        except SkipSaveException as skipped:
            logger.debug("write filter skipped saving %r (score %r < %r)", self,
                         skipped.score, self._wf_min_threshold)
            return False
        self.__dict__["_write_filter_score"] = score
        return True

    def behaviour_on_save(self, batch: WriteBatch) -> None:
        score = self.__dict__.pop("_write_filter_score", _NO_SCORE)
        if score is _NO_SCORE:
            score = self.filter_score()
        batch.own(OWNER)
        if score is not None and score >= self._wf_priority_threshold:
            batch.add(OWNER, ZSET, self.priority_key(batch.ns), batch.key, repr(score))

    def behaviour_on_delete(self, batch: WriteBatch) -> None:
        batch.own(OWNER)


def priority(model: type[Model], n: int = 10,
             _within: QuerySet[Any] | None = None) -> list[Model]:
    """The ``n`` instances with the highest filter score (>= the priority threshold).

    ``_within`` (a QuerySet: ``Model.query.filter(...).priority(n)``) ranks only its
    matches: their scores are read with ZMSCORE, so the filter's size bounds the work.
    """
    if not issubclass(model, WriteFilterMixin):
        raise QueryException(f"{model.__name__}.query.priority() needs a model with "
                             f"WriteFilterMixin")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise QueryException(f"{model.__name__}.query.priority: n must be an int >= 0, "
                             f"got {n!r}")
    if n == 0:
        return []
    if _within is not None:
        return run(_priority_within_steps(model, _within, n))
    return run(_priority_steps(model, QuerySet(model), n))


#: ``Model.query.priority(n)`` (registered in ``_meta.query_features`` by compile_hooks)
WriteFilterMixin.popoto_query_features = {"priority": priority}


def _priority_steps(model: type[WriteFilterMixin], qs: QuerySet[Any], n: int
                    ) -> Steps[list[Any]]:
    """Each group's n best in one round trip (one script call per group, each in its own
    slot), merged; then the winners' hashes (``qs``: a QuerySet of ``model``)."""
    replies = yield [PRIORITY.command([key], [n]) for key in model.priority_keys()]
    return (yield from qs._hydrate_steps(best_rows(replies, n)))


def _priority_within_steps(model: type[WriteFilterMixin], qs: QuerySet[Any], n: int
                           ) -> Steps[list[Any]]:
    """The n best of a filter's matches (``qs``, a QuerySet of ``model``): their scores in
    each group's priority set (ZMSCORE), best first with ties by key; then hashes until n
    live instances."""
    matches: list[str] = yield from qs._keys_steps()
    by_group: dict[str, list[str]] = {}
    for key in matches:
        by_group.setdefault(keys.ns_of(key), []).append(key)
    groups = list(by_group.items())
    replies = yield [("zmscore", (model.priority_key(ns), members)) for ns, members in groups]
    flat = [[m, s] for (_ns, members), scores in zip(groups, replies)
            for m, s in zip(members, scores) if s is not None]
    ranked = best_rows([[x for row in flat for x in row]], len(flat))
    found: list[Any] = []
    for start in range(0, len(ranked), n):
        found += yield from qs._hydrate_steps(ranked[start:start + n])
        if len(found) >= n:
            break
    return found[:n]
