"""Relationship: a reference to an instance of another (or the same) model.

The hash stores the related instance's key; an equality index (one set per
related key, ``$RelationshipF:Model:field:<key>``) answers
``filter(owner=instance)`` in Redis. Query results get their related
instances in one pipelined read per result batch (``after_load``); the load
continues along the related model's own relationships, each (model, field)
pair at most once per chain, so cycles end.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from popoto import encoding, keys, registry
from popoto.engine.sources import PLAN_MEMO_CONTEXT, Combine, KeyList, Program, SetSource, Source
from popoto.exceptions import QueryException
from popoto.fields.field import Field
from popoto.query import lookups as lk
from popoto.query.compiler import compile_q
from popoto.query.expressions import Q
from popoto.redis_db import get_client

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

    from popoto.fields.field import FieldOptions
    from popoto.models.base import Model

#: the Python type a field gives on an instance
_T = TypeVar("_T")
#: the related model
_R = TypeVar("_R", bound="Model")

BATCH = 1000  # keys per pipeline when loading related instances
OR_CHUNK = 1000  # sets per ZUNIONSTORE (Lua's unpack() limit is about 8000 values)


class _Dangling(str):
    """A stored related key whose instance does not exist: reads as None, saves unchanged."""


@dataclass
class _LoadChain:
    """State of one batched load: fields being resolved and instances loaded so far."""

    active: set[str] = dc_field(default_factory=set)
    seen: dict[str, Any] = dc_field(default_factory=dict)


_CHAIN: contextvars.ContextVar[_LoadChain | None] = contextvars.ContextVar(
    "popoto_relationship_chain", default=None)


def _or_of_sets(set_keys: list[str]) -> Source:
    """Union of many sets, as a tree of ZUNIONSTOREs of at most OR_CHUNK keys each."""
    parts: list[Source] = [SetSource(k) for k in set_keys]
    if not parts:
        return KeyList([])
    while len(parts) > 1:
        parts = [p[0] if len(p) == 1 else Combine("OR", p)
                 for p in (parts[i:i + OR_CHUNK] for i in range(0, len(parts), OR_CHUNK))]
    return parts[0]


class RelExact(lk.Exact):
    """``owner=instance`` / ``owner=key`` / ``owner=None``: compared by key."""

    def prepare(self, value: Any) -> Any:
        return _relationship(self).key_of(self.coerce(value))

    def matches(self, stored: Any) -> bool:
        same: bool = _relationship(self).key_of(stored) == self.value
        return same


class RelIn(lk.In):
    """``owner__in=[instances or keys]``."""

    def prepare(self, value: Any) -> Any:
        field = _relationship(self)
        return [field.key_of(v) for v in super().prepare(value)]

    def matches(self, stored: Any) -> bool:
        found: bool = _relationship(self).key_of(stored) in self.value
        return found


def _relationship(lookup: lk.Lookup) -> Relationship[Any]:
    """The field of a lookup registered on Relationship (RelExact, RelIn, RelatedFilter)."""
    return cast("Relationship[Any]", lookup.field)


@dataclass
class RelatedKeys(Source):
    """Instances whose relationship points at a related instance matching ``where``.

    The related query runs (once) when the plan is emitted; the matching
    related keys then select their index sets, unioned inside Redis.
    """

    field: Relationship[Any]
    where: Q
    _keys: list[str] | None = None

    def related_keys(self) -> list[str]:
        if self._keys is None:
            self._keys = self.field.related_model.query.filter(self.where).keys()
        return self._keys

    def emit(self, prog: Program) -> int:
        ns = prog.ns or None
        return _or_of_sets([self.field.index_key(k, ns) for k in self.related_keys()]).emit(prog)


class RelatedFilter(lk.Lookup):
    """``owner__<related lookup>=value``, e.g. ``owner__name='x'``."""

    def __init__(self, field: Relationship[Any], path: str, value: Any) -> None:
        self.field = field
        self.lookup_name = path
        self.value = value
        self.where = Q(**{path: value})
        try:
            self.compiled = compile_q(field.related_model, self.where)
        except QueryException as exc:
            raise QueryException(f"{field.label}__{path}: {exc}") from None

    def source(self, context: dict[str, Any]) -> Source | None:
        # one related query per plan, not one per tag group: the groups share the source
        memo = context.get(PLAN_MEMO_CONTEXT)
        if memo is None:
            return RelatedKeys(_relationship(self), self.where)
        # the plan's compilations resolve one Q: the same condition has the same value object
        token = (RelatedKeys, self.field.label, self.lookup_name, id(self.value))
        related = memo.get(token)
        if related is None:
            related = memo[token] = RelatedKeys(_relationship(self), self.where)
        found: Source = related
        return found

    def matches(self, stored: Any) -> bool:
        return stored is not None and self.compiled.full(stored)


class Relationship(Field[_T]):
    """A reference to an instance of ``model`` (a class, a registered name, or ``"self"``).

    Assign an instance or its key string; reading gives the related instance.
    Query results come with their related instances loaded in one pipelined
    read per batch (no N+1); an instance built otherwise loads its related
    instance lazily on first access. Loads follow the related model's own
    relationships once per (model, field) pair per load, so A -> B -> A and
    self references end; deeper levels load lazily when accessed.

    Query: ``filter(owner=instance)``, ``filter(owner='Owner:key')``,
    ``owner__in=[...]``, ``owner__isnull=True`` are answered from the index;
    ``filter(owner__name='x')`` runs the query on the related model and
    selects the instances pointing at its results.

    Deleting the related instance does not cascade (as in the spec: delete
    referencing instances first). A reference to a missing instance reads as
    ``None`` but its key stays stored, indexed and saved back unchanged
    (``related_key(instance)`` returns it), so it resolves again if an
    instance with that key is created. Changing the related instance's key
    (``migrate_key``) leaves references to the old key dangling likewise.
    """

    is_relationship = True
    key_kind = "RelationshipF"
    NULL_TOKEN = "%00"  # escape() never produces it: every '%' becomes '%25'

    # reads as the related instance, or None (none set, or its instance is gone); a model
    # given by name reads as Any
    @overload
    def __init__(self: Relationship[_R | None], model: type[_R], *, null: bool = True,
                 **options: Unpack[FieldOptions]) -> None: ...

    @overload
    def __init__(self: Relationship[Any], model: str, *, null: bool = True,
                 **options: Unpack[FieldOptions]) -> None: ...

    def __init__(self, model: type[Model] | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._related_spec = model
        self._related: type[Model] | None = None

    def clone(self) -> Self:
        new = super().clone()
        new._related = None  # "self" means the new owner
        return new

    @property
    def related_model(self) -> type[Model]:
        """The related model class (a name or ``"self"`` is resolved on first use)."""
        if self._related is None:
            spec = self._related_spec
            if isinstance(spec, str):
                spec = self.placed_model if spec == "self" else registry.get_model(spec)
            self._related = spec
        return self._related

    # --- values --------------------------------------------------------
    def key_of(self, value: Any) -> str | None:
        """The key a value refers to (instance -> its key), without any I/O."""
        if value is None or isinstance(value, str):
            return None if value is None else str(value)
        key: str = value.pk
        return key

    def related_key(self, instance: Model) -> str | None:
        """The related key held by ``instance`` (assigned or stored), without loading it."""
        state = instance.__dict__
        if self.name in state:
            return self.key_of(state[self.name])
        raw = state.get("_raw")
        data = raw.get(self.name) if raw else None
        if data is None:
            return self.key_of(self.get_default())
        # a stored hash was read: the instance has its key
        key: str | None = encoding.decode_field(data, cast(str, instance._redis_key), self.name)
        return key

    def coerce(self, value: Any) -> Any:
        related = self.related_model
        if value is None or isinstance(value, _Dangling):
            return value
        if registry.is_instance(value):
            if not isinstance(value, related):
                raise self.error(f"expected a {related.__name__} instance or key, got a "
                                 f"{type(value).__name__}", value)
            return value
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", "replace")
        if isinstance(value, str):
            if not related._meta.owns_key(value):
                raise self.error(f"{value!r} is not a {related.__name__} key", value)
            return value
        raise self.error(f"expected a {related.__name__} instance or key, got "
                         f"{type(value).__name__}", value)

    def to_db(self, value: Any) -> bytes:
        return encoding.pack(self.key_of(value))

    def from_db(self, value: Any) -> Any:
        return value

    def pre_save(self, instance: Model, value: Any, is_create: bool, skip_auto_now: bool) -> Any:
        """Keep a dangling key (which reads as None) instead of erasing it."""
        current = instance.__dict__.get(self.name)
        if value is None and isinstance(current, _Dangling):
            return current
        return value

    # --- descriptor ----------------------------------------------------
    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(self, instance: Model, owner: type[Any] | None = None) -> _T: ...

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        if instance is None:
            return self
        state = instance.__dict__
        value = state[self.name] if self.name in state else self.related_key(instance)
        if isinstance(value, _Dangling):
            return None
        if not isinstance(value, str):
            return value  # an instance or None
        found = self.related_model.query.get(db_key=value)
        state[self.name] = found if found is not None else _Dangling(value)
        return found

    def __set__(self, instance: Any, value: _T | str) -> None:  # an instance or its key
        instance.__dict__[self.name] = self.coerce(value)

    # --- index ---------------------------------------------------------
    def record_base(self, ns: str) -> str:
        return keys.SEP.join(["$RelationshipF", ns, self.name])

    def index_key(self, related_key: str | None, ns: str | None = None) -> str:
        """``$RelationshipF:<ns>:field:<escaped related key>`` (a NULL token for None)."""
        token = self.NULL_TOKEN if related_key is None else keys.escape(related_key)
        return keys.SEP.join(["$RelationshipF", ns or self.placed_model._meta.groups[0],
                              self.name, token])

    def contribute_save(self, instance: Model, value: Any, batch: Any) -> None:
        key = self.related_key(instance)  # also a dangling key, which reads as None
        super().contribute_save(instance, key, batch)
        if key is None:
            batch.add(self.name, "S", self.index_key(None, batch.ns), batch.key)

    def on_save(self, instance: Model, value: Any, batch: Any) -> None:
        batch.add(self.name, "S", self.index_key(value, batch.ns), batch.key)

    def unique_token(self, value: Any) -> str:
        return encoding.pack(self.key_of(value)).hex()

    # --- query ---------------------------------------------------------
    def related_lookup(self, path: str, value: Any) -> lk.Lookup:
        """``<field>__<path>``: a condition on the related instance."""
        return RelatedFilter(self, path, value)

    def lookup_source(self, lookup: lk.Lookup, context: dict[str, Any]) -> Source | None:
        ns = self.query_ns(context)
        if isinstance(lookup, RelExact):
            return SetSource(self.index_key(lookup.value, ns))
        if isinstance(lookup, RelIn):
            return _or_of_sets([self.index_key(k, ns) for k in lookup.value])
        if isinstance(lookup, lk.IsNull):
            return self.isnull_source(self.index_key(None, ns), ns, lookup.value)
        return None

    # --- batched loading -------------------------------------------------
    def after_load(self, objs: list[Any], options: dict[str, Any]) -> None:
        """Attach related instances to ``objs``: one pipelined read per BATCH missing keys."""
        chain = _CHAIN.get()
        token = None
        if chain is None:
            chain = _LoadChain()
            token = _CHAIN.set(chain)
        try:
            self._resolve(objs, options, chain)
        finally:
            if token is not None:
                _CHAIN.reset(token)

    def _resolve(self, objs: list[Any], options: dict[str, Any], chain: _LoadChain) -> None:
        if self.label in chain.active:
            return  # this field is already being resolved up the chain: stay lazy
        related = self.related_model
        models = [o for o in objs if registry.is_instance(o)]
        for obj in models:
            if obj._redis_key is not None:
                chain.seen.setdefault(obj._redis_key, obj)
        pending: dict[str, list[Any]] = {}
        for obj in models:
            if self.name in obj.__dict__ and not isinstance(obj.__dict__[self.name], str):
                continue  # already an instance (or None)
            key = self.related_key(obj)
            if key is None:
                continue
            if key in chain.seen and isinstance(chain.seen[key], related):
                obj.__dict__[self.name] = chain.seen[key]
            else:
                pending.setdefault(key, []).append(obj)
        if not pending:
            return
        client = get_client()
        loaded: list[Any] = []
        wanted = list(pending)
        for start in range(0, len(wanted), BATCH):
            chunk = wanted[start:start + BATCH]
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.hgetall(key)
            for key, raw in zip(chunk, pipe.execute()):
                target: Any = _Dangling(key)
                if raw and related._meta.owns_key(key):
                    target = related.from_redis(key, raw)
                    chain.seen[key] = target
                    loaded.append(target)
                for obj in pending[key]:
                    obj.__dict__[self.name] = target
        if loaded:
            chain.active.add(self.label)
            try:
                own = related._meta.query_option_owner
                related._meta.after_load(loaded, {k: v for k, v in options.items()
                                                  if own(k) is None})
            finally:
                chain.active.discard(self.label)


for _lookup in (RelExact, RelIn, lk.IsNull):
    Relationship.register_lookup(_lookup)
