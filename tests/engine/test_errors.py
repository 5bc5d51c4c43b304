"""Script error replies: protocol.error_tag parsing and errors.translate_error."""

from __future__ import annotations

import pytest
import redis

from popoto import protocol
from popoto.engine.claims import LEASE_MARGIN_MS, LEASE_MS
from popoto.engine.errors import translate_error
from popoto.engine.write import WriteBatch
from popoto.exceptions import ModelException, UniqueViolation


class M:
    """A stand-in model: only its ``__name__`` is used."""


@pytest.mark.parametrize("message, expected", [
    ("POPOTO_UNIQUE 2 M:7", ("POPOTO_UNIQUE", "2 M:7")),
    (b"POPOTO_EXISTS M:1", ("POPOTO_EXISTS", "M:1")),
    ("POPOTO_LEASE", ("POPOTO_LEASE", "")),
    ("Error running script (call to f_0a1b): @user_script:12: POPOTO_MISSING M:1 ",
     ("POPOTO_MISSING", "M:1")),
    (redis.exceptions.ResponseError("POPOTO_NOTNUM score"), ("POPOTO_NOTNUM", "score")),
    ("POPOTO_RANGE  M:1 overflow", ("POPOTO_RANGE", "M:1 overflow")),
])
def test_error_tag_finds_the_tag_and_its_detail(message, expected):
    """error_tag returns (tag, stripped detail) wherever the tag sits in the message."""
    assert protocol.error_tag(message) == expected


@pytest.mark.parametrize("message", [
    "WRONGTYPE Operation against a key holding the wrong kind of value",
    "POPOTO_UNIQUELY 1 M:1",  # a longer word is not the tag
    "popoto_unique 1 M:1",
    "",
])
def test_error_tag_ignores_other_errors(message):
    """Untagged messages (or a tag glued to more letters) give None."""
    assert protocol.error_tag(message) is None


def test_lua_prelude_declares_every_shared_constant():
    """The Lua prelude spells each shared constant once as a local."""
    prelude = protocol.lua_prelude()
    assert "local KIND_CLAIM = 'C'\n" in prelude
    assert "local ERR_UNIQUE = 'POPOTO_UNIQUE'\n" in prelude
    assert "local IDX_PREFIX = '@idx:'\n" in prelude


def err(message: str) -> redis.exceptions.ResponseError:
    return redis.exceptions.ResponseError(message)


def test_translate_exists_is_a_unique_violation_naming_the_key():
    """POPOTO_EXISTS (create of an existing key) -> UniqueViolation."""
    out = translate_error(M, err("POPOTO_EXISTS M:1"))
    assert type(out) is UniqueViolation
    assert str(out) == "M: an instance with key 'M:1' already exists"


def test_translate_unique_names_the_claim_by_its_label():
    """POPOTO_UNIQUE <1-based index> <holder> -> the batch's claim label and the holder."""
    batch = WriteBatch(key="M:1", class_set="$Class:M")
    batch.claim("email", "$UniqueF:M:email", "a@b.c", "email='a@b.c'")
    batch.claim("handle", "$UniqueF:M:handle", "ann", "handle='ann'")
    out = translate_error(M, err("POPOTO_UNIQUE 2 M:9"), batch)
    assert type(out) is UniqueViolation
    assert str(out) == "M: unique constraint violated: handle='ann' is already held by 'M:9'"


def test_translate_unique_without_a_batch_names_the_claim_number():
    """Without the batch the claim is named by its number."""
    out = translate_error(M, err("POPOTO_UNIQUE 1 M:9"))
    assert "claim #1 is already held by 'M:9'" in str(out)


def test_translate_lease_is_a_retryable_model_exception():
    """POPOTO_LEASE -> ModelException stating the usable lease (LEASE_MS - margin)."""
    out = translate_error(M, err("POPOTO_LEASE {M#0}:1"))
    assert type(out) is ModelException
    assert f"({LEASE_MS - LEASE_MARGIN_MS} ms)" in str(out) and "retry" in str(out)


def test_translate_missing_is_a_model_exception():
    """POPOTO_MISSING (update of a deleted instance) -> ModelException naming the key."""
    out = translate_error(M, err("POPOTO_MISSING M:1"))
    assert type(out) is ModelException and str(out) == "M: no instance at 'M:1'"


@pytest.mark.parametrize("message", ["POPOTO_NOTNUM score", "WRONGTYPE x", "ERR unknown"])
def test_translate_leaves_other_errors_untouched(message):
    """Errors with no translation (untagged, or tags handled elsewhere) come back as is."""
    exc = err(message)
    assert translate_error(M, exc) is exc
