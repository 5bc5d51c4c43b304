"""Model definition: _meta, field-name rules, Meta validation, field placement."""

import pytest

from popoto import (
    AutoKeyField,
    Field,
    IndexedField,
    IntField,
    KeyField,
    Model,
    ModelException,
    SortedField,
    StringField,
)


class Article(Model):
    slug = KeyField()
    title = StringField()
    views = SortedField(type=int, null=True)
    tag = IndexedField(null=True)
    _note = Field(null=True)

    class Meta:
        order_by = "-views"
        ttl = 3600


def test_meta_registers_fields_by_category():
    """_meta knows explicit/hidden fields and each field category."""
    meta = Article._meta
    assert list(meta.explicit_fields) == ["slug", "title", "views", "tag"]
    assert list(meta.hidden_fields) == ["_note"]
    assert meta.key_field_names == ["slug"]
    assert meta.sorted_field_names == ["views"]
    assert meta.indexed_field_names == ["tag"]
    assert meta.class_set_keys() == [f"$Class:{ns}" for ns in meta.groups]
    assert meta.order_by == "-views" and meta.ttl == 3600


@pytest.mark.standalone_only  # an unsharded model (cluster mode shards every model)
def test_unsharded_meta_names_its_one_class_key():
    """An unsharded model has one namespace (its name) and one class set."""
    meta = Article._meta
    assert meta.groups == ("Article",) and not meta.sharded
    assert meta.db_class_key == "Article"
    assert meta.db_class_set_key == "$Class:Article"


def test_query_and_objects_are_the_same():
    """Model.query and Model.objects are one object."""
    assert Article.query is Article.objects


def test_get_info_lists_query_filters():
    """get_info() reports fields and the valid query filters."""
    info = Article.get_info()
    assert "views__gte" in info["query_filters"]
    assert "slug__startswith" in info["query_filters"]
    assert info["key_fields"] == ["slug"]


def test_auto_key_added_without_key_field():
    """A model with no KeyField gets a hidden _auto_key (uuid4 hex)."""

    class Note(Model):
        text = Field()

        class Meta:
            namespace = "AutoNote"  # popoto.ops.examples.models.Note owns "Note"

    assert "_auto_key" in Note._meta.hidden_fields
    assert isinstance(Note._meta.fields["_auto_key"], AutoKeyField)
    a, b = Note(text="x"), Note(text="y")
    assert len(a._auto_key) == 32 and a._auto_key != b._auto_key


@pytest.mark.parametrize("name", ["Title", "limit", "order_by", "values"])
def test_bad_field_names_rejected(name):
    """Capitalised and reserved field names are rejected with the name in the error."""
    with pytest.raises(ModelException, match=name):
        type("Bad", (Model,), {"__module__": __name__, name: Field()})


def test_public_non_field_attribute_rejected():
    """Public class attributes that are not Fields are rejected."""
    with pytest.raises(ModelException, match="color"):

        class Bad(Model):
            color = "red"


def test_private_attributes_and_methods_allowed():
    """Private data, methods and properties are fine on a model."""

    class Fine(Model):
        name = KeyField()
        _cache = {}

        def shout(self):
            return self.name.upper()

        @property
        def short(self):
            return self.name[:1]

    assert Fine(name="ab").shout() == "AB"


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"order_by": "nope"}, "order_by"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": "10"}, "ttl"),
        ({"indexes": "x"}, "indexes"),
        ({"indexes": ((("a",),),)}, "2-tuple"),
        ({"indexes": ((("missing",), True),)}, "missing"),
        ({"indexes": ((("a",), "yes"),)}, "bool"),
        ({"ordering": "a"}, "did you mean 'order_by'"),
    ],
)
def test_meta_validation(meta, message):
    """Bad Meta options fail at class creation with a clear message."""
    with pytest.raises(ModelException, match=message):
        type("M", (Model,), {"__module__": __name__, "a": KeyField(),
                             "Meta": type("Meta", (), meta)})


def test_unknown_field_option_rejected():
    """A Field constructor with an unknown option fails loudly."""
    with pytest.raises(ModelException, match="unknwon"):
        IntField(unknwon=1)


def test_abstract_model_fields_inherited():
    """Fields of an abstract parent are inherited (cloned) by concrete children."""

    class Base(Model):
        created = IntField(default=0)

        class Meta:
            abstract = True

    class Child(Base):
        name = KeyField()

    assert set(Child._meta.fields) == {"created", "name"}
    assert Child._meta.fields["created"].model is Child
    with pytest.raises(ModelException, match="abstract"):
        Base()


def test_field_descriptor_returns_field_on_class():
    """Model.field is the Field; instance.field is the value."""
    assert isinstance(Article.title, StringField)
    assert Article(slug="s", title="t").title == "t"
