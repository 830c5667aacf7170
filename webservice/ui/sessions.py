"""Browser sessions of the status page: opaque, server-side, short-lived.

The cookie holds only a random 256-bit id; the server keeps its SHA-256 (a stolen copy of this
process's memory gives no usable cookie), the identity, a CSRF token and two deadlines: an
idle timeout and an absolute one. Sessions live in this process only, so a restart signs
everybody out, which is the safe direction. The count is bounded: past `MAX_SESSIONS` the
oldest is dropped, so a script that signs in forever costs a fixed amount of memory.

A sign-in form carries a token bound to a short-lived pre-session cookie (double submit): a
third-party page cannot sign a browser in as someone else (login CSRF).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TypeVar

from webservice.store.credentials import token_hash

#: Signed out after this long without a request, and after `ABSOLUTE_TTL_S` in any case.
IDLE_TTL_S = 30 * 60
ABSOLUTE_TTL_S = 8 * 3600
#: How long a sign-in form stays usable.
LOGIN_TTL_S = 10 * 60
MAX_SESSIONS = 1000
MAX_LOGIN_FORMS = 1000

SESSION_COOKIE = "status_session"
LOGIN_COOKIE = "status_login"
#: The cookies go back only to the status page's own routes, never to the API.
COOKIE_PATH = "/status"

V = TypeVar("V")


@dataclass
class Session:
    identity: str
    csrf: str
    created: float
    last_seen: float

    def expired(self, now: float) -> bool:
        return now - self.last_seen > IDLE_TTL_S or now - self.created > ABSOLUTE_TTL_S


def _evict_oldest(table: OrderedDict[str, V], limit: int) -> None:
    while len(table) > limit:
        table.popitem(last=False)


class SessionStore:
    """Signed-in browsers and outstanding sign-in forms, by the hash of their cookie."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._logins: OrderedDict[str, float] = OrderedDict()

    # ---- sign-in forms ---------------------------------------------------------------
    def new_login(self) -> str:
        """A pre-session cookie value; its form token is `login_token(value)`."""
        value = secrets.token_urlsafe(32)
        self._logins[token_hash(value)] = time.time() + LOGIN_TTL_S
        _evict_oldest(self._logins, MAX_LOGIN_FORMS)
        return value

    @staticmethod
    def login_token(cookie: str) -> str:
        # Not the cookie itself: the page never echoes an HttpOnly value into the document.
        return token_hash("form:" + cookie)

    def take_login(self, cookie: str, form_token: str) -> bool:
        """Whether the form came from the page that set `cookie` and is still fresh; once."""
        if not cookie or not hmac.compare_digest(self.login_token(cookie), form_token):
            return False
        deadline = self._logins.pop(token_hash(cookie), None)
        return deadline is not None and deadline >= time.time()

    # ---- sessions ----------------------------------------------------------------------
    def create(self, identity: str) -> str:
        """A new session (a new id at every sign-in: no fixation); returns the cookie value."""
        value = secrets.token_urlsafe(32)
        now = time.time()
        self._sessions[token_hash(value)] = Session(identity, secrets.token_urlsafe(32), now, now)
        _evict_oldest(self._sessions, MAX_SESSIONS)
        return value

    def get(self, cookie: str | None) -> Session | None:
        """The live session of `cookie`, its idle deadline renewed; None when there is none."""
        if not cookie:
            return None
        key = token_hash(cookie)
        session = self._sessions.get(key)
        now = time.time()
        if session is None:
            return None
        if session.expired(now):
            del self._sessions[key]
            return None
        session.last_seen = now
        self._sessions.move_to_end(key)
        return session

    def end(self, cookie: str | None) -> None:
        if cookie:
            self._sessions.pop(token_hash(cookie), None)
