"""The behaviour hook contract, compiled once per model class.

A behaviour is a mixin class that declares ``popoto_behaviour = True`` (its
*root*) and implements any of the hooks of :class:`BehaviourHooks`. When a
model class is built, :func:`compile_hooks` resolves, for every behaviour root
in the model's MRO, each hook to the most derived class that defines it (a
subclass of the root, or the model itself): an override in a subclass always
runs, whether or not the subclass repeats the marker. ``Model`` then loops over
the short tuples in ``_meta.hooks`` and never asks ``isinstance``.

A hook resolved to the same function for two roots (one override on the model
shadowing both) runs once; it calls ``super()`` to reach the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from popoto.engine.write import WriteBatch

MARKER = "popoto_behaviour"


class BehaviourHooks(Protocol):
    """What a behaviour may implement (every hook is optional)."""

    def behaviour_post_init(self) -> None:
        """After ``__init__`` and after loading from Redis (e.g. wrap a list)."""

    def behaviour_allow_save(self, **options: Any) -> bool:
        """A gate: False skips the save (``save()`` returns False)."""
        ...

    def behaviour_on_save(self, batch: WriteBatch) -> None:
        """Queue entries or commands on the save's WriteBatch (same atomic write)."""

    def behaviour_on_delete(self, batch: WriteBatch) -> None:
        """Queue entries or commands on the delete's WriteBatch."""

    @staticmethod
    def behaviour_after_load(objs: list[Any], options: dict[str, Any]) -> None:
        """Post-process one batch of instances a query just loaded."""


#: hook name -> attribute of :class:`CompiledHooks`
HOOKS = {
    "behaviour_post_init": "post_init",
    "behaviour_allow_save": "allow_save",
    "behaviour_on_save": "on_save",
    "behaviour_on_delete": "on_delete",
    "behaviour_after_load": "after_load",
}


@dataclass(frozen=True)
class CompiledHooks:
    """The behaviour hooks of one model class, in MRO order of their roots."""

    roots: tuple[type, ...] = ()
    post_init: tuple[Callable[..., None], ...] = ()
    allow_save: tuple[Callable[..., bool], ...] = ()
    on_save: tuple[Callable[..., None], ...] = ()
    on_delete: tuple[Callable[..., None], ...] = ()
    after_load: tuple[Callable[[list[Any], dict[str, Any]], None], ...] = ()
    #: query methods contributed by behaviours (``Model.query.<name>(...)``)
    query_features: dict[str, Callable[..., Any]] = field(default_factory=dict)


def _resolve(model: type, root: type, name: str) -> Callable[..., Any] | None:
    for klass in model.__mro__:
        if issubclass(klass, root) and name in klass.__dict__:
            hook: Callable[..., Any] = getattr(klass, name)
            return hook
    return None


def compile_hooks(model: type) -> CompiledHooks:
    """Resolve every behaviour hook of ``model`` (see the module docstring)."""
    roots = tuple(b for b in model.__mro__ if b.__dict__.get(MARKER))
    found: dict[str, list[Callable[..., Any]]] = {attr: [] for attr in HOOKS.values()}
    features: dict[str, Callable[..., Any]] = {}
    for root in roots:
        for name, attr in HOOKS.items():
            hook = _resolve(model, root, name)
            if hook is not None and hook not in found[attr]:
                found[attr].append(hook)
        features.update(root.__dict__.get("popoto_query_features", {}))
    return CompiledHooks(roots=roots, query_features=features,
                         **{attr: tuple(hooks) for attr, hooks in found.items()})
