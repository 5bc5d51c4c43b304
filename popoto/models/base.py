"""Model: the instance lifecycle (the metaclass, ModelBase, is in metaclass.py).

Fields, composite indexes and behaviours contribute to a
:class:`~popoto.engine.write.WriteBatch`; ``save()`` and ``delete()`` turn it
into one script call, executed on a pipeline they create or queued on the
caller's pipeline. The same path serves create, update, partial update, key
migration and bulk operations.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, cast

import redis

from popoto import encoding, keys, registry
from popoto.engine import claims, scripts
from popoto.engine.errors import translate_error
from popoto.engine.io import Steps, run
from popoto.engine.write import COMPANION_FIELD, IDX_PREFIX, LINKED_KEY, WriteBatch
from popoto.exceptions import (
    FieldUsageError,
    KeyMutationError,
    ModelException,
)
from popoto.fields.decaying import DecayMethodsMixin
from popoto.models.async_ops import AsyncModelMixin
from popoto.models.bulk import BulkMixin
from popoto.models.counters import CounterMixin
from popoto.models.crud import CrudMixin
from popoto.models.maintenance import MaintenanceMixin
from popoto.models.metaclass import ModelBase
from popoto.models.options import ModelOptions
from popoto.protocol import TTL_AT, TTL_SECONDS

if TYPE_CHECKING:
    from typing_extensions import Self

    from popoto.fields.relationship import Relationship
    from popoto.query.manager import QueryDescriptor

logger = logging.getLogger("popoto.models")


class Model(CrudMixin, BulkMixin, CounterMixin, AsyncModelMixin, MaintenanceMixin,
            DecayMethodsMixin, metaclass=ModelBase):
    """Base class of every Popoto model: an instance is a Redis hash at ``Name:k1:k2``."""

    _meta: ClassVar[ModelOptions]
    #: ``Book.query`` is a ``Query[Book]`` (the metaclass sets one per class)
    query: ClassVar[QueryDescriptor]
    objects: ClassVar[QueryDescriptor]
    # per-instance state, set in __init__ / _load straight into __dict__
    _raw: dict[str, bytes] | None
    _redis_key: str | None
    _ttl: float | None
    _expire_at: _dt.datetime | None

    def __init__(self, **kwargs: Any) -> None:
        meta = self._meta
        if meta.abstract:
            raise ModelException(f"{type(self).__name__} is abstract and cannot be instantiated")
        state = self.__dict__
        state["_raw"] = None
        state["_redis_key"] = None
        state["_ttl"] = kwargs.pop("_ttl", meta.ttl)
        state["_expire_at"] = kwargs.pop("_expire_at", None)
        unknown = kwargs.keys() - meta.fields.keys()
        if unknown:
            meta.get_field(sorted(unknown)[0])  # raises, suggesting the closest field
        for name, field in meta.fields.items():
            value = kwargs[name] if name in kwargs else field.get_default()
            value = field.coerce(value)
            field.validate(value, null_check=False)
            state[name] = value
        self._post_init()

    def _post_init(self) -> None:
        """Hook for behaviours (e.g. wrapping capped lists); called after init and load."""
        for hook in self._meta.hooks.post_init:
            hook(self)

    @classmethod
    def from_redis(cls, redis_key: str,
                   raw: dict[bytes, bytes] | dict[str, bytes] | dict[bytes | str, bytes]
                   ) -> Self:
        """Build an instance from a stored hash; field values decode on first access.

        ``redis_key`` must be an instance key of this model (ModelException otherwise):
        an instance only ever reads, writes or deletes its own model's keys.
        """
        if not cls._meta.owns_key(redis_key):
            raise ModelException(f"{cls.__name__}.from_redis: {encoding.short_repr(redis_key)} "
                                 f"is not a {cls.__name__} key")
        try:
            # str keys raise AttributeError, handled below (EAFP: bytes is the fast path)
            decoded = {k.decode(): v for k, v in raw.items()}  # type: ignore[union-attr]
        except AttributeError:  # str field names (a client with decode_responses)
            decoded = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
        return cls._load(redis_key, decoded)

    @classmethod
    def _load(cls, redis_key: str, decoded: dict[str, bytes]) -> Self:
        """``from_redis`` for a key already known to be the model's and str field names
        (a query's hydration checks a whole page's keys at once)."""
        obj = cls.__new__(cls)
        state = obj.__dict__
        state["_raw"] = decoded
        state["_redis_key"] = redis_key
        state["_ttl"] = cls._meta.ttl
        state["_expire_at"] = None
        obj._post_init()
        return obj

    # --- identity ------------------------------------------------------
    def _key_values(self) -> list[Any]:
        return [getattr(self, n) for n in self._meta.key_field_names]

    @property
    def db_key(self) -> keys.DB_key:
        """The Redis key computed from the current KeyField values (a ``str`` subclass
        with ``.redis_key``)."""
        values = self._key_values()
        missing = [n for n, v in zip(self._meta.key_field_names, values) if v is None]
        if missing:
            raise ModelException(f"{type(self).__name__}: key field(s) {', '.join(missing)} "
                                 f"have no value, so the instance has no key yet")
        return keys.DB_key(self._meta.instance_key(values))

    @property
    def pk(self) -> str:
        """The key the instance is stored at (or would be, once saved)."""
        return self._redis_key or self.db_key.redis_key

    @property
    def is_persisted(self) -> bool:
        return self._redis_key is not None

    def __repr__(self) -> str:
        try:
            key = self.pk
        except ModelException:
            key = "<no key>"
        return f"<{type(self).__name__} {key}>"

    def __str__(self) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Model) or type(other) is not type(self):
            return False
        if other is self:
            return True
        try:
            return self.pk == other.pk
        except ModelException:
            return False

    def __hash__(self) -> int:
        try:
            return hash((type(self).__name__, self.pk))
        except ModelException:
            return id(self)

    # --- validation ----------------------------------------------------
    def _check_ttl(self) -> None:
        if self._ttl and self._expire_at:
            raise ModelException(f"{type(self).__name__}: set either _ttl or _expire_at, not both")

    def is_valid(self, null_check: bool = True) -> bool:
        """True when every field value is valid; problems are logged, not raised."""
        try:
            self._check_ttl()
            for name, field in self._meta.fields.items():
                field.validate(field.coerce(getattr(self, name)), null_check=null_check)
        except ModelException as exc:
            logger.warning("invalid %s: %s", type(self).__name__, exc)
            return False
        return True

    # --- write path ----------------------------------------------------
    def build_save(self, update_fields: Iterable[str] | None = None, migrate_key: bool = False,
                   skip_auto_now: bool = False, must_not_exist: bool = False) -> WriteBatch:
        """Validate, encode and describe the save as a WriteBatch (no I/O)."""
        meta = self._meta
        self._check_ttl()
        is_create = self._redis_key is None
        if update_fields is not None:
            update_fields = list(update_fields)
            unknown = [f for f in update_fields if f not in meta.fields]
            if unknown:
                raise ModelException(f"{type(self).__name__}: unknown field(s) in update_fields: "
                                     f"{', '.join(unknown)}")
        names = meta.fields if update_fields is None else update_fields
        state = self.__dict__
        values: dict[str, bytes] = {}  # encoded as they are validated
        for name in names:
            field = meta.fields[name]
            value = field.pre_save(self, getattr(self, name), is_create, skip_auto_now)
            value = field.coerce(value)
            field.validate(value)
            state[name] = value
            values[name] = field.encode(value)
        key = self.db_key.redis_key
        old_key = self._redis_key
        migrating = old_key is not None and old_key != key
        if migrating and not migrate_key:
            raise KeyMutationError(
                f"{type(self).__name__}: key changed from {old_key!r} to {key!r}; "
                f"save(migrate_key=True) moves the instance and its index entries"
            )
        if migrating and update_fields is not None:
            return self.build_save(None, True, skip_auto_now, must_not_exist)
        ns = keys.ns_of(key)
        sharded = meta.sharded
        # a sharded instance whose new key falls in another tag group (another slot) is
        # written there first and its old copy deleted after (see _sharded_save_steps)
        # (old_key is not None: implied by migrating, spelled out for the type checker)
        relocating = (migrating and sharded and old_key is not None
                      and keys.ns_of(old_key) != ns)
        batch = WriteBatch(key=key, class_set=keys.class_set_key(ns), ns=ns,
                           external_claims=sharded,
                           old_key=old_key if old_key is not None and migrating
                           and not relocating else "",
                           is_create=is_create, must_not_exist=must_not_exist or migrating,
                           update_fields=None if update_fields is None else frozenset(names),
                           bases=meta.record_bases(ns))
        batch.mapping = values
        touched = None if update_fields is None else set(update_fields)
        for field in meta.index_fields:
            if touched is None or meta.index_owners[field.name] & touched:
                field.contribute_save(self, getattr(self, field.name), batch)
        for index in meta.composite_indexes:
            if touched is None or index.depends_on & touched:
                index.contribute_save(self, batch)
        for hook in meta.hooks.on_save:
            hook(self, batch)
        raw = self.__dict__.get("_raw")
        if raw and not relocating:
            batch.previous = [(o, r) for o in (*batch.owners, *batch.migrated_owners, *(
                meta.index_owners if migrating else ())) if (r := raw.get(IDX_PREFIX + o))]
        if relocating:
            companions = [o for o, rows in batch.entries.items()
                          if any(r[0] in (LINKED_KEY, COMPANION_FIELD) for r in rows)]
            if companions:
                raise KeyMutationError(
                    f"{type(self).__name__}: cannot move {old_key!r} to {key!r}: the new key "
                    f"is in another tag group and {', '.join(companions)} keep per-instance "
                    f"data beside the hash, which cannot move across slots atomically")
        elif migrating:
            batch.migrated_owners = list(meta.index_owners)
        if self._ttl:
            batch.ttl = (TTL_SECONDS, int(self._ttl))
        elif self._expire_at:
            batch.ttl = (TTL_AT, int(self._expire_at.timestamp()))
        return batch

    def _saved(self, batch: WriteBatch) -> None:
        """Record the state just written (called once the write is executed or queued)."""
        raw = self.__dict__.get("_raw") or {}
        if batch.update_fields is None:
            raw = dict(batch.mapping)
        else:
            raw = {**raw, **batch.mapping}
        for name, record in batch.records.items():  # what the next write will clean up
            if record is None:
                raw.pop(name, None)
            else:
                raw[name] = record
        self.__dict__["_raw"] = raw
        self.__dict__["_redis_key"] = batch.key

    def _gate(self, **options: Any) -> bool:
        """Behaviour gates (e.g. a write filter) may veto a save: False skips it."""
        for gate in self._meta.hooks.allow_save:
            if not gate(self, **options):
                return False
        return True

    def save(
        self,
        pipeline: Any = None,
        ignore_errors: bool = False,
        skip_auto_now: bool = False,
        update_fields: Iterable[str] | None = None,
        migrate_key: bool = False,
        **options: Any,
    ) -> Any:
        """Write the instance, its class-set entry and every index entry atomically.

        One round trip (one script call). With ``pipeline`` the call is only
        queued and the pipeline is returned. Returns True on success and False
        when ``ignore_errors`` swallowed an error or a behaviour vetoed the save.
        ``update_fields=[]`` is a no-op.
        """
        return run(self.save_steps(pipeline, ignore_errors, skip_auto_now, update_fields,
                                   migrate_key, options))

    def save_steps(self, pipeline: Any, ignore_errors: bool, skip_auto_now: bool,
                   update_fields: Iterable[str] | None, migrate_key: bool,
                   options: dict[str, Any]) -> Steps[Any]:
        """The save as I/O-free steps; ``save`` and ``async_save`` run the same steps."""
        if update_fields is not None and not list(update_fields):
            return pipeline if pipeline is not None else True
        must_not_exist = options.pop("_must_not_exist", False)
        if not self._gate(**options):
            return pipeline if pipeline is not None else False
        try:
            batch = self.build_save(update_fields, migrate_key, skip_auto_now, must_not_exist)
            if not batch.external_claims:
                yield from self._write_steps(scripts.SAVE, batch.save_args(), pipeline, batch)
            else:
                yield from self._sharded_save_steps(batch, pipeline)
        except ModelException as exc:
            if not ignore_errors or isinstance(exc, KeyMutationError):
                raise
            logger.error("save of %r failed: %s", self, exc)
            return pipeline if pipeline is not None else False
        self._saved(batch)
        return pipeline if pipeline is not None else True

    def _save_fields(self, names: Iterable[str], pipeline: Any = None,
                     skip_auto_now: bool = False, action: str = "this") -> WriteBatch:
        """Save just ``names`` of an instance that must still exist, in one script call.

        The partial save behind field methods (``touch``, ``push``): every field and
        behaviour hook runs as for ``save(update_fields=names)`` (index entries, event
        stream, TTL refresh), but behaviour gates (a write filter) cannot veto it.
        FieldUsageError for an unsaved instance, ModelException when it is gone.
        """
        if self._redis_key is None:
            raise FieldUsageError(f"Cannot call {action}() on an unsaved "
                                  f"{type(self).__name__} instance; save it first")
        batch = self.build_save(update_fields=list(names), skip_auto_now=skip_auto_now)
        batch.must_exist = True
        run(self._write_steps(scripts.SAVE, batch.save_args(), pipeline, batch))
        self._saved(batch)
        return batch

    def _write_steps(self, script: scripts.LuaScript, call: tuple[list[str], list[Any]],
                     pipeline: Any, batch: WriteBatch | None = None) -> Steps[Any]:
        """Run ``script`` now (one round trip), or only queue it on the caller's pipeline."""
        keys_, args = call
        if pipeline is not None:
            script.queue_eval(pipeline, keys_, args)
            return None
        try:
            (reply,) = yield [script.command(keys_, args)]
        except redis.exceptions.ResponseError as exc:
            raise translate_error(type(self), exc, batch) from None
        return reply

    def _sharded_save_steps(self, batch: WriteBatch, pipeline: Any) -> Steps[None]:
        """Save of a sharded model: global claims around the script; relocation across groups."""
        claims.check_pipeline(type(self), batch, pipeline)
        old_key = self._redis_key
        relocating = old_key is not None and old_key != batch.key and not batch.old_key
        if pipeline is not None:
            if relocating:
                raise KeyMutationError(
                    f"{type(self).__name__}: moving {old_key!r} to another tag group takes "
                    f"two writes; call save(migrate_key=True) without a pipeline")
            yield from self._write_steps(scripts.SAVE, batch.save_args(), pipeline, batch)
            return
        yield from claims.claimed_save_steps(type(self), batch, old_key or batch.key,
                                             translate_error)
        if relocating and old_key is not None:  # (implied by relocating)
            old_ns = keys.ns_of(old_key)
            old = WriteBatch(key=old_key, class_set=keys.class_set_key(old_ns), ns=old_ns,
                             external_claims=True, bases=self._meta.record_bases(old_ns))
            # behaviour owners too (e.g. a write filter's priority entry in the old group)
            old.owners = list(dict.fromkeys([*self._meta.index_owners, *batch.owners]))
            raw = self.__dict__.get("_raw") or {}  # still the old copy's: declare its keys
            old.previous = [(o, r) for o in old.owners if (r := raw.get(IDX_PREFIX + o))]
            (reply,) = yield [scripts.DELETE.command(*old.delete_args())]
            _existed, released = claims.released_after_delete(reply)
            yield from claims.settle_steps(old.key, [], released, old_key)

    def build_delete(self) -> WriteBatch:
        """Describe the delete (every index owner, behaviour hooks) as a WriteBatch (no I/O)."""
        meta = self._meta
        key = self._redis_key or self.db_key.redis_key
        ns = keys.ns_of(key)
        batch = WriteBatch(key=key, class_set=keys.class_set_key(ns), ns=ns,
                           external_claims=meta.sharded, bases=meta.record_bases(ns))
        batch.owners = list(meta.index_owners)
        batch.extra_keys = [k for f in meta.index_fields for k in f.delete_keys(ns)]
        for hook in meta.hooks.on_delete:
            hook(self, batch)
        batch.owners += [o for o in batch.entries if o not in batch.owners]
        raw = self.__dict__.get("_raw")
        if raw:
            batch.previous = [(o, r) for o in batch.owners if (r := raw.get(IDX_PREFIX + o))]
        return batch

    def delete(self, pipeline: Any = None) -> Any:
        """Delete the hash, its class-set entry and every index entry it owns.

        Returns True if the instance existed, False otherwise (the pipeline
        when one is given).
        """
        return run(self.delete_steps(pipeline))

    def delete_steps(self, pipeline: Any) -> Steps[Any]:
        """The delete as I/O-free steps; ``delete`` and ``async_delete`` run the same steps."""
        batch = self.build_delete()
        result = yield from self._write_steps(scripts.DELETE, batch.delete_args(), pipeline)
        self.__dict__["_redis_key"] = None
        if pipeline is not None:
            return pipeline
        existed, released = claims.released_after_delete(result)
        if released:  # a sharded model's claims live in other slots: release them now
            yield from claims.settle_steps(batch.key, [], released, batch.key)
        return existed

    # --- introspection -------------------------------------------------
    @classmethod
    def get_info(cls) -> dict[str, Any]:
        meta = cls._meta
        return {
            "name": cls.__name__,
            "fields": meta.field_names,
            "query_filters": meta.query_filters(),
            "key_fields": list(meta.key_field_names),
            "sorted_fields": meta.sorted_field_names,
            "indexed_fields": meta.indexed_field_names,
            "geo_fields": meta.geo_field_names,
            "relationship_fields": meta.relationship_field_names,
            "unique_fields": meta.unique_field_names,
            "indexes": [(list(i.field_names), i.unique) for i in meta.composite_indexes],
            "ttl": meta.ttl,
            "order_by": meta.order_by,
        }

    def to_dict(self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                relationships: bool = False, max_depth: int | None = None,
                _seen: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Field values as a dict (public fields; related instances as keys or nested dicts).

        With ``relationships=True`` related instances nest as dicts down to
        ``max_depth`` levels (None: unlimited); deeper levels, and an instance
        already being serialised further up (a cycle), appear as their key.
        """
        names = list(include) if include is not None else list(self._meta.explicit_fields)
        skip = set(exclude or ())
        if relationships:
            with contextlib.suppress(ModelException):  # an instance without a key yet
                _seen = _seen | {self.pk}
        out: dict[str, Any] = {}
        for name in names:
            if name in skip:
                continue
            field = self._meta.fields.get(name)
            if field is None:
                raise ModelException(f"{type(self).__name__}.to_dict: unknown field {name!r}")
            if not field.is_relationship:
                out[name] = getattr(self, name)
                continue
            value = cast("Relationship[Any]", field).related_key(self)  # no I/O
            if (value is not None and relationships and value not in _seen
                    and (max_depth is None or max_depth > 0)):
                related = getattr(self, name)  # loads lazily when not loaded yet
                if related is not None:
                    value = related.to_dict(relationships=True, _seen=_seen,
                                            max_depth=None if max_depth is None else max_depth - 1)
            out[name] = value
        return out



registry.set_model_base(Model)
