"""The two-phase unique-claim protocol (popoto.engine.claims) on canned replies."""

from __future__ import annotations

import logging

import pytest
import redis

from popoto.engine import scripts
from popoto.engine.claims import (
    CLAIM,
    LEASE_MARGIN_MS,
    LEASE_MS,
    MAX_TAKEOVERS,
    REINDEX,
    RELEASE,
    SAVE,
    SETTLE,
    Acquired,
    Pending,
    acquire_steps,
    claimed_save_steps,
    holder_of,
    lists_claim,
    parse_claim,
    release_stale_steps,
    released_after_delete,
    resolve_marked_steps,
    rollback_steps,
    settle_steps,
)
from popoto.engine.errors import translate_error
from popoto.engine.write import CLAIM as CLAIM_KIND
from popoto.engine.write import SET, Claim, WriteBatch, pack_record
from popoto.exceptions import ModelException, UniqueViolation
from tests.engine.driver import drive

ME = "M:me"
ALIAS = "M:old"
X = "M:x"  # another instance
EMAIL_HASH, HANDLE_HASH = "$UniqueF:{M#1}:email", "$UniqueF:{M#2}:handle"
T = 1_700_000_000_000  # a server time in ms


class M:
    """A stand-in model: the claim steps only use its ``__name__``."""


def batch(*owners: str) -> WriteBatch:
    """A sharded model's batch claiming one value per owner (email -> a@b.c, handle -> ann)."""
    b = WriteBatch(key=ME, class_set="$Class:{M#0}", external_claims=True)
    values = {"email": (EMAIL_HASH, "a@b.c"), "handle": (HANDLE_HASH, "ann")}
    for owner in owners:
        hash_key, value = values[owner]
        b.claim(owner, hash_key, value, f"{owner}={value!r}")
    return b


def claim_cmd(claim, expected: str = "") -> tuple:
    return CLAIM.command([claim.hash_key], [claim.field, ME, ALIAS, expected, LEASE_MS])


def settle_cmd(claim, expected: str, new: str) -> tuple:
    return SETTLE.command([claim.hash_key], [claim.field, expected, new])


def ok(previous: bytes = b"", deadline: int = T) -> list:
    return [b"OK", previous, str(deadline).encode()]


def held(holder: str) -> list:
    return [b"HELD", holder.encode(), b"0"]


def busy(holder: str, deadline: int = T) -> list:
    return [b"BUSY", holder.encode(), str(deadline).encode()]


def email_rows(rows: list[tuple[str, str]]) -> list[tuple[Claim, str]]:
    """Cleaning rows of the email claim hash: (claim, value seen)."""
    return [(Claim("email", EMAIL_HASH, f, f), v) for f, v in rows]


def record_listing(claim, holder: str = X, *more) -> bytes:
    """The packed @idx record of ``holder`` listing ``claim`` (and ``more`` rows)."""
    return pack_record([(CLAIM_KIND, claim.hash_key, claim.field, ""), *more], holder)


def unrelated_record(holder: str = X) -> bytes:
    return pack_record([(CLAIM_KIND, EMAIL_HASH, "other@b.c", "")], holder)


# --- phase 1: claiming -------------------------------------------------------

def test_free_claim_becomes_pending_with_deadline_minus_margin():
    """A free claim is pending ~deadline~me; the lease deadline keeps LEASE_MARGIN_MS spare."""
    b = batch("email")
    (email,) = b.claims
    run = drive(acquire_steps(M, b, ALIAS), [[ok()]])
    assert run.steps == [[claim_cmd(email)]]
    acquired = run.value()
    assert acquired.pending == [Pending(email, f"~{T}~{ME}", "")]
    assert acquired.deadline == T - LEASE_MARGIN_MS
    assert (acquired.dropped, acquired.busy) == ([], False)


def test_all_claims_go_in_one_round_trip_and_earliest_deadline_wins():
    """Every claim is sent in the first step; the lease deadline is the earliest one."""
    b = batch("email", "handle")
    email, handle = b.claims
    run = drive(acquire_steps(M, b, ALIAS), [[ok(b"M:old", T + 500), ok(b"", T)]])
    assert run.steps == [[claim_cmd(email), claim_cmd(handle)]]
    acquired = run.value()
    assert acquired.pending == [Pending(email, f"~{T + 500}~{ME}", "M:old"),
                                Pending(handle, f"~{T}~{ME}", "")]
    assert acquired.deadline == T - LEASE_MARGIN_MS


def test_no_claims_no_round_trip():
    """A batch without claims acquires nothing and sends nothing."""
    run = drive(acquire_steps(M, batch(), ALIAS), [])
    assert run.steps == [] and run.value() == Acquired()


# --- phase 2: a held claim ----------------------------------------------------

def test_held_by_live_holder_is_a_violation_under_save():
    """HELD + the holder's record lists the claim -> UniqueViolation; others rolled back."""
    b = batch("email", "handle")
    email, handle = b.claims
    run = drive(acquire_steps(M, b, ALIAS, SAVE),
                [[ok(), held(X)], [record_listing(handle)], [1]])
    assert run.steps[1] == [("hget", (X, "@idx:handle"))]
    assert run.steps[2] == [settle_cmd(email, f"~{T}~{ME}", "")]
    assert isinstance(run.error, UniqueViolation)
    assert "handle='ann'" in str(run.error) and repr(X) in str(run.error)


def test_held_by_live_holder_is_dropped_under_reindex(caplog):
    """REINDEX: a claim a live instance holds is dropped from the batch and logged."""
    b = batch("email", "handle")
    email, handle = b.claims
    with caplog.at_level(logging.ERROR, "popoto.claims"):
        run = drive(acquire_steps(M, b, ALIAS, REINDEX),
                    [[ok(), held(X)], [record_listing(handle)]])
    acquired = run.value()
    assert acquired.dropped == [handle]
    assert acquired.pending == [Pending(email, f"~{T}~{ME}", "")]
    assert b.claims == [email] and b.entries["handle"] == []
    assert "handle='ann'" in caplog.text


def test_held_pending_claim_reads_the_holder_inside_the_pending_value():
    """A HELD value ~deadline~key (expired lease) is checked against that key's record."""
    b = batch("email")
    (email,) = b.claims
    run = drive(acquire_steps(M, b, ALIAS, SAVE),
                [[held(f"~{T - 1}~{X}")], [record_listing(email)]])
    assert run.steps[1] == [("hget", (X, "@idx:email"))]
    assert isinstance(run.error, UniqueViolation) and "'M:x'" in str(run.error)


@pytest.mark.parametrize("record", [None, b"", unrelated_record(), b"\xc1garbage",
                                    redis.exceptions.ResponseError("WRONGTYPE")])
def test_stale_claim_is_taken_over_with_compare_and_set_then_rechecked(record):
    """Holder's record missing/unrelated/unreadable -> CLAIM again expecting the stale value,
    then the ABA re-check reads the holder's record once more."""
    b = batch("email")
    (email,) = b.claims
    run = drive(acquire_steps(M, b, ALIAS, SAVE),
                [[held(X)], [record], [ok(X.encode())], [None]])
    assert run.steps == [
        [claim_cmd(email)],
        [("hget", (X, "@idx:email"))],
        [claim_cmd(email, expected=X)],
        [("hget", (X, "@idx:email"))],
    ]
    assert run.value().pending == [Pending(email, f"~{T}~{ME}", X)]


def test_aba_recheck_finding_the_claim_listed_is_a_violation_and_rolls_back():
    """Takeover succeeded but the holder re-saved the value meanwhile: SAVE -> violation,
    the claim is put back to the holder's key."""
    b = batch("email")
    (email,) = b.claims
    run = drive(acquire_steps(M, b, ALIAS, SAVE),
                [[held(X)], [None], [ok(X.encode())], [record_listing(email)], [1]])
    assert run.steps[4] == [settle_cmd(email, f"~{T}~{ME}", X)]
    assert isinstance(run.error, UniqueViolation)


def test_aba_recheck_under_reindex_drops_and_rolls_back_only_that_claim():
    """REINDEX: the ABA-lost claim is rolled back and dropped; other pending claims stay."""
    b = batch("email", "handle")
    email, handle = b.claims
    run = drive(acquire_steps(M, b, ALIAS, REINDEX),
                [[ok(), held(X)], [None], [ok(X.encode())], [record_listing(handle)], [1]])
    assert run.steps[2] == [claim_cmd(handle, expected=X)]
    assert run.steps[4] == [settle_cmd(handle, f"~{T}~{ME}", X)]
    acquired = run.value()
    assert acquired.dropped == [handle]
    assert acquired.pending == [Pending(email, f"~{T}~{ME}", "")]
    assert b.claims == [email]


def test_takeover_that_finds_a_new_holder_checks_the_new_one():
    """The compare-and-set failed (HELD by Y now): Y's record is read, not X's."""
    b = batch("email")
    (email,) = b.claims
    run = drive(acquire_steps(M, b, ALIAS, SAVE),
                [[held(X)], [None], [held("M:y")], [record_listing(email, "M:y")]])
    assert run.steps[3] == [("hget", ("M:y", "@idx:email"))]
    assert len(run.steps) == 4  # nothing pending: no rollback round trip
    assert isinstance(run.error, UniqueViolation) and "'M:y'" in str(run.error)


@pytest.mark.parametrize("policy", [SAVE, REINDEX])
def test_claim_that_keeps_changing_gives_up_after_max_takeovers(policy):
    """Every takeover attempt meets a new stale holder: after MAX_TAKEOVERS retries, SAVE
    raises UniqueViolation and REINDEX reports busy (retry the instance later)."""
    b = batch("email")
    replies = []
    for i in range(MAX_TAKEOVERS + 1):
        replies += [[held(f"M:h{i}")], [None]]
    run = drive(acquire_steps(M, b, ALIAS, policy), replies)
    assert len(run.steps) == 2 * (MAX_TAKEOVERS + 1)
    assert run.steps[-2] == [claim_cmd(b.claims[0], expected=f"M:h{MAX_TAKEOVERS - 1}")]
    if policy is SAVE:
        assert isinstance(run.error, UniqueViolation)
    else:
        assert run.value().busy is True


def test_reindex_retry_reads_the_record_of_the_remaining_claims_owner():
    """Regression: after drop_claims removed the first of two claims (owners email, handle),
    a HELD reply for the remaining claim must read the holder's record of ITS owner,
    ``@idx:handle``. The old code kept claims, labels and owners in three parallel lists
    and dropped from only two, so it read ``@idx:email`` instead: that record does not
    list the handle claim, so a live instance's claim was judged stale and taken over."""
    b = batch("email", "handle")
    email, handle = b.claims
    b.drop_claims([email])  # a reindex retry: another live instance holds the email
    run = drive(acquire_steps(M, b, ALIAS, REINDEX),
                [[held(X)], [record_listing(handle)]])
    assert run.steps == [[claim_cmd(handle)], [("hget", (X, "@idx:handle"))]]
    acquired = run.value()
    assert acquired.dropped == [handle]  # live holder: dropped, never taken over
    assert acquired.pending == [] and b.claims == []


# --- BUSY: another writer's claim in flight -----------------------------------

def test_busy_claim_is_a_violation_under_save():
    """BUSY (a live pending claim of another writer) -> UniqueViolation, others rolled back."""
    b = batch("email", "handle")
    email, _handle = b.claims
    run = drive(acquire_steps(M, b, ALIAS, SAVE), [[ok(), busy(X)], [1]])
    assert run.steps[1] == [settle_cmd(email, f"~{T}~{ME}", "")]
    assert isinstance(run.error, UniqueViolation) and "'M:x'" in str(run.error)


def test_busy_claim_under_reindex_rolls_back_and_reports_busy():
    """REINDEX: BUSY -> busy=True, every pending claim rolled back, no deadline."""
    b = batch("email", "handle")
    email, _handle = b.claims
    run = drive(acquire_steps(M, b, ALIAS, REINDEX), [[ok(b"M:old"), busy(X)], [1]])
    assert run.steps[1] == [settle_cmd(email, f"~{T}~{ME}", "M:old")]
    acquired = run.value()
    assert acquired.busy is True
    assert (acquired.pending, acquired.deadline, acquired.dropped) == ([], None, [])
    assert len(b.claims) == 2  # nothing dropped: the whole instance is retried


# --- errors ---------------------------------------------------------------------

def test_error_midway_rolls_back_pending_claims_then_reraises():
    """A failed round trip after some claims were taken: SETTLE puts back their previous
    values (compare-and-set on our pending value), then the error leaves."""
    b = batch("email", "handle")
    email, _handle = b.claims
    lost = redis.exceptions.ConnectionError("connection lost")
    run = drive(acquire_steps(M, b, ALIAS, SAVE), [[ok(b"M:old"), held(X)], lost, [1]])
    assert run.steps[2] == [settle_cmd(email, f"~{T}~{ME}", "M:old")]
    assert run.error is lost


def test_rollback_failure_is_logged_and_the_original_error_still_raised(caplog):
    """If the rollback round trip fails too, a warning is logged; the first error leaves."""
    b = batch("email")
    first = redis.exceptions.ConnectionError("first")
    with caplog.at_level(logging.WARNING, "popoto.claims"):
        run = drive(acquire_steps(M, b, ALIAS, SAVE),
                    [[held(X)], [None], [ok(X.encode())], first,
                     redis.exceptions.ConnectionError("again")])
    assert run.error is first
    assert "could not roll back 1 pending unique claims" in caplog.text


def test_abandoned_acquire_sends_no_rollback():
    """Closing the generator (driver gone) exits cleanly without another round trip."""
    b = batch("email", "handle")
    gen = acquire_steps(M, b, ALIAS, SAVE)
    next(gen)
    gen.send([ok(), held(X)])
    gen.close()  # would raise RuntimeError if it yielded a rollback step


# --- rollback / settle / release ------------------------------------------------

def test_rollback_restores_previous_values():
    """rollback_steps: one SETTLE per pending claim, expected=our value, new=previous."""
    b = batch("email", "handle")
    email, handle = b.claims
    pending = [Pending(email, f"~{T}~{ME}", ""), Pending(handle, f"~{T}~{ME}", X)]
    run = drive(rollback_steps(ME, pending), [[1, 0]])
    assert run.steps == [[settle_cmd(email, f"~{T}~{ME}", ""),
                          settle_cmd(handle, f"~{T}~{ME}", X)]]


def test_rollback_never_restores_our_own_pending_claim():
    """A previous value that is OUR pending claim (a concurrent save of the same instance)
    goes back as the plain key, never as a pending value nobody would settle; the
    instance's record, read next, keeps it when it lists the value."""
    b = batch("email")
    (email,) = b.claims
    run = drive(rollback_steps(ME, [Pending(email, f"~{T}~{ME}", f"~{T - 9}~{ME}")]),
                [[1], [record_listing(email, ME)]])
    assert run.steps == [[settle_cmd(email, f"~{T}~{ME}", ME)],
                         [("hget", (ME, "@idx:email"))]]


def test_rollback_releases_a_restored_key_its_record_does_not_list():
    """The plain key restored in place of our own pending claim goes again when the
    instance's record does not list the value (compare-and-set on the key, ABA re-read)."""
    b = batch("email")
    (email,) = b.claims
    run = drive(rollback_steps(ME, [Pending(email, f"~{T}~{ME}", f"!~{T - 9}~{ME}")]),
                [[1], [None], [None], [1], [None]])
    assert run.steps[1] == [("hget", (ME, "@idx:email"))]
    assert run.steps[3] == [settle_cmd(email, ME, "")]


def test_rollback_of_nothing_sends_nothing():
    """rollback_steps([]) makes no round trip."""
    assert drive(rollback_steps(ME, []), []).steps == []


def test_settle_confirms_pending_and_releases_dropped_claims():
    """settle_steps: pending -> our key; released claims deleted if still the old holder's."""
    b = batch("email")
    (email,) = b.claims
    run = drive(settle_steps(ME, [Pending(email, f"~{T}~{ME}", "")],
                             [(HANDLE_HASH, "bob")], ALIAS), [[1, 1]])
    assert run.steps == [[settle_cmd(email, f"~{T}~{ME}", ME),
                          RELEASE.command([HANDLE_HASH], ["bob", ALIAS])]]
    assert drive(settle_steps(ME, [], [], ME), []).steps == []


def test_a_confirm_of_a_claim_marked_released_asks_the_record():
    """SETTLE answers 2 when another save of the instance marked our pending claim released:
    the record decides; listed -> confirmed from the marked value."""
    b = batch("email")
    (email,) = b.claims
    pending = Pending(email, f"~{T}~{ME}", "")
    run = drive(settle_steps(ME, [pending], [], ME), [[2], [record_listing(email, ME)], [1]])
    assert run.steps[1] == [("hget", (ME, "@idx:email"))]
    assert run.steps[2] == [settle_cmd(email, f"!~{T}~{ME}", ME)]


def test_a_claim_marked_released_and_unlisted_is_removed():
    """resolve_marked_steps: the record does not list the value -> the marked claim is
    removed by compare-and-set on the marked value, then re-checked (ABA)."""
    b = batch("email")
    (email,) = b.claims
    pending = Pending(email, f"~{T}~{ME}", "")
    run = drive(resolve_marked_steps(ME, [pending]), [[None], [None], [1], [None]])
    assert run.steps[2] == [settle_cmd(email, f"!~{T}~{ME}", "")]
    assert run.steps[3] == [("hget", (ME, "@idx:email"))]


def test_claimed_save_runs_claim_save_settle_in_three_round_trips():
    """A sharded save: CLAIM, then SAVE with flag X<deadline>, then SETTLE (and releases)."""
    b = batch("email")
    (email,) = b.claims
    run = drive(claimed_save_steps(M, b, ALIAS, translate_error),
                [[ok()], [[HANDLE_HASH.encode(), b"bob"]], [1, 1]])
    assert run.value() == 1
    (save_cmd,) = run.steps[1]
    assert save_cmd[0] == "evalsha" and save_cmd[1][0] == scripts.SAVE.sha
    assert f"X{T - LEASE_MARGIN_MS}" in save_cmd[1]
    assert run.steps[2] == [settle_cmd(email, f"~{T}~{ME}", ME),
                            RELEASE.command([HANDLE_HASH], ["bob", ME])]


def test_claimed_save_lease_error_rolls_back_and_translates():
    """SAVE refusing after the lease (POPOTO_LEASE) rolls the claims back and raises
    ModelException."""
    b = batch("email")
    (email,) = b.claims
    run = drive(claimed_save_steps(M, b, ALIAS, translate_error),
                [[ok()], redis.exceptions.ResponseError(f"POPOTO_LEASE {ME}"), [1]])
    assert run.steps[2] == [settle_cmd(email, f"~{T}~{ME}", "")]
    assert type(run.error) is ModelException and "lease" in str(run.error)


def test_released_after_delete_parses_both_reply_shapes():
    """DELETE replies: a plain 1/0, or {existed, (hash, field)*} with external claims."""
    assert released_after_delete(1) == (True, [])
    assert released_after_delete([0]) == (False, [])
    assert released_after_delete([1, b"h", b"f", b"h2", b"f2"]) == (
        True, [("h", "f"), ("h2", "f2")])


def test_release_stale_removes_unlisted_claims_and_keeps_live_ones():
    """Cleaning: claims whose holder lists them stay; the rest are removed by compare-and-set
    on the value seen; a non-instance holder is stale without a record read."""
    live_claim = batch("email").claims[0]
    rows = [("a@b.c", X), ("b@b.c", "M:gone"), ("c@b.c", "junk")]
    run = drive(release_stale_steps(email_rows(rows), lambda k: k.startswith("M:")),
                [[record_listing(live_claim), None], [1, 1], [None]])
    assert run.steps[0] == [("hget", (X, "@idx:email")), ("hget", ("M:gone", "@idx:email"))]
    assert run.steps[1] == [SETTLE.command([EMAIL_HASH], ["b@b.c", "M:gone", ""]),
                            SETTLE.command([EMAIL_HASH], ["c@b.c", "junk", ""])]
    assert run.steps[2] == [("hget", ("M:gone", "@idx:email"))]  # ABA re-check
    assert run.value() == 2


def test_release_stale_restores_a_claim_its_holder_saved_again():
    """ABA in cleaning: the removed claim's holder lists it now -> HSETNX it back."""
    claim = batch("email").claims[0]
    run = drive(release_stale_steps(email_rows([("a@b.c", X)]), lambda k: True),
                [[None], [1], [record_listing(claim)], [True]])
    assert run.steps[3] == [("hsetnx", (EMAIL_HASH, "a@b.c", X))]
    assert run.value() == 0


def test_release_stale_with_nothing_stale_writes_nothing():
    """Every holder lists its claim: one read step, no writes, 0 removed."""
    claim = batch("email").claims[0]
    run = drive(release_stale_steps(email_rows([("a@b.c", X)]), lambda k: True),
                [[record_listing(claim)]])
    assert len(run.steps) == 1 and run.value() == 0


# --- small helpers ---------------------------------------------------------------

def test_parse_claim_and_holder_of():
    """Plain values are their holder; pending ones ~deadline~key carry a deadline."""
    assert parse_claim("M:1") == ("M:1", None)
    assert parse_claim(f"~{T}~M:1") == ("M:1", T)
    assert parse_claim(f"!~{T}~M:1") == ("M:1", T)  # pending, marked released
    assert holder_of(f"~{T}~M:a~b") == "M:a~b"


def test_lists_claim_accepts_only_a_record_listing_that_claim():
    """lists_claim: True only for a readable record holding (C, hash, field)."""
    claim = batch("email").claims[0]
    assert lists_claim(record_listing(claim, X, (SET, "s", X, "")), X, claim)
    for record in (None, b"", unrelated_record(), b"\xc1", ValueError("x")):
        assert not lists_claim(record, X, claim)
