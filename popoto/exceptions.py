"""Exceptions raised by Popoto.

The tree::

    PopotoError
    ├── ConnectionConfigError      bad or unreachable REDIS_URL / configure() argument
    ├── ModelException             invalid model definition, field value or write
    │   ├── KeyMutationError       a saved KeyField changed without migrate_key=True
    │   ├── UniqueViolation        a unique field / composite index / key is already taken
    │   ├── BulkWriteError         some instances of a bulk write failed (listed in .failures)
    │   ├── DecodeError            a stored hash value cannot be decoded
    │   ├── FieldUsageError        (also a TypeError) a field method used on an unsaved
    │   │                          instance or on a field of the wrong kind/configuration
    │   ├── UnknownFieldError      (also an AttributeError) a field method named no field
    │   └── NotImplementedMethodError (also a NotImplementedError) a behaviour needs a
    │                              method the model does not implement
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


class FieldUsageError(ModelException, TypeError):
    """A field method (``touch``, ``resolve_pressure``, ``push``...) cannot be used here.

    The instance is unsaved, or the named field is of the wrong kind or lacks the
    configuration the method needs. Also a ``TypeError``, as the spec raises.
    """


class UnknownFieldError(ModelException, AttributeError):
    """A field method was given a name that is not a field of the model."""


class QueryException(PopotoError):
    """A query is invalid: unknown field or lookup, bad value, missing partition."""


class NotImplementedMethodError(ModelException, NotImplementedError):
    """A behaviour needs a method the model does not implement (e.g.
    ``compute_filter_score`` of a WriteFilterMixin model). Also a
    ``NotImplementedError``, as upstream Popoto raises."""
