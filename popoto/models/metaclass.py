"""ModelBase, the metaclass: builds ``_meta`` from a class body.

Fields place themselves (``contribute_to_class``), Meta is validated, behaviour
hooks are compiled (:func:`popoto.behaviours.base.compile_hooks`), the class gets
its ``query`` manager and is registered under its namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from popoto import registry
from popoto.behaviours.base import compile_hooks
from popoto.exceptions import ModelException
from popoto.fields.field import Field
from popoto.fields.shortcuts import AutoKeyField
from popoto.models.options import RESERVED_FIELD_NAMES, ModelOptions
from popoto.query.manager import Query

if TYPE_CHECKING:
    from popoto.models.base import Model


class ModelBase(type):
    """Builds ``_meta`` from the class body: fields place themselves, Meta is validated."""

    def __new__(mcs, name: str, bases: tuple[type, ...], attrs: dict[str, Any],
                **kwargs: Any) -> ModelBase:
        parents = [b for b in bases if isinstance(b, ModelBase)]
        if not parents:
            return super().__new__(mcs, name, bases, attrs, **kwargs)
        meta_class = attrs.pop("Meta", None)
        fields: dict[str, Field[Any]] = {}
        body: dict[str, Any] = {}
        for attr, value in attrs.items():
            if isinstance(value, Field):
                fields[attr] = value
            elif (attr.startswith("_") or callable(value) or hasattr(value, "__get__")
                  or isinstance(value, (classmethod, staticmethod))):
                body[attr] = value
            else:
                raise ModelException(
                    f"{name}.{attr}: public model attributes must be Fields "
                    f"(use a private name such as _{attr} for plain class data)"
                )
        new = super().__new__(mcs, name, bases, body, **kwargs)
        cls = cast("type[Model]", new)  # a subclass of Model (the only parentless ModelBase)
        _refuse_shadowing(cls, fields)
        meta = ModelOptions(name)
        meta.apply_meta(meta_class, name)
        cls._meta = meta
        for parent in reversed(cls.__mro__[1:]):
            parent_meta = parent.__dict__.get("_meta")
            if isinstance(parent_meta, ModelOptions):
                for fname, field in parent_meta.fields.items():
                    if fname not in fields and not field.is_auto:
                        field.clone().contribute_to_class(cls, fname)
        for fname, field in sorted(fields.items(), key=lambda kv: kv[1]._order):
            field.contribute_to_class(cls, fname)
        if not meta.abstract and not any(f.is_key for f in meta.explicit_fields.values()) \
                and not any(f.is_key for f in meta.hidden_fields.values()):
            AutoKeyField().contribute_to_class(cls, "_auto_key")
        meta.finalize(compile_hooks(cls))
        # one manager under both names; Model declares them for typing as a descriptor
        # giving Query[<the model>], which a plain assignment of a Query would not match
        manager = Query(cls)
        setattr(cls, "query", manager)  # noqa: B010
        setattr(cls, "objects", manager)  # noqa: B010
        if not meta.abstract:
            registry.register(cls)
        return new


def _refuse_shadowing(cls: type, fields: dict[str, Field[Any]]) -> None:
    """A field name must not shadow what the model, its behaviours or the ORM use:
    ``Doc.db_key`` as a field would let a value choose the Redis key the instance writes."""
    for fname in fields:
        if fname in RESERVED_FIELD_NAMES:
            raise ModelException(
                f"{cls.__name__}.{fname}: {fname!r} is reserved by Popoto "
                f"(reserved: {', '.join(sorted(RESERVED_FIELD_NAMES))}); rename the field")
        for base in cls.__mro__[1:]:
            attr = base.__dict__.get(fname, None)
            if attr is not None and not isinstance(attr, Field):
                raise ModelException(
                    f"{cls.__name__}.{fname}: a field cannot be called {fname!r}, which "
                    f"would shadow {base.__name__}.{fname}; rename the field")
