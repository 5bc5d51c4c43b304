"""Script error replies (``POPOTO_<TAG> <detail>``) as the ORM exceptions they stand for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from popoto import protocol
from popoto.engine.claims import LEASE_MARGIN_MS, LEASE_MS
from popoto.exceptions import ModelException, UniqueViolation

if TYPE_CHECKING:
    from popoto.engine.write import WriteBatch


def translate_error(model: type[Any], exc: Exception,
                    batch: WriteBatch | None = None) -> Exception:
    """Turn a save/delete script's error reply into a Popoto exception (else ``exc``)."""
    tagged = protocol.error_tag(exc)
    if tagged is None:
        return exc
    tag, detail = tagged
    name = model.__name__
    if tag == protocol.ERR_EXISTS:
        return UniqueViolation(f"{name}: an instance with key {detail!r} already exists")
    if tag == protocol.ERR_UNIQUE:
        index, _, owner = detail.partition(" ")
        what = batch.claim_label(int(index) - 1) if batch else f"claim #{index}"
        return UniqueViolation(
            f"{name}: unique constraint violated: {what} is already held by {owner!r}")
    if tag == protocol.ERR_LEASE:
        return ModelException(
            f"{name}: the save of {detail!r} took longer than its unique-claim lease "
            f"({LEASE_MS - LEASE_MARGIN_MS} ms) and was not written; retry it")
    if tag == protocol.ERR_MISSING:
        return ModelException(f"{name}: no instance at {detail!r}")
    return exc
