"""SMTP AUTH (RFC 4954): which mechanisms are offered, the SASL dialogue and its outcome.

PLAIN and LOGIN send the password itself, so they are offered and accepted only under TLS or
from [auth] plaintext_networks; CRAM-MD5 only when the Authenticator can check it. The
exchange itself is appliance.sasl's (sans-IO); the credentials go to the Authenticator
seam. Every login is counted by the shared LoginThrottle when its credentials are complete,
before they are checked, so parallel guesses count at once: a client past its limit gets 421
4.7.0 and is closed, a user past theirs 454 4.7.0, in both cases without the password being
checked. A failed login is answered 535 only after the throttle's delay and logged as one
auth_failed event. When the user backend cannot answer, the client gets 454 4.7.0, the log a
warning, and the attempt does not count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance.errors import ApplianceError
from appliance.interfaces import Authenticator, LoginAttempt
from appliance.log import printable
from appliance.sasl import (
    MAX_LINE,
    UNTHROTTLED,
    Challenge,
    Credentials,
    SaslError,
    SaslExchange,
    offered_mechanisms,
    plaintext_allowed,
)
from appliance.smtp.address import ReplyError
from appliance.smtp.events import SessionEvents

if TYPE_CHECKING:
    from appliance.smtp.factory import SMTPFactory

SASL_LINE_LIMIT = MAX_LINE  # the framing limit (CRLF included) while an exchange runs


class AuthHost(Protocol):
    """What the AUTH dialogue needs of its session."""

    factory: SMTPFactory
    peer_ip: str
    tls_info: str | None  # not None once the connection is encrypted
    busy: bool  # an asynchronous step is holding input
    events: SessionEvents

    def client_label(self) -> str: ...

    def send_line(self, line: str) -> None: ...

    def reply(self, code: int, enhanced: str, text: str, close: bool = False) -> None: ...

    def wait(self, d: defer.Deferred[Any], what: str) -> None: ...


class SessionAuth:
    """The AUTH state of one session: who logged in, and the exchange under way if any."""

    log = Logger()

    def __init__(self, host: AuthHost) -> None:
        self.host = host
        self.user: str | None = None  # the login, once authenticated
        self.mechanism: str | None = None  # of the last AUTH command
        self.exchange: SaslExchange | None = None  # lines go here while it is set

    def plaintext_allowed(self) -> bool:
        """Whether PLAIN/LOGIN may be used: under TLS, or from a plaintext network."""
        h = self.host
        return plaintext_allowed(h.tls_info, h.peer_ip, h.factory.settings.plaintext_networks)

    def cram_available(self) -> bool:
        authenticator = self.host.factory.authenticator
        return authenticator is not None and authenticator.cram_md5_available()

    def offered_mechanisms(self) -> list[str]:
        """The mechanisms for the EHLO AUTH line (empty: do not offer AUTH)."""
        mechanisms = self.host.factory.settings.mechanisms
        return offered_mechanisms(mechanisms, self.plaintext_allowed(), self.cram_available())

    def start(self, arg: str) -> None:
        """AUTH <mechanism> [initial-response], once the session has allowed the command."""
        host = self.host
        f = host.factory
        if not arg:
            raise ReplyError(501, "5.5.4", "Syntax: AUTH mechanism")
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        if mech not in f.settings.mechanisms or (mech == "CRAM-MD5" and not self.cram_available()):
            raise ReplyError(504, "5.5.4", "Unrecognized authentication type")
        if mech != "CRAM-MD5" and not self.plaintext_allowed():
            raise ReplyError(
                538, "5.7.11", "Encryption required for requested authentication mechanism"
            )
        if f.throttle is not None and f.throttle.blocked(host.peer_ip):  # checked again at begin
            host.events.auth_refused(host.client_label(), mech, "")
            host.reply(
                421, "4.7.0", f"{f.settings.hostname} Error: too many failed logins", close=True
            )
            return
        self.mechanism = mech
        self.exchange = SaslExchange(
            mech, f.settings.hostname, initial.strip() or None, mechanisms=f.settings.mechanisms
        )
        self.advance(None)

    def line_received(self, raw: bytes) -> None:
        """One client line of the exchange (without its CRLF)."""
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            self.exchange = None
            self.host.reply(501, "5.5.2", "Malformed authentication response")
            return
        self.advance(line)

    def advance(self, line: str | None) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        step = exchange.step(line)
        if isinstance(step, Challenge):
            self.host.send_line(f"334 {step.text}")
            return
        self.exchange = None  # before anything below replies: later lines are commands again
        if isinstance(step, SaslError):
            if step.code == 535:  # a PLAIN authzid that is not the user: a failed login
                attempt = self.begin(step.text)
                if attempt is not None:
                    self.login_failed(step.text, attempt)
                return
            self.host.reply(step.code, step.enhanced, step.text)
            return
        self.check(step)

    def begin(self, username: str) -> LoginAttempt | None:
        """Count the attempt with the throttle; None (after answering) if it is refused."""
        host = self.host
        f = host.factory
        if f.throttle is None:
            return UNTHROTTLED
        attempt = f.throttle.begin(host.peer_ip, username)
        if attempt is not None:
            return attempt
        self.refused(username)
        return None

    def refused(self, username: str) -> None:
        """The throttle refused the login: 421 and close for a blocked client, else 454."""
        host = self.host
        f = host.factory
        assert f.throttle is not None
        host.events.auth_refused(host.client_label(), self.mechanism, username)
        if f.throttle.blocked(host.peer_ip):
            host.reply(
                421, "4.7.0", f"{f.settings.hostname} Error: too many failed logins", close=True
            )
        else:
            host.reply(454, "4.7.0", "Too many failed logins for this user, try again later")

    def check(self, step: Credentials) -> None:
        host = self.host
        f = host.factory
        authenticator: Authenticator | None = f.authenticator
        if authenticator is None:  # the session does not start AUTH without one
            host.reply(502, "5.5.1", "Error: authentication not enabled")
            return
        username = printable(step.username, 100)
        if f.throttle is None:
            admitted: defer.Deferred[LoginAttempt | None] = defer.succeed(UNTHROTTLED)
        else:
            # parallel logins of one client wait for a slot rather than fail (the throttle)
            admitted = f.throttle.admit(host.peer_ip, username)

        def checked(attempt: LoginAttempt | None) -> defer.Deferred[None] | None:
            if attempt is None:
                self.refused(username)
                return None
            return self._authenticate(authenticator, step, username, attempt)

        host.wait(admitted.addCallback(checked), "authentication")

    def _authenticate(
        self, authenticator: Authenticator, step: Credentials, username: str, attempt: LoginAttempt
    ) -> defer.Deferred[None]:
        host = self.host
        d = defer.maybeDeferred(authenticator.authenticate, step.credentials)

        def ok(login: str) -> None:
            self.user = login
            attempt.succeeded()
            host.events.auth(host.client_label(), self.mechanism, login)
            host.reply(235, "2.7.0", "Authentication successful")

        def bad(failure: Failure) -> defer.Deferred[None] | None:
            if failure.check(UnauthorizedLogin):
                return self.login_failed(username, attempt)
            attempt.abandoned()
            # the backend could not answer (directory down, unreadable file): try again later
            if failure.check(ApplianceError):
                self.log.warn(
                    "authentication backend unavailable: {reason}", reason=failure.getErrorMessage()
                )
            else:
                self.log.failure("authentication backend failed", failure)
            host.reply(454, "4.7.0", "Temporary authentication failure")
            return None

        return d.addCallbacks(ok, bad)

    def login_failed(self, username: str, attempt: LoginAttempt) -> defer.Deferred[None]:
        """535 after the throttle's delay; one fail2ban-friendly auth_failed event."""
        host = self.host
        f = host.factory
        delay = attempt.failed()
        host.events.auth_failed(host.client_label(), self.mechanism, username)
        answer: defer.Deferred[None] = defer.Deferred()
        if delay <= 0:
            answer.callback(None)
        else:
            f.reactor.callLater(delay, answer.callback, None)
        answer.addCallback(lambda _: host.reply(535, "5.7.8", "Error: authentication failed"))
        if not host.busy:
            host.wait(answer, "authentication delay")
        return answer
