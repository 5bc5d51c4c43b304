"""Popoto: a Django-style object mapper for Redis.

Models are classes, fields are class attributes, each instance is a Redis
hash at ``ClassName:key1:key2``; the ORM keeps secondary indexes in the same
atomic write and answers queries from them inside Redis.
"""

from popoto.behaviours import (
    AccessTrackerMixin,
    EventStreamMixin,
    SkipSaveException,
    WriteFilterMixin,
)
from popoto.exceptions import (
    BulkWriteError,
    ConnectionConfigError,
    DecodeError,
    FieldUsageError,
    KeyMutationError,
    ModelException,
    NotImplementedMethodError,
    PopotoError,
    QueryException,
    UniqueViolation,
    UnknownFieldError,
)
from popoto.fields.capped import CappedListProxy, ListField
from popoto.fields.decaying import CyclicDecayField, DecayingSortedField, TemporalPeriod
from popoto.fields.field import Field
from popoto.fields.geo import GeoField
from popoto.fields.relationship import Relationship
from popoto.fields.shortcuts import (
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
    SetField,
    StringField,
    TimeField,
    TupleField,
    UniqueKeyField,
)
from popoto.fields.sorted import SortedField, SortedKeyField
from popoto.keys import DB_key
from popoto.models.base import Model
from popoto.models.metaclass import ModelBase
from popoto.query.expressions import Q
from popoto.redis_db import configure, get_redis
from popoto.registry import get_model

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
    "DB_key",
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
    "ModelBase",
    "ModelException",
    "NotImplementedMethodError",
    "PopotoError",
    "Q",
    "QueryException",
    "Relationship",
    "SetField",
    "SkipSaveException",
    "SortedField",
    "SortedKeyField",
    "StringField",
    "TemporalPeriod",
    "TimeField",
    "TupleField",
    "UniqueKeyField",
    "UniqueViolation",
    "UnknownFieldError",
    "WriteFilterMixin",
    "configure",
    "get_model",
    "get_redis",
]
