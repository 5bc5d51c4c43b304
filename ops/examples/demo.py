"""`make demo`: a readable walkthrough of Popoto against a real Redis.

Run through ``python -m popoto.testing.server run -- python -m popoto.ops.examples.demo``: the
runner starts an embedded Redis when ``REDIS_URL`` is unset and stops it after.
This is a command-line program, so it prints.
"""

from __future__ import annotations

import os
import time
from decimal import Decimal
from typing import TypeVar

import popoto
from popoto import (
    DecayingSortedField,
    DecimalField,
    EventStreamMixin,
    Field,
    GeoField,
    IndexedField,
    IntField,
    KeyField,
    ListField,
    Model,
    Q,
    Relationship,
    SortedField,
    UniqueViolation,
    WriteFilterMixin,
)
from popoto.redis_db import POPOTO_REDIS_DB, Client

_T = TypeVar("_T")


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
    author = Relationship(model=Author, null=True)


class Shop(Model):
    name = KeyField()
    location = GeoField()
    stock = IntField(default=0)
    location_distance: float | None  # set on the results of a location_with_distances query


class Headline(WriteFilterMixin, EventStreamMixin, Model):
    slug = KeyField()
    section = IndexedField(null=True)
    votes = IntField(default=0)
    seen = DecayingSortedField(decay_rate=0.8, base_score_field="votes")
    feed = ListField(max_length=3)
    _stream_name = "demo"
    _wf_min_threshold = 0.1
    _wf_priority_threshold = 0.7

    def compute_filter_score(self) -> float:
        votes = self.votes
        assert votes is not None  # IntField(default=0): the demo never clears it
        return min(votes / 10, 1.0)


def stored(found: _T | None) -> _T:
    """``found``: something the demo saved before reading it back (so never None)."""
    assert found is not None
    return found


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 60 - len(title)))


def show(label: str, value: object) -> None:
    print(f"  {label:<44} {value}")


def main() -> int:
    client = connect()
    create_and_save()
    book = load_and_query()
    geo()
    update_and_delete(book)
    index_health(client)
    behaviours()

    section("Done")
    show("keys in Redis", sorted(k.decode() for k in client.scan_iter(count=1000))[:6] + ["..."])
    return 0


def connect() -> Client:
    popoto.configure(url=os.environ.get("REDIS_URL"))
    client = popoto.get_redis()
    client.flushdb()
    info = client.info("server")
    section("Connected")
    show("redis version", info["redis_version"])
    return client


def create_and_save() -> None:
    section("Create and save")
    Author.create(handle="ursula", name="Ursula K. Le Guin", email="ukl@example.org")
    Author.create(handle="terry", name="Terry Pratchett", email="tp@example.org")
    books = [
        ("978-0441478125", "The Left Hand of Darkness", "scifi", 4.6, "9.99", "ursula"),
        ("978-0061054884", "The Dispossessed", "scifi", 4.4, "12.50", "ursula"),
        ("978-0552166591", "Guards! Guards!", "fantasy", 4.7, "8.99", "terry"),
        ("978-0552152679", "Small Gods", "fantasy", 4.5, "7.99", "terry"),
        ("978-0547773742", "A Wizard of Earthsea", "fantasy", 4.2, "10.00", "ursula"),
    ]
    for isbn, title, genre, rating, price, handle in books:
        Book(isbn=isbn, title=title, genre=genre, rating=rating, price=Decimal(price),
             author=Author.query.get(handle=handle)).save()
    show("authors saved", Author.query.count())
    show("books saved", Book.query.count())
    show("a book's Redis key (db_key.redis_key)",
         stored(Book.query.get(isbn="978-0552166591")).db_key.redis_key)
    show("its class set (_meta.db_class_set_key)", Book._meta.db_class_set_key.redis_key)
    show("rating index (get_sortedset_db_key)",
         SortedField.get_sortedset_db_key(Book, "rating").redis_key)


def load_and_query() -> Book:
    """The Load, Filter and Relationships sections; returns the loaded book."""
    section("Load")
    book = stored(Book.query.get(isbn="978-0441478125"))
    show("get(isbn=...)", f"{book.title!r} rating={book.rating} price={book.price!r}")

    section("Filter")
    fantasy = Book.query.filter(genre="fantasy", order_by="-rating")
    show("genre=fantasy, best first", [b.title for b in fantasy])
    show("rating >= 4.5 (expression)", [b.title for b in Book.query.filter(Book.rating >= 4.5)])
    show("results compare as lists", Book.query.filter(genre="horror") == [])
    show("title of genre starting 'sci'",
         [b.title for b in Book.query.filter(genre__startswith="sci", order_by="rating")])
    top2 = Book.query.filter(rating__gte=0, order_by="-rating", limit=2)
    show("top 2 by rating (limit pushed to Redis)", [b.title for b in top2])
    either = Book.query.filter(Q(genre="scifi") | Q(rating__gte=4.7))
    show("scifi OR rating >= 4.7", sorted(stored(b.title) for b in either))
    show("count(genre=fantasy) via SCARD", Book.query.count(genre="fantasy"))
    show("values('title','price') of scifi",
         Book.query.filter(genre="scifi").values("title", "price")[:2])

    section("Relationships (related instances loaded in one batched read)")
    show("books by terry",
         sorted(stored(b.title) for b in Book.query.filter(author__handle="terry")))
    small_gods = stored(Book.query.get(isbn="978-0552152679"))
    show("author of Small Gods", stored(small_gods.author).name)
    show("to_dict(relationships=True)",
         stored(Book.query.get(isbn="978-0441478125")).to_dict(include=["title", "author"],
                                                         relationships=True))
    return book


def geo() -> None:
    section("Geo")
    for name, lat, lon in (("louvre", 48.8606, 2.3376), ("orsay", 48.8600, 2.3266),
                           ("bastille", 48.8532, 2.3692), ("versailles", 48.8049, 2.1204)):
        Shop(name=name, location=(lat, lon)).save()
    near = Shop.query.filter(location=(48.8584, 2.2945), location_radius=4,
                             location_radius_unit="km", location_with_distances=True)
    show("within 4 km of the Eiffel tower", [f"{s.name} {s.location_distance:.2f} km"
                                             for s in near])


def update_and_delete(book: Book) -> None:
    """The Update, Uniqueness and Delete sections."""
    section("Update")
    book.rating = 4.9
    book.save(update_fields=["rating"])
    show("after rating update, top 1",
         stored(Book.query.filter(rating__gte=0, order_by="-rating").first()).title)

    section("Uniqueness is enforced atomically")
    try:
        Author.create(handle="impostor", name="X", email="tp@example.org")
    except UniqueViolation as exc:
        show("duplicate email refused", exc)

    section("Delete")
    show("delete Small Gods", stored(Book.query.get(isbn="978-0552152679")).delete())
    show("books left", Book.query.count())
    show("fantasy index now holds", Book.query.count(genre="fantasy"))


def index_health(client: Client) -> None:
    section("Index health: check, break, repair")
    show("check_indexes()['total'] (healthy)", Book.check_indexes()["total"])
    client.srem("$IndexF:Book:genre:scifi", "Book:978-0061054884")   # lose an entry
    client.zadd("$SortedF:Book:rating", {"Book:978-0061054884": 1.0})  # corrupt a score
    client.delete("Book:978-0547773742")                             # delete behind the ORM
    POPOTO_REDIS_DB.hset("Book:978-0000000000", "title", b"\xa4half")  # a partial write
    report = Book.check_indexes()
    show("after corrupting four ways", {k: report[k] for k in (
        "orphans", "missing", "wrong", "partial_writes", "total")})
    show("keys(clean=True) drops stale keys as it reads", len(Book.query.keys(clean=True)))
    show("clean_indexes() removed", Book.clean_indexes())
    show("rebuild_indexes() rewrote", Book.rebuild_indexes())
    show("check_indexes()['total'] (repaired)", Book.check_indexes()["total"])
    show("scifi books again", Book.query.count(genre="scifi"))


def behaviours() -> None:
    now = time.time()
    section("Capped feed (ListField(max_length=3))")
    h = Headline.create(slug="launch", section="tech", votes=8)
    for n in range(1, 6):
        h.feed.push(f"comment {n}")
    show("after 5 pushes, newest first", list(h.feed))

    section("Decaying 'trending' ranking")
    for slug, votes, hours, part in (("old-news", 9, 72, "world"), ("fresh", 3, 1, "tech"),
                                     ("steady", 6, 12, "world")):
        Headline(slug=slug, section=part, votes=votes, seen=now - hours * 3600).save(
            skip_auto_now=True)
    show("top_by_decay(n=4)", [x.slug for x in Headline.query.top_by_decay(n=4, as_of=now)])
    show("filter(section='world').top_by_decay(n=2)",
         [x.slug for x in Headline.query.filter(section="world").top_by_decay(n=2, as_of=now)])

    section("Write filter")
    show("save() of a 0-vote headline", Headline(slug="spam", votes=0).save())
    show("stored?", Headline.query.get(slug="spam") is not None)
    show("priority(3)", [x.slug for x in Headline.query.priority(3)])

    section("Mutation stream (written in the same script as each save)")
    stored(Headline.query.get(slug="fresh"))._xadd_event("featured", {"by": "editor"})
    for _id, event in Headline.stream_range():
        show(event["op"], f"{event['pk']} changed={','.join(event['changed_fields'])!r}")


if __name__ == "__main__":
    raise SystemExit(main())
