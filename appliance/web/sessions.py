"""Admin sessions of the status page, and the CSRF tokens of its forms.

A session is made when an admin logs in: a random 256-bit id in a cookie named with the
`__Host-` prefix (the browser keeps it only if it came over HTTPS with Path=/ and no Domain)
and flagged Secure, HttpOnly and SameSite=Strict, so no script reads it and no other site's
page makes the browser send it. Sessions live in memory only (a restart logs admins out) and
end after `idle` seconds without a request, after `lifetime` seconds in any case, or at
logout. At most MAX_SESSIONS are kept; the oldest goes first.

Every form carries a CSRF token checked in constant time: the session's own, or, for the
login form (no session yet), a token bound to a random value in a short-lived
`__Host-mailappliance-login` cookie by an HMAC under a key made at start.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "__Host-mailappliance"
LOGIN_COOKIE = "__Host-mailappliance-login"
LIFETIME = 12 * 3600.0
LOGIN_FORM_LIFETIME = 3600  # seconds a login form (and its cookie) stays good
MAX_SESSIONS = 1000


def cookie(name: str, value: str, max_age: int | None = None) -> str:
    """A Set-Cookie value with every flag the page's cookies need; max_age 0 deletes."""
    parts = [f"{name}={value}", "Path=/", "Secure", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


@dataclass
class Session:
    id: str
    user: str
    csrf: str
    created: float
    seen: float = field(default=0.0)
    message: str | None = None  # what the last action did, shown once on the next page


class Sessions:
    def __init__(
        self, idle: float, lifetime: float = LIFETIME, clock: Callable[[], float] = time.time
    ) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._key = secrets.token_bytes(32)  # for the login forms' tokens

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: str) -> Session:
        now = self.clock()
        s = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
        self._sessions[s.id] = s
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return s

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (its idle clock restarted), or None."""
        if not session_id:
            return None
        s = self._sessions.get(session_id)
        if s is None:
            return None
        now = self.clock()
        if now - s.seen > self.idle or now - s.created > self.lifetime:
            del self._sessions[session_id]
            return None
        s.seen = now
        return s

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    # --------------------------------------------------------------- the login form's token

    def login_token(self, nonce: str) -> str:
        """The login form's CSRF token for the nonce in its cookie."""
        return hmac.new(self._key, nonce.encode("ascii"), hashlib.sha256).hexdigest()

    def login_token_ok(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token or not nonce.isascii():
            return False
        return hmac.compare_digest(self.login_token(nonce), token)


def same_token(expected: str, given: str | None) -> bool:
    """A form's CSRF token against the session's, in constant time."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def new_nonce() -> str:
    return secrets.token_urlsafe(24)
