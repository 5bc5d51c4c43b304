"""Field coercion and validation errors name model, field and value."""

import datetime as dt
from decimal import Decimal

import pytest

from popoto import (
    BooleanField,
    BytesField,
    DateField,
    DatetimeField,
    DecimalField,
    DictField,
    Field,
    FloatField,
    IntField,
    KeyField,
    ListField,
    Model,
    ModelException,
    SetField,
    StringField,
    TimeField,
    TupleField,
)


class Typed(Model):
    key = KeyField()
    i = IntField(null=True)
    f = FloatField(null=True)
    d = DecimalField(null=True)
    s = StringField(null=True, max_length=5)
    b = BooleanField(null=True)
    by = BytesField(null=True)
    li = ListField(null=True)
    di = DictField(null=True)
    se = SetField(null=True)
    tu = TupleField(null=True)
    da = DateField(null=True)
    ti = TimeField(null=True)
    dtm = DatetimeField(null=True)
    req = Field(type=int, null=False, default=None)
    dflt = ListField(default=list)


def test_compatible_values_are_coerced():
    """Compatible values are converted to the field type on assignment."""
    t = Typed(key="k", i="5", f=2, d="1.10", b="true", da="2024-01-02", tu=[1, 2], se=[1, 1])
    assert t.i == 5 and t.f == 2.0 and isinstance(t.f, float)
    assert t.d == Decimal("1.10") and t.b is True
    assert t.da == dt.date(2024, 1, 2) and t.tu == (1, 2) and t.se == {1}


@pytest.mark.parametrize(
    "field, value",
    [("i", "abc"), ("i", 1.5), ("f", "x"), ("b", "maybe"), ("da", "not a date"),
     ("li", 5), ("di", 3), ("s", "toolong")],
)
def test_invalid_values_name_model_field_value(field, value):
    """Invalid values raise ModelException naming the model, the field and the value."""
    with pytest.raises(ModelException) as info:
        Typed(key="k", **{field: value})
    message = str(info.value)
    assert "Typed" in message and field in message and repr(value) in message


def test_null_false_checked_at_save():
    """A required field left None fails at save, naming the field, and writes nothing."""
    t = Typed(key="k")
    with pytest.raises(ModelException, match="req"):
        t.save()
    assert Typed.query.count() == 0


def test_callable_default_is_called_per_instance():
    """A callable default gives each instance its own value."""
    a, b = Typed(key="a"), Typed(key="b")
    a.dflt.append(1)
    assert b.dflt == []


def test_round_trip_of_every_type(r):
    """Every field type survives save and load exactly."""
    now = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc)
    t = Typed(key="k", i=-3, f=1.5, d=Decimal("3.14159265358979323846"), s="abc", b=False,
              by=b"\x00\xff", li=[1, "a", None], di={"x": [1, 2], 3: "y"}, se={1, 2},
              tu=(1, "2"), da=dt.date(2020, 2, 29), ti=dt.time(23, 59, 1), dtm=now, req=1)
    t.save()
    back = Typed.query.get(key="k")
    for name in Typed._meta.fields:
        assert getattr(back, name) == getattr(t, name), name
        assert type(getattr(back, name)) is type(getattr(t, name)), name
    stored = r.hget(t.pk, "i")
    assert stored is not None and stored != b"None"


def test_none_stored_as_none():
    """None round trips as None (not the string 'None')."""
    Typed(key="n", req=1).save()
    assert Typed.query.get(key="n").s is None


def test_auto_now_and_auto_now_add():
    """auto_now_add stamps the first save; auto_now every save unless skip_auto_now."""

    class Stamped(Model):
        key = KeyField()
        created = DatetimeField(auto_now_add=True, null=True)
        updated = DatetimeField(auto_now=True, null=True)

    s = Stamped(key="a")
    s.save()
    first_created, first_updated = s.created, s.updated
    assert first_created is not None and first_updated is not None
    s.save()
    assert s.created == first_created and s.updated >= first_updated
    before = s.updated
    s.save(skip_auto_now=True)
    assert s.updated == before


def test_is_valid_reports_without_raising():
    """is_valid() returns False for invalid state instead of raising."""
    t = Typed(key="k")
    assert t.is_valid(null_check=False) is True
    assert t.is_valid() is False
    t.req = 1
    assert t.is_valid() is True


# --- definition-time refusals and 1.x options (issue 14) ------------------------------

@pytest.mark.parametrize("kind", [list, dict, set])
def test_key_field_container_types_are_refused_at_definition(kind):
    """KeyField(type=list|dict|set) raises ModelException naming model and field."""
    from popoto import KeyField, Model, ModelException
    with pytest.raises(ModelException, match=rf"BadKey.tags: .*type={kind.__name__}"):
        class BadKey(Model):
            tags = KeyField(type=kind)


def test_nullable_key_field_is_refused_at_definition():
    """KeyField(null=True) is refused when the class is defined, never at save time."""
    from popoto import KeyField, Model, ModelException, UniqueKeyField
    from popoto.registry import get_model
    with pytest.raises(ModelException, match=r"NullKey.code: .*null=True"):
        class NullKey(Model):
            code = KeyField(null=True)
    with pytest.raises(ModelException, match=r"NullUnique.code: .*null=True"):
        class NullUnique(Model):
            code = UniqueKeyField(null=True)
    with pytest.raises(ModelException, match="no registered model"):
        get_model("NullKey")


def test_decaying_field_with_zero_rate_is_refused():
    """DecayingSortedField(decay_rate=0) never decays: refused with ModelException."""
    from popoto import CyclicDecayField, DecayingSortedField, ModelException
    with pytest.raises(ModelException, match="decay_rate must be .* > 0"):
        DecayingSortedField(decay_rate=0)
    with pytest.raises(ModelException, match="decay_rate"):
        CyclicDecayField(decay_rate=0.0)


def test_auto_key_length(r):
    """AutoKeyField(auto_uuid_length=n) makes n-hex-digit keys; bad lengths are refused."""
    from popoto import AutoKeyField, Field, Model, ModelException

    class ShortTicket(Model):
        id = AutoKeyField(auto_uuid_length=8)
        note = Field(type=str, null=True)

    ticket = ShortTicket.create(note="x")
    assert len(ticket.id) == 8 and int(ticket.id, 16) >= 0
    assert ShortTicket.query.get(id=ticket.id).note == "x"
    for bad in (0, 33, "8", True):
        with pytest.raises(ModelException, match="auto_uuid_length"):
            AutoKeyField(auto_uuid_length=bad)
