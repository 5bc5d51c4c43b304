"""The engine's I/O-free tests: step generators driven with canned replies, no Redis.

``clean_db`` (autouse in the root conftest.py) would start the session's Redis server
and flush it before every test; here it is overridden with a no-op, so nothing in
this directory needs or starts a server.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def clean_db() -> None:
    """No database to clean: these tests never talk to Redis."""
