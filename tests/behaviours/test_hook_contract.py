"""Behaviour hooks are compiled once per class into ``_meta.hooks``; inherited overrides run."""

from popoto import EventStreamMixin, FloatField, KeyField, Model, WriteFilterMixin
from popoto.behaviours.base import compile_hooks
from tests.helpers import db_keys


class GatedFilter(WriteFilterMixin):
    """A subclass of a behaviour that overrides a hook without repeating the marker."""

    def behaviour_allow_save(self, **options):  # type: ignore[override]
        if getattr(self, "value", 0) == 0.42:
            return False
        return super().behaviour_allow_save(**options)


class Gated(GatedFilter, Model):
    name = KeyField()
    value = FloatField(default=0.5)

    def compute_filter_score(self) -> float:
        return self.value


calls: list[str] = []


class Counted(EventStreamMixin, WriteFilterMixin, Model):
    """One override on the model shadows the on_save hook of both behaviour roots."""

    name = KeyField()
    value = FloatField(default=0.5)

    class Meta:
        pass

    def compute_filter_score(self) -> float:
        return self.value

    def behaviour_on_save(self, batch):  # type: ignore[override]
        calls.append(self.name)
        super().behaviour_on_save(batch)


def test_an_override_in_a_behaviour_subclass_runs(r):
    """GatedFilter's allow_save override vetoes the save (it was ignored when hooks were
    read from each marker class's own __dict__)."""
    assert Gated(name="x", value=0.42).save() is False
    assert db_keys(r) == set()
    assert Gated(name="y", value=0.9).save() is True
    assert Gated.query.count() == 1


def test_hooks_are_resolved_once_to_the_most_derived_override():
    """compile_hooks finds the subclass's function for the WriteFilterMixin root."""
    hooks = Gated._meta.hooks
    assert GatedFilter.behaviour_allow_save in hooks.allow_save
    assert WriteFilterMixin.behaviour_allow_save not in hooks.allow_save
    assert compile_hooks(Gated) == hooks


def test_a_model_override_shadowing_two_roots_runs_once(r):
    """A hook the model overrides for both behaviours is called once per save."""
    calls.clear()
    assert Counted._meta.hooks.on_save == (Counted.behaviour_on_save,)
    Counted(name="a").save()
    assert calls == ["a"]


def test_every_field_class_implements_the_field_hooks():
    """Each public field type satisfies the FieldHooks protocol the model layer relies on."""
    import popoto
    from popoto.fields.field import Field, FieldHooks

    kinds = [getattr(popoto, n) for n in popoto.__all__
             if isinstance(getattr(popoto, n), type) and issubclass(getattr(popoto, n), Field)]
    assert len(kinds) > 15
    for kind in kinds:
        field = kind(model="self") if kind.__name__ == "Relationship" else kind()
        assert isinstance(field, FieldHooks), kind
