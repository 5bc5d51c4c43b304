"""The typing story of user models, checked with mypy (no plugin): ``user_models.py``
type-checks under ``--strict`` with every ``assert_type`` holding, and wrong uses of
fields, models and queries are mypy errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
# popoto is checked as a dependency would be (its own errors are not the user's)
ARGS = ["--strict", "--follow-imports=silent", "--no-incremental", "--show-error-codes",
        "--config-file", str(ROOT / "pyproject.toml")]


def run_mypy(path: Path) -> tuple[str, int]:
    stdout, stderr, status = api.run([*ARGS, str(path)])
    return stdout + stderr, status


def test_user_models_type_check() -> None:
    out, status = run_mypy(HERE / "user_models.py")
    assert status == 0, out
    assert "Success: no issues found" in out


PRELUDE = """
from typing_extensions import assert_type

import popoto


class Book(popoto.Model):
    isbn = popoto.KeyField()
    title = popoto.StringField(null=False)
    rating = popoto.FloatField(null=True)
    pages = popoto.IntField()
    author = popoto.Relationship("Book")


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
}


@pytest.mark.parametrize("snippet, code", list(BAD.values()), ids=list(BAD))
def test_wrong_uses_are_errors(tmp_path: Path, snippet: str, code: str) -> None:
    path = tmp_path / "bad.py"
    path.write_text(textwrap.dedent(PRELUDE) + snippet + "\n")
    out, status = run_mypy(path)
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert status == 1, out
    assert len(errors) >= 1, out
    assert all(line.startswith(str(path)) for line in errors), out
    assert f"[{code}]" in errors[0], out
