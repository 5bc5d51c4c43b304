"""IndexedField __startswith / __endswith: answered inside Redis from the value registry."""

import pytest

from popoto import IndexedField, IntField, KeyField, Model, Q
from popoto import keys
from popoto.fields.shortcuts import lex_range
from tests.helpers import command_calls

WORDS = ["apple", "apricot", "banana", "grape", "pineapple", "application/json",
         "appétit", "a:b*c", "", "ab"]


class Word(Model):
    name = KeyField()
    text = IndexedField(null=True)
    lang = IndexedField(null=True)
    n = IntField(default=0)


class Code(Model):
    name = KeyField()
    num = IndexedField(type=int, null=True)


@pytest.fixture
def words(r):
    for i, w in enumerate(WORDS):
        Word.create(name=f"w{i}", text=w, lang="en" if i % 2 else "fr")
    Word.create(name="none", text=None)


def texts(qs) -> list[str]:
    return sorted(o.text for o in qs)


@pytest.mark.parametrize("prefix", ["ap", "app", "applic", "application/", "a", "", "appé",
                                    "a:b", "zz", "apple"])
def test_startswith_matches_python(words, prefix):
    """filter(text__startswith=p) returns exactly the values starting with p (any length)."""
    want = sorted(w for w in WORDS if w.startswith(prefix))
    assert texts(Word.query.filter(text__startswith=prefix)) == want
    assert Word.query.filter(text__startswith=prefix).count() == len(want)


@pytest.mark.parametrize("suffix", ["e", "ple", "apple", "json", "tit", "*c", "", "x"])
def test_endswith_matches_python(words, suffix):
    """filter(text__endswith=s) returns exactly the values ending with s."""
    want = sorted(w for w in WORDS if w.endswith(suffix))
    assert texts(Word.query.filter(text__endswith=suffix)) == want


def test_prefix_queries_combine_with_other_conditions(words):
    """startswith ANDed, ORed and negated gives the same answers as Python."""
    got = Word.query.filter(text__startswith="ap", lang="en")
    assert texts(got) == sorted(w for i, w in enumerate(WORDS)
                                if w.startswith("ap") and i % 2)
    either = Word.query.filter(Q(text__startswith="ban") | Q(text__endswith="ape"))
    assert texts(either) == ["banana", "grape"]
    rest = sorted((o.text or "") for o in Word.query.exclude(text__startswith="app"))
    assert rest == sorted([w for w in WORDS if not w.startswith("app")] + [""])


def test_prefix_query_reads_only_matching_hashes(r, words):
    """The index narrows in Redis: only the matches' hashes are loaded (no scan in Python)."""
    before = command_calls(r, "hgetall")
    found = list(Word.query.filter(text__startswith="pine"))
    assert [o.text for o in found] == ["pineapple"]
    assert command_calls(r, "hgetall") - before == 1


def test_registry_follows_saves_and_deletes(r, words):
    """Changing or deleting a value is seen by the next prefix query; a value nobody holds
    any more is pruned from the registry by the query that meets it."""
    word = Word.query.get(name="w2")
    word.text = "blueberry"
    word.save()
    assert texts(Word.query.filter(text__startswith="b")) == ["blueberry"]
    assert texts(Word.query.filter(text__endswith="na")) == []
    word.text = None
    word.save()
    assert Word.query.filter(text__startswith="b").count() == 0
    Word.query.get(name="w0").delete()
    assert texts(Word.query.filter(text__startswith="appl")) == ["application/json"]
    field = Word._meta.fields["text"]
    members = {m for ns in Word._meta.groups for m in r.zrange(field.lex_key(False, ns), 0, -1)}
    assert b"banana" not in members and b"blueberry" not in members  # pruned
    assert b"apple" not in members  # its only holder was deleted, then a query met it


def test_registry_holds_distinct_values_not_instances(r, words):
    """One registry member per distinct value (escaped), and reversed ones carry their
    value after a 0xFF byte: memory does not grow with the number of instances."""
    for i in range(20):
        Word.create(name=f"dup{i}", text="apple")
    field = Word._meta.fields["text"]
    assert field.lex_key(ns="Word") == "$LexF:Word:text"
    assert field.lex_key(True, ns="Word") == "$LexF:Word:text:r"
    forward = [m for ns in Word._meta.groups for m in r.zrange(field.lex_key(False, ns), 0, -1)]
    assert forward.count(b"apple") <= len(Word._meta.groups)
    assert keys.escape("a:b*c").encode() in forward
    reverse = {m for ns in Word._meta.groups for m in r.zrange(field.lex_key(True, ns), 0, -1)}
    assert b"elppa\xffapple" in reverse
    assert lex_range(b"ab") == (b"[ab", b"(ac") and lex_range(b"") == (b"-", b"+")


def test_non_text_indexed_fields_fall_back_correctly(r):
    """An IndexedField of ints keeps no registry; startswith still answers correctly."""
    for i, v in enumerate((12, 123, 31, None)):
        Code.create(name=f"c{i}", num=v)
    assert sorted(c.num for c in Code.query.filter(num__startswith="12")) == [12, 123]
    assert not any(k.startswith(b"$LexF") for k in r.scan_iter("$LexF*"))


def test_rebuild_restores_a_lost_registry(r, words):
    """The registry is rebuilt by rebuild_indexes (its ZADDs are idempotent commands of
    the write path) and is never reported as index damage."""
    field = Word._meta.fields["text"]
    for ns in Word._meta.groups:
        r.delete(field.lex_key(False, ns), field.lex_key(True, ns))
    assert Word.query.filter(text__endswith="pple").count() == 0
    assert Word.check_indexes()["total"] == 0
    Word.rebuild_indexes()
    assert texts(Word.query.filter(text__endswith="pple")) == ["apple", "pineapple"]
    assert texts(Word.query.filter(text__startswith="ap")) == [
        "apple", "application/json", "appétit", "apricot"]
