"""A user's module, type-checked (never run) by tests/typing/test_typing.py: field reads,
writes, model classmethods and queries have precise types under ``mypy --strict``, with
no plugin. Every ``assert_type`` here must hold."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from typing_extensions import assert_type

import popoto
from popoto.fields.capped import CappedListField
from popoto.fields.geo import Coordinates
from popoto.query.expressions import Q
from popoto.query.manager import Query
from popoto.query.queryset import QuerySet


class Author(popoto.Model):
    name = popoto.KeyField()


class Book(popoto.Model):
    isbn = popoto.KeyField()  # a key value is required: str
    title = popoto.StringField(null=False)
    rating = popoto.FloatField(null=True)
    pages = popoto.IntField()  # null defaults to True
    published = popoto.SortedField(type=float, null=False)
    score = popoto.SortedField()  # float, null=True
    year = popoto.SortedField(type=int, null=False)
    genre = popoto.IndexedField()  # str, null=True
    shelf = popoto.IndexedField(type=int, null=False)
    price = popoto.DecimalField(null=False)
    in_print = popoto.BooleanField(default=True)
    cover = popoto.BytesField()
    meta = popoto.DictField()
    tags = popoto.SetField(null=False)
    dims = popoto.TupleField()
    notes = popoto.ListField()
    history = popoto.ListField(max_length=10)  # a capped list: a proxy, never None
    released = popoto.DateField()
    opens = popoto.TimeField(null=False)
    stamped = popoto.DatetimeField(auto_now=True)
    where = popoto.GeoField()
    author = popoto.Relationship(Author)
    editor = popoto.Relationship("Author")  # by name: Any
    plain = popoto.Field(type=int, null=False)
    text = popoto.Field()
    hot = popoto.DecayingSortedField(decay_rate=0.2)
    cyclic = popoto.CyclicDecayField(cycles=[(86400, 2.0)], null=False)


class Ticket(popoto.Model):
    code = popoto.UniqueKeyField()
    number = popoto.KeyField(type=int)
    auto = popoto.AutoKeyField()
    sorted_key = popoto.SortedKeyField(type=int)


b = Book.create(isbn="1", title="t", rating=None)
assert_type(b, Book)
assert_type(b.isbn, str)
assert_type(b.title, str)
assert_type(b.rating, float | None)
assert_type(b.pages, int | None)
assert_type(b.published, float)
assert_type(b.score, float | None)
assert_type(b.year, int)
assert_type(b.genre, str | None)
assert_type(b.shelf, int)
assert_type(b.price, Decimal)
assert_type(b.in_print, bool | None)
assert_type(b.cover, bytes | None)
assert_type(b.meta, dict[Any, Any] | None)
assert_type(b.tags, set[Any])
assert_type(b.dims, tuple[Any, ...] | None)
assert_type(b.notes, list[Any] | None)
assert_type(b.history, popoto.CappedListProxy)
assert_type(b.released, dt.date | None)
assert_type(b.opens, dt.time)
assert_type(b.stamped, dt.datetime | None)
assert_type(b.where, Coordinates | None)
assert_type(b.author, Author | None)
assert_type(b.editor, Any)
assert_type(b.plain, int)
assert_type(b.text, str | None)
assert_type(b.hot, float | None)
assert_type(b.cyclic, float)

t = Ticket(code="c", number=1)
assert_type(t.code, str)
assert_type(t.number, int)
assert_type(t.auto, str)
assert_type(t.sorted_key, int)

# assignment is checked against the value type
b.title = "new"
b.rating = 4.5
b.rating = None
b.pages = 3
b.where = (1.0, 2.0)
b.author = Author(name="a")
b.author = "Author:a"
b.history = ["x"]
b.history.push("y")

# class-level access is the field: expressions build Q objects
assert_type(Book.rating, popoto.FloatField[float | None])
assert_type(Book.rating >= 3, Q)
assert_type(Book.title == "t", Q)
assert_type((Book.rating >= 3) & (Book.pages < 10), Q)
assert_type(Book.history, CappedListField)

# model classmethods return the model
assert_type(Book.load(isbn="1"), Book | None)
assert_type(Book.get_or_create(isbn="2", defaults={"title": "x"}), tuple[Book, bool])
assert_type(Book.update_or_create(isbn="2"), tuple[Book, bool])
assert_type(Book.from_redis("Book:1", {}), Book)

# queries are parameterised by the model
assert_type(Book.query, Query[Book])
assert_type(Book.objects, Query[Book])
assert_type(Book.query.get(isbn="1"), Book | None)
assert_type(Book.query.filter(rating__gte=3), QuerySet[Book])
assert_type(Book.query.filter(Book.rating >= 3), QuerySet[Book])
assert_type(Book.query.all(), QuerySet[Book])
assert_type(Book.query.exclude(pages=None), QuerySet[Book])
assert_type(Book.query.order_by("-rating").limit(5), QuerySet[Book])
assert_type(Book.query.first(), Book | None)
assert_type(Book.query.count(), int)
assert_type(Book.query.keys(), list[str])
assert_type(Book.query.top_by_decay("hot", n=3), list[Book])
assert_type(Book.query.filter(genre="x").get(), Book | None)
assert_type(Book.query.filter(genre="x").first(), Book | None)
assert_type(Book.query.all()[0], Book)
assert_type(Book.query.all()[:3], list[Book])
assert_type(list(Book.query.all()), list[Book])
for x in Book.query.filter(rating__gte=3):
    assert_type(x, Book)
assert_type(Book.query.values("title"), QuerySet[Any])  # rows are dicts


async def reads() -> None:
    assert_type(await Book.query.async_get(isbn="1"), Book | None)
    assert_type(await Book.query.async_filter(rating__gte=3), list[Book])
    assert_type(await Book.query.all().async_list(), list[Book])
    assert_type(await Book.async_create(isbn="3", title="t"), Book)
    assert_type(await Book.async_load(isbn="3"), Book | None)


def needs_str(value: str) -> None: ...


needs_str(b.title)
needs_str(b.isbn)
