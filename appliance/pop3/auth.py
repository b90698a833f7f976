"""POP3 logins: USER/PASS (RFC 1939) and AUTH (RFC 5034), through the shared LoginThrottle.

PLAIN, LOGIN and USER/PASS send the password itself, so they are offered and accepted only
under TLS or from [auth] plaintext_networks (otherwise `-ERR [AUTH] Plaintext authentication
disallowed on non-secure connections`, Dovecot's words); CRAM-MD5 only when the Authenticator
can check it. The SASL exchange is appliance.sasl's, with POP3's "+ " continuation; the check itself
(throttle, delays, events) is appliance.login's, answered here: a blocked client gets
`-ERR [SYS/TEMP]` and is closed, a failed login `-ERR [AUTH]`, a backend that cannot answer
`-ERR [SYS/TEMP]`. The session takes over once the credentials are good (locking the mailbox).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.logger import Logger

from appliance.interfaces import SaslCredentials
from appliance.log import printable
from appliance.login import LoginCheck
from appliance.sasl import (
    MAX_LINE,
    Challenge,
    SaslError,
    SaslExchange,
    offered_mechanisms,
    plaintext_allowed,
)

if TYPE_CHECKING:
    from appliance.pop3.events import POP3Events
    from appliance.pop3.factory import POP3Factory

SASL_LINE_LIMIT = MAX_LINE + 2  # the framing limit (CRLF included) while an exchange runs
PLAINTEXT_REFUSED = "[AUTH] Plaintext authentication disallowed on non-secure connections"


class AuthHost(Protocol):
    """What the login dialogue needs of its session."""

    factory: POP3Factory
    peer_ip: str
    tls_info: str | None  # not None once the connection is encrypted
    busy: bool
    events: POP3Events

    def send_line(self, line: str) -> None: ...

    def ok(self, text: str) -> None: ...

    def err(self, text: str, close: bool = False) -> None: ...

    def wait(self, d: defer.Deferred[Any], what: str) -> None: ...

    def logged_in(self, login: str, method: str) -> defer.Deferred[None]: ...


class POP3Auth:
    """The login state of one session: the USER given, the SASL exchange under way."""

    log = Logger()

    def __init__(self, host: AuthHost) -> None:
        self.host = host
        self.user: bytes | None = None  # USER's argument, waiting for PASS
        self.mechanism = ""  # of the login being checked: USER, PLAIN, LOGIN, CRAM-MD5
        self.exchange: SaslExchange | None = None  # lines go here while it is set
        self._check: LoginCheck | None = None  # made once connected (it needs the peer)

    # ------------------------------------------------------------------ what is offered

    def plaintext_allowed(self) -> bool:
        h = self.host
        return plaintext_allowed(h.tls_info, h.peer_ip, h.factory.settings.plaintext_networks)

    def cram_available(self) -> bool:
        authenticator = self.host.factory.authenticator
        return authenticator is not None and authenticator.cram_md5_available()

    def offered_mechanisms(self) -> list[str]:
        f = self.host.factory
        if f.authenticator is None:
            return []
        return offered_mechanisms(
            f.settings.mechanisms, self.plaintext_allowed(), self.cram_available()
        )

    def user_offered(self) -> bool:
        return self.host.factory.authenticator is not None and self.plaintext_allowed()

    # ------------------------------------------------------------------ USER / PASS

    def do_user(self, arg: bytes) -> None:
        host = self.host
        if host.factory.authenticator is None:
            host.err("authentication not enabled")
            return
        if not self.plaintext_allowed():
            host.err(PLAINTEXT_REFUSED)
            return
        if not arg or len(arg) > 255:
            host.err("USER needs a user name")
            return
        self.user = arg
        host.ok("")

    def do_pass(self, arg: bytes) -> None:
        host = self.host
        user, self.user = self.user, None
        if user is None:
            host.err("no USER given")
            return
        if not self.plaintext_allowed():  # TLS cannot have gone away, but be sure
            host.err(PLAINTEXT_REFUSED)
            return
        self.mechanism = "USER"
        username = printable(user, 100)
        self.check(UsernamePassword(user, arg), username)

    # ------------------------------------------------------------------ AUTH

    def do_auth(self, arg: str) -> None:
        host = self.host
        f = host.factory
        if f.authenticator is None:
            host.err("authentication not enabled")
            return
        if not arg:
            # a listing of the mechanisms, as many servers answer a bare AUTH
            host.send_line("+OK")
            for mech in self.offered_mechanisms():
                host.send_line(mech)
            host.send_line(".")
            return
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        if mech not in f.settings.mechanisms or (mech == "CRAM-MD5" and not self.cram_available()):
            host.err("Unsupported authentication mechanism")
            return
        if mech != "CRAM-MD5" and not self.plaintext_allowed():
            host.err(PLAINTEXT_REFUSED)
            return
        if self.refuse_blocked(""):
            return
        self.mechanism = mech
        self.exchange = SaslExchange(
            mech, f.settings.hostname, initial.strip() or None, mechanisms=f.settings.mechanisms
        )
        self.advance(None)

    def line_received(self, raw: bytes) -> None:
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            self.exchange = None
            self.host.err("Malformed authentication response")
            return
        self.advance(line)

    def advance(self, line: str | None) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        step = exchange.step(line)
        if isinstance(step, Challenge):
            self.host.send_line(f"+ {step.text}")
            return
        self.exchange = None  # later lines are commands again
        if isinstance(step, SaslError):
            if step.code == 535:  # a PLAIN authzid that is not the user: a failed login
                self.check(None, step.text)
                return
            self.host.err(step.text)
            return
        self.check(step.credentials, printable(step.username, 100))

    # ------------------------------------------------------------------ the check

    @property
    def login_check(self) -> LoginCheck:
        if self._check is None:
            h = self.host
            f = h.factory
            self._check = LoginCheck(
                authenticator=f.authenticator,
                throttle=f.throttle,
                reactor=f.reactor,
                peer_ip=h.peer_ip,
                events=h.events,
                answers=self,
            )
        return self._check

    def refuse_blocked(self, username: str) -> bool:
        return self.login_check.refuse_blocked(username, self.mechanism or "USER")

    def check(self, credentials: SaslCredentials | None, username: str) -> None:
        """Admit the login with the throttle, then check credentials (None: known bad)."""
        host = self.host
        if host.factory.authenticator is None:
            host.err("authentication not enabled")
            return
        d = self.login_check.check(
            credentials,
            username,
            self.mechanism,
            lambda login: host.logged_in(login, self.mechanism),
        )
        host.wait(d, "authentication")

    # ------------------------------------------------------------------ LoginAnswers

    def blocked(self) -> None:
        self.host.err("[SYS/TEMP] Too many failed logins", close=True)

    def user_blocked(self) -> None:
        self.host.err("[SYS/TEMP] Too many failed logins for this user, try again later")

    def failed(self) -> None:
        self.host.err("[AUTH] Authentication failed")

    def unavailable(self) -> None:
        self.host.err("[SYS/TEMP] Temporary authentication failure")
