"""What ``pip install .`` gives a user: one import package (``popoto``), the console
script ``popoto-ops``, the background layer as ``popoto.tasks`` / ``popoto.workers``,
and none of the repository's demos, benchmark or example web app.

The wheel is built from this checkout and installed into a fresh virtualenv with the
core dependencies only (no ``celery`` extra), then used from a directory outside the
checkout, as a user would.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HINT = "pip install 'popoto-redis[celery]'"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # with build isolation, as `pip install .` does (the backend comes from pyproject.toml)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "-w", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        pytest.fail(f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}")
    (path,) = out.glob("popoto_redis-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ``bin`` directory of a fresh virtualenv with the wheel installed (core deps)."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    proc = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        pytest.fail(f"pip install of the wheel failed:\n{proc.stdout}\n{proc.stderr}")
    yield bin_dir


def names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_wheel_has_one_top_level_package(wheel: Path) -> None:
    tops = {name.split("/")[0] for name in names(wheel)}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"popoto"}
    with zipfile.ZipFile(wheel) as archive:
        info = next(t for t in tops if t.endswith(".dist-info"))
        assert archive.read(f"{info}/top_level.txt").decode().split() == ["popoto"]
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert "popoto-ops = popoto.ops.cli:main" in entry_points


def test_the_wheel_ships_the_background_layer_and_cli_but_not_the_examples(wheel: Path) -> None:
    files = set(names(wheel))
    for shipped in ("popoto/tasks/app.py", "popoto/tasks/rebuild.py", "popoto/workers/consumer.py",
                    "popoto/workers/__main__.py", "popoto/ops/cli.py", "popoto/ops/asgi.py",
                    "popoto/lua/save.lua", "popoto/py.typed",
                    "popoto/dashboard/templates/base.html"):
        assert shipped in files, shipped
    left_out = [f for f in files if f.startswith(("popoto/ops/bench/", "popoto/ops/examples/"))]
    assert left_out == []


def run(bin_dir: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "NO_COLOR": "1"})


def test_installed_package_imports_from_anywhere(installed: Path, tmp_path: Path) -> None:
    python = str(installed / "python")
    proc = run(installed, tmp_path, python, "-c",
               "import popoto, popoto.ops.cli; print(popoto.__file__)")
    assert proc.returncode == 0, proc.stderr
    assert "site-packages" in proc.stdout and str(REPO) not in proc.stdout
    # none of the repository's top-level folders is a package of the install
    for name in ("tasks", "workers", "ops"):
        proc = run(installed, tmp_path, python, "-c", f"import {name}")
        assert proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr, (name, proc.stderr)


def test_background_layer_without_the_celery_extra_names_the_install(
        installed: Path, tmp_path: Path) -> None:
    for package in ("popoto.tasks", "popoto.workers"):
        proc = run(installed, tmp_path, str(installed / "python"), "-c", f"import {package}")
        assert proc.returncode == 1, proc.stderr
        assert HINT in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_console_script_runs(installed: Path, tmp_path: Path) -> None:
    proc = run(installed, tmp_path, str(installed / "popoto-ops"), "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("popoto-ops ") and "popoto-redis" in proc.stdout


def _absolute_imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


@pytest.mark.parametrize("folder", ["popoto", "tasks", "workers", "ops", "tests"])
def test_nothing_imports_the_folders_as_top_level_packages(folder: str) -> None:
    """``tasks/`` is ``popoto.tasks`` (a symlink): importing it as ``tasks`` too would make
    two copies of every module (Celery tasks registered twice, two registries)."""
    found = [f"{path.relative_to(REPO)}: {name}"
             for path in sorted((REPO / folder).rglob("*.py"))
             for name in _absolute_imports(path)
             if name.split(".")[0] in ("tasks", "workers", "ops")]
    assert found == []


USER_MODULE = '''
from typing_extensions import assert_type

import popoto
from popoto.query.queryset import QuerySet


class Book(popoto.Model):
    isbn = popoto.KeyField()
    title = popoto.StringField(null=False)
    rating = popoto.FloatField(null=True)


b = Book.create(isbn="1", title="t")
assert_type(b, Book)
assert_type(b.title, str)
assert_type(b.rating, float | None)
assert_type(Book.query.filter(isbn="1"), QuerySet[Book])
assert_type(Book.query.get(isbn="1"), Book | None)
'''


def test_a_user_project_type_checks_against_the_installed_wheel(
        installed: Path, tmp_path: Path) -> None:
    """``py.typed`` ships: a user's mypy, pointed at the install (not this checkout), sees
    the typed models; a wrong assignment is an error."""
    (tmp_path / "app.py").write_text(USER_MODULE)
    (tmp_path / "bad.py").write_text(USER_MODULE + 'b.rating = "x"\n')
    argv = [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
            "--python-executable", str(installed / "python")]
    good = subprocess.run([*argv, "app.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert good.returncode == 0 and "Success" in good.stdout, good.stdout + good.stderr
    bad = subprocess.run([*argv, "bad.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    line = USER_MODULE.count("\n") + 1
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f'bad.py:{line}: error: Incompatible types in assignment (expression has type "str", ' \
        'variable has type "float | None")' in bad.stdout, bad.stdout
