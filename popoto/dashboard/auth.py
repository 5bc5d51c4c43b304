"""Who may act: the dashboard token, a session cookie proving it, CSRF tokens bound to it.

* No token configured (``POPOTO_DASHBOARD_TOKEN`` unset or empty): the dashboard
  is read-only; every action is refused.
* With a token, an operator logs in by typing it (``POST /login``); the answer
  sets an HttpOnly, SameSite=Strict cookie ``<issued>.<nonce>.<mac>`` whose MAC
  (HMAC-SHA256 keyed with the token) proves the token was known. It expires
  after :data:`SESSION_SECONDS`, and changing the token logs every session out.
* Every action form carries a CSRF token, HMAC(token, ``csrf|<nonce>``): bound
  to the session, checked in constant time. A request without a valid session
  and a matching CSRF token is refused (403) before anything is done.

Nothing here logs or returns the token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

COOKIE = "popoto_ops_session"
#: a session is valid this long after the login
SESSION_SECONDS = 12 * 3600


class Auth:
    def __init__(self, token: str | None) -> None:
        self._token = (token or "").encode() or None

    @property
    def enabled(self) -> bool:
        """True when actions are possible at all (a token is configured)."""
        return self._token is not None

    def _mac(self, *parts: str) -> str:
        assert self._token is not None
        return hmac.new(self._token, "|".join(parts).encode(), hashlib.sha256).hexdigest()

    def check_token(self, given: str) -> bool:
        if self._token is None or not given:
            return False
        return hmac.compare_digest(given.encode(), self._token)

    def new_session(self, now: float | None = None) -> str:
        issued = str(int(time.time() if now is None else now))
        nonce = secrets.token_urlsafe(18)
        return f"{issued}.{nonce}.{self._mac('session', issued, nonce)}"

    def session(self, cookie: str | None, now: float | None = None) -> str | None:
        """The nonce of a valid session cookie, else None."""
        if self._token is None or not cookie or cookie.count(".") != 2:
            return None
        issued, nonce, mac = cookie.split(".")
        if not issued.isdigit() or not hmac.compare_digest(
                mac.encode(), self._mac("session", issued, nonce).encode()):
            return None
        age = (time.time() if now is None else now) - int(issued)
        return nonce if 0 <= age <= SESSION_SECONDS else None

    def csrf(self, nonce: str | None) -> str:
        """The CSRF token of session ``nonce`` ("" without a session)."""
        return self._mac("csrf", nonce) if nonce and self._token is not None else ""

    def check_csrf(self, nonce: str | None, given: str) -> bool:
        expected = self.csrf(nonce)
        return bool(expected and given) and hmac.compare_digest(expected.encode(),
                                                                given.encode())
