"""A model only ever touches its own namespace: reserved field names, one namespace per
model, escaped composite values, foreign keys refused by from_redis."""

import pytest

from popoto import (
    Field,
    IndexedField,
    IntField,
    KeyField,
    Model,
    ModelException,
    StringField,
    UniqueViolation,
    WriteFilterMixin,
)
from popoto import registry
from tests.helpers import db_keys


class Tome(Model):
    isbn = KeyField()
    title = Field(null=True)


class Pew(Model):
    ident = KeyField()
    row = StringField(null=True)
    col = StringField(null=True)

    class Meta:
        indexes = ((("row", "col"), True),)


@pytest.mark.parametrize("name", ["db_key", "save", "delete", "query", "objects", "pk",
                                  "_meta", "_redis_key", "_raw", "limit", "values",
                                  "is_persisted", "build_save", "check_indexes",
                                  "atomic_increment", "to_dict"])
def test_a_field_cannot_shadow_the_model_machinery(name):
    """A field named like a Model attribute, method or ORM state is refused at definition."""
    with pytest.raises(ModelException, match=repr(name)):
        type("Shadow", (Model,), {"__module__": __name__, "k": KeyField(), name: Field()})


def test_a_field_cannot_shadow_a_behaviour_method():
    """Behaviour attributes (e.g. WriteFilterMixin.priority_key) are reserved too."""
    with pytest.raises(ModelException, match="priority_key"):
        type("Ranked", (WriteFilterMixin, Model),
             {"__module__": __name__, "k": KeyField(), "priority_key": Field()})


def test_a_field_value_cannot_choose_the_key(r):
    """The attack the rule closes: Doc(db_key='Tome:1') writing into Tome's hash."""
    Tome.create(isbn="1", title="kept")
    with pytest.raises(ModelException):
        type("Doc", (Model,), {"__module__": __name__, "k": KeyField(), "db_key": Field()})
    assert r.hgetall(Tome(isbn="1").db_key) != {} and Tome.query.get(isbn="1").title == "kept"


def test_a_second_model_with_the_same_namespace_is_refused():
    """shop_b.Tome next to shop_a.Tome: refused, naming both and the Meta option."""
    with pytest.raises(ModelException, match=r"already used by .*test_namespaces\.Tome.*"
                                             r"Meta: namespace"):
        type("Tome", (Model,), {"__module__": "shop_b.models", "isbn": KeyField()})


def test_meta_namespace_separates_two_models_of_one_name(r):
    """With Meta.namespace the second Tome has its own keys, count and delete."""
    other = type("Tome", (Model,), {"__module__": "shop_c.models", "isbn": KeyField(),
                                    "Meta": type("Meta", (), {"namespace": "shop_c.Tome"})})
    Tome.create(isbn="1")
    other.create(isbn="1")
    other.create(isbn="2")
    assert Tome.query.count() == 1 and other.query.count() == 2
    assert other.delete_all() == 2
    assert Tome.query.count() == 1 and Tome(isbn="1").db_key in db_keys(r)
    assert Tome.check_indexes()["total"] == 0


@pytest.mark.parametrize("bad", ["", "a:b", "{x}", "a b", "$Class", "1st", 7])
def test_meta_namespace_is_validated(bad):
    """A namespace is a plain name: no separator, tag, glob or space."""
    with pytest.raises(ModelException, match="namespace"):
        type("Named", (Model,), {"__module__": __name__, "k": KeyField(),
                                 "Meta": type("Meta", (), {"namespace": bad})})


def test_redefining_the_same_model_replaces_it():
    """The same label defined again (a reloaded module) is not a collision."""
    first = type("Again", (Model,), {"__module__": "reloaded.mod", "k": KeyField()})
    second = type("Again", (Model,), {"__module__": "reloaded.mod", "k": KeyField()})
    assert registry.get_model("reloaded.mod.Again") is second is not first


def test_composite_unique_values_are_escaped(r):
    """('x:y', 'z') and ('x', 'y:z') are different combinations."""
    Pew.create(ident="a", row="x:y", col="z")
    Pew.create(ident="b", row="x", col="y:z")
    with pytest.raises(UniqueViolation):
        Pew.create(ident="c", row="x:y", col="z")
    assert Pew.query.count() == 2


def test_from_redis_refuses_another_models_key(r):
    """An instance built on another model's key would delete that model's hash."""
    Tome.create(isbn="1", title="kept")
    for key in (Tome(isbn="1").db_key, "Pew", "Pew:a:b", "$Class:Pew", b"Pew:a", None):
        with pytest.raises(ModelException, match="not a Pew key"):
            Pew.from_redis(key, {})
    assert r.hget(Tome(isbn="1").db_key, "title") is not None


class Ledger(Model):
    name = KeyField()
    n = IntField(default=0)
    tag = IndexedField(null=True)


@pytest.mark.parametrize("value", ["", "x" * 4097])
def test_empty_and_oversized_key_values_are_refused(r, value):
    """A key value must be non-empty and at most KeyField.MAX_BYTES bytes."""
    with pytest.raises(ModelException, match="Ledger.name"):
        Ledger(name=value).save()
    assert db_keys(r) == set()
