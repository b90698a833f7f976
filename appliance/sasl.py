"""SASL server side of PLAIN, LOGIN and CRAM-MD5 for SMTP AUTH (later IMAP/POP3), sans-IO.

No sockets, no reactor: the protocol feeds client lines in and sends what comes out.

    exchange = SaslExchange(mechanism, hostname, initial_response, mechanisms=offered)
    result = exchange.step()                # first call: no argument
    while isinstance(result, Challenge):
        send("334 " + result.text)          # result.text may be "": send "334 "
        result = exchange.step(next_line)   # the client's next line without CRLF
    if isinstance(result, SaslError):
        send(result.reply)                  # e.g. "501 5.5.2 Cannot decode base64 response"
    else:                                   # Credentials
        portal.login(result.credentials, ...) -> "235 2.7.0" or "535 5.7.8"

Details:
- `initial_response` is the text after `AUTH MECH` (base64; "=" is an empty response; None or
  "" when the client sent none). CRAM-MD5 is server-first and refuses one (501 5.5.2).
- `mechanisms` is what the server offered: anything else, or an unknown name, gives
  504 5.5.4. Offering PLAIN/LOGIN (the PLAINTEXT set) only under TLS is the caller's policy.
- A line longer than MAX_LINE (12288) gives 500 5.5.6; a client "*" (cancel), bad base64
  (strict, no whitespace), a malformed response or a username that is not UTF-8 give 501 5.5.2.
- PLAIN with an authzid that is neither empty nor the authcid gives 535 5.7.8; count it as a
  failed login for the throttle like a 535 from the portal.
- Credentials carry twisted.cred objects with bytes fields: UsernamePassword(username,
  password) for PLAIN and LOGIN, CramMD5Credentials (username, challenge, response) for
  CRAM-MD5, plus the username as text. After a Credentials or SaslError result the exchange
  is over; calling step() again raises RuntimeError.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import secrets
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from twisted.cred.credentials import CramMD5Credentials, UsernamePassword

from appliance.ip import in_networks

MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")
PLAINTEXT = frozenset({"PLAIN", "LOGIN"})  # send the password itself: offer only under TLS
MAX_LINE = 12288  # RFC 4954 section 4: the least a server must accept

_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_HEX_DIGEST = re.compile(rb"^[0-9a-fA-F]{32}$")
_USERNAME_PROMPT = base64.b64encode(b"Username:").decode("ascii")
_PASSWORD_PROMPT = base64.b64encode(b"Password:").decode("ascii")


@dataclass(frozen=True)
class Challenge:
    """Send `334 <text>` and feed the client's next line to step()."""

    text: str  # base64, possibly empty


@dataclass(frozen=True)
class Credentials:
    """The exchange finished; check `credentials` with the portal."""

    credentials: UsernamePassword | CramMD5Credentials
    username: str
    mechanism: str


@dataclass(frozen=True)
class SaslError:
    """The exchange failed; send `reply`."""

    code: int
    enhanced: str
    text: str

    @property
    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


UNKNOWN_MECHANISM = SaslError(504, "5.5.4", "Unrecognized authentication type")
LINE_TOO_LONG = SaslError(500, "5.5.6", "Authentication exchange line is too long")
CANCELLED = SaslError(501, "5.5.2", "Authentication cancelled")
BAD_BASE64 = SaslError(501, "5.5.2", "Cannot decode base64 response")
MALFORMED = SaslError(501, "5.5.2", "Malformed authentication response")
NO_INITIAL_RESPONSE = SaslError(501, "5.5.2", "CRAM-MD5 takes no initial response")
BAD_AUTHZID = SaslError(535, "5.7.8", "Authentication credentials invalid")


def _decode_base64(text: str) -> bytes | None:
    # strict: binascii alone still lets a trailing newline through
    if not _BASE64.match(text):
        return None
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        return None


def _utf8(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text and "\0" not in text else None


class SaslExchange:
    """One AUTH exchange for one mechanism; see the module docstring for the protocol."""

    def __init__(
        self,
        mechanism: str,
        hostname: str,
        initial_response: str | None = None,
        *,
        mechanisms: Collection[str] = MECHANISMS,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.mechanism = mechanism.upper()
        self.hostname = hostname
        self.initial_response = initial_response or None
        self._allowed = {m.upper() for m in mechanisms} & set(MECHANISMS)
        self._now = now
        self._state = "start"
        self._username: str | None = None
        self._challenge = b""

    @property
    def finished(self) -> bool:
        return self._state == "done"

    def step(self, line: str | None = None) -> Challenge | Credentials | SaslError:
        """Advance the exchange: None on the first call, then each client line."""
        if self._state == "done":
            raise RuntimeError("the SASL exchange is over")
        if self._state == "start":
            result = self._start()
        else:
            if line is None:
                raise TypeError("step() needs the client's line after the first call")
            result = self._continue(line)
        if not isinstance(result, Challenge):
            self._state = "done"
        return result

    def _start(self) -> Challenge | Credentials | SaslError:
        if self.mechanism not in self._allowed:
            return UNKNOWN_MECHANISM
        initial = self.initial_response
        if initial is not None:
            if self.mechanism == "CRAM-MD5":
                return NO_INITIAL_RESPONSE
            if len(initial) > MAX_LINE:
                return LINE_TOO_LONG
            data = b"" if initial == "=" else _decode_base64(initial)
            if data is None:
                return BAD_BASE64
            if self.mechanism == "PLAIN":
                return self._plain(data)
            return self._login_username(data)
        if self.mechanism == "PLAIN":
            self._state = "plain"
            return Challenge("")
        if self.mechanism == "LOGIN":
            self._state = "login-username"
            return Challenge(_USERNAME_PROMPT)
        nonce = secrets.randbelow(10**12)
        self._challenge = f"<{nonce}.{int(self._now())}@{self.hostname}>".encode()
        self._state = "cram"
        return Challenge(base64.b64encode(self._challenge).decode("ascii"))

    def _continue(self, line: str) -> Challenge | Credentials | SaslError:
        if len(line) > MAX_LINE:
            return LINE_TOO_LONG
        if line == "*":
            return CANCELLED
        data = _decode_base64(line)
        if data is None:
            return BAD_BASE64
        if self._state == "plain":
            return self._plain(data)
        if self._state == "login-username":
            return self._login_username(data)
        if self._state == "login-password":
            return self._login_password(data)
        return self._cram(data)

    def _plain(self, data: bytes) -> Credentials | SaslError:
        parts = data.split(b"\0")
        if len(parts) != 3 or not parts[2]:
            return MALFORMED
        authzid_b, authcid_b, password = parts
        authcid = _utf8(authcid_b)
        authzid = _utf8(authzid_b) if authzid_b else ""
        if authcid is None or authzid is None:
            return MALFORMED
        # we do not let one user act for another: the identities must be the same
        if authzid and authzid.lower() != authcid.lower():
            return BAD_AUTHZID
        return Credentials(UsernamePassword(authcid_b, password), authcid, "PLAIN")

    def _login_username(self, data: bytes) -> Challenge | SaslError:
        username = _utf8(data)
        if username is None:
            return MALFORMED
        self._username = username
        self._state = "login-password"
        return Challenge(_PASSWORD_PROMPT)

    def _login_password(self, data: bytes) -> Credentials | SaslError:
        assert self._username is not None
        username = self._username
        return Credentials(UsernamePassword(username.encode("utf-8"), data), username, "LOGIN")

    def _cram(self, data: bytes) -> Credentials | SaslError:
        user_b, sep, digest = data.rpartition(b" ")
        username = _utf8(user_b)
        if not sep or username is None or not _HEX_DIGEST.match(digest):
            return MALFORMED
        creds = CramMD5Credentials(self.hostname.encode("utf-8"))
        creds.challenge = self._challenge
        creds.username = user_b
        creds.response = digest.lower()
        return Credentials(creds, username, "CRAM-MD5")


# ---------------------------------------------------------------------------- what a protocol offers


class _Unthrottled:
    """interfaces.LoginAttempt of a listener without a throttle: no delay, nothing counted."""

    def failed(self) -> float:
        return 0.0

    def succeeded(self) -> None:
        pass

    def abandoned(self) -> None:
        pass


UNTHROTTLED = _Unthrottled()


def plaintext_allowed(
    tls_info: str | None,
    peer_ip: str,
    networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    """Whether PLAIN/LOGIN (and POP3's USER/PASS) may be used: under TLS, or from a
    network the admin lists ([auth] plaintext_networks)."""
    return tls_info is not None or in_networks(peer_ip, networks)


def offered_mechanisms(configured: Collection[str], plaintext_ok: bool, cram_ok: bool) -> list[str]:
    """The SASL mechanisms to offer now, in the configured order: the password-sending ones
    only when plaintext_ok, CRAM-MD5 only when the backend can check it (cram_ok)."""
    mechs = [m for m in configured if m != "CRAM-MD5"] if plaintext_ok else []
    if "CRAM-MD5" in configured and cram_ok:
        mechs.append("CRAM-MD5")
    return mechs
