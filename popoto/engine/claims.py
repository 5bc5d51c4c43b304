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

The same steps serve every writer: ``save()`` and bulk writes (policy
:data:`SAVE`: a value another live instance holds is a UniqueViolation),
reindexing (policy :data:`REINDEX`: such a claim is dropped from the rewrite
and logged, a claim in flight makes the instance wait for a retry) and index
cleaning (:func:`release_stale_steps`: step 2 and its ABA re-check without
taking the claim). Every step is an I/O-free generator (:mod:`popoto.engine.io`),
so one implementation runs sync, async, batched side by side (``lockstep``)
and under test with canned replies.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis

from popoto import protocol
from popoto.engine import scripts
from popoto.engine.io import Steps
from popoto.engine.scripts import LuaScript
from popoto.engine.write import CLAIM as CLAIM_KIND
from popoto.engine.write import IDX_PREFIX, Claim, WriteBatch, unpack_record
from popoto.exceptions import ModelException, UniqueViolation
from popoto.protocol import text

logger = logging.getLogger("popoto.claims")

LEASE_MS = 10_000
LEASE_MARGIN_MS = 5_000
MAX_TAKEOVERS = 3
_PENDING_RE = re.compile(r"^~(\d+)~(.*)$", re.S)

# the scripts (popoto/lua/claim.lua, settle.lua, release.lua) document KEYS/ARGV/replies
CLAIM = LuaScript("claim")
SETTLE = LuaScript("settle")
RELEASE = LuaScript("release")
RELEASED_MARK = protocol.CLAIM_RELEASED_MARK


class Policy(enum.Enum):
    """What acquiring does with a claim another live instance holds or has in flight."""

    SAVE = "save"  # UniqueViolation, nothing written
    REINDEX = "reindex"  # held: dropped from the rewrite; in flight: retry the instance


SAVE, REINDEX = Policy.SAVE, Policy.REINDEX


@dataclass(frozen=True)
class Pending:
    """A claim this writer holds as pending: its value now and what it replaced."""

    claim: Claim
    value: str  # ``~<deadline ms>~<our key>``
    previous: str  # '' when the claim was free


@dataclass
class Acquired:
    """The outcome of :func:`acquire_steps`."""

    pending: list[Pending] = field(default_factory=list)
    #: the SAVE script's lease deadline (server ms, margin taken off); None: no claims
    deadline: int | None = None
    #: REINDEX: claims another live instance holds, taken out of the batch
    dropped: list[Claim] = field(default_factory=list)
    #: REINDEX: a claim is in flight for another writer (nothing held): retry later
    busy: bool = False


def parse_claim(value: str) -> tuple[str, int | None]:
    """``(holder key, lease deadline ms or None)`` of a claim value: plain, pending
    (``~deadline~key``) or pending and marked released (``!~deadline~key``)."""
    match = _PENDING_RE.match(value.removeprefix(RELEASED_MARK))
    if match:
        return match.group(2), int(match.group(1))
    return value, None


def holder_of(value: str) -> str:
    """The instance key in a claim value (plain, or pending ``~deadline~key``)."""
    return parse_claim(value)[0]


def lists_claim(record: Any, holder: str, claim: Claim) -> bool:
    """True when an ``@idx`` record (packed; None or an error reply: no) lists ``claim``."""
    if not record or isinstance(record, Exception):
        return False
    try:
        return (CLAIM_KIND, claim.hash_key, claim.field) in unpack_record(record, holder)
    except (ValueError, TypeError, IndexError, msgpack.UnpackException):
        return False


def _record_reads(held: list[tuple[Claim, str]]) -> list[tuple[str, tuple[Any, ...]]]:
    """HGET of each holder's ownership record of the claim's owner."""
    return [("hget", (holder_of(value), IDX_PREFIX + claim.owner)) for claim, value in held]


def _violation(model: type, claim: Claim, holder: str) -> UniqueViolation:
    return UniqueViolation(f"{model.__name__}: unique constraint violated: {claim.label} is "
                           f"already held by {holder!r}")


def acquire_steps(model: type, batch: WriteBatch, alias: str,
                  policy: Policy = SAVE) -> Steps[Acquired]:
    """Phases 1-2 for every claim of ``batch``: claim, prove stale, take over, re-check.

    On a violation (SAVE) or an error the claims taken so far are rolled back
    before the exception leaves. Under REINDEX, held claims are dropped from
    ``batch`` (:meth:`WriteBatch.drop_claims`) and reported in ``dropped``.
    """
    out = Acquired()
    try:
        yield from _acquire(model, batch, alias, policy, out)
    except GeneratorExit:  # abandoned by its driver: no more round trips (leases expire)
        raise
    except BaseException:
        yield from rollback_steps(batch.key, out.pending)
        raise
    if out.busy:
        yield from rollback_steps(batch.key, out.pending)
        out.pending = []
    batch.drop_claims(out.dropped)
    if out.pending:
        out.deadline = min(_deadline(p.value) for p in out.pending) - LEASE_MARGIN_MS
    return out


def _deadline(value: str) -> int:
    return parse_claim(value)[1] or 0


def _acquire(model: type, batch: WriteBatch, alias: str, policy: Policy,
             out: Acquired) -> Steps[None]:
    me = batch.key
    expected: dict[Claim, str] = {}  # claim -> the stale value to take over
    took_over: list[tuple[Claim, str]] = []
    todo = list(batch.claims)
    for _attempt in range(MAX_TAKEOVERS + 1):
        if not todo:
            break
        replies = yield [CLAIM.command([c.hash_key], [c.field, me, alias, expected.get(c, ""),
                                                      LEASE_MS]) for c in todo]
        held: list[tuple[Claim, str]] = []
        for claim, reply in zip(todo, replies):
            status, value, until = text(reply[0]), text(reply[1]), int(reply[2])
            if status == protocol.CLAIM_OK:
                out.pending.append(Pending(claim, f"~{until}~{me}", value))
                if expected.get(claim) and value == expected[claim]:
                    took_over.append((claim, value))
            elif status == protocol.CLAIM_BUSY:
                if policy is SAVE:
                    raise _violation(model, claim, value)
                out.busy = True
                return
            else:
                held.append((claim, value))
        todo = []
        if not held:
            break
        records = yield _record_reads(held)
        for (claim, value), record in zip(held, records):
            if not lists_claim(record, holder_of(value), claim):
                expected[claim] = value  # stale: take it over if nobody changed it meanwhile
                todo.append(claim)
            elif policy is SAVE:
                raise _violation(model, claim, holder_of(value))
            else:
                _log_dropped(model, me, claim)
                out.dropped.append(claim)
    if todo:  # the claim kept changing under us
        if policy is SAVE:
            raise _violation(model, todo[0], expected[todo[0]])
        out.busy = True
        return
    if took_over:
        yield from _recheck_takeovers(model, me, took_over, policy, out)


def _recheck_takeovers(model: type, me: str, took_over: list[tuple[Claim, str]],
                       policy: Policy, out: Acquired) -> Steps[None]:
    """ABA guard: the holder may have re-saved the same value (claim, write, settle)
    between our reading its record and our compare-and-set, which then saw the same
    value again. Our pending claim now blocks any further save of it, so its record
    as read NOW is final: if it lists the claim, the value is its."""
    records = yield _record_reads(took_over)
    lost = [(claim, value) for (claim, value), record in zip(took_over, records)
            if lists_claim(record, holder_of(value), claim)]
    if not lost:
        return
    if policy is SAVE:
        raise _violation(model, lost[0][0], holder_of(lost[0][1]))
    claims_lost = {claim for claim, _value in lost}
    back = [p for p in out.pending if p.claim in claims_lost]
    out.pending = [p for p in out.pending if p.claim not in claims_lost]
    yield from rollback_steps(me, back)
    for claim in claims_lost:
        _log_dropped(model, me, claim)
        out.dropped.append(claim)


def _log_dropped(model: type, key: str, claim: Claim) -> None:
    logger.error("%s: %s has %s but another instance holds it; its other index entries are "
                 "rebuilt without that claim", model.__name__, key, claim.label)


def rollback_steps(me: str, pending: list[Pending]) -> Steps[None]:
    """Put pending claims back to their previous value (best effort, compare-and-set).

    A previous value that is a pending claim of our own key belongs to a concurrent
    writer of the same instance, which may have written meanwhile and failed to settle
    (its compare-and-set saw our value): the plain key goes back instead, never a
    pending claim nobody settles, and ``me``'s record then decides whether it stays;
    so it does for a pending claim of ours marked released (:func:`resolve_marked_steps`).
    """
    if not pending:
        return
    restore = [me if _own_pending(p.previous, me) else p.previous for p in pending]
    try:
        replies = yield [SETTLE.command([p.claim.hash_key], [p.claim.field, p.value, value])
                         for p, value in zip(pending, restore)]
        restored = [(p.claim, me) for p, value, done in zip(pending, restore, replies)
                    if done == 1 and value == me and p.previous != me]
        yield from _release_unlisted_steps(me, restored)
        yield from resolve_marked_steps(me, [p for p, done in zip(pending, replies)
                                             if done == 2])
    except redis.exceptions.RedisError as exc:
        logger.warning("could not roll back %d pending unique claims of %s (%s): they "
                       "expire with their lease", len(pending), me, exc)


def _own_pending(value: str, me: str) -> bool:
    """True for a pending claim value (marked released or not) held for ``me``."""
    holder, deadline = parse_claim(value)
    return deadline is not None and holder == me


def released_pairs(reply: Any) -> list[tuple[str, str]]:
    """The ``(claim hash, field)`` pairs a save/delete script released (flat list)."""
    flat = reply if isinstance(reply, list) else []
    return [(text(h), text(f)) for h, f in zip(flat[0::2], flat[1::2])]


def settle_steps(me: str, pending: list[Pending], released: list[tuple[str, str]],
                 released_holder: str) -> Steps[None]:
    """Phase 4, one round trip: confirm pending claims (pending -> ``me``); release the
    claims the write dropped (RELEASE of ``released_holder``'s claim).

    A pending claim found marked released was dropped by another save of the same
    instance that wrote after ours: the record decides (:func:`resolve_marked_steps`).
    """
    cmds = [SETTLE.command([p.claim.hash_key], [p.claim.field, p.value, me]) for p in pending]
    cmds += [RELEASE.command([h], [f, released_holder]) for h, f in released]
    if not cmds:
        return
    replies = yield cmds
    yield from resolve_marked_steps(me, [p for p, done in zip(pending, replies) if done == 2])


def resolve_marked_steps(me: str, marked: list[Pending]) -> Steps[None]:
    """Settle pending claims of ``me`` that a later save of ``me`` marked released.

    That save found our claim still pending when its write dropped the value;
    ``me``'s record, read now, says whether the value is still ``me``'s (a third
    save may have written it again): listed -> confirmed; not listed -> removed,
    with the ABA re-check of :func:`release_stale_steps`. Never reached when no
    two saves of one instance overlap.
    """
    if not marked:
        return
    records = yield _record_reads([(p.claim, me) for p in marked])
    keep = [p for p, record in zip(marked, records) if lists_claim(record, me, p.claim)]
    if keep:
        yield [SETTLE.command([p.claim.hash_key],
                              [p.claim.field, RELEASED_MARK + p.value, me]) for p in keep]
    drop = [(p.claim, RELEASED_MARK + p.value) for p in marked if p not in keep]
    if drop:
        yield from release_stale_steps(drop, lambda _key: True)


def _release_unlisted_steps(me: str, rows: list[tuple[Claim, str]]) -> Steps[None]:
    """Release the claims ``(claim, me)`` just set to ``me`` that its record does not list."""
    if not rows:
        return
    records = yield _record_reads(rows)
    stale = [row for row, record in zip(rows, records) if not lists_claim(record, me, row[0])]
    if stale:
        yield from release_stale_steps(stale, lambda _key: True)


def claimed_save_steps(model: type, batch: WriteBatch, alias: str,
                       translate: Callable[[type, Exception, WriteBatch], Exception]
                       ) -> Steps[int]:
    """A sharded model's save: claims, the SAVE script, then settling (see module doc)."""
    acquired = Acquired()
    if batch.claims:
        acquired = yield from acquire_steps(model, batch, alias)
    try:
        (reply,) = yield [scripts.SAVE.command(*batch.save_args(acquired.deadline))]
    except redis.exceptions.ResponseError as exc:
        yield from rollback_steps(batch.key, acquired.pending)
        raise translate(model, exc, batch) from None
    except GeneratorExit:
        raise
    except BaseException:
        yield from rollback_steps(batch.key, acquired.pending)
        raise
    yield from settle_steps(batch.key, acquired.pending, released_pairs(reply),
                            batch.old_key or batch.key)
    return 1


def released_after_delete(reply: Any) -> tuple[bool, list[tuple[str, str]]]:
    """(existed, released claim pairs) from a DELETE script reply."""
    if isinstance(reply, list):
        return bool(reply[0]), released_pairs(reply[1:])
    return bool(reply), []


def release_stale_steps(rows: list[tuple[Claim, str]], is_instance_key: Callable[[str], bool],
                        model: type | None = None) -> Steps[int]:
    """Remove claims (each ``(claim, value seen)``) whose holder's record does not list
    them: compare-and-set on the value seen, then give back any whose holder saved the
    same value again meanwhile (ABA re-check). Claims pending inside their lease are
    the caller's to leave out. Returns how many were removed."""
    live = [(c, v) for c, v in rows if is_instance_key(holder_of(v))]
    records = (yield _record_reads(live)) if live else []
    listed = {(c, v) for (c, v), record in zip(live, records)
              if lists_claim(record, holder_of(v), c)}
    stale = [(c, v) for c, v in rows if (c, v) not in listed]
    if not stale:
        return 0
    replies = yield [SETTLE.command([c.hash_key], [c.field, v, ""]) for c, v in stale]
    removed = [(c, v) for (c, v), done in zip(stale, replies) if done == 1]
    again = [(c, v) for c, v in removed if is_instance_key(holder_of(v))]
    if not again:
        return len(removed)
    records = yield _record_reads(again)
    back = [(c, holder_of(v)) for (c, v), record in zip(again, records)
            if lists_claim(record, holder_of(v), c)]
    if not back:
        return len(removed)
    restored = yield [("hsetnx", (c.hash_key, c.field, holder)) for c, holder in back]
    lost = [f"{holder} ({c.label})" for (c, holder), ok in zip(back, restored) if not ok]
    if lost:
        logger.error("%s: unique claims of %s were taken by another writer while being "
                     "restored; check_indexes reports the duplicate",
                     model.__name__ if model else "popoto", ", ".join(lost))
    return len(removed) - sum(1 for ok in restored if ok == 1)


def check_pipeline(model: type, batch: WriteBatch, pipeline: Any) -> None:
    if pipeline is not None and batch.claims and batch.external_claims:
        raise ModelException(
            f"{model.__name__}: save(pipeline=...) cannot queue the save of a sharded model "
            f"with unique claims ({', '.join(c.label for c in batch.claims)}): its claims are "
            f"settled in their own tag groups before and after the write; call save() "
            f"without a pipeline")
