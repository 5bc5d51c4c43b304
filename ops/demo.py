"""`make demo`: a readable walkthrough of Popoto against a real Redis.

Run through ``python -m popoto.testing.server run -- python -m ops.demo``: the
runner starts an embedded Redis when ``REDIS_URL`` is unset and stops it after.
This is a command-line program, so it prints.
"""

from __future__ import annotations

import os
from decimal import Decimal

import popoto
from popoto import (
    DecimalField,
    Field,
    IndexedField,
    KeyField,
    Model,
    Q,
    SortedField,
    UniqueViolation,
)
from popoto.redis_db import get_client


class Author(Model):
    handle = KeyField()
    name = Field(type=str)
    email = Field(type=str, unique=True)


class Book(Model):
    isbn = KeyField()
    title = Field(type=str)
    genre = IndexedField(null=True)
    rating = SortedField(type=float, null=True)
    price = DecimalField(null=True)


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 60 - len(title)))


def show(label: str, value: object) -> None:
    print(f"  {label:<44} {value}")


def main() -> int:
    popoto.configure(url=os.environ.get("REDIS_URL"))
    client = get_client()
    client.flushdb()
    info = client.info("server")
    section("Connected")
    show("redis version", info["redis_version"])

    section("Create and save")
    Author.create(handle="ursula", name="Ursula K. Le Guin", email="ukl@example.org")
    Author.create(handle="terry", name="Terry Pratchett", email="tp@example.org")
    books = [
        ("978-0441478125", "The Left Hand of Darkness", "scifi", 4.6, "9.99"),
        ("978-0061054884", "The Dispossessed", "scifi", 4.4, "12.50"),
        ("978-0552166591", "Guards! Guards!", "fantasy", 4.7, "8.99"),
        ("978-0552152679", "Small Gods", "fantasy", 4.5, "7.99"),
        ("978-0547773742", "A Wizard of Earthsea", "fantasy", 4.2, "10.00"),
    ]
    for isbn, title, genre, rating, price in books:
        Book(isbn=isbn, title=title, genre=genre, rating=rating, price=Decimal(price)).save()
    show("authors saved", Author.query.count())
    show("books saved", Book.query.count())
    show("a book's Redis key", Book.query.get(isbn="978-0552166591").db_key)

    section("Load")
    book = Book.query.get(isbn="978-0441478125")
    show("get(isbn=...)", f"{book.title!r} rating={book.rating} price={book.price!r}")

    section("Filter")
    fantasy = Book.query.filter(genre="fantasy", order_by="-rating")
    show("genre=fantasy, best first", [b.title for b in fantasy])
    show("rating >= 4.5 (expression)", [b.title for b in Book.query.filter(Book.rating >= 4.5)])
    top2 = Book.query.filter(rating__gte=0, order_by="-rating", limit=2)
    show("top 2 by rating (limit pushed to Redis)", [b.title for b in top2])
    either = Book.query.filter(Q(genre="scifi") | Q(rating__gte=4.7))
    show("scifi OR rating >= 4.7", sorted(b.title for b in either))
    show("count(genre=fantasy) via SCARD", Book.query.count(genre="fantasy"))
    show("values('title','price') of scifi",
         Book.query.filter(genre="scifi").values("title", "price")[:2])

    section("Update")
    book.rating = 4.9
    book.save(update_fields=["rating"])
    show("after rating update, top 1", Book.query.filter(rating__gte=0, order_by="-rating")
         .first().title)

    section("Uniqueness is enforced atomically")
    try:
        Author.create(handle="impostor", name="X", email="tp@example.org")
    except UniqueViolation as exc:
        show("duplicate email refused", exc)

    section("Delete")
    show("delete Small Gods", Book.query.get(isbn="978-0552152679").delete())
    show("books left", Book.query.count())
    show("fantasy index now holds", Book.query.count(genre="fantasy"))

    section("Done")
    show("keys in Redis", sorted(k.decode() for k in client.scan_iter(count=1000))[:6] + ["..."])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
