"""Bulk writes, raw updates and atomic counters (mixed into Model).

Bulk operations reuse the single write path: each instance is described by
the same :class:`~popoto.engine.write.WriteBatch` that ``save()`` and
``delete()`` build, and the resulting script calls are sent ``batch_size`` at
a time in non-transactional pipelines. Every instance's write is atomic on its
own (one script call, hash and all index entries together); a bulk call as a
whole is not a transaction.

Sharded models (tag groups) keep each unique claim in its value's group, so
their claims are settled around the script (:mod:`popoto.engine.claims`). A
batch then runs every instance's steps side by side (:func:`popoto.engine.io.lockstep`): all
claims of the batch in one round trip, all scripts in the next, all settling
in a third. Every script call, and every WATCH/MULTI, touches the keys of one
tag group only (one cluster slot).

Failure policy:

* Everything that can be checked without Redis (instance types, field names,
  values) is checked for ALL instances before anything is written, so bad
  input raises :class:`ModelException` and writes nothing.
* Conflicts only Redis can see (a unique value or key already taken, possibly
  by another instance of the same call) do not stop the run: the other
  instances are written, and afterwards one :class:`BulkWriteError` lists
  every failed instance with its :class:`UniqueViolation`.
* ``bulk_update`` skips (and does not count) instances deleted since they were
  loaded: it never resurrects a hash.

The planning half (``plan_*``, :class:`BulkOutcome`) does no I/O, so the async
variants in :mod:`popoto.models.async_ops` share it and only swap the client.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import redis

from popoto import keys, protocol, registry
from popoto.engine import claims, io, scripts
from popoto.engine.errors import translate_error
from popoto.engine.io import Command, Steps, chunks, run
from popoto.engine.write import WriteBatch
from popoto.exceptions import BulkWriteError, ModelException
from popoto.protocol import text
from popoto.query.queryset import QuerySet

if TYPE_CHECKING:
    from typing_extensions import Self

    from popoto.models.base import Model

logger = logging.getLogger("popoto.models")
T = TypeVar("T")

RAW_UPDATE = scripts.LuaScript("raw_update")  # popoto/lua/raw_update.lua
BULK_SAVE = scripts.LuaScript("bulk_save")  # popoto/lua/bulk_save.lua

_INT64_MIN, _UINT64_END = -(2**63), 2**64


# --- planning (no I/O) ---------------------------------------------------

@dataclass
class Call:
    """One script call of a bulk operation and the instance it writes."""

    script: scripts.LuaScript
    instance: Any
    batch: WriteBatch

    def command(self) -> Command:
        """The SAVE or DELETE script call (a sharded model's claims excepted)."""
        batch = self.batch
        return self.script.command(*(batch.delete_args() if self.script is scripts.DELETE
                                     else batch.save_args()))


def check_batch_size(model: type[Model], batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ModelException(f"{model.__name__}: batch_size must be a positive int, "
                             f"got {batch_size!r}")


def _instances(model: type[Model], items: Any, operation: str) -> list[Model]:
    """The instances of a bulk call (a single instance is accepted too), type-checked."""
    found = [items] if registry.is_instance(items) else list(items)
    for obj in found:
        if type(obj) is not model:
            raise ModelException(
                f"{model.__name__}.{operation}: every instance must be a {model.__name__}, "
                f"got {obj!r}"
            )
    return found


def _save_call(instance: Model, batch: WriteBatch) -> Call:
    return Call(scripts.SAVE, instance, batch)


def _delete_call(instance: Model) -> Call:
    return Call(scripts.DELETE, instance, instance.build_delete())


def plan_create(model: type[Model], instances: Iterable[Model]) -> list[Call]:
    """Validate and describe every create (raises before any write on bad input)."""
    calls = []
    for instance in _instances(model, instances, "bulk_create"):
        if instance._gate():
            calls.append(_save_call(instance, instance.build_save(must_not_exist=True)))
    return calls


def check_updates(model: type[Model], updates: dict[str, Any],
                  operation: str = "bulk_update") -> dict[str, Any]:
    """Coerce and validate ``updates`` once; key fields and unknown names are refused."""
    meta = model._meta
    clean = {}
    for name, value in updates.items():
        field = meta.get_field(name)
        if field.is_key:
            raise ModelException(f"{field.label}: {operation} cannot change a key field "
                                 f"(use save(migrate_key=True) per instance)")
        value = field.coerce(value)
        field.validate(value)
        clean[name] = value
    return clean


def plan_update(model: type[Model], instances: Iterable[Model],
                updates: dict[str, Any]) -> list[Call]:
    """Apply ``updates`` in memory and describe partial saves of just those fields."""
    clean = check_updates(model, updates)
    found = _instances(model, instances, "bulk_update")
    for instance in found:
        if instance._redis_key is None:
            raise ModelException(f"{model.__name__}.bulk_update: {instance!r} was never saved")
    names = list(clean)
    calls = []
    for instance in found:
        for name, value in clean.items():
            instance.__dict__[name] = copy.copy(value)
        if instance._gate():
            batch = instance.build_save(update_fields=names)
            batch.must_exist = True
            calls.append(_save_call(instance, batch))
    return calls


def plan_delete(model: type[Model], instances: Iterable[Model]) -> list[Call]:
    return [_delete_call(i) for i in _instances(model, instances, "bulk_delete")]


def delete_needs_data(model: type[Model]) -> bool:
    """True when a behaviour's delete hook reads the instance (so hashes must be loaded)."""
    return bool(model._meta.hooks.on_delete)


def shells(model: type[Model], keys_: Sequence[Any],
           raws: Sequence[dict[Any, Any]] | None = None) -> list[Model]:
    """Instances standing for ``keys_`` (with their hashes when ``raws`` is given)."""
    out = []
    for i, key in enumerate(keys_):
        skey = text(key)
        out.append(model.from_redis(skey, raws[i] if raws is not None else {}))
    return out


class BulkOutcome:
    """Collects the replies of a bulk run: what was written, what failed and why."""

    def __init__(self, model: type[Model], operation: str) -> None:
        self.model = model
        self.operation = operation
        self.written: list[Model] = []
        self.count = 0
        self.failures: list[tuple[Model, ModelException]] = []

    def settle(self, calls: Sequence[Call], replies: Sequence[Any]) -> None:
        for call, reply in zip(calls, replies):
            if isinstance(reply, ModelException):  # e.g. a claim refused before the write
                self.failures.append((call.instance, reply))
            elif isinstance(reply, Exception):
                if (self.operation == "bulk_update"
                        and (protocol.error_tag(reply) or ("",))[0] == protocol.ERR_MISSING):
                    continue  # deleted since it was loaded: nothing to update
                if not isinstance(reply, redis.exceptions.ResponseError):
                    raise reply
                error = translate_error(self.model, reply, call.batch)
                if not isinstance(error, ModelException):
                    error = ModelException(f"{self.model.__name__}: write of "
                                           f"{call.batch.key!r} failed: {reply}")
                self.failures.append((call.instance, error))
            elif call.script is scripts.DELETE:
                self.count += 1 if reply else 0
                call.instance.__dict__["_redis_key"] = None
            else:
                call.instance._saved(call.batch)
                self.written.append(call.instance)
                self.count += 1

    def finish(self) -> None:
        """Raise BulkWriteError listing every failure (after all batches ran)."""
        if not self.failures:
            return
        shown = "; ".join(str(e) for _i, e in self.failures[:3])
        more = f" (and {len(self.failures) - 3} more)" if len(self.failures) > 3 else ""
        raise BulkWriteError(
            f"{self.model.__name__}.{self.operation}: {len(self.failures)} instance(s) failed, "
            f"{self.count} written: {shown}{more}",
            self.failures, self.count,
        )


# --- execution: step generators whose replies carry errors inline --------------

def _untranslated(_model: Any, exc: Exception, _batch: Any) -> Exception:
    return exc  # BulkOutcome translates script errors itself


def _sharded_delete_steps(call: Call) -> Steps[bool]:
    (reply,) = yield [call.command()]
    existed, released = claims.released_after_delete(reply)
    if released:  # the claims live in their values' groups (other slots)
        yield from claims.settle_steps(call.batch.key, [], released, call.batch.key)
    return existed


def call_steps(model: type[Model], call: Call) -> Steps[Any]:
    """One write of a sharded model: its unique claims are acquired before the
    script and settled after it (see :mod:`popoto.engine.claims`)."""
    if call.script is scripts.DELETE:
        return _sharded_delete_steps(call)
    alias = call.instance._redis_key or call.batch.key
    return claims.claimed_save_steps(model, call.batch, alias, _untranslated)


def chunk_steps(model: type[Model], calls: Sequence[Call]) -> Steps[list[Any]]:
    """The replies of ``calls`` (errors inline, in order).

    Unsharded: the chunk's saves are ONE bulk_save script call (each instance written
    exactly as save() writes it, its own error inline), its deletes one pipeline of
    script calls. Sharded: every call's claims are taken, its script run and its
    claims settled, each phase batched over the whole chunk (three round trips when
    nothing is contended).
    """
    if model._meta.sharded:
        return (yield from io.lockstep([call_steps(model, c) for c in calls]))
    saves = [i for i, c in enumerate(calls) if c.script is scripts.SAVE]
    others = [i for i, c in enumerate(calls) if c.script is not scripts.SAVE]
    commands = [c.command() for c in (calls[i] for i in others)]
    if saves:
        commands.append(bulk_save_call([calls[i].batch for i in saves]))
    replies = yield commands
    out: list[Any] = [None] * len(calls)
    for i, reply in zip(others, replies):
        out[i] = reply
    if saves:
        written = replies[-1]
        if isinstance(written, Exception):  # the whole call failed (e.g. NOSCRIPT, OOM)
            written = [written] * len(saves)
        for i, reply in zip(saves, written):
            out[i] = reply
    return out


def bulk_save_call(batches: Sequence[WriteBatch]) -> Command:
    """One BULK_SAVE call writing ``batches`` (instances of one tag group) in order."""
    keys_: list[str] = []
    argv: list[Any] = [len(batches)]
    for batch in batches:
        batch_keys, batch_argv = batch.save_args()
        argv += [len(keys_), len(batch_argv), *batch_argv]
        keys_ += batch_keys
    return BULK_SAVE.command(keys_, argv)


def run_calls(calls: Sequence[Call], batch_size: int, outcome: BulkOutcome) -> None:
    for chunk in chunks(calls, batch_size):
        outcome.settle(chunk, io.run_inline(chunk_steps(outcome.model, chunk)))


def delete_keys_steps(model: type[Model],
                      keys_: Sequence[Any]) -> Steps[tuple[list[Call], list[Any]]]:
    """Delete instances by key: (calls, replies). Their hashes are read first only
    when a behaviour's delete hook needs them."""
    raws = None
    if delete_needs_data(model):
        raws = yield [("hgetall", (k,)) for k in keys_]
        for reply in raws:
            if isinstance(reply, Exception):
                raise reply
    calls = [_delete_call(i) for i in shells(model, keys_, raws)]
    return calls, (yield from chunk_steps(model, calls))


def delete_all_steps(model: type[Model], batch_size: int) -> Steps[BulkOutcome]:
    """``delete_all`` as steps: one SSCAN step of a class set, then the delete of what it
    found, until every group's class set is walked (sync and async drive the same)."""
    outcome = BulkOutcome(model, "delete_all")
    for set_key in model._meta.class_set_keys():
        cursor = 0
        while True:
            (reply,) = yield [("sscan", (set_key, cursor, None, batch_size))]
            if isinstance(reply, Exception):
                raise reply
            cursor, found = int(reply[0]), list(reply[1])
            if found:
                outcome.settle(*(yield from delete_keys_steps(model, found)))
            if cursor == 0:
                break
    return outcome


def _delete_keys(model: type[Model], keys_: Sequence[Any], outcome: BulkOutcome) -> None:
    outcome.settle(*io.run_inline(delete_keys_steps(model, keys_)))


def resolve_delete_targets(model: type[Model], items: Any) -> tuple[list[Any], bool]:
    """(instances or keys, are_keys): a QuerySet is resolved to keys without loading hashes."""
    if isinstance(items, QuerySet):
        if items.model is not model:
            raise ModelException(f"{model.__name__}.bulk_delete: the query is for "
                                 f"{items.model.__name__}")
        return items.keys(), True
    return _instances(model, items, "bulk_delete"), False


class BulkMixin:
    """bulk_create / bulk_update / bulk_delete / delete_all / raw_update / atomic_increment."""

    @classmethod
    def bulk_create(cls, instances: Iterable[Self], batch_size: int = 1000) -> list[Self]:
        """Create many instances, ``batch_size`` script calls per pipeline.

        Every instance is validated before anything is written. An instance
        whose key or unique value is taken is not written; the others are,
        then :class:`BulkWriteError` lists the failures. Returns the created
        instances (a behaviour may veto some, which are left out).
        """
        model = cast("type[Model]", cls)  # mixed into Model only
        check_batch_size(model, batch_size)
        calls = plan_create(model, cast("Iterable[Model]", instances))
        outcome = BulkOutcome(model, "bulk_create")
        run_calls(calls, batch_size, outcome)
        outcome.finish()
        return cast("list[Self]", outcome.written)  # the given instances

    @classmethod
    def bulk_update(cls, queryset_or_instances: Any, batch_size: int = 1000,
                    **updates: Any) -> int:
        """Set ``updates`` on every instance (or query match) and save just those fields.

        Values are validated once, before anything is written; key fields
        cannot be bulk-updated. Instances deleted meanwhile are skipped (no
        hash is recreated). Returns the number of instances updated.
        """
        model = cast("type[Model]", cls)  # mixed into Model only
        check_batch_size(model, batch_size)
        if not updates:
            return 0
        calls = plan_update(model, queryset_or_instances, updates)
        outcome = BulkOutcome(model, "bulk_update")
        run_calls(calls, batch_size, outcome)
        outcome.finish()
        return outcome.count

    @classmethod
    def bulk_delete(cls, queryset_or_instances: Any, batch_size: int = 1000) -> int:
        """Delete instances (or every match of a query) with all their index entries.

        A query is resolved to keys without loading hashes (unless a behaviour's
        delete hook needs them). Returns the number of instances that existed.
        """
        model = cast("type[Model]", cls)  # mixed into Model only
        check_batch_size(model, batch_size)
        targets, are_keys = resolve_delete_targets(model, queryset_or_instances)
        outcome = BulkOutcome(model, "bulk_delete")
        if are_keys:
            for chunk in chunks(targets, batch_size):
                _delete_keys(model, chunk, outcome)
        else:
            run_calls(plan_delete(model, targets), batch_size, outcome)
        outcome.finish()
        return outcome.count

    @classmethod
    def delete_all(cls, batch_size: int = 1000) -> int:
        """Delete every instance of the model and its index entries; returns how many existed.

        Walks the class set of every tag group with SSCAN (never KEYS/SMEMBERS),
        deleting one batch of keys at a time; instances created while it runs
        may survive.
        """
        model = cast("type[Model]", cls)  # mixed into Model only
        check_batch_size(model, batch_size)
        outcome = io.run_inline(delete_all_steps(model, batch_size))
        outcome.finish()
        return outcome.count

    @classmethod
    def raw_update(cls, redis_keys: Iterable[Any], batch_size: int = 1000,
                   **field_values: Any) -> int:
        """Write field values straight into existing hashes: no hooks, no index updates.

        For migrations: values are coerced, validated and encoded like
        ``save()`` would (bad input writes nothing), but indexes are left as
        they are -- run ``rebuild_indexes()`` afterwards if indexed fields
        changed. Keys whose hash does not exist are skipped, never created.
        Returns the number of hashes updated.
        """
        model = cast("type[Model]", cls)  # mixed into Model only
        check_batch_size(model, batch_size)
        meta = model._meta
        encoded: list[Any] = []
        for name, value in check_updates(model, field_values, "raw_update").items():
            encoded += [name, meta.fields[name].encode(value)]
        targets = raw_update_keys(model, redis_keys)
        if not encoded or not targets:
            return 0
        return run(raw_update_steps(targets, encoded, batch_size))


def raw_update_keys(model: type[Model], redis_keys: Iterable[Any]) -> list[str]:
    """Instance keys for raw_update (instances are accepted too); foreign keys are refused."""
    meta = model._meta
    out = []
    single = isinstance(redis_keys, (str, bytes)) or registry.is_instance(redis_keys)
    items: Iterable[Any] = [redis_keys] if single else redis_keys
    for item in items:
        if registry.is_instance(item):
            item = item.pk
        key = item.decode() if isinstance(item, bytes) else item
        if not isinstance(key, str) or not meta.owns_key(key):
            expected = " or ".join(f"{ns}:..." for ns in meta.groups[:2])
            more = " ..." if len(meta.groups) > 2 else ""
            raise ModelException(f"{model.__name__}.raw_update: {item!r} is not a "
                                 f"{model.__name__} key (expected {expected}{more})")
        out.append(key)
    return out


def raw_update_steps(targets: Sequence[str], encoded: list[Any], batch_size: int) -> Steps[int]:
    """HSET ``encoded`` into existing hashes: one script call per tag group of each batch."""
    updated = 0
    for chunk in chunks(targets, batch_size):
        by_group: dict[str, list[str]] = {}
        for key in chunk:
            by_group.setdefault(keys.ns_of(key), []).append(key)
        replies = yield [RAW_UPDATE.command(group, encoded) for group in by_group.values()]
        updated += sum(replies)
    return updated


