"""POP3 protocol harness: a session over StringTransport with a Clock, on a real Maildir.

The store is the real MaildirStore over tmp_path and the throttle the real FailureThrottle;
the Authenticator is an in-memory stand-in (the passwd-file and LDAP ones have their own
tests). The worker pool runs each call at once on the calling thread (SyncPool), so every
reply is in the transport when dataReceived returns; tests/pop3/test_threads.py runs the
real WorkerPool.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from appliance.auth.throttle import FailureThrottle
from appliance.interfaces import AuthUnavailable, Mailbox, SaslCredentials
from appliance.limits import ConnectionSlots
from appliance.log import mail_logger
from appliance.maillog import render
from appliance.pop3.factory import POP3Factory
from appliance.pop3.settings import POP3Settings
from appliance.store.store import MaildirStore

TLS_CONTEXT = object()  # stands for the TLS context factory; only its identity is checked
USER1 = "user1@example.test"
USER2 = "user2@example.test"


class TLSStringTransport(StringTransport):
    """StringTransport that records STLS's startTLS instead of doing it."""

    def __init__(self, peer: str) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "192.0.2.1", 110),
            peerAddress=IPv4Address("TCP", peer, 40000),
        )
        self.tls_started_with: object = None
        self.written_before_tls = b""
        self.aborted = False

    def startTLS(self, context_factory) -> None:  # noqa: N802
        self.tls_started_with = context_factory
        self.written_before_tls = self.value()

    def abortConnection(self) -> None:  # noqa: N802
        self.aborted = True
        self.loseConnection()


class SyncPool:
    """WorkerPool.run, at once on this thread (deterministic over StringTransport); with
    hold set, each job waits until release() (a job still in the pool)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.hold = False
        self.held: list[tuple[defer.Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def run(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        self.calls.append(getattr(f, "__name__", repr(f)))
        if self.hold:
            d: defer.Deferred[Any] = defer.Deferred()
            self.held.append((d, f, args))
            return d
        return defer.maybeDeferred(f, *args)

    def release(self) -> None:
        """Finish the jobs held so far, in order."""
        self.hold = False
        held, self.held = self.held, []
        for d, f, args in held:
            defer.maybeDeferred(f, *args).chainDeferred(d)


class MemoryAuthenticator:
    """The Authenticator seam: user1 and user2 with password 'secret'."""

    def __init__(self) -> None:
        self.users = {USER1.encode(): b"secret", USER2.encode(): b"pass word"}
        self.checked: list[bytes] = []
        self.unavailable = False
        self.cram = False

    def authenticate(self, credentials: SaslCredentials) -> defer.Deferred[str]:
        if self.unavailable:
            return defer.fail(AuthUnavailable("directory down"))
        if isinstance(credentials, UsernamePassword):
            self.checked.append(credentials.username)
            password = self.users.get(credentials.username.lower())
            if password is not None and credentials.password == password:
                return defer.succeed(credentials.username.decode().lower())
        return defer.fail(UnauthorizedLogin())

    def cram_md5_available(self) -> bool:
        return self.cram


class Client:
    """One connection: send lines, read what the session answered."""

    def __init__(self, harness: Harness, peer: str, implicit_tls: bool = False) -> None:
        self.harness = harness
        factory = harness.factory(implicit_tls)
        self.transport = TLSStringTransport(peer)
        self.session = factory.buildProtocol(None)
        self.session.makeConnection(self.transport)
        self.greeting = self.read()

    def read(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data: bytes) -> bytes:
        self.session.dataReceived(data)
        return self.read()

    def cmd(self, line: str) -> str:
        return self.send(line.encode() + b"\r\n").decode("latin-1")

    def login(self, user: str = USER1, password: str = "secret") -> str:
        self.cmd(f"USER {user}")
        return self.cmd(f"PASS {password}")

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def drop(self) -> None:
        self.session.connectionLost(None)


class Harness:
    def __init__(self, tmp_path) -> None:
        self.clock = Clock()
        self.store = MaildirStore(tmp_path / "mail", "mail.example.test")
        self.pool = SyncPool()
        self.authenticator = MemoryAuthenticator()
        self.throttle = FailureThrottle(self.clock, max_failures=3)
        self.events: list[dict] = []
        self.logger = mail_logger("pop3d", self.events.append)
        self.settings = POP3Settings(
            "mail.example.test", plaintext_networks=(ipaddress.ip_network("127.0.0.0/8"),)
        )
        self.tls: object | None = TLS_CONTEXT
        self.slots: ConnectionSlots | None = None
        self.use_throttle = True

    def factory(self, implicit_tls: bool = False) -> POP3Factory:
        return POP3Factory(
            self.settings,
            implicit_tls=implicit_tls,
            store=self.store,
            authenticator=self.authenticator,
            tls=self.tls,  # type: ignore[arg-type]
            throttle=self.throttle if self.use_throttle else None,
            pool=self.pool,  # type: ignore[arg-type]
            events=self.logger,
            reactor=self.clock,
            slots=self.slots,
        )

    def connect(self, peer: str = "192.0.2.7", implicit_tls: bool = False) -> Client:
        return Client(self, peer, implicit_tls)

    def local(self) -> Client:
        """A client from a plaintext network (USER/PASS allowed without TLS)."""
        return self.connect("127.0.0.1")

    def deliver(self, data: bytes, user: str = USER1) -> str:
        return self.store.deliver(Mailbox.of(user), iter([data]))

    def files(self, user: str = USER1) -> list[str]:
        md = self.store.mail_root
        return sorted(
            p.name for p in md.rglob("*") if p.is_file() and p.parent.name in ("new", "cur")
        )

    def lines(self, event: str | None = None) -> list[str]:
        return [render(e) for e in self.events if event is None or e.get("event") == event]


@pytest.fixture
def pop(tmp_path) -> Harness:
    return Harness(tmp_path)
