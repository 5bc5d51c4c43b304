"""Optional parts fail helpfully: without the ``celery`` extra, importing the background
layer names the command that installs it; the ORM itself needs no extra."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import metadata

import pytest

from popoto.extras import DISTRIBUTION, install_hint

HINT = "pip install 'popoto-redis[celery]'"


def run_without(modules: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` in a process where ``modules`` cannot be imported."""
    block = "; ".join(f"sys.modules[{m!r}] = None" for m in modules)
    return subprocess.run([sys.executable, "-c", f"import sys; {block}; {code}"],
                          capture_output=True, text=True, timeout=60)


def test_the_hint_names_the_installed_distribution() -> None:
    """The name in the hint is the distribution this checkout installs (pyproject.toml)."""
    assert metadata(DISTRIBUTION)["Name"] == DISTRIBUTION == "popoto-redis"
    assert install_hint("celery") == HINT


@pytest.mark.parametrize(
    "package", ["popoto.tasks", "popoto.workers", "popoto.tasks.jobs", "popoto.workers.consumer"])
@pytest.mark.parametrize("missing", [("celery",), ("structlog",)])
def test_background_layer_without_the_extra_names_the_install_command(
        package: str, missing: tuple[str, ...]) -> None:
    """``import popoto.tasks`` / ``popoto.workers`` without celery or structlog: a
    ModuleNotFoundError whose message says ``pip install 'popoto-redis[celery]'``."""
    proc = run_without(missing, f"import {package}")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: ") and HINT in last, proc.stderr
    assert missing[0] in last


def test_the_orm_imports_without_the_extra() -> None:
    """The ORM itself imports (and defines a model) with neither celery nor structlog."""
    proc = run_without(("celery", "structlog", "kombu"),
                       "import popoto\nclass Probe(popoto.Model):\n    k = popoto.KeyField()\n"
                       "print('ok')")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_cli_background_command_without_the_extra_is_one_line() -> None:
    """``popoto-ops jobs`` without the extra: exit 2, one line naming the install command."""
    proc = run_without(("celery",), "from popoto.ops.cli import main; sys.exit(main(['jobs']))")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("popoto-ops: ") and HINT in lines[0], \
        proc.stderr
