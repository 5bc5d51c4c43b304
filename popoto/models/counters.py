"""Atomic counters: ``atomic_increment`` and its async twin (mixed into Model).

A field other indexes depend on goes through the save path instead, under
WATCH/MULTI. Otherwise one call of the increment script
(``popoto/lua/increment.lua``) reads the stored msgpack value, adds the delta
exactly, writes the new encoding back and moves the field's sorted-set entries to the
new score, so concurrent increments never lose an update and the index never
disagrees with the hash.

Exactness: Redis' Lua numbers are doubles, so ints and Decimals are added as
signed decimal strings (arbitrary precision). The new value is re-encoded
byte for byte the way :mod:`popoto.encoding` would encode it: minimal msgpack
ints, ext type 8 (decimal text) for ints beyond 64 bits, ext type 1 with
``str(Decimal)`` as payload for Decimals, float64 for floats.

KEYS: 1 instance key, 2 sorted-set key to use when the instance has no entry yet
      (KEYS[1] again when the field is not sorted: both keys are in the instance's tag
      group, so the call stays in one cluster slot)
ARGV: 1 field name, 2 kind ('i' int, 'f' float, 'd' Decimal), 3 delta (text),
      4 '1' when the field's sorted-set entries must follow the new score
Returns the new value as text (int digits, ``%.17g`` float, ``str(Decimal)``).
Errors (nothing written): ``POPOTO_MISSING <key>``, ``POPOTO_NOTNUM <hex of stored>``,
``POPOTO_RANGE <value>``.
"""

from __future__ import annotations

import math
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, localcontext
from typing import TYPE_CHECKING, Any, cast

import redis

from popoto import keys, protocol
from popoto.engine import claims, scripts
from popoto.engine.errors import translate_error
from popoto.engine.io import Steps, run, run_async
from popoto.query.async_exec import run_script_async
from popoto.redis_db import get_async_client
from popoto.engine.io import _queue as queue_commands
from popoto.engine.write import WriteBatch
from popoto.exceptions import FieldUsageError, ModelException
from popoto.fields.field import Field
from popoto.fields.sorted import SortedField
from popoto.protocol import text
from popoto.redis_db import get_client

if TYPE_CHECKING:
    import redis.asyncio.client

    from popoto.engine.scripts import AsyncScripting
    from popoto.models.base import Model

INCREMENT = scripts.LuaScript("increment")  # popoto/lua/increment.lua
NUMERIC_TYPES = (int, float, Decimal)
_KIND = {int: "i", float: "f", Decimal: "d"}
_PARSE = {int: int, float: float, Decimal: Decimal}
_EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)


def _counter_field(model: type[Model], field_name: str) -> Field[Any]:
    field = model._meta.get_field(field_name, " to increment")
    if field.is_key:
        raise FieldUsageError(f"{field.label}: a key field cannot be incremented "
                             f"(the instance key would change)")
    if field.type not in NUMERIC_TYPES:
        raise FieldUsageError(f"{field.label}: atomic_increment needs an int, float or Decimal "
                             f"field, not {field.type.__name__}")
    return field


def _coerce_delta(field: Field[Any], delta: Any) -> int | float | Decimal:
    if isinstance(delta, bool) or not isinstance(delta, NUMERIC_TYPES):
        raise field.error("atomic_increment delta must be an int, float or Decimal", delta,
                          FieldUsageError)
    if isinstance(delta, Decimal) and delta.is_snan():
        raise field.error("atomic_increment delta must be a number", delta)
    if isinstance(delta, (float, Decimal)) and not math.isfinite(delta):
        raise field.error("atomic_increment delta must be finite", delta)
    if field.type is int:
        if isinstance(delta, int):
            return delta
        if delta != int(delta):
            raise field.error("delta must be a whole number for an int field", delta)
        return int(delta)
    if field.type is float:
        try:
            return float(delta)
        except OverflowError:
            raise field.error("atomic_increment delta is out of the range of a float",
                              delta) from None
    return Decimal(repr(delta)) if isinstance(delta, float) else Decimal(delta)


def _scripted(field: Field[Any]) -> bool:
    """True when the increment script maintains everything that depends on the field.

    That is: no index reads the field, or only its own plain SortedField does
    (whose entry keeps its key and member; only the score moves).
    """
    cls = type(field)
    if cls.to_db is not Field.to_db or cls.from_db is not Field.from_db:
        return False
    owners = [o for o, deps in field.placed_model._meta.index_owners.items()
              if field.name in deps]
    if not owners:
        return True
    return (owners == [field.name] and isinstance(field, SortedField) and not field.unique
            and cls.on_save is SortedField.on_save)


def _add_exact(field: Field[Any], current: Any, delta: Any, key: str) -> Any:
    """``current + delta`` exactly, in the field's type (None counts as zero)."""
    if field.type is Decimal:
        with localcontext(_EXACT):
            return (current or Decimal(0)) + delta
    value = (current or 0) + delta
    if field.type is float:
        value = float(value)
        if not math.isfinite(value):
            raise field.error(f"incrementing {key!r} by {delta!r} overflows a float", value)
    return value


def watched_increment(model: type[Model], field: Field[Any], key: str, raw: dict[Any, Any],
                      delta: Any) -> tuple[Any, WriteBatch]:
    """(new value, partial save) for an increment through the save path (no I/O)."""
    if not raw:
        raise field.error(f"cannot increment by {delta!r}: no instance at {key!r}", None)
    current = model.from_redis(key, raw)
    value = _add_exact(field, getattr(current, field.name), delta, key)
    current.__dict__[field.name] = value
    batch = current.build_save(update_fields=[field.name], skip_auto_now=True)
    batch.must_exist = True
    return value, batch


def claims_before_steps(model: type[Model], batch: WriteBatch,
                        key: str) -> Steps[claims.Acquired]:
    """A sharded model's claims for a watched write (pending claims, lease deadline)."""
    if batch.external_claims and batch.claims:
        return (yield from claims.acquire_steps(model, batch, key))
    return claims.Acquired()


def claims_after_steps(batch: WriteBatch, acquired: claims.Acquired, reply: Any,
                       key: str) -> Steps[None]:
    """Settle a sharded model's claims once its watched write went through."""
    if batch.external_claims:
        yield from claims.settle_steps(batch.key, acquired.pending,
                                       claims.released_pairs(reply), key)


def increment_call(instance: Model, field: Field[Any], delta: Any) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the increment script for ``instance.<field> += delta``.

    KEYS[2] is the sorted set a sorted field's entry goes to (in the instance's
    tag group), else KEYS[1] again: every key of the call is in one cluster slot.
    """
    key = instance.pk
    zkey = (cast("SortedField[Any]", field).key_for(instance, keys.ns_of(key))  # is_sorted
            if field.is_sorted else key)
    return [key, zkey], [field.name, _KIND[field.type], _delta_text(delta),
                         "1" if field.is_sorted else "0"]


def prepare_increment(instance: Model, field_name: str, delta: Any,
                      pipeline: Any) -> tuple[Field[Any], Any, str, bool]:
    """Validate an increment: (field, coerced delta, instance key, runs as one script)."""
    field = _counter_field(type(instance), field_name)
    step = _coerce_delta(field, delta)
    key = instance._redis_key
    if key is None:
        raise field.error(f"cannot increment by {delta!r}: the instance is not saved yet",
                          getattr(instance, field_name), FieldUsageError)
    scripted = _scripted(field)
    if not scripted and pipeline is not None:
        raise field.error("indexes depend on this field, so its increment cannot be "
                          "queued on a pipeline", delta)
    return field, step, key, scripted


def _delta_text(delta: Any) -> str:
    return repr(delta) if isinstance(delta, float) else str(delta)


def parse_increment_reply(field: Field[Any], reply: Any) -> Any:
    return _PARSE[field.type](text(reply))


def remember_increment(instance: Model, field: Field[Any], value: Any) -> None:
    """Make the in-memory instance show the value just written."""
    instance.__dict__[field.name] = value
    raw = instance.__dict__.get("_raw")
    if raw is not None:
        raw[field.name] = field.to_db(value)


def increment_error(field: Field[Any], key: str, delta: Any,
                    exc: redis.exceptions.ResponseError) -> ModelException:
    """The ModelException for an error reply of the increment script."""
    tag, detail = protocol.error_tag(exc) or ("", str(exc))
    if tag == protocol.ERR_MISSING:
        return field.error(f"cannot increment by {delta!r}: no instance at {key!r}", None)
    if tag == protocol.ERR_NOTNUM:
        return field.error(f"cannot increment by {delta!r}: the value stored at {key!r} is "
                           f"not numeric (raw bytes {detail or '?'})")
    if tag == protocol.ERR_RANGE:
        return field.error(f"incrementing {key!r} by {delta!r} gives a value that cannot be "
                           f"stored or scored", detail)
    return field.error(f"increment of {key!r} by {delta!r} failed: {detail}")



class CounterMixin:
    """``atomic_increment`` and ``async_atomic_increment`` (see the module docstring)."""

    def atomic_increment(self, field_name: str, delta: int | float | Decimal = 1,
                         pipeline: Any = None) -> Any:
        """Add ``delta`` to a numeric field in Redis atomically; returns the new value.

        One server-side script reads the stored value, adds exactly (ints and
        Decimals of any size, floats as IEEE doubles), writes it back and moves
        the field's sorted-set score, so concurrent increments never lose an
        update. A missing value counts as zero. No save hooks run and
        ``auto_now`` fields are not touched.

        With ``pipeline`` the script call is only queued (the instance is not
        updated; the pipeline's reply is the new value as text) and the
        pipeline is returned. A field that other indexes depend on (an
        IndexedField, a unique field, a composite index or another field's
        partition) is updated through an optimistic WATCH/MULTI transaction
        that reuses the save path instead, and cannot be queued on a pipeline.
        """
        instance = cast("Model", self)  # mixed into Model only
        field, step, key, scripted = prepare_increment(instance, field_name, delta, pipeline)
        if not scripted:
            value = self._increment_watched(field, step)
        else:
            keys_, args = increment_call(instance, field, step)
            client = get_client()
            if pipeline is not None:
                INCREMENT.queue(pipeline, client, keys_, args)
                return pipeline
            try:
                reply = INCREMENT(client, keys_, args)
            except redis.exceptions.ResponseError as exc:
                raise increment_error(field, key, delta, exc) from None
            value = parse_increment_reply(field, reply)
        remember_increment(instance, field, value)
        return value

    def _increment_watched(self, field: Field[Any], delta: Any) -> Any:
        """Increment through the save path under WATCH, retrying when the hash changed.

        The transaction touches the instance's tag group only (one cluster slot);
        a sharded model's unique claims are taken before it and settled after it.
        """
        instance = cast("Model", self)  # mixed into Model only
        model = type(instance)
        key = cast(str, instance._redis_key)  # saved: prepare_increment checked it
        client = get_client()
        with client.pipeline(transaction=True) as pipe:
            while True:
                pipe.watch(key)
                # a watched pipeline runs commands at once (until multi()): a dict
                raw = cast("dict[Any, Any]", pipe.hgetall(key))
                value, batch = watched_increment(model, field, key, raw, delta)
                acquired = run(claims_before_steps(model, batch, key))
                try:
                    scripts.SAVE.ensure_loaded(client)
                    pipe.multi()
                    save = scripts.SAVE.command(*batch.save_args(acquired.deadline))
                    queue_commands(pipe, [save])
                    (reply,) = pipe.execute()
                except redis.exceptions.WatchError:
                    run(claims.rollback_steps(key, acquired.pending))
                    continue
                except redis.exceptions.NoScriptError:
                    run(claims.rollback_steps(key, acquired.pending))
                    scripts.SAVE.forget()  # server lost its scripts: reload and retry
                    continue
                except redis.exceptions.ResponseError as exc:
                    run(claims.rollback_steps(key, acquired.pending))
                    raise translate_error(model, exc, batch) from None
                except BaseException:
                    run(claims.rollback_steps(key, acquired.pending))
                    raise
                run(claims_after_steps(batch, acquired, reply, key))
                return value

    async def async_atomic_increment(self, field_name: str,
                                     delta: int | float | Decimal = 1) -> Any:
        """Async ``atomic_increment()`` (same script, same exactness, same errors)."""
        instance = cast("Model", self)  # mixed into Model only
        field, step, key, scripted = prepare_increment(instance, field_name, delta, None)
        if scripted:
            try:
                reply = await run_script_async(INCREMENT,
                                               *increment_call(instance, field, step))
            except redis.exceptions.ResponseError as exc:
                raise increment_error(field, key, delta, exc) from None
            value = parse_increment_reply(field, reply)
        else:
            value = await self._async_increment_watched(field, step)
        remember_increment(instance, field, value)
        return value

    async def _async_increment_watched(self, field: Field[Any], delta: Any) -> Any:
        """Async twin of ``_increment_watched`` (WATCH/MULTI in one tag group)."""
        instance = cast("Model", self)  # mixed into Model only
        model = type(instance)
        key = cast(str, instance._redis_key)  # saved: prepare_increment checked it
        client = get_async_client()
        scripting = cast("AsyncScripting", client)  # both client kinds have script_load
        async with client.pipeline(transaction=True) as cluster_or_plain:
            # redis-py's asyncio ClusterPipeline has watch/multi/hgetall too (types-redis
            # declares them on the plain Pipeline only)
            pipe = cast("redis.asyncio.client.Pipeline[bytes]", cluster_or_plain)
            while True:
                await pipe.watch(key)
                value, batch = watched_increment(model, field, key,
                                                      await pipe.hgetall(key), delta)
                acquired = await run_async(claims_before_steps(model, batch, key))
                try:
                    pipe.multi()
                    save = scripts.SAVE.command(*batch.save_args(acquired.deadline))
                    queue_commands(pipe, [save])
                    (reply,) = await pipe.execute()
                except redis.exceptions.WatchError:
                    await run_async(claims.rollback_steps(key, acquired.pending))
                    continue
                except redis.exceptions.NoScriptError:
                    await run_async(claims.rollback_steps(key, acquired.pending))
                    await scripting.script_load(scripts.SAVE.body)
                    continue
                except redis.exceptions.ResponseError as exc:
                    await run_async(claims.rollback_steps(key, acquired.pending))
                    raise translate_error(model, exc, batch) from None
                except BaseException:
                    await run_async(claims.rollback_steps(key, acquired.pending))
                    raise
                await run_async(claims_after_steps(batch, acquired, reply, key))
                return value
