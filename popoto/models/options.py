"""ModelOptions (``Model._meta``): the field registry and compiled hook lists."""

from __future__ import annotations

import difflib
import hashlib
from typing import TYPE_CHECKING, Any
from collections.abc import Iterable

from .. import keys
from ..exceptions import ModelException

from ..fields.field import Field

if TYPE_CHECKING:
    from .base import Model

RESERVED_FIELD_NAMES = frozenset({"limit", "order_by", "values"})
META_OPTIONS = frozenset({"abstract", "order_by", "ttl", "indexes"})
INDEX_HASH_LENGTH = 16


class CompositeIndex:
    """``Meta.indexes`` entry: a hash ``$Index:Model:a:b`` of value-hash -> instance key.

    With ``unique=True`` a save claims its value combination atomically; NULL
    in any member field means "not indexed" (NULLs never collide).
    """

    def __init__(self, meta: ModelOptions, field_names: tuple[str, ...], unique: bool) -> None:
        self.meta = meta
        self.field_names = field_names
        self.unique = unique
        self.name = "+".join(field_names)
        self.key = keys.composite_index_key(meta.model_name, field_names)
        self.depends_on = frozenset(field_names)

    def value_hash(self, values: Iterable[Any]) -> str | None:
        parts = []
        for value in values:
            if value is None:
                return None
            parts.append(str(value))
        digest = hashlib.sha256(":".join(parts).encode()).hexdigest()
        return digest[:INDEX_HASH_LENGTH]

    def contribute_save(self, instance: Model, batch: Any) -> None:
        batch.own(self.name)
        digest = self.value_hash(getattr(instance, f) for f in self.field_names)
        if digest is None:
            return
        if self.unique:
            shown = ", ".join(f"{f}={getattr(instance, f)!r}" for f in self.field_names)
            batch.claim(self.name, self.key, digest, f"({shown})")
        else:
            batch.add(self.name, "S", f"{self.key}:{digest}", batch.key)


class ModelOptions:
    """Metadata for one model class, built once by the metaclass."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.db_class_key = keys.tag(model_name)
        self.db_class_set_key = keys.class_set_key(model_name)
        self.explicit_fields: dict[str, Field] = {}
        self.hidden_fields: dict[str, Field] = {}
        self.abstract = False
        self.order_by: str | None = None
        self.ttl: int | None = None
        self.indexes: tuple = ()
        self.composite_indexes: list[CompositeIndex] = []
        self.behaviours: list[Any] = []
        # compiled on finalize()
        self.fields: dict[str, Field] = {}
        self.key_field_names: list[str] = []
        self.index_owners: dict[str, frozenset[str]] = {}

    # --- registration --------------------------------------------------
    def add_field(self, name: str, field: Field) -> None:
        if not (name[0] == "_" or name[0].islower()):
            raise ModelException(
                f"{self.model_name}.{name}: field names must start with a lowercase letter"
            )
        if name in RESERVED_FIELD_NAMES:
            raise ModelException(
                f"{self.model_name}.{name}: {name!r} is reserved "
                f"(reserved: {', '.join(sorted(RESERVED_FIELD_NAMES))})"
            )
        if name in self.explicit_fields or name in self.hidden_fields:
            raise ModelException(f"{self.model_name}.{name} is already a field on the model")
        (self.hidden_fields if name.startswith("_") else self.explicit_fields)[name] = field

    def apply_meta(self, meta: Any, model_name: str) -> None:
        if meta is None:
            return
        given = {k for k in vars(meta) if not k.startswith("__")}
        unknown = given - META_OPTIONS
        if unknown:
            name = sorted(unknown)[0]
            close = difflib.get_close_matches(name, sorted(META_OPTIONS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ModelException(
                f"{model_name}.Meta has unknown option {name!r}{hint} "
                f"(valid: {', '.join(sorted(META_OPTIONS))})"
            )
        self.abstract = bool(getattr(meta, "abstract", False))
        self.order_by = getattr(meta, "order_by", None)
        self.ttl = getattr(meta, "ttl", None)
        self.indexes = getattr(meta, "indexes", ())

    def finalize(self) -> None:
        """Validate Meta against the fields and compile the lookup tables and hook lists."""
        name = self.model_name
        self.fields = {**self.explicit_fields, **self.hidden_fields}
        self.key_field_names = sorted(n for n, f in self.fields.items() if f.is_key)
        if self.order_by is not None:
            if not isinstance(self.order_by, str) or self.order_by.lstrip("-") not in self.fields:
                raise ModelException(
                    f"{name}.Meta.order_by references {self.order_by!r}, which is not a field "
                    f"(fields: {', '.join(self.fields)})"
                )
        if self.ttl is not None and (
            not isinstance(self.ttl, int) or isinstance(self.ttl, bool) or self.ttl <= 0
        ):
            raise ModelException(f"{name}.Meta.ttl must be a positive int (seconds), "
                                 f"got {self.ttl!r}")
        if not isinstance(self.indexes, (tuple, list)):
            raise ModelException(f"{name}.Meta.indexes must be a tuple or list, "
                                 f"got {type(self.indexes).__name__}")
        self.composite_indexes = []
        for index in self.indexes:
            if not isinstance(index, (tuple, list)) or len(index) != 2:
                raise ModelException(f"{name}.Meta.indexes: each index must be a 2-tuple "
                                     f"(field_names, is_unique), got {index!r}")
            field_names, unique = index
            if not isinstance(field_names, (tuple, list)) or not field_names:
                raise ModelException(f"{name}.Meta.indexes: field names must be a non-empty "
                                     f"tuple/list, got {field_names!r}")
            if not isinstance(unique, bool):
                raise ModelException(f"{name}.Meta.indexes: uniqueness flag must be a bool, "
                                     f"got {unique!r}")
            for fname in field_names:
                if fname not in self.fields:
                    raise ModelException(f"{name}.Meta.indexes: unknown field {fname!r} "
                                         f"(fields: {', '.join(self.fields)})")
            self.composite_indexes.append(CompositeIndex(self, tuple(field_names), unique))
        for field in self.fields.values():
            for dep in getattr(field, "partition_by", ()):
                if dep not in self.fields:
                    raise ModelException(f"{field.label}: partition_by field {dep!r} does not "
                                         f"exist on {name}")
        # owners of index entries and the fields each depends on; a field may name more
        # fields whose saves must re-run its hook in ``depends_on`` (e.g. every field)
        owners: dict[str, frozenset[str]] = {}
        for fname, field in self.fields.items():
            if field.owns_index():
                owners[fname] = frozenset({fname, *getattr(field, "partition_by", ()),
                                           *getattr(field, "depends_on", ())})
        for index in self.composite_indexes:
            owners[index.name] = index.depends_on
        self.index_owners = owners
        self.index_fields = [f for f in self.fields.values() if f.owns_index()]
        self.load_hooks = [f for f in self.fields.values()
                           if type(f).after_load is not Field.after_load]
        self.load_hooks += [b.__dict__["behaviour_after_load"] for b in self.behaviours
                            if "behaviour_after_load" in b.__dict__]
        self.query_options = {opt: f for f in self.fields.values()
                              for opt in f.query_options()}

    def query_option_owner(self, name: str) -> Field | None:
        """The field that accepts the non-lookup filter keyword ``name`` (e.g. geo_radius)."""
        return self.query_options.get(name)

    def after_load(self, objs: list[Any], options: dict[str, Any]) -> None:
        """Let fields/behaviours post-process freshly loaded instances (batched)."""
        if objs:
            for hook in self.load_hooks:
                hook(objs, options) if not isinstance(hook, Field) else hook.after_load(
                    objs, options)

    def get_field(self, name: str, purpose: str = "") -> Field:
        """The field called ``name``; ModelException with a close-match suggestion if none."""
        field = self.fields.get(name)
        if field is None:
            close = difflib.get_close_matches(name, list(self.fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ModelException(f"{self.model_name} has no field {name!r}{purpose}{hint}")
        return field

    # --- derived names -------------------------------------------------
    @property
    def field_names(self) -> list[str]:
        return list(self.fields)

    @property
    def auto_field_names(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.is_auto]

    @property
    def sorted_field_names(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.is_sorted]

    @property
    def indexed_field_names(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.is_indexed]

    @property
    def geo_field_names(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.is_geo]

    @property
    def relationship_field_names(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.is_relationship]

    @property
    def unique_field_names(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.unique]

    @property
    def db_key_length(self) -> int:
        return 1 + len(self.key_field_names)

    def get_db_key_index_position(self, field_name: str) -> int:
        return 1 + self.key_field_names.index(field_name)

    def get_index_key(self, field_names: tuple[str, ...]) -> str:
        return keys.composite_index_key(self.model_name, field_names)

    def query_filters(self) -> list[str]:
        params: list[str] = []
        for field in self.fields.values():
            params += field.query_params()
        return sorted(params)
