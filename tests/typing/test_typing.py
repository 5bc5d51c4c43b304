"""The typing story of user models, checked with mypy (no plugin): ``user_models.py``
type-checks under ``--strict`` with every ``assert_type`` holding, and wrong uses of
fields, models and queries are mypy errors."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from mypy import api  # the dev extra installs mypy: a missing mypy fails, never skips

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
# popoto is checked as a dependency would be (its own errors are not the user's)
ARGS = ["--strict", "--follow-imports=silent", "--no-incremental", "--show-error-codes",
        "--config-file", str(ROOT / "pyproject.toml")]


def run_mypy_many(paths: list[Path]) -> tuple[str, int]:
    """mypy over ``paths``, from the checkout's root (so it checks this ``popoto``)."""
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        stdout, stderr, status = api.run([*ARGS, *map(str, paths)])
    finally:
        os.chdir(here)
    return stdout + stderr, status


def run_mypy(path: Path) -> tuple[str, int]:
    return run_mypy_many([path])


def test_user_models_type_check() -> None:
    out, status = run_mypy(HERE / "user_models.py")
    assert status == 0, out
    assert "Success: no issues found" in out


PRELUDE = """
from typing_extensions import assert_type

import popoto


class Author(popoto.Model):
    name = popoto.KeyField()


class Book(popoto.Model):
    isbn = popoto.KeyField()
    title = popoto.StringField(null=False)
    rating = popoto.FloatField(null=True)
    pages = popoto.IntField()
    author = popoto.Relationship(Author)


b = Book.create(isbn="1", title="t")


def needs_str(value: str) -> None: ...
"""

BAD = {
    "assign_wrong_type": ('b.rating = "x"', "assignment"),
    "assign_none_to_required": ("b.title = None", "assignment"),
    "assert_wrong_type": ("assert_type(b.title, int)", "assert-type"),
    "optional_read_as_str": ("needs_str(b.rating)", "arg-type"),
    "get_may_be_none": ('needs_str(Book.query.get(isbn="1"))', "arg-type"),
    "get_result_not_str": ('needs_str(Book.query.get(isbn="1").title)', "union-attr"),
    "query_rows_are_books": ('needs_str(Book.query.all()[0])', "arg-type"),
    "unknown_field_option": ("popoto.IntField(nul=False)", "call-overload"),
    "option_wrong_type": ('popoto.StringField(unique="yes")', "call-overload"),
    "create_returns_model": ("needs_str(Book.create(isbn='2'))", "arg-type"),
    "key_field_cannot_be_null": ("popoto.KeyField(null=True)", "call-overload"),
    "relationship_takes_model_or_key": ("b.author = 3", "assignment"),
    "filter_returns_queryset": ('x: list[str] = Book.query.filter(isbn="1")', "assignment"),
}


@pytest.fixture(scope="module")
def bad_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Each snippet in its own module, all checked by one mypy run: name -> its errors."""
    folder = tmp_path_factory.mktemp("bad")
    paths = {}
    for name, (snippet, _code) in BAD.items():
        paths[name] = folder / f"bad_{name}.py"
        paths[name].write_text(textwrap.dedent(PRELUDE) + snippet + "\n")
    out, _status = run_mypy_many(list(paths.values()))
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert all(any(line.startswith(str(p)) for p in paths.values()) for line in errors), out
    return {name: [line for line in errors if line.startswith(str(path) + ":")]
            for name, path in paths.items()}


@pytest.mark.parametrize("name", list(BAD))
def test_wrong_uses_are_errors(bad_results: dict[str, list[str]], name: str) -> None:
    _snippet, code = BAD[name]
    errors = bad_results[name]
    assert len(errors) == 1, errors
    assert f"[{code}]" in errors[0], errors
