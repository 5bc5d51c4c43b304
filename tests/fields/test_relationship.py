"""Relationship: stored keys, batched loading, the related-key index and related lookups."""

import pytest

from popoto import (
    Field,
    IndexedField,
    KeyField,
    Model,
    ModelException,
    Q,
    QueryException,
    Relationship,
    SortedField,
)
from tests.helpers import (
    command_calls,
    count_round_trips,
    db_keys,
    index_key,
    key_of,
    server_count,
)


class RelAuthor(Model):
    name = KeyField()
    country = Field(null=True)
    born = SortedField(type=int, null=True)


class RelBook(Model):
    title = KeyField()
    author = Relationship(model=RelAuthor)
    genre = IndexedField(null=True)
    pages = SortedField(type=int, null=True)
    note = Field(null=True)


class RelPerson(Model):
    name = KeyField()
    friend = Relationship(model="self")


class RelCycleA(Model):
    name = KeyField()
    b = Relationship(model="RelCycleB")


class RelCycleB(Model):
    name = KeyField()
    a = Relationship(model=RelCycleA)


class RelShelf(Model):
    title = KeyField()
    author = Relationship(model=RelAuthor)

    class Meta:
        shards = 4


class RelStrict(Model):
    name = KeyField()
    author = Relationship(model=RelAuthor, null=False)


def hgetall_calls(r) -> int:
    return command_calls(r, "hgetall")


def author_key(name: str) -> str:
    return key_of(RelAuthor, name)


def book_key(title: str) -> str:
    return key_of(RelBook, title)


def person_key(name: str) -> str:
    return key_of(RelPerson, name)


@pytest.fixture
def library():
    tolkien = RelAuthor.create(name="tolkien", country="uk", born=1892)
    martin = RelAuthor.create(name="martin", country="us", born=1948)
    le_guin = RelAuthor.create(name="le guin", country="us", born=1929)
    RelBook.create(title="hobbit", author=tolkien, genre="fantasy", pages=310)
    RelBook.create(title="lotr", author=author_key("tolkien"), genre="fantasy", pages=1178)
    RelBook.create(title="got", author=martin, genre="fantasy", pages=694)
    RelBook.create(title="earthsea", author=le_guin, genre="fantasy", pages=183, note="short")
    RelBook.create(title="dispossessed", author=le_guin, genre="sf", pages=387)
    RelBook.create(title="anon", genre="sf")
    return {"tolkien": tolkien, "martin": martin, "le guin": le_guin}


def titles(results) -> set[str]:
    return {b.title for b in results}


# --- values -------------------------------------------------------------------

def test_the_hash_stores_the_related_key(r, library):
    """Assigning an instance or its key stores the key string; None stores nil."""
    import msgpack

    assert msgpack.unpackb(r.hget(book_key("hobbit"), "author")) == author_key("tolkien")
    assert msgpack.unpackb(r.hget(book_key("lotr"), "author")) == author_key("tolkien")
    assert msgpack.unpackb(r.hget(book_key("anon"), "author")) is None


def test_reading_gives_the_related_instance(library):
    """instance.author is the related instance, whether an instance or a key was assigned."""
    book = RelBook(title="new", author=author_key("martin"))
    assert book.author == library["martin"] and book.author.country == "us"
    book.author = library["tolkien"]
    assert book.author is library["tolkien"]
    book.author = author_key("le guin")
    assert book.author.born == 1929
    book.author = None
    assert book.author is None


@pytest.mark.parametrize("make_bad", [
    lambda: RelBook(title="x"), lambda: book_key("hobbit"), lambda: "tolkien", lambda: 42,
    lambda: 1.5], ids=["instance", "key", "name", "int", "float"])
def test_wrong_values_are_rejected_naming_the_field(r, make_bad):
    """Another model's instance or key, or a non-key value, is a ModelException; no write."""
    bad = make_bad()
    with pytest.raises(ModelException, match=r"RelBook\.author.*RelAuthor"):
        RelBook(title="bad", author=bad)
    book = RelBook(title="bad")
    with pytest.raises(ModelException, match=r"RelBook\.author"):
        book.author = bad
    assert db_keys(r) == set()


def test_null_false_requires_a_related_instance(r, library):
    """null=False refuses a save without a related instance."""
    with pytest.raises(ModelException, match=r"RelStrict\.author.*required"):
        RelStrict.create(name="s")
    RelStrict.create(name="s", author=library["martin"])
    assert RelStrict.load(name="s").author.name == "martin"


# --- loading ------------------------------------------------------------------

def test_get_filter_and_all_return_the_same_shape(library):
    """get(), filter() and all() all give instances whose relationship is already loaded."""
    via_get = RelBook.query.get(title="hobbit")
    via_filter = RelBook.query.filter(title="hobbit")[0]
    via_all = next(b for b in RelBook.query.all() if b.title == "hobbit")
    via_load = RelBook.load(db_key=book_key("hobbit"))
    for book in (via_get, via_filter, via_all, via_load):
        assert isinstance(book.__dict__["author"], RelAuthor)
        with count_round_trips() as trips:
            assert book.author.name == "tolkien" and book.author.born == 1892
        assert trips[0] == 0


def test_related_instances_load_in_one_batch_no_n_plus_one(r):
    """All related keys of a result set load in one pipelined read: trips do not grow with N."""
    def trips_to_load(n: int) -> tuple[int, int]:
        r.flushdb()  # every primary of a cluster
        for i in range(n):
            author = RelAuthor.create(name=f"a{i}", country="uk")
            RelBook.create(title=f"b{i}", author=author)
        before = hgetall_calls(r)
        with count_round_trips() as trips:
            books = list(RelBook.query.all())
            assert {b.author.name for b in books} == {f"a{i}" for i in range(n)}
        return trips[0], hgetall_calls(r) - before

    small_trips, small_reads = trips_to_load(5)
    big_trips, big_reads = trips_to_load(200)
    assert big_trips == small_trips <= 4 * server_count(r)
    assert (small_reads, big_reads) == (10, 400)  # N books + N authors, each read once


def test_shared_related_instances_are_read_once(r, library):
    """Several books of one author share one loaded instance, read once."""
    before = hgetall_calls(r)
    books = list(RelBook.query.filter(genre="fantasy"))
    assert hgetall_calls(r) - before == 4 + 3  # 4 books, 3 distinct authors
    lotr, hobbit = (next(b for b in books if b.title == t) for t in ("lotr", "hobbit"))
    assert lotr.author is hobbit.author


def test_instances_built_otherwise_load_lazily_once(r, library):
    """A relationship read on a fresh instance loads the related instance once, lazily."""
    book = RelBook(title="fresh", author=author_key("martin"))
    before = hgetall_calls(r)
    assert book.author.name == "martin"
    assert book.author.name == "martin"
    assert hgetall_calls(r) - before == 1


def test_values_give_the_related_key(library):
    """values() returns the stored key, without loading the related instance."""
    rows = RelBook.query.filter(title="got").values("title", "author")
    assert list(rows) == [{"title": "got", "author": author_key("martin")}]


# --- cycles -------------------------------------------------------------------

def test_mutual_references_between_two_models_terminate(r):
    """A -> B -> A loads without recursion and reuses the instances of the result set."""
    a = RelCycleA.create(name="a")
    b = RelCycleB.create(name="b", a=a)
    a.b = b
    a.save()
    loaded = RelCycleA.query.get(name="a")
    assert loaded.b.name == "b"
    assert loaded.b.a is loaded
    assert loaded.b.a.b is loaded.b


def test_self_references_terminate_and_share_instances(r):
    """A self-referencing model loads: friends in the result set are the same objects."""
    a = RelPerson.create(name="a")
    b = RelPerson.create(name="b", friend=a)
    a.friend = b
    a.save()
    RelPerson.create(name="c", friend=a)
    people = {p.name: p for p in RelPerson.query.all()}
    assert people["a"].friend is people["b"]
    assert people["b"].friend is people["a"]
    assert people["c"].friend is people["a"]
    me = RelPerson.create(name="me")
    me.friend = me
    me.save()
    assert RelPerson.query.get(name="me").friend.friend.name == "me"


def test_a_long_reference_chain_loads_one_level_then_lazily(r):
    """p0 -> p1 -> ... -> p99: a query loads one level in one batch, deeper levels on access."""
    previous = None
    for i in reversed(range(100)):
        previous = RelPerson.create(name=f"p{i}", friend=previous)
    with count_round_trips() as trips:
        head = RelPerson.query.get(name="p0")
    assert trips[0] <= 3 * server_count(r)
    node, hops = head, 0
    while node.friend is not None:
        node, hops = node.friend, hops + 1
    assert (node.name, hops) == ("p99", 99)


# --- queries on the relationship --------------------------------------------------

def test_filter_by_instance_key_in_and_isnull(library):
    """owner=instance / key, owner__in and owner__isnull are answered from the index."""
    assert titles(RelBook.query.filter(author=library["le guin"])) == {"earthsea",
                                                                       "dispossessed"}
    assert titles(RelBook.query.filter(author=author_key("tolkien"))) == {"hobbit", "lotr"}
    assert titles(RelBook.query.filter(author__in=[library["martin"], author_key("tolkien")])
                  ) == {"hobbit", "lotr", "got"}
    assert titles(RelBook.query.filter(author__isnull=True)) == {"anon"}
    assert RelBook.query.filter(author__isnull=False).count() == 5
    assert titles(RelBook.query.filter(author=None)) == {"anon"}
    assert titles(RelBook.query.exclude(author=library["le guin"])) == {
        "hobbit", "lotr", "got", "anon"}


def test_index_counts_read_no_hashes(r, library):
    """count() by related instance is one SCARD-like call, reading no hashes."""
    before = hgetall_calls(r)
    assert RelBook.query.filter(author=library["tolkien"]).count() == 2
    assert RelBook.query.count(author=library["le guin"], genre="sf") == 1
    assert hgetall_calls(r) == before


def test_the_index_follows_updates_and_deletes(r, library):
    """Reassigning or deleting a book moves / removes its related-key index entry."""
    book = RelBook.query.get(title="got")
    book.author = library["tolkien"]
    book.save()
    assert titles(RelBook.query.filter(author=library["tolkien"])) == {"hobbit", "lotr", "got"}
    assert r.exists(index_key(RelBook, "author", author_key("martin"), instance=book)) == 0
    book.delete()
    assert titles(RelBook.query.filter(author=library["tolkien"])) == {"hobbit", "lotr"}


def test_filter_combined_with_other_conditions(library):
    """A related-instance condition ANDs/ORs with indexed and sorted conditions."""
    found = RelBook.query.filter(author=library["le guin"], genre="fantasy")
    assert titles(found) == {"earthsea"}
    either = RelBook.query.filter(Q(author=library["martin"]) | Q(genre="sf"))
    assert titles(either) == {"got", "dispossessed", "anon"}
    long_ones = RelBook.query.filter(author=library["tolkien"], pages__gte=400)
    assert titles(long_ones) == {"lotr"}


def test_filter_through_the_related_model(r, library):
    """owner__<field>=v selects books whose author matches, on plain, key and sorted fields."""
    assert titles(RelBook.query.filter(author__country="us")) == {"got", "earthsea",
                                                                  "dispossessed"}
    assert titles(RelBook.query.filter(author__name="tolkien")) == {"hobbit", "lotr"}
    assert titles(RelBook.query.filter(author__born__lt=1930)) == {"hobbit", "lotr",
                                                                   "earthsea", "dispossessed"}
    assert titles(RelBook.query.filter(author__name__startswith="le")) == {
        "earthsea", "dispossessed"}
    assert RelBook.query.filter(author__country="us", genre="sf").count() == 1
    assert list(RelBook.query.filter(author__country="fr")) == []
    assert RelBook.query.filter(author__country="fr").count() == 0


def test_related_condition_under_or_with_a_plain_field(library):
    """Under OR with an unindexed field the related condition is checked in Python."""
    found = RelBook.query.filter(Q(author__country="uk") | Q(note="short"))
    assert titles(found) == {"hobbit", "lotr", "earthsea"}


def test_related_filter_over_many_related_keys(r):
    """Thousands of matching related keys are unioned inside Redis without hitting Lua limits."""
    pipe = r.pipeline()
    for i in range(9000):
        RelAuthor(name=f"a{i}", country="uk").save(pipeline=pipe)
    for i in range(0, 9000, 3):
        RelBook(title=f"b{i}", author=author_key(f"a{i}"), pages=1).save(pipeline=pipe)
    pipe.execute()
    assert RelBook.query.filter(author__country="uk").count() == 3000


def test_a_sharded_model_runs_a_related_query_once_for_all_groups(r, library):
    """A related condition on a sharded model reads the related instances once, not once
    per tag group."""
    for name, author in library.items():
        RelShelf.create(title=name, author=author)
    before = hgetall_calls(r)
    assert RelShelf.query.filter(author__country="us").count() == 2
    assert hgetall_calls(r) - before == 3  # the 3 authors (country is a plain field)
    assert {s.title for s in RelShelf.query.filter(author__born__lt=1930)} == {"tolkien",
                                                                            "le guin"}


def test_unknown_related_field_or_lookup_raises(library):
    """A misspelt related field or lookup is a QueryException naming the path."""
    with pytest.raises(QueryException, match=r"RelBook\.author__contry.*RelAuthor.*country"):
        RelBook.query.filter(author__contry="uk")
    with pytest.raises(QueryException, match=r"RelBook\.author__born__gtee"):
        RelBook.query.filter(author__born__gtee=3)
    with pytest.raises(QueryException, match=r"RelBook\.author.*RelAuthor key"):
        RelBook.query.filter(author=book_key("hobbit"))


# --- to_dict --------------------------------------------------------------------

def test_to_dict_keys_nesting_depth_and_cycles(library):
    """to_dict gives keys, nested dicts with relationships=True, limited by max_depth and cycles."""
    book = RelBook.query.get(title="hobbit")
    assert book.to_dict()["author"] == author_key("tolkien")
    nested = book.to_dict(relationships=True)
    assert nested["author"] == {"name": "tolkien", "country": "uk", "born": 1892}
    assert book.to_dict(relationships=True, max_depth=0)["author"] == author_key("tolkien")
    a = RelPerson.create(name="a")
    b = RelPerson.create(name="b", friend=a)
    a.friend = b
    a.save()
    loaded = RelPerson.query.get(name="a")
    assert loaded.to_dict(relationships=True) == {
        "name": "a", "friend": {"name": "b", "friend": person_key("a")}}
    assert loaded.to_dict(relationships=True, max_depth=1) == {
        "name": "a", "friend": {"name": "b", "friend": person_key("a")}}
    c = RelPerson.create(name="c", friend=loaded)
    assert c.to_dict(relationships=True, max_depth=1) == {
        "name": "c", "friend": {"name": "a", "friend": person_key("b")}}


# --- deleting the related instance -------------------------------------------------

def test_deleting_the_related_instance_leaves_a_dangling_key(r, library):
    """After the author is deleted the book reads None, keeps its key and index, and heals."""
    library["martin"].delete()
    book = RelBook.query.get(title="got")
    assert book.author is None
    assert RelBook.author.related_key(book) == author_key("martin")
    assert book.to_dict()["author"] == author_key("martin")
    book.pages = 700
    book.save()
    import msgpack

    assert msgpack.unpackb(r.hget(book_key("got"), "author")) == author_key("martin")
    assert titles(RelBook.query.filter(author=author_key("martin"))) == {"got"}
    assert list(RelBook.query.filter(author__country="us")) != []
    RelAuthor.create(name="martin", country="us")
    assert RelBook.query.get(title="got").author.country == "us"
