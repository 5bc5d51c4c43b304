"""Optional parts of the distribution and the hint shown when one is not installed.

The distribution is ``popoto-redis`` (the import name stays ``popoto``); the
background layer (``tasks``, ``workers``) needs its ``celery`` extra. Importing
it without the extra raises :class:`ModuleNotFoundError` naming the command that
installs it, instead of a bare ``No module named 'celery'``.
"""

from __future__ import annotations

import importlib

#: the name to ``pip install`` (``popoto`` on the public index is another project)
DISTRIBUTION = "popoto-redis"


def install_hint(extra: str) -> str:
    """``pip install 'popoto-redis[EXTRA]'``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require_extra(package: str, extra: str, modules: tuple[str, ...]) -> None:
    """Import ``modules``; when one is missing, raise an error naming ``extra``'s install."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ModuleNotFoundError(
                f"{package} needs the {extra!r} extra ({module} is not importable: {exc}); "
                f"install it with: {install_hint(extra)}", name=module) from exc
