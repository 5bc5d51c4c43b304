"""AccessTrackerMixin: count and log the reads that hydrate instances.

Every query result that builds instances (``get``, ``filter``, ``all``,
iteration, ``first``/``last``, ``exists`` - anything that loads hashes, but not
``count``/``keys``/``values``) is a read of each instance (``on_read()``, from the
``behaviour_after_load`` hook). As in Popoto 1.x, a read is only *staged* on the
loaded object: ``confirm_access()`` records the staged reads (and returns how
many), ``discard_staged_access()`` drops them, ``Model.confirm_accesses(objs)``
records those of many objects in one round trip. With ``_record_on_read = True``
on the model every read is recorded at once instead: ONE pipelined round trip per
query result (one script call per 500 instances of one tag group in it, so every
call touches one cluster slot), never one per object. ``.no_track()`` on the query
skips both.

Per instance:

* ``access_count`` / ``last_accessed`` (epoch seconds, None if never) are two
  fields of the instance hash itself (``@access:count``, ``@access:last``),
  updated with HINCRBY/HSET, so loading an instance reads them for free and
  they disappear and expire with the hash. The values on a loaded instance
  include the access that loaded it.
* the access log: the last ``_max_access_log`` (default 100) access times,
  oldest first, in the LIST ``$AccessLog:<instance key>:log`` - an ``L`` entry
  of the write path, so it is deleted with the instance, renamed by a key
  migration and given the instance's TTL by every save and every access.

The script only touches instances whose hash still exists, so tracking can
never resurrect a deleted or expired instance.

``_access_staging = False`` is the older spelling of ``_record_on_read = True``.
``record_access()`` records an access directly in either mode.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from popoto import keys
from popoto.engine import scripts
from popoto.engine.io import execute
from popoto.engine.write import LINKED_KEY
from popoto.exceptions import FieldUsageError, ModelException
from popoto.redis_db import get_client

if TYPE_CHECKING:
    import datetime

    from popoto.engine.write import WriteBatch
    from popoto.models.options import ModelOptions

OWNER = "@access"
COUNT_FIELD = "@access:count"
LAST_FIELD = "@access:last"
#: Instances per script call when recording the accesses of a query result.
CHUNK = 500

# popoto/lua/access_tracker.lua: one access of each (instance hash, access log)
ACCESS = scripts.LuaScript("access_tracker")


def record_accesses(objs: Iterable[object], when: float | None = None) -> list[int]:
    """Record one access for each saved instance in ``objs`` (one round trip).

    Returns the new access counts (0 for an instance whose hash is gone) and
    updates ``access_count``/``last_accessed`` on the objects.
    """
    # (instance, its key) of each saved tracked instance
    found = [(o, o._redis_key) for o in objs
             if isinstance(o, AccessTrackerMixin) and o._redis_key]
    if not found:
        return []
    now = time.time() if when is None else when
    by_group: dict[str, list[int]] = {}  # one script call touches one tag group (slot)
    for i, (_obj, key) in enumerate(found):
        by_group.setdefault(keys.ns_of(key), []).append(i)
    order: list[int] = []
    commands = []
    for positions in by_group.values():
        for start in range(0, len(positions), CHUNK):
            part = positions[start:start + CHUNK]
            cap = min(type(found[i][0])._max_access_log for i in part)
            keys_: list[str] = []
            for i in part:
                obj, key = found[i]
                keys_ += [key, obj.access_log_key(key)]
            commands.append(ACCESS.command(keys_, [repr(now), cap, COUNT_FIELD, LAST_FIELD]))
            order += part
    counts = [0] * len(found)
    replies = execute(get_client(), commands)
    for i, count in zip(order, (c for reply in replies for c in reply)):
        counts[i] = int(count)
    for (obj, _key), count in zip(found, counts):
        if count:
            obj.__dict__["_access_count"] = count
            obj.__dict__["_last_accessed"] = now
    return counts


def _staged_times(obj: object) -> list[float]:
    """Pop the times of the reads staged on ``obj`` (a list; one time is one read)."""
    staged = obj.__dict__.pop("_staged_access", None)
    if staged is None:
        return []
    return list(staged) if isinstance(staged, list) else [float(staged)]


class AccessTrackerMixin:
    """Record reads of instances: ``access_count``, ``last_accessed``, a capped log.

    Class attributes: ``_max_access_log`` (100), ``_record_on_read`` (False: reads
    are staged until ``confirm_access()``; True: recorded at once), ``_access_staging``
    (True; False is the same as ``_record_on_read = True``). See the module docstring.
    """

    popoto_behaviour = True
    _max_access_log: int = 100
    _record_on_read: bool = False
    _access_staging: bool = True
    # provided by the host Model
    _meta: ClassVar[ModelOptions]
    _redis_key: str | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cap = cls._max_access_log
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise ModelException(f"{cls.__name__}: _max_access_log must be a positive int, "
                                 f"got {cap!r}")

    # --- values ----------------------------------------------------------
    @property
    def access_count(self) -> int:
        """Recorded accesses (as of the last load or access recorded by this process)."""
        count: int = self.__dict__.get("_access_count", 0)
        return count

    @property
    def last_accessed(self) -> float | None:
        """Epoch time of the last recorded access, None if never accessed."""
        return self.__dict__.get("_last_accessed")

    def access_log_key(self, instance_key: str | None = None) -> str:
        key = instance_key or self._access_needs_key("access_log_key")
        return keys.companion_key("AccessLog", key, "log")

    def access_log(self) -> list[float]:
        """The recorded access times, oldest first (at most ``_max_access_log``)."""
        if self._redis_key is None:
            return []
        return [float(t) for t in get_client().lrange(self.access_log_key(), 0, -1)]

    # --- recording -------------------------------------------------------
    def record_access(self) -> int:
        """Record one access now (one script call); returns the new count (0 if gone)."""
        self._access_needs_key("record_access")
        return record_accesses([self])[0]

    def _access_needs_key(self, action: str) -> str:
        """The instance key; FieldUsageError (a TypeError) when the instance is unsaved."""
        if self._redis_key is None:
            raise FieldUsageError(f"Cannot call {action}() on an unsaved "
                                  f"{type(self).__name__} instance; save it first")
        return self._redis_key

    @classmethod
    def _records_on_read(cls) -> bool:
        return bool(cls._record_on_read) or not cls._access_staging

    def on_read(self) -> None:
        """A read of this instance: staged (recorded by ``confirm_access()``), or recorded
        at once when the model sets ``_record_on_read``. Queries call it for you."""
        if type(self)._records_on_read():
            if self._redis_key is not None:
                record_accesses([self])
            return
        self.__dict__.setdefault("_staged_access", []).append(time.time())

    def confirm_access(self) -> int:
        """Record the reads staged on this object; returns how many were recorded (0 when
        none was staged or the instance is gone). FieldUsageError (a TypeError) when the
        instance is unsaved."""
        self._access_needs_key("confirm_access")
        staged = _staged_times(self)
        if not staged:
            return 0
        return sum(1 for count in record_accesses([self] * len(staged), staged[-1]) if count)

    def discard_staged_access(self) -> bool:
        """Drop the staged reads without recording them; False if none was staged."""
        return bool(self.__dict__.pop("_staged_access", None))

    @classmethod
    def confirm_accesses(cls, objs: Iterable[object]) -> int:
        """Record the staged reads of many instances in one round trip per staging time;
        returns how many were recorded."""
        staged: dict[float, list[object]] = {}
        for obj in objs:
            for when in _staged_times(obj):
                staged.setdefault(when, []).append(obj)
        done = 0
        for when, group in staged.items():
            done += sum(1 for c in record_accesses(group, when) if c)
        return done

    # --- behaviour hooks ---------------------------------------------------
    def behaviour_post_init(self) -> None:
        raw = self.__dict__.get("_raw")
        if raw:
            count = raw.get(COUNT_FIELD)
            last = raw.get(LAST_FIELD)
            if count is not None:
                self.__dict__["_access_count"] = int(count)
            if last is not None:
                self.__dict__["_last_accessed"] = float(last)

    @staticmethod
    def behaviour_after_load(objs: list[Any], options: dict[str, Any]) -> None:
        if options.get("no_track"):
            return
        found = [o for o in objs if isinstance(o, AccessTrackerMixin)]
        if not found:
            return
        if not type(found[0])._records_on_read():
            now = time.time()
            for obj in found:
                obj.__dict__.setdefault("_staged_access", []).append(now)
            return
        record_accesses(found)  # one round trip for the whole result

    def behaviour_on_save(self, batch: WriteBatch) -> None:
        log_key = self.access_log_key(batch.key)
        batch.add(OWNER, LINKED_KEY, log_key, "log")
        if batch.old_key:  # the hash is rewritten at its new key: carry the counters
            state = self.__dict__
            # encoded like the field values (ASCII: the same bytes reach Redis as for str)
            if "_access_count" in state:
                batch.mapping[COUNT_FIELD] = str(state["_access_count"]).encode()
            if state.get("_last_accessed") is not None:
                batch.mapping[LAST_FIELD] = repr(state["_last_accessed"]).encode()
        ttl: float | None = getattr(self, "_ttl", None)
        if ttl:
            batch.command("EXPIRE", log_key, int(ttl))
            return
        expire_at: datetime.datetime | None = getattr(self, "_expire_at", None)
        if expire_at:
            batch.command("EXPIREAT", log_key, int(expire_at.timestamp()))

    def behaviour_on_delete(self, batch: WriteBatch) -> None:
        batch.own(OWNER)
