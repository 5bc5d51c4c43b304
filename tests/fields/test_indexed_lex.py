"""IndexedField __startswith / __endswith: answered inside Redis from the lex index."""

import pytest

from popoto import IndexedField, IntField, KeyField, Model, Q
from popoto.fields.shortcuts import lex_bounds, lex_score
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


def test_lex_index_follows_saves_and_deletes(r, words):
    """Changing or deleting a value moves or removes its lex entries in the same write."""
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
    for reverse in (False, True):
        assert sum(r.zcard(field.lex_key(reverse, ns)) for ns in Word._meta.groups) == \
            len(WORDS) - 2


def test_lex_keys_and_scores(r, words):
    """Entries: the instance key scored by the first 6 UTF-8 bytes (reversed: of the
    reversed value) in $LexF:<ns>:<field> and $LexF:<ns>:<field>:r."""
    field = Word._meta.fields["text"]
    obj = Word.query.get(name="w4")
    assert field.lex_key(ns="Word") == "$LexF:Word:text"
    assert field.lex_key(True, ns="Word") == "$LexF:Word:text:r"
    assert r.zscore(field.lex_key(ns=obj.pk.split(":")[0]), obj.pk) == lex_score("pineapple")
    assert r.zscore(field.lex_key(True, ns=obj.pk.split(":")[0]), obj.pk) == \
        lex_score("elppaenip")
    assert lex_score("pineap") == lex_score("pineapple") == int(lex_bounds("pineapple")[0])
    low, high = lex_bounds("ab")
    assert int(low) <= lex_score("ab") <= lex_score("abzzzz") <= int(high) < lex_score("ac")


def test_non_text_indexed_fields_fall_back_correctly(r):
    """An IndexedField of ints keeps no lex index; startswith still answers correctly."""
    for i, v in enumerate((12, 123, 31, None)):
        Code.create(name=f"c{i}", num=v)
    assert sorted(c.num for c in Code.query.filter(num__startswith="12")) == [12, 123]
    assert not any(k.startswith(b"$LexF") for k in r.scan_iter("$LexF*"))


def test_check_clean_rebuild_cover_the_lex_index(r, words):
    """A vanished hash leaves lex orphans (check, clean); a lost entry is rebuilt."""
    field = Word._meta.fields["text"]
    gone = Word.query.get(name="w1")
    ns = gone.pk.split(":")[0]
    r.delete(gone.pk)
    report = Word.check_indexes()
    assert report["orphans"] >= 2 and report["indexed_fields"]["text"] >= 2
    assert Word.clean_indexes() >= 2
    assert r.zscore(field.lex_key(ns=ns), gone.pk) is None
    assert Word.check_indexes()["total"] == 0
    kept = Word.query.get(name="w4")
    r.zrem(field.lex_key(True, ns=kept.pk.split(":")[0]), kept.pk)
    assert Word.check_indexes()["missing"] == 1
    assert Word.query.filter(text__endswith="pple").count() == 1
    Word.rebuild_indexes()
    assert Word.check_indexes()["total"] == 0
    assert texts(Word.query.filter(text__endswith="pple")) == ["apple", "pineapple"]
