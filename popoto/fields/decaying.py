"""Time-decaying rankings: DecayingSortedField, CyclicDecayField and ``top_by_decay``.

A :class:`DecayingSortedField` is a float SortedField whose value is the epoch
time (``time.time()``) of the instance's last save or ``touch()``; its sorted set
``$SortedF:M:<field>[:<partition>]`` is scored by that time, so it also answers
range queries ("touched in the last hour").

``Model.query.top_by_decay(...)`` ranks the members of that sorted set by::

    decay(m)   = base(m) * max(elapsed_days(m), 0.01) ** (-decay_rate)
    score(m)   = decay(m)                                   (DecayingSortedField)
    score(m)   = decay(m)
                 + sum(amplitude * cos(2*pi*(as_of - phase) / period) for each cycle of m)
                 + pressure_rate(m) * max(days since m's pressure was last resolved, 0)
                                                            (CyclicDecayField)

with ``elapsed_days = (as_of - last save/touch) / 86400`` and ``base(m)`` the
value of ``base_score_field`` (1 when there is none or its value is None).
Highest first; equal scores are ordered by instance key (ascending).

Cyclic state is per member and lives in two companion hashes keyed by the
instance key, msgpack values: ``$Cycles:M:<field>`` → ``[[period_s, amplitude,
phase_s], ...]`` and ``$Pressure:M:<field>`` → ``{"rate": r, "last_resolved":
epoch_s}`` (``M`` is the model's namespace: a sharded model has one pair per
tag group, ``$Cycles:{M#k}:<field>``, beside its members). Both are written
once, on the instance's first save (``H`` entries of the write path: HSETNX),
so later saves and index rebuilds never reset what ``strengthen_cycle``/
``weaken_cycle``/``resolve_pressure`` learned; they move with a key migration
and are deleted with the instance.

Sharded models: ``top_by_decay`` runs the ranking script once per tag group
(one pipelined round trip, every call inside one group's slot) and merges the
groups' n best by (score, key), which gives the unsharded answer.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import enum
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, cast, overload

import redis

from popoto import encoding, keys
from popoto.encoding import is_finite_number as _number
from popoto.engine import scripts
from popoto.engine.errors import translate_error
from popoto.engine.io import Command, Steps, run
from popoto.engine.merge import best_rows
from popoto.engine.sources import NS_CONTEXT
from popoto.engine.write import COMPANION_FIELD
from popoto.exceptions import FieldUsageError, ModelException, QueryException, UnknownFieldError
from popoto.fields.sorted import SortedField, to_score
from popoto.protocol import (
    DECAY_FLAG_BOUNDED,
    DECAY_FLAG_CYCLES,
    DECAY_FLAG_PRESSURE,
    DECAY_MAX_AMPLITUDE,
)
from popoto.query.queryset import QuerySet
from popoto.redis_db import get_client


class TemporalPeriod(enum.IntEnum):
    """Common periods in seconds (1.x's name), e.g. for cycles:
    ``CyclicDecayField(cycles=[(TemporalPeriod.DAY, 2.0)])``. A month is 30 days and a
    year 365 days."""

    MINUTE = 60
    HOUR = 3600
    DAY = 86400
    WEEK = 7 * 86400
    MONTH = 30 * 86400
    YEAR = 365 * 86400

    @property
    def seconds(self) -> int:
        return int(self)


if TYPE_CHECKING:
    from typing_extensions import Unpack

    from popoto.engine.write import WriteBatch
    from popoto.fields.field import Field, FieldOptions
    from popoto.fields.sorted import PartitionBy
    from popoto.models.base import Model
    from popoto.models.options import ModelOptions

#: the Python type a field gives on an instance
_T = TypeVar("_T")

BASE_TYPES = (int, float)

# popoto/lua/top_by_decay.lua: one tag group's n best by decayed score;
# scale_cycles.lua: multiply a member's cycle amplitudes; set_cycle_state.lua: HSET a
# member's companion value. Their numeric constants are DECAY_* of popoto.protocol.
TOP = scripts.LuaScript("top_by_decay")
SCALE = scripts.LuaScript("scale_cycles")
SET_STATE = scripts.LuaScript("set_cycle_state")


class DecayingSortedField(SortedField[_T]):
    """A sorted index scored by the time of the instance's last save or ``touch()``.

    Args:
        decay_rate: default exponent of the power-law decay used by
            ``top_by_decay`` (>= 0; 0 means no decay).
        base_score_field: name of an int/float field multiplying the decay
            (default: none, base 1).
        partition_by: as for SortedField; ``top_by_decay`` then needs the
            partition values.

    The value is set on every save that writes the field (full saves, and
    partial saves naming it) and by ``touch()``; ``save(skip_auto_now=True)``
    keeps the stored time (index rebuilds use it, so they do not refresh it).
    """

    type = float

    def contribute_to_class(self, model: builtins.type[Model], name: str) -> None:
        super().contribute_to_class(model, name)
        model._meta.query_features["top_by_decay"] = top_by_decay

    # an epoch time: float (| None unless null=False: None until the first save)
    @overload
    def __init__(self: DecayingSortedField[float], decay_rate: float = 0.1,
                 base_score_field: str | None = None, partition_by: PartitionBy = None, *,
                 null: Literal[False], type: builtins.type[float] = float,  # noqa: A002
                 **options: Unpack[FieldOptions]) -> None: ...

    @overload
    def __init__(self: DecayingSortedField[float | None], decay_rate: float = 0.1,
                 base_score_field: str | None = None, partition_by: PartitionBy = None, *,
                 null: bool = True, type: builtins.type[float] = float,  # noqa: A002
                 **options: Unpack[FieldOptions]) -> None: ...

    def __init__(self, decay_rate: float = 0.1, base_score_field: str | None = None,
                 partition_by: PartitionBy = None, **kwargs: Any) -> None:
        given = kwargs.pop("type", float)
        if given is not float:
            raise ModelException(f"{type(self).__name__} always holds a float epoch time, "
                                 f"not {given!r}")
        if not _number(decay_rate) or decay_rate <= 0:
            raise ModelException(f"{type(self).__name__}: decay_rate must be a finite number "
                                 f"> 0 (0 would never decay), got {decay_rate!r}")
        if base_score_field is not None and not isinstance(base_score_field, str):
            raise ModelException(f"{type(self).__name__}: base_score_field must be a field "
                                 f"name, got {base_score_field!r}")
        super().__init__(partition_by=partition_by, **kwargs)
        self.decay_rate = float(decay_rate)
        self.base_score_field = base_score_field

    def pre_save(self, instance: Model, value: Any, is_create: bool, skip_auto_now: bool) -> Any:
        if skip_auto_now and value is not None:
            return value
        return time.time()

    def base_field(self, name: str | None = None,
                   error: builtins.type[Exception] = ModelException) -> Field[Any] | None:
        """The field named ``name`` (default: ``base_score_field``), checked to be int/float."""
        name = self.base_score_field if name is None else name
        if name is None:
            return None
        field = self.placed_model._meta.fields.get(name)
        if field is None:
            raise error(f"{self.label}: base_score_field {name!r} is not a field of "
                        f"{self.placed_model.__name__}")
        if field.type not in BASE_TYPES:
            raise error(f"{self.label}: base_score_field {name!r} must be an int or float "
                        f"field, not {field.type.__name__}")
        return field

    def on_save(self, instance: Model, value: Any, batch: WriteBatch) -> None:
        if self.base_score_field is not None and not getattr(self, "_base_checked", False):
            self.base_field()
            self._base_checked = True
        super().on_save(instance, value, batch)


class CyclicDecayField(DecayingSortedField[_T]):
    """A decaying score plus per-member periodic cycles and homeostatic pressure.

    Args:
        cycles: ``[(period_s, amplitude[, phase_s]), ...]``, the initial cycles
            of every new member: ``period_s > 0``, ``0 <= amplitude <= 100``,
            ``phase_s`` (default 0) the epoch time of a peak.
        pressure_rate: score added per day since the member's pressure was
            last resolved (>= 0; 0 disables pressure).
        decay_rate, base_score_field, partition_by: as for DecayingSortedField.

    ``strengthen_cycle``/``weaken_cycle`` scale a member's amplitudes,
    ``resolve_pressure`` resets its pressure clock. Changing ``cycles=`` in the
    code affects new members only (existing ones keep what they learned).
    """

    @overload
    def __init__(self: CyclicDecayField[float], cycles: Any = (), pressure_rate: float = 0.0,
                 decay_rate: float = 0.1, *, base_score_field: str | None = None,
                 partition_by: PartitionBy = None, null: Literal[False],
                 type: builtins.type[float] = float,  # noqa: A002
                 **options: Unpack[FieldOptions]) -> None: ...

    @overload
    def __init__(self: CyclicDecayField[float | None], cycles: Any = (),
                 pressure_rate: float = 0.0, decay_rate: float = 0.1, *,
                 base_score_field: str | None = None, partition_by: PartitionBy = None,
                 null: bool = True, type: builtins.type[float] = float,  # noqa: A002
                 **options: Unpack[FieldOptions]) -> None: ...

    def __init__(self: CyclicDecayField[Any], cycles: Any = (), pressure_rate: float = 0.0,
                 decay_rate: float = 0.1, **kwargs: Any) -> None:
        super().__init__(decay_rate=decay_rate, **kwargs)
        self.cycles = self._check_cycles(cycles)
        if not _number(pressure_rate) or pressure_rate < 0:
            raise ModelException(f"CyclicDecayField: pressure_rate must be a finite number "
                                 f">= 0, got {pressure_rate!r}")
        self.pressure_rate = float(pressure_rate)

    @staticmethod
    def _check_cycles(cycles: Any) -> list[list[float]]:
        try:
            given = list(cycles)
        except TypeError:
            raise ModelException(f"CyclicDecayField: cycles must be a list of (period_s, "
                                 f"amplitude[, phase_s]) tuples, got {cycles!r}") from None
        out = []
        for cycle in given:
            ok = isinstance(cycle, (tuple, list)) and len(cycle) in (2, 3) \
                and all(_number(x) for x in cycle)
            if ok:
                period, amplitude, *rest = cycle
                phase = rest[0] if rest else 0.0
                ok = period > 0 and 0 <= amplitude <= DECAY_MAX_AMPLITUDE
            if not ok:
                raise ModelException(
                    f"CyclicDecayField: each cycle must be (period_s > 0, 0 <= amplitude <= "
                    f"{DECAY_MAX_AMPLITUDE:g}[, phase_s]) of finite numbers, got {cycle!r}")
            out.append([float(period), float(amplitude), float(phase)])
        return out

    def _ns(self, ns: str | None, what: str) -> str:
        meta = self.placed_model._meta
        if ns is not None:
            return ns
        if meta.sharded:
            raise ModelException(f"{self.label}: {self.placed_model.__name__} is sharded into "
                                 f"{len(meta.groups)} tag groups; {what}() needs the group "
                                 f"(keys.ns_of(instance key))")
        return meta.groups[0]

    def cycles_key(self, ns: str | None = None) -> str:
        """The cycles hash of tag group ``ns`` (may be omitted for an unsharded model)."""
        return keys.behaviour_key("Cycles", self._ns(ns, "cycles_key"), self.name)

    def pressure_key(self, ns: str | None = None) -> str:
        """The pressure hash of tag group ``ns`` (may be omitted for an unsharded model)."""
        return keys.behaviour_key("Pressure", self._ns(ns, "pressure_key"), self.name)

    @classmethod
    def get_cycles_hash_key(cls, model: Any, field_name: str) -> keys.DB_key:
        """The cycles hash of ``field_name`` on ``model`` (class or instance): 1.x's name."""
        field = model._meta.get_field(field_name)
        return keys.DB_key(field.cycles_key(cls.model_ns(model, "get_cycles_hash_key()")))

    @classmethod
    def get_pressure_hash_key(cls, model: Any, field_name: str) -> keys.DB_key:
        """The pressure hash of ``field_name`` on ``model`` (class or instance)."""
        field = model._meta.get_field(field_name)
        return keys.DB_key(field.pressure_key(cls.model_ns(model, "get_pressure_hash_key()")))

    def on_save(self, instance: Model, value: Any, batch: WriteBatch) -> None:
        super().on_save(instance, value, batch)
        batch.add(self.name, COMPANION_FIELD, self.cycles_key(batch.ns), batch.key,
                  encoding.pack(self.cycles))
        if self.pressure_rate > 0:
            state = {"rate": self.pressure_rate, "last_resolved": float(value)}
            batch.add(self.name, COMPANION_FIELD, self.pressure_key(batch.ns), batch.key,
                      encoding.pack(state))

    # --- reading the per-member state ------------------------------------------
    def cycles_of(self, instance: Model) -> list[tuple[float, float, float]]:
        """The member's current ``(period_s, amplitude, phase_s)`` cycles ([] if none)."""
        key = instance.pk
        raw = get_client().hget(self.cycles_key(keys.ns_of(key)), key)
        return _cycles(raw)

    def pressure_of(self, instance: Model) -> dict[str, float] | None:
        """The member's ``{"rate", "last_resolved"}`` pressure state, None if it has none."""
        key = instance.pk
        raw = get_client().hget(self.pressure_key(keys.ns_of(key)), key)
        if raw is None:
            return None
        state = encoding.unpack(raw)
        return {k: float(v) for k, v in state.items()}


def _cycles(raw: bytes | None) -> list[tuple[float, float, float]]:
    if not raw:
        return []
    found = encoding.unpack(raw) or []
    return [(float(c[0]), float(c[1]), float(c[2]) if len(c) > 2 else 0.0) for c in found]


# --- instance methods (mixed into Model) -------------------------------------------

class DecayMethodsMixin:
    """``touch``, ``resolve_pressure``, ``strengthen_cycle``, ``weaken_cycle`` on instances."""

    _meta: ClassVar[ModelOptions]
    _redis_key: str | None

    def _decay_field(self, field_name: str, kind: type, action: str) -> Any:
        field = self._meta.fields.get(field_name)
        if field is None:
            raise UnknownFieldError(f"{type(self).__name__} has no field {field_name!r} "
                                    f"({action}() needs a {kind.__name__})")
        if not isinstance(field, kind):
            raise FieldUsageError(f"{action}() requires a {kind.__name__}; "
                                  f"{type(self).__name__}.{field_name} is "
                                  f"{type(field).__name__}")
        return field

    def _require_saved(self, action: str) -> str:
        if self._redis_key is None:
            raise FieldUsageError(f"Cannot call {action}() on an unsaved "
                                  f"{type(self).__name__} instance; save it first")
        return self._redis_key

    def touch(self, field_name: str, pipeline: Any = None) -> Any:
        """Set a DecayingSortedField to now (hash and sorted set) without a full save.

        A partial save of that field requiring the instance to exist, through the
        write path (behaviours see an update of the field). Returns the new
        timestamp, or the pipeline when one is given (the write is then queued).
        """
        self._decay_field(field_name, DecayingSortedField, "touch")
        cast("Model", self)._save_fields([field_name], pipeline,  # mixed into Model only
                                         action="touch")
        return pipeline if pipeline is not None else self.__dict__[field_name]

    def resolve_pressure(self, field_name: str, pipeline: Any = None) -> Any:
        """Reset the member's pressure clock of a CyclicDecayField (last_resolved = now).

        Returns the new timestamp (or the pipeline). FieldUsageError when the
        field's ``pressure_rate`` is 0 or the instance is unsaved.
        """
        field = self._decay_field(field_name, CyclicDecayField, "resolve_pressure")
        if field.pressure_rate <= 0:
            raise FieldUsageError(f"resolve_pressure() requires pressure_rate > 0; "
                                  f"{field.label} has pressure_rate={field.pressure_rate}")
        key = self._require_saved("resolve_pressure")
        now = time.time()
        state = encoding.pack({"rate": field.pressure_rate, "last_resolved": now})
        self._run_state_script(SET_STATE, [key, field.pressure_key(keys.ns_of(key))], [state],
                               pipeline)
        return pipeline if pipeline is not None else now

    def strengthen_cycle(self, field_name: str, factor: float = 1.2, pipeline: Any = None
                         ) -> Any:
        """Multiply the member's cycle amplitudes by ``factor`` (clamped to [0, 100])."""
        return self._adjust_cycle_amplitudes(field_name, factor, pipeline, "strengthen_cycle")

    def weaken_cycle(self, field_name: str, factor: float = 0.8, pipeline: Any = None) -> Any:
        """Multiply the member's cycle amplitudes by ``factor``; below 0.01 becomes 0."""
        return self._adjust_cycle_amplitudes(field_name, factor, pipeline, "weaken_cycle")

    def _adjust_cycle_amplitudes(self, field_name: str, factor: float, pipeline: Any = None,
                                 action: str = "strengthen_cycle") -> Any:
        """Scale every amplitude atomically in Redis; returns the new cycles (or the pipeline).

        ``[]`` when the member has no stored cycles.
        """
        field = self._decay_field(field_name, CyclicDecayField, action)
        if not _number(factor) or factor < 0:
            raise field.error(f"{action}() factor must be a finite number >= 0", factor)
        key = self._require_saved(action)
        raw = self._run_state_script(SCALE, [key, field.cycles_key(keys.ns_of(key))],
                                     [repr(float(factor))], pipeline)
        return pipeline if pipeline is not None else _cycles(raw)

    def _run_state_script(self, script: scripts.LuaScript, keys_: list[str], args: list[Any],
                          pipeline: Any) -> Any:
        client = get_client()
        if pipeline is not None:
            script.queue(pipeline, client, keys_, args)
            return None
        try:
            return script(client, keys_, args)
        except redis.exceptions.ResponseError as exc:
            raise translate_error(type(self), exc) from None


# --- queries -----------------------------------------------------------------------

def _ranking_field(model: type[Model], field_name: str | None) -> DecayingSortedField[Any]:
    fields = model._meta.fields
    if field_name is None:
        found = [f for f in fields.values() if isinstance(f, DecayingSortedField)]
        if len(found) != 1:
            what = "no DecayingSortedField" if not found else \
                f"several ({', '.join(f.name for f in found)}); pass field_name"
            raise QueryException(f"{model.__name__}.top_by_decay: the model has {what}")
        return found[0]
    field = fields.get(field_name)
    if not isinstance(field, DecayingSortedField):
        what = "not a field" if field is None else f"a {type(field).__name__}"
        raise QueryException(f"{model.__name__}.top_by_decay: {field_name!r} is {what}; "
                             f"it needs a DecayingSortedField or CyclicDecayField")
    return field


def _as_of(model: type[Model], as_of: Any) -> float:
    if as_of is None:
        return time.time()
    if isinstance(as_of, _dt.datetime):
        return to_score(as_of)
    if _number(as_of):
        return float(as_of)
    raise QueryException(f"{model.__name__}.top_by_decay: as_of must be an epoch time or a "
                         f"datetime, got {as_of!r}")


def top_by_decay(model: type[Model], field_name: str | None = None, n: int = 10,
                 decay_rate: float | None = None, base_score_field: str | None = None,
                 as_of: float | _dt.datetime | None = None, _within: Any = None,
                 **partition: Any) -> list[Model]:
    """The ``n`` best instances by decayed score, best first (see the module docstring).

    One Lua script ranks the members of the field's sorted set server-side
    (O(members) worst case, early exit when the base is bounded and there are
    no cycles/pressure) and returns only the winners (a sharded model: one call
    per tag group in one pipelined round trip, merged); their hashes are then
    read in one pipelined round trip. ``partition`` gives the values of the
    field's ``partition_by`` fields. Each result carries its score in ``_score``.

    ``_within`` (a QuerySet: ``Model.query.filter(...).top_by_decay(n)``) ranks only
    its matches; partition values its exact conditions fix need not be repeated.
    The ranking asks for more winners (x4 each time) until n of them match.
    """
    field = _ranking_field(model, field_name)
    if _within is not None:
        fixed = _within.exact_values()
        partition = {**{p: fixed[p] for p in field.partition_by if p in fixed}, **partition}
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise QueryException(f"{model.__name__}.top_by_decay: n must be an int >= 0, got {n!r}")
    rate = field.decay_rate if decay_rate is None else decay_rate
    if not _number(rate) or rate < 0:
        raise QueryException(f"{model.__name__}.top_by_decay: decay_rate must be a finite "
                             f"number >= 0, got {rate!r}")
    base = field.base_field(base_score_field, QueryException)
    moment = _as_of(model, as_of)
    unknown = set(partition) - set(field.partition_by)
    if unknown:
        raise QueryException(f"{model.__name__}.top_by_decay: unexpected argument(s) "
                             f"{', '.join(sorted(unknown))} ({field.label} is partitioned by "
                             f"{field.partition_by or 'nothing'})")
    context = {}
    for name, value in partition.items():
        try:
            context[name] = model._meta.fields[name].coerce(value)
        except ModelException as exc:
            raise QueryException(str(exc)) from None
    field.key_from_context(context)  # checks the partition values
    if n == 0:
        return []
    bounded = base is not None and base.is_sorted and not base.partition_by
    # is_sorted: a SortedField, whose one sorted set bounds the base values
    sorted_base = cast("SortedField[Any]", base) if bounded else None
    cycled = field if isinstance(field, CyclicDecayField) else None
    cyclic = cycled is not None
    flags = ((DECAY_FLAG_BOUNDED if bounded else "")
             + (DECAY_FLAG_CYCLES + DECAY_FLAG_PRESSURE if cyclic else ""))
    def calls_for(k: int) -> list[Command]:
        args = [k, repr(float(rate)), repr(moment), base.name if base is not None else "",
                flags or "-"]
        calls = []
        for ns in model._meta.groups:
            zkey = field.key_from_context({**context, NS_CONTEXT: ns})
            calls.append(TOP.command(
                [zkey, sorted_base.sorted_key((), ns) if sorted_base is not None else zkey,
                 cycled.cycles_key(ns) if cycled is not None else zkey,
                 cycled.pressure_key(ns) if cycled is not None else zkey], args))
        return calls

    if _within is not None:
        return run(_top_within_steps(_within, calls_for, n))
    return run(_top_steps(QuerySet(model), calls_for(n), n))


def _top_within_steps(qs: QuerySet[Any], calls_for: Callable[[int], list[Command]],
                      n: int) -> Steps[list[Any]]:
    """The n best of a filter's matches: rank k (n, 4n, 16n...) winners until n of
    them match or the sorted set is exhausted; then their hashes."""
    allowed = set((yield from qs._keys_steps()))
    k = n
    while True:
        rows = best_rows((yield calls_for(k)), k)
        picked = [row for row in rows if row[0] in allowed]
        if len(picked) >= n or len(rows) < k or not allowed:
            break
        k *= 4
    return (yield from qs._hydrate_steps(picked[:n]))


def _top_steps(qs: QuerySet[Any], calls: list[Command], n: int) -> Steps[list[Any]]:
    """Every group's n best in one round trip, merged by (score, key); then their hashes."""
    replies = yield calls
    return (yield from qs._hydrate_steps(best_rows(replies, n)))
