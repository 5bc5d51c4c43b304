"""Global unique claims for sharded models: a two-phase protocol around the save script.

A sharded model keeps the claim of a unique value in the tag group of the
value (``$UniqueF:{Model#g}:email``, g from the value), so uniqueness stays
global while instances spread over groups. The claim and the instance are
then usually in different cluster slots, and no single script can hold both.
The protocol keeps the guarantee of the unsharded script ("a live instance
holds the value, or nobody does") like this:

1. **Claim** (one script per claim, in the claim's slot). A free claim, one we
   already hold, one held by our previous key (key migration) or one proven
   stale becomes *pending*: ``~<deadline ms>~<our key>``, a lease of
   :data:`LEASE_MS`. A claim another instance holds comes back as ``HELD``;
   a live pending claim of another writer as ``BUSY`` (a violation: another
   save of that value is in flight).
2. **Prove stale.** For a ``HELD`` claim we read the holder's own ownership
   record (``@idx:<owner>`` in its hash). If the holder still lists the claim,
   the value is taken: :class:`UniqueViolation`. If not (holder deleted,
   expired, or it changed value and crashed before releasing), the claim is
   taken over with a compare-and-set on the exact value we saw, and the holder's
   record read once more (the holder may have saved the same value again in
   between, leaving the same claim value behind: an ABA that only the record
   shows).
3. **Write** the instance with the SAVE script, which refuses to write once
   the lease has run out (``POPOTO_LEASE``): a slow writer can never write a
   value whose pending claim another writer may already have taken over. On
   any failure the pending claims are rolled back to what they were.
4. **Settle**: pending claims become plain ``<our key>``; claims of values the
   instance no longer has (the script returns them) are released.

A crash after 3 leaves pending claims whose holder's record lists them, so
they still protect the value (step 2 finds them live) until the next save of
their holder settles them. A crash before 3 leaves pending claims that nobody
holds: they are free again once the lease ends. The lease check compares two
servers' clocks; :data:`LEASE_MARGIN_MS` of the lease absorbs clock skew.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack
import redis

from ..exceptions import ModelException, UniqueViolation
from ..query.io import Steps
from .scripts import LuaScript
from .write import IDX_PREFIX, WriteBatch

if TYPE_CHECKING:
    from .base import Model

LEASE_MS = 10_000
LEASE_MARGIN_MS = 5_000
MAX_TAKEOVERS = 3

# KEYS: claim hash; ARGV: field, me, alias (my previous key), expected (stale value), lease ms
# -> {'OK', previous value or '', deadline} | {'BUSY', holder, deadline} | {'HELD', value, 0}
CLAIM_LUA = r"""
local h, f, me, alias, expected = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cur = redis.call('HGET', h, f)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local holder, deadline = cur, nil
if cur and string.sub(cur, 1, 1) == '~' then
  local d, who = string.match(cur, '^~(%d+)~(.*)$')
  deadline, holder = tonumber(d), who
end
if (not cur) or holder == me or holder == alias or cur == expected then
  local new_deadline = now + tonumber(ARGV[5])
  redis.call('HSET', h, f, '~' .. new_deadline .. '~' .. me)
  return {'OK', cur or '', new_deadline}
end
if deadline and deadline > now then return {'BUSY', holder, deadline} end
return {'HELD', cur, 0}
"""

# KEYS: claim hash; ARGV: field, expected value, new value ('' deletes)
SETTLE_LUA = r"""
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
"""

CLAIM = LuaScript("claim", CLAIM_LUA)
SETTLE = LuaScript("settle", SETTLE_LUA)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def holder_of(value: str) -> str:
    """The instance key in a claim value (plain, or pending ``~deadline~key``)."""
    if value.startswith("~"):
        return value.split("~", 2)[2]
    return value


def _lists_claim(packed: Any, hash_key: str, hash_field: str) -> bool:
    """True when an ``@idx:`` record lists the claim (hash key, field)."""
    if not packed:
        return False
    for row in msgpack.unpackb(packed, raw=False):
        if _text(row[0]) == "C" and _text(row[1]) == hash_key and len(row) > 2 \
                and _text(row[2]) == hash_field:
            return True
    return False


def _violation(model: type[Model], label: str, holder: str) -> UniqueViolation:
    return UniqueViolation(
        f"{model.__name__}: unique constraint violated: {label} is already held by {holder!r}")


def acquire_steps(model: type[Model], batch: WriteBatch,
                  alias: str) -> Steps[tuple[list[tuple[int, str, str]], int]]:
    """Phase 1-2: take every claim of ``batch`` as pending.

    Returns ``([(claim index, pending value, previous value)], deadline)``; on a
    violation the claims taken so far are rolled back and UniqueViolation raised.
    """
    me = batch.key
    expected = [""] * len(batch.claims)
    todo = list(range(len(batch.claims)))
    taken: list[tuple[int, str, str]] = []
    took_over: list[tuple[int, str]] = []  # (claim index, the stale value replaced)
    deadline = 2**62
    try:
        for _attempt in range(MAX_TAKEOVERS + 1):
            if not todo:
                break
            replies = yield [CLAIM.command([batch.claims[i][0]], [
                batch.claims[i][1], me, alias, expected[i], LEASE_MS]) for i in todo]
            held: list[tuple[int, str]] = []
            for i, reply in zip(todo, replies):
                status, value, until = _text(reply[0]), _text(reply[1]), int(reply[2])
                if status == "OK":
                    taken.append((i, f"~{until}~{me}", value))
                    deadline = min(deadline, until)
                    if expected[i] and value == expected[i]:
                        took_over.append((i, value))
                elif status == "BUSY":
                    raise _violation(model, batch.claim_labels[i], value)
                else:
                    held.append((i, value))
            if not held:
                todo = []
                break
            records = yield [("hget", (holder_of(value), IDX_PREFIX + batch.claim_owners[i]))
                             for i, value in held]
            todo = []
            for (i, value), record in zip(held, records):
                hash_key, hash_field = batch.claims[i]
                if _lists_claim(record, hash_key, hash_field):
                    raise _violation(model, batch.claim_labels[i], holder_of(value))
                expected[i] = value  # stale: take it over if nobody changed it meanwhile
                todo.append(i)
        if todo:
            i = todo[0]
            raise _violation(model, batch.claim_labels[i], expected[i])
        if took_over:
            # ABA guard: the holder may have re-saved the same value (claim, write, settle)
            # between our reading its record and our compare-and-set, which then saw the
            # same value again. Our pending claim now blocks any further save of it, so
            # its record as read NOW is final: if it lists the claim, the value is its.
            records = yield [("hget", (holder_of(value), IDX_PREFIX + batch.claim_owners[i]))
                             for i, value in took_over]
            for (i, value), record in zip(took_over, records):
                if _lists_claim(record, *batch.claims[i]):
                    raise _violation(model, batch.claim_labels[i], holder_of(value))
    except GeneratorExit:  # abandoned by its driver: no more round trips (leases expire)
        raise
    except BaseException:
        yield from rollback_steps(batch, taken)
        raise
    return taken, deadline - LEASE_MARGIN_MS


def rollback_steps(batch: WriteBatch, taken: list[tuple[int, str, str]]) -> Steps[None]:
    """Put pending claims back to their previous value (best effort, compare-and-set).

    A previous value that is a pending claim of our own key belongs to a concurrent
    writer of the same instance, which may have written meanwhile and failed to settle
    (its compare-and-set saw our value): the plain key goes back instead, never a
    pending claim nobody settles (at worst a stale claim the next claimant proves stale).
    """
    me = batch.key
    if taken:
        try:
            yield [SETTLE.command([batch.claims[i][0]], [
                batch.claims[i][1], pending,
                me if previous.startswith("~") and holder_of(previous) == me else previous])
                for i, pending, previous in taken]
        except redis.exceptions.RedisError:
            pass  # unsettled pending claims expire with their lease


def settle_steps(batch: WriteBatch, taken: list[tuple[int, str, str]],
                 released: list[Any], released_holder: str) -> Steps[None]:
    """Phase 4: confirm pending claims; release the claims the write dropped."""
    cmds = [SETTLE.command([batch.claims[i][0]], [batch.claims[i][1], pending, batch.key])
            for i, pending, _previous in taken]
    pairs = list(zip(released[0::2], released[1::2]))
    cmds += [SETTLE.command([_text(h)], [_text(f), released_holder, ""]) for h, f in pairs]
    if cmds:
        yield cmds


def claimed_save_steps(model: type[Model], batch: WriteBatch, alias: str,
                       translate: Any) -> Steps[Any]:
    """A sharded model's save: claims, the SAVE script, then settling (see module doc)."""
    from . import scripts

    taken: list[tuple[int, str, str]] = []
    deadline = None
    if batch.claims:
        taken, deadline = yield from acquire_steps(model, batch, alias)
    try:
        (reply,) = yield [scripts.SAVE.command(*batch.save_args(deadline))]
    except redis.exceptions.ResponseError as exc:
        yield from rollback_steps(batch, taken)
        raise translate(model, exc, batch) from None
    except GeneratorExit:
        raise
    except BaseException:
        yield from rollback_steps(batch, taken)
        raise
    released = reply if isinstance(reply, list) else []
    yield from settle_steps(batch, taken, released, batch.old_key or batch.key)
    return 1


def released_after_delete(reply: Any) -> tuple[bool, list[Any]]:
    """(existed, released claim pairs) from a DELETE script reply."""
    if isinstance(reply, list):
        return bool(reply[0]), reply[1:]
    return bool(reply), []


def check_pipeline(model: type[Model], batch: WriteBatch, pipeline: Any) -> None:
    if pipeline is not None and batch.claims and batch.external_claims:
        raise ModelException(
            f"{model.__name__}: save(pipeline=...) cannot queue the save of a sharded model "
            f"with unique claims ({', '.join(batch.claim_labels)}): its claims are settled "
            f"in their own tag groups before and after the write; call save() without a "
            f"pipeline")
