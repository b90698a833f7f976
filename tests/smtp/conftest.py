"""SMTP protocol harness: a session over StringTransport with a Clock.

The sink and the user/policy stand-ins here are in-memory so that each reply code can be
provoked exactly; the real spool, policy files and password backends have their own tests
and meet the protocol in tests/integration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from appliance.interfaces import DiskFull, Envelope, Mailbox, Resolution, SaslCredentials, Verdict
from appliance.log import mail_logger
from appliance.maillog import render
from appliance.smtp.factory import SMTPFactory
from appliance.smtp.settings import MTA, ListenerMode, SMTPSettings

STARTTLS_CONTEXT = object()  # stands for the TLS context factory; only its identity is checked


class TLSStringTransport(StringTransport):
    """StringTransport that records STARTTLS instead of doing it."""

    def __init__(self, peer: str) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 40000))
        self.tls_started_with = None
        self.written_before_tls = b""

    def startTLS(self, context_factory) -> None:  # noqa: N802
        self.tls_started_with = context_factory
        self.written_before_tls = self.value()


@dataclass
class MemoryMessage:
    sink: MemorySink
    envelope: Envelope
    queue_id: str
    data: bytearray = field(default_factory=bytearray)
    aborted: bool = False

    def write(self, data: bytes) -> None:
        if self.sink.fail_write:
            raise DiskFull("no space")
        self.data += data

    def commit(self, rest: Iterable[bytes] | bytes = ()) -> defer.Deferred:
        if isinstance(rest, bytes):  # the whole text in memory, the sender waiting
            self.sink.waiting.append(self)
            rest = [rest]
        if self.sink.fail_commit is not None:
            return defer.fail(self.sink.fail_commit)
        if self.sink.hold:  # the test reads rest and fires the commit itself
            held: defer.Deferred = defer.Deferred()
            self.sink.held.append((rest, held))
            return held
        self.data += b"".join(rest)
        self.sink.committed.append(self)
        return defer.succeed(self.queue_id)

    def abort(self) -> None:
        self.aborted = True


class MemorySink:
    def __init__(self) -> None:
        self.committed: list[MemoryMessage] = []
        self.waiting: list[MemoryMessage] = []  # committed with rest as bytes
        self.begun: list[MemoryMessage] = []
        self.fail_write = False
        self.fail_commit: Exception | None = None
        self.hold = False  # commit() waits for the test (sink.held)
        self.held: list[tuple[Iterable[bytes], defer.Deferred]] = []
        self.room = True  # what has_room() answers
        self.room_asked: list[int] = []

    def begin(self, envelope: Envelope) -> MemoryMessage:
        m = MemoryMessage(self, envelope, f"{len(self.begun) + 1:010X}")
        self.begun.append(m)
        return m

    def has_room(self, size: int) -> bool:
        self.room_asked.append(size)
        return self.room


class MemoryAuthenticator:
    """The Authenticator seam with one user: user1@example.test, password 'secret'."""

    users = {b"user1@example.test": b"secret"}

    def authenticate(self, credentials: SaslCredentials) -> defer.Deferred[str]:
        if isinstance(credentials, UsernamePassword):
            password = self.users.get(credentials.username)
            if password is not None and credentials.password == password:
                return defer.succeed(credentials.username.decode())
        return defer.fail(UnauthorizedLogin())

    def cram_md5_available(self) -> bool:
        return False


class LabPolicy:
    """The rules the protocol must carry out, with fixed answers: example.test is local."""

    users = {"user1@example.test", "user2@example.test"}

    def __init__(self) -> None:
        self.connect = Verdict()

    def check_connect(self, ip, hostname):
        return self.connect

    def check_sender(self, address, ip, hostname, auth_user):
        if address.lower().endswith("@example.test") and auth_user is None:
            return Verdict(530, "5.7.0 Authentication required")
        if auth_user is not None and address and address.lower() != auth_user:
            return Verdict(553, f"5.7.1 Sender address rejected: not owned by user {auth_user}")
        return Verdict()

    def resolve_recipient(self, address, ip, hostname, auth_user, client_relay):
        local, _, domain = address.lower().rpartition("@")
        if domain == "example.test":
            if address.lower() not in self.users:
                return Resolution(
                    Verdict(550, f"5.1.1 <{address}>: Recipient address rejected: User unknown")
                )
            return Resolution(mailboxes=(Mailbox(domain, local),))
        if auth_user or client_relay:
            return Resolution(remote=True)
        return Resolution(Verdict(550, f"5.7.1 <{address}>: Relay access denied"))


class Session:
    def __init__(self, factory: SMTPFactory, clock: Clock, peer: str) -> None:
        self.factory = factory
        self.clock = clock
        self.proto = factory.buildProtocol(None)
        self.transport = TLSStringTransport(peer)
        self.proto.makeConnection(self.transport)

    def read(self) -> list[str]:
        out = self.transport.value().decode()
        self.transport.clear()
        return out.split("\r\n")[:-1]

    def send(self, data: bytes | str) -> list[str]:
        if isinstance(data, str):
            data = data.encode()
        self.proto.dataReceived(data)
        return self.read()

    def cmd(self, line: str) -> str:
        """One command, its (last) reply line."""
        return self.send(line + "\r\n")[-1]

    def ready(self) -> Session:
        self.read()
        self.send("EHLO client.example.org\r\n")
        return self


@pytest.fixture
def smtp():
    """make(mode=MTA, peer='127.0.0.1', **settings) -> Session with a fresh factory."""
    clock = Clock()
    logs: list[str] = []  # the maillog lines, as appliance.maillog renders the events
    events: list[dict] = []
    sink = MemorySink()
    policy = LabPolicy()
    authenticator = MemoryAuthenticator()

    def observer(event: dict) -> None:
        events.append(event)
        logs.append(render(event))

    def make(
        mode: ListenerMode = MTA, peer: str = "127.0.0.1", tls=STARTTLS_CONTEXT, filters=None, **kw
    ) -> Session:
        settings = SMTPSettings(hostname="mail.example.test", **kw)
        factory = SMTPFactory(
            settings,
            mode,
            sink=sink,
            policy=policy,
            authenticator=authenticator,
            tls=tls,
            throttle=None,
            events=mail_logger("smtpd", observer),
            reactor=clock,
            filters=filters,
        )
        return Session(factory, clock, peer)

    make.clock = clock
    make.observer = observer
    make.logs = logs
    make.events = events
    make.sink = sink
    make.policy = policy
    return make
