"""Exceptions raised by Popoto.

The tree::

    PopotoError
    ├── ConnectionConfigError      bad or unreachable REDIS_URL / configure() argument
    ├── ModelException             invalid model definition, field value or write
    │   ├── KeyMutationError       a saved KeyField changed without migrate_key=True
    │   ├── UniqueViolation        a unique field / composite index / key is already taken
    │   ├── BulkWriteError         some instances of a bulk write failed (listed in .failures)
    │   └── DecodeError            a stored hash value cannot be decoded
    └── QueryException             invalid query: unknown field or lookup, missing partition
"""

from __future__ import annotations

from typing import Any


class PopotoError(Exception):
    """Root of every error Popoto raises."""


class ConnectionConfigError(PopotoError):
    """The Redis connection is misconfigured or the server cannot be reached."""


class ModelException(PopotoError):
    """A model definition, field value or write is invalid."""


class KeyMutationError(ModelException):
    """A KeyField of a saved instance changed without ``save(migrate_key=True)``."""


class UniqueViolation(ModelException):
    """A unique field, unique composite index or instance key is already taken."""


class BulkWriteError(ModelException):
    """Some instances of a bulk operation failed; the others were written.

    ``failures`` lists ``(instance, error)`` pairs, ``succeeded`` counts the writes
    that went through.
    """

    def __init__(self, message: str, failures: list[tuple[Any, ModelException]],
                 succeeded: int) -> None:
        super().__init__(message)
        self.failures = failures
        self.succeeded = succeeded


class DecodeError(ModelException):
    """A value stored in Redis cannot be decoded; names the key and the field."""


class QueryException(PopotoError):
    """A query is invalid: unknown field or lookup, bad value, missing partition."""
