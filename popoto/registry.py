"""Registry of concrete models by label, so tasks can take a model name, not a class."""

from __future__ import annotations

from typing import TYPE_CHECKING

from popoto.exceptions import ModelException

if TYPE_CHECKING:
    from popoto.models.base import Model

_models: dict[str, type[Model]] = {}
_namespaces: dict[str, str] = {}  # namespace -> label of the model that owns it


def label_of(model: type[Model]) -> str:
    """``"module.ClassName"``: the label tasks use."""
    return f"{model.__module__}.{model.__name__}"


def register(model: type[Model]) -> None:
    """Register a concrete model. Its namespace (the first segment of its keys) must be
    its own: a second model class with the same namespace would read, count and delete
    the first one's instances, so it is refused (a re-definition of the same label, as
    when a module is reloaded, replaces the old class)."""
    label = label_of(model)
    namespace = model._meta.namespace
    owner = _namespaces.get(namespace)
    if owner is not None and owner != label:
        suggestion = label.replace(".", "_")
        raise ModelException(
            f"{label}: the namespace {namespace!r} (the first segment of its Redis keys) is "
            f"already used by {owner}; give one of them its own with "
            f"class Meta: namespace = {suggestion!r}")
    old = _models.get(label)
    if old is not None and old._meta.namespace != namespace:
        _namespaces.pop(old._meta.namespace, None)
    _models[label] = model
    _namespaces[namespace] = label


def get_model(label: str) -> type[Model]:
    """Find a model by ``"module.ClassName"`` or by its bare class name (when unambiguous)."""
    if label in _models:
        return _models[label]
    matches = [m for lbl, m in _models.items() if lbl.rsplit(".", 1)[-1] == label]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(sorted(label_of(m) for m in matches))
        raise ModelException(f"model label {label!r} is ambiguous: {names}")
    known = ", ".join(sorted(_models)) or "none"
    raise ModelException(f"no registered model {label!r} (known: {known})")


def all_models() -> list[type[Model]]:
    return list(_models.values())


_model_base: type | None = None


def set_model_base(base: type) -> None:
    """Called once by :mod:`popoto.models.base` with ``Model`` (lower layers cannot import it)."""
    global _model_base
    _model_base = base


def is_instance(obj: object) -> bool:
    """True for an instance of any Popoto model."""
    return _model_base is not None and isinstance(obj, _model_base)
