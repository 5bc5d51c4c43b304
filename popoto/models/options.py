"""ModelOptions (``Model._meta``): the field registry and compiled hook lists."""

from __future__ import annotations

import difflib
import re
import hashlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from popoto import keys, redis_db
from popoto.behaviours.base import CompiledHooks
from popoto.encoding import short_repr
from popoto.exceptions import ModelException, UnknownFieldError
from popoto.fields.field import Field

if TYPE_CHECKING:
    from popoto.models.base import Model

#: filter keywords and the instance state Popoto keeps in an instance's __dict__;
#: names of Model's (and its behaviours') attributes are reserved as well (ModelBase)
RESERVED_FIELD_NAMES = frozenset({
    "limit", "order_by", "values", "query", "objects", "_meta",
    "_raw", "_redis_key", "_ttl", "_expire_at", "_score", "_write_filter_score",
    "_access_count", "_last_accessed", "_staged_access",
})
META_OPTIONS = frozenset({"abstract", "order_by", "ttl", "indexes", "shards", "namespace"})
#: a model's namespace: the first segment of its keys (no separator or glob characters)
NAMESPACE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
INDEX_HASH_LENGTH = 16
#: tag groups of a model whose Meta does not set ``shards``, in cluster mode
DEFAULT_CLUSTER_SHARDS = 16


class CompositeIndex:
    """``Meta.indexes`` entry: a hash ``$Index:Model:a:b`` of value-hash -> instance key.

    With ``unique=True`` a save claims its value combination atomically; NULL
    in any member field means "not indexed" (NULLs never collide). A sharded
    model keeps each claim in the tag group of its value hash, and a non-unique
    index entry in the instance's group.
    """

    def __init__(self, meta: ModelOptions, field_names: tuple[str, ...], unique: bool) -> None:
        self.meta = meta
        self.field_names = field_names
        self.unique = unique
        self.name = "+".join(field_names)
        self.depends_on = frozenset(field_names)

    def key(self, ns: str) -> str:
        return keys.composite_index_key(ns, self.field_names)

    def value_hash(self, values: Iterable[Any]) -> str | None:
        """The index's value hash of a combination (None when a member is NULL).

        Values are escaped like key segments before they are joined, so ``("x:y", "z")``
        and ``("x", "y:z")`` differ; values without ``% : * ? [ ] { } \\`` hash as before.
        """
        parts = []
        for value in values:
            if value is None:
                return None
            parts.append(keys.escape(value))
        digest = hashlib.sha256(":".join(parts).encode()).hexdigest()
        return digest[:INDEX_HASH_LENGTH]

    def contribute_save(self, instance: Model, batch: Any) -> None:
        batch.own(self.name)
        digest = self.value_hash(getattr(instance, f) for f in self.field_names)
        if digest is None:
            return
        if self.unique:
            shown = ", ".join(f"{f}={short_repr(getattr(instance, f))}" for f in self.field_names)
            batch.claim(self.name, self.key(self.meta.claim_ns(digest)), digest, f"({shown})")
        else:
            batch.add(self.name, "S", f"{self.key(batch.ns)}:{digest}", batch.key)


class ModelOptions:
    """Metadata for one model class, built once by the metaclass."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        #: the first segment of every key of the model (``Meta.namespace``, default the
        #: class name); two registered models never share one
        self.namespace = model_name
        self._bases: dict[str, dict[str, str]] = {}  # record_bases() per tag group
        self.explicit_fields: dict[str, Field[Any]] = {}
        self.hidden_fields: dict[str, Field[Any]] = {}
        self.abstract = False
        self.order_by: str | None = None
        self.ttl: int | None = None
        self.indexes: tuple[Any, ...] = ()
        self.shards: int | None = None
        self._layout: tuple[int, tuple[str, ...], bool] = (-1, (model_name,), False)
        self.composite_indexes: list[CompositeIndex] = []
        self.hooks = CompiledHooks()
        #: ``Model.query.<name>`` methods contributed by fields and behaviours
        self.query_features: dict[str, Callable[..., Any]] = {}
        # compiled on finalize()
        self.fields: dict[str, Field[Any]] = {}
        self.key_field_names: list[str] = []
        self.index_owners: dict[str, frozenset[str]] = {}

    # --- registration --------------------------------------------------
    def add_field(self, name: str, field: Field[Any]) -> None:
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
        self.shards = getattr(meta, "shards", None)
        namespace = getattr(meta, "namespace", model_name)
        if not isinstance(namespace, str) or not NAMESPACE_RE.match(namespace):
            raise ModelException(
                f"{model_name}.Meta.namespace must be a name of letters, digits, '_', '.' or "
                f"'-' starting with a letter or '_' (it begins every key), got {namespace!r}")
        self.namespace = namespace
        self._layout = (-1, (namespace,), False)

    def finalize(self, hooks: CompiledHooks) -> None:
        """Validate Meta against the fields and compile the lookup tables and hook lists."""
        name = self.model_name
        self.hooks = hooks
        self.query_features.update(hooks.query_features)
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
        if self.shards is not None and (
            not isinstance(self.shards, int) or isinstance(self.shards, bool)
            or not 1 <= self.shards <= keys.N_SLOTS
        ):
            raise ModelException(f"{name}.Meta.shards must be an int from 1 to {keys.N_SLOTS}, "
                                 f"got {self.shards!r}")
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
            for dep in field.partition_by:
                if dep not in self.fields:
                    raise ModelException(f"{field.label}: partition_by field {dep!r} does not "
                                         f"exist on {name}")
        # owners of index entries and the fields each depends on; a field may name more
        # fields whose saves must re-run its hook in ``depends_on`` (e.g. every field)
        owners: dict[str, frozenset[str]] = {}
        for fname, field in self.fields.items():
            if field.owns_index():
                owners[fname] = frozenset({fname, *field.partition_by,
                                           *field.depends_on})
                for extra in field.extra_owners():
                    owners[extra] = owners[fname]
        for index in self.composite_indexes:
            owners[index.name] = index.depends_on
        self.index_owners = owners
        self.index_fields = [f for f in self.fields.values() if f.owns_index()]
        self.load_hooks: list[Callable[[list[Any], dict[str, Any]], None]] = [
            f.after_load for f in self.fields.values()
            if type(f).after_load is not Field.after_load]
        self.load_hooks += hooks.after_load
        self.query_options = {opt: f for f in self.fields.values()
                              for opt in f.query_options()}

    def query_option_owner(self, name: str) -> Field[Any] | None:
        """The field that accepts the non-lookup filter keyword ``name`` (e.g. geo_radius)."""
        return self.query_options.get(name)

    def after_load(self, objs: list[Any], options: dict[str, Any]) -> None:
        """Let fields/behaviours post-process freshly loaded instances (batched)."""
        if objs:
            for hook in self.load_hooks:
                hook(objs, options)

    def get_field(self, name: str, purpose: str = "") -> Field[Any]:
        """The field called ``name``; ModelException with a close-match suggestion if none."""
        field = self.fields.get(name)
        if field is None:
            close = difflib.get_close_matches(name, list(self.fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownFieldError(f"{self.model_name} has no field {name!r}{purpose}{hint}")
        return field

    # --- key layout (tag groups) ---------------------------------------
    def _current_layout(self) -> tuple[int, tuple[str, ...], bool]:
        gen = redis_db.generation()
        layout = self._layout
        if layout[0] != gen:
            cluster = redis_db.is_cluster()
            n = self.shards or (DEFAULT_CLUSTER_SHARDS if cluster else 1)
            sharded = cluster or n > 1
            groups = (tuple(keys.group_tag(self.namespace, k, n) for k in range(n))
                      if sharded else (self.namespace,))
            layout = self._layout = (gen, groups, sharded)
        return layout

    @property
    def groups(self) -> tuple[str, ...]:
        """The namespaces of the model's tag groups (just the model name when unsharded)."""
        return self._current_layout()[1]

    @property
    def sharded(self) -> bool:
        """True when keys carry hash tags: cluster mode, or ``Meta.shards`` > 1."""
        return self._current_layout()[2]

    def instance_key(self, key_values: Iterable[Any]) -> str:
        """The Redis key of the instance with these key values (ordered by field name)."""
        segments = [keys.escape(v) for v in key_values]
        groups = self.groups
        ns = groups[keys.group_of(keys.SEP.join(segments), len(groups))]
        return keys.SEP.join([ns, *segments])

    def claim_ns(self, token: str) -> str:
        """The group holding the unique claim ``token`` (its own group, for global uniqueness)."""
        groups = self.groups
        return groups[keys.group_of(token, len(groups))]

    def record_bases(self, ns: str) -> dict[str, str]:
        """Each index owner's record base in group ``ns``: the key prefix its own set,
        sorted-set and geo entries share, written relative to it in ``@idx`` records
        (``pack_record``). Owners without one (claims, companions, behaviours) map to ""."""
        bases = self._bases.get(ns)
        if bases is None:
            bases = {index.name: index.key(ns) for index in self.composite_indexes
                     if not index.unique}
            bases.update({name: base for name, field in self.fields.items()
                          if (base := field.record_base(ns))})
            for field in self.fields.values():
                bases.update(field.extra_record_bases(ns))
            self._bases[ns] = bases
        return bases

    def class_set_keys(self) -> list[str]:
        """The class set of every tag group."""
        return [keys.class_set_key(ns) for ns in self.groups]

    def owns_key(self, redis_key: Any) -> bool:
        """True when ``redis_key`` is an instance key of this model (any group): its
        namespace and one segment per key field."""
        return (isinstance(redis_key, str)
                and redis_key.count(keys.SEP) == len(self.key_field_names)
                and keys.ns_of(redis_key) in self.groups)

    @property
    def db_class_key(self) -> keys.DB_key:
        """The namespace (key prefix) of an unsharded model, as a key object."""
        return keys.DB_key(self.single_group("db_class_key"))

    @property
    def db_class_set_key(self) -> keys.DB_key:
        """The class set of an unsharded model (sharded models: ``class_set_keys()``)."""
        return keys.DB_key(keys.class_set_key(self.single_group("db_class_set_key")))

    def single_group(self, what: str) -> str:
        """The namespace of an unsharded model; ModelException naming ``what`` when the
        model is sharded (the caller must then say which group it means)."""
        groups = self.groups
        if len(groups) != 1 or self.sharded:
            raise ModelException(f"{self.model_name} is sharded into {len(groups)} tag groups: "
                                 f"{what} names one group; iterate over _meta.groups")
        return groups[0]

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

    def get_index_key(self, field_names: tuple[str, ...], ns: str | None = None) -> str:
        return keys.composite_index_key(ns or self.single_group("get_index_key"), field_names)

    def query_filters(self) -> list[str]:
        params: list[str] = []
        for field in self.fields.values():
            params += field.query_params()
        return sorted(params)
