"""What POP3 and IMAP share: checking one login (the throttle, the Authenticator, the answers'
timing), their login events, and the listener factory that holds their collaborators.

A client the throttle blocks is refused without anything being checked (and disconnected);
each login is admitted by the throttle before its credentials are checked, so parallel
guesses count at once; a failed one is answered after the throttle's delay and logged once
(for fail2ban); a backend that cannot answer gives a temporary failure and the attempt does
not count. What each outcome says is the protocol's (`LoginAnswers`): POP3's `-ERR [AUTH]`,
IMAP's `NO [AUTHENTICATIONFAILED]`; the protocol takes over once the credentials are good.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Generic, Protocol, TypeVar

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IAddress, IOpenSSLContextFactory, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance.errors import ApplianceError
from appliance.interfaces import (
    Authenticator,
    LoginAttempt,
    LoginThrottle,
    MailStore,
    SaslCredentials,
)
from appliance.limits import ConnectionSlots, ServiceSettings
from appliance.log import printable
from appliance.sasl import UNTHROTTLED
from appliance.workers import QuickCalls, WorkerPool

SessionT = TypeVar("SessionT", bound=protocol.Protocol)


class AccessSettings(ServiceSettings, Protocol):
    """What AccessFactory reads of POP3Settings and IMAPSettings beyond the connection limits."""

    @property
    def quick_store_calls(self) -> bool: ...


SettingsT = TypeVar("SettingsT", bound=AccessSettings)


class AccessFactory(protocol.ServerFactory[SessionT], Generic[SessionT, SettingsT]):
    """One POP3 or IMAP listener: its settings, the collaborators its sessions use, its
    connection slots; a subclass names the session class (built as session_class(self)).

    implicit_tls: the port is wrapped in TLS by the wiring (995, 993: no STLS/STARTTLS
    offered); store: the mailboxes; authenticator: credential checks, None to allow no login;
    tls: the context for STLS/STARTTLS, None for none; throttle: the shared login throttle,
    None for none; pool: the worker threads every blocking store call runs in; events: the
    mail event stream's Logger; reactor: for deadlines and delays; slots: the service's
    connection slots shared by its ports (default: this listener's own). `quick` runs the
    store calls that write nothing (folder looks, small reads) on the reactor while they stay
    cheap (appliance.workers.QuickCalls), one for the listener, so a store found slow sends
    every session's calls to the pool.
    """

    session_class: type[SessionT]

    def __init__(
        self,
        settings: SettingsT,
        *,
        implicit_tls: bool,
        store: MailStore,
        authenticator: Authenticator | None,
        tls: IOpenSSLContextFactory | None,
        throttle: LoginThrottle | None,
        pool: WorkerPool,
        events: Logger,
        reactor: IReactorTime,
        slots: ConnectionSlots | None = None,
    ) -> None:
        self.settings = settings
        self.implicit_tls = implicit_tls
        self.store = store
        self.authenticator = authenticator
        self.tls = tls
        self.throttle = throttle
        self.pool = pool
        self.events = events
        self.reactor = reactor
        self.slots = slots if slots is not None else ConnectionSlots.for_service(settings)

    @cached_property
    def quick(self) -> QuickCalls:
        """The listener's QuickCalls over its pool (quick_store_calls false: always the pool)."""
        return QuickCalls(self.pool, enabled=self.settings.quick_store_calls)

    def buildProtocol(self, addr: IAddress | None) -> SessionT:  # noqa: N802 (Twisted's API)
        return self.session_class(self)  # type: ignore[call-arg]


class AccessEvents:
    """The mail events of one POP3 or IMAP session, each a maillog line in Dovecot's words
    (the fail2ban dovecot filter matches them): a subclass gives the formats. `event` names
    what happened (login, auth_failed, auth_refused, timeout, reject, and the subclass's
    own); session_id, peer and client (the client's IP) are on every event; client-given
    text (user names) is cut with printable() here."""

    LOGIN = ""
    LOGIN_TLS = ""
    AUTH_FAILED = ""
    AUTH_REFUSED = ""
    TIMEOUT = ""
    REJECT = ""
    TLS = ""

    def __init__(self, log: Logger, session_id: str, peer: str, local: str) -> None:
        self.log = log
        self.session_id = session_id
        self.peer = peer
        self.local = local

    def _emit(self, log_format: str, event: str, **fields: object) -> None:
        self.log.info(
            log_format,
            event=event,
            session_id=self.session_id,
            peer=self.peer,
            client=self.peer,
            local=self.local,
            **fields,
        )

    def connect(self) -> None:
        """A client connected (no maillog line, as Dovecot: counted by the metrics)."""
        self._emit("", "connect")

    def login(self, user: str, method: str, tls: bool) -> None:
        self._emit(
            self.LOGIN_TLS if tls else self.LOGIN, "login", user=user, sasl_method=method, tls=tls
        )

    def auth_failed(self, user: str, method: str, attempts: int) -> None:
        self._emit(
            self.AUTH_FAILED,
            "auth_failed",
            user=printable(user, 100),
            sasl_method=method,
            attempts=attempts,
        )

    def auth_refused(self, user: str, method: str) -> None:
        self._emit(self.AUTH_REFUSED, "auth_refused", user=printable(user, 100), sasl_method=method)

    def timeout(self, reason: str) -> None:
        self._emit(self.TIMEOUT, "timeout", reason=reason)

    def tls(self, tls: str) -> None:
        self._emit(self.TLS, "tls", tls=tls)

    def reject(self, reason: str) -> None:
        self._emit(self.REJECT, "reject", reason=reason)


class LoginEvents(Protocol):
    def auth_failed(self, user: str, method: str, attempts: int) -> None: ...

    def auth_refused(self, user: str, method: str) -> None: ...


class LoginAnswers(Protocol):
    """What a protocol answers for each outcome of a login it does not accept."""

    def blocked(self) -> None:
        """The client is blocked by the throttle: refuse and close."""
        ...

    def user_blocked(self) -> None:
        """This user is blocked for now (too many failures): refuse, keep the connection."""
        ...

    def failed(self) -> None:
        """Wrong credentials (after the throttle's delay)."""
        ...

    def unavailable(self) -> None:
        """The backend could not answer: a temporary failure."""
        ...


class LoginCheck:
    """The login checks of one session (counting its failures for the log line)."""

    log = Logger()

    def __init__(
        self,
        *,
        authenticator: Authenticator | None,
        throttle: LoginThrottle | None,
        reactor: IReactorTime,
        peer_ip: str,
        events: LoginEvents,
        answers: LoginAnswers,
    ) -> None:
        self.authenticator = authenticator
        self.throttle = throttle
        self.reactor = reactor
        self.peer_ip = peer_ip
        self.events = events
        self.answers = answers
        self.failures = 0

    def refuse_blocked(self, username: str, method: str) -> bool:
        """A client the throttle blocks is refused without anything checked (and closed)."""
        throttle = self.throttle
        if throttle is None or not throttle.blocked(self.peer_ip):
            return False
        self.events.auth_refused(username, method)
        self.answers.blocked()
        return True

    def check(
        self,
        credentials: SaslCredentials | None,
        username: str,
        method: str,
        accepted: Any,
    ) -> defer.Deferred[None]:
        """Admit the login with the throttle, then check the credentials (None: known bad);
        good ones go to accepted(login) (which may return a Deferred). The Deferred fires once
        the answer is given: hold the session's input until then."""
        authenticator = self.authenticator
        if authenticator is None or self.refuse_blocked(username, method):
            if authenticator is None:
                self.answers.unavailable()
            return defer.succeed(None)
        if self.throttle is None:
            admitted: defer.Deferred[LoginAttempt | None] = defer.succeed(UNTHROTTLED)
        else:
            admitted = self.throttle.admit(self.peer_ip, username)

        def checked(attempt: LoginAttempt | None) -> defer.Deferred[None] | None:
            if attempt is None:
                if not self.refuse_blocked(username, method):
                    self.events.auth_refused(username, method)
                    self.answers.user_blocked()
                return None
            if credentials is None:
                return self.login_failed(username, method, attempt)
            return self._authenticate(
                authenticator, credentials, username, method, attempt, accepted
            )

        return admitted.addCallback(checked)

    def _authenticate(
        self,
        authenticator: Authenticator,
        credentials: SaslCredentials,
        username: str,
        method: str,
        attempt: LoginAttempt,
        accepted: Any,
    ) -> defer.Deferred[None]:
        d = defer.maybeDeferred(authenticator.authenticate, credentials)

        def ok(login: str) -> Any:
            # a good password counts as a success even if the mailbox then cannot be opened
            attempt.succeeded()
            return accepted(login)

        def bad(failure: Failure) -> defer.Deferred[None] | None:
            if failure.check(UnauthorizedLogin):
                return self.login_failed(username, method, attempt)
            attempt.abandoned()
            if failure.check(ApplianceError):
                self.log.warn(
                    "authentication backend unavailable: {reason}", reason=failure.getErrorMessage()
                )
            else:
                self.log.failure("authentication backend failed", failure)
            self.answers.unavailable()
            return None

        return d.addCallbacks(ok, bad)

    def login_failed(
        self, username: str, method: str, attempt: LoginAttempt
    ) -> defer.Deferred[None]:
        """The failure answer after the throttle's delay; one fail2ban-friendly event."""
        delay = attempt.failed()
        self.failures += 1
        self.events.auth_failed(username, method, self.failures)
        answer: defer.Deferred[None] = defer.Deferred()
        if delay <= 0:
            answer.callback(None)
        else:
            self.reactor.callLater(delay, answer.callback, None)
        answer.addCallback(lambda _: self.answers.failed())
        return answer
