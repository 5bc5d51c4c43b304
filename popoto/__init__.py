"""Popoto: a Django-style object mapper for Redis.

Models are classes, fields are class attributes, each instance is a Redis
hash at ``ClassName:key1:key2``; the ORM keeps secondary indexes in the same
atomic write and answers queries from them inside Redis.
"""

from .exceptions import (
    BulkWriteError,
    ConnectionConfigError,
    DecodeError,
    FieldUsageError,
    KeyMutationError,
    ModelException,
    PopotoError,
    QueryException,
    UniqueViolation,
    UnknownFieldError,
)
from .behaviours import AccessTrackerMixin, EventStreamMixin, WriteFilterMixin
from .fields.capped import CappedListProxy
from .fields.decaying import CyclicDecayField, DecayingSortedField
from .fields.field import Field
from .fields.shortcuts import (
    AutoKeyField,
    BooleanField,
    BytesField,
    DateField,
    DatetimeField,
    DecimalField,
    DictField,
    FloatField,
    IndexedField,
    IntField,
    KeyField,
    ListField,
    SetField,
    StringField,
    TimeField,
    TupleField,
    UniqueKeyField,
)
from .fields.geo import GeoField
from .fields.relationship import Relationship
from .fields.sorted import SortedField
from .models.base import Model
from .models.registry import get_model
from .query.expressions import Q
from .redis_db import configure

__version__ = "0.1.0"

__all__ = [
    "AccessTrackerMixin",
    "AutoKeyField",
    "BooleanField",
    "BulkWriteError",
    "BytesField",
    "CappedListProxy",
    "ConnectionConfigError",
    "CyclicDecayField",
    "DateField",
    "DatetimeField",
    "DecayingSortedField",
    "DecimalField",
    "DecodeError",
    "DictField",
    "EventStreamMixin",
    "Field",
    "FieldUsageError",
    "FloatField",
    "GeoField",
    "IndexedField",
    "IntField",
    "KeyField",
    "KeyMutationError",
    "ListField",
    "Model",
    "ModelException",
    "PopotoError",
    "Q",
    "QueryException",
    "Relationship",
    "SetField",
    "SortedField",
    "StringField",
    "TimeField",
    "TupleField",
    "UniqueKeyField",
    "UniqueViolation",
    "UnknownFieldError",
    "WriteFilterMixin",
    "configure",
    "get_model",
]
