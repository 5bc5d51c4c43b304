"""The docs that run: every Python block of README.md and docs/*.md is collected as a
test (conftest.py, sybil); none hides behind a fence sybil does not run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)", re.MULTILINE)
#: fences that hold Python but that the Python block parser would not run
HIDDEN_PYTHON = {"py", "python3", "pycon", "Python", "ipython"}


@pytest.mark.parametrize("path", DOCS, ids=[p.relative_to(ROOT).as_posix() for p in DOCS])
def test_every_python_block_is_collected(path: Path) -> None:
    """Each ```python fence is one example; no Python sits in a fence that is not run."""
    text = path.read_text(encoding="utf-8")
    languages = FENCE.findall(text)[0::2]  # opening fences (closing ones have no language)
    assert not HIDDEN_PYTHON & set(languages), path
    sybil = Sybil(parsers=[PythonCodeBlockParser(), SkipParser()], path=str(ROOT))
    examples = [e for e in sybil.parse(path).examples()
                if isinstance(e.region.evaluator, PythonEvaluator)]
    assert len(examples) == languages.count("python")


def test_the_docs_are_on_the_test_path() -> None:
    """pytest's testpaths include README.md and docs (so `make test` runs them)."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'testpaths = ["tests", "README.md", "docs"]' in pyproject
