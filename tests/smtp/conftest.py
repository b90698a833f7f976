"""SMTP protocol harness: a session over StringTransport with a Clock.

The sink and the user/policy stand-ins here are in-memory so that each reply code can be
provoked exactly; the real spool, policy files and password backends have their own tests
and meet the protocol in tests/integration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from appliance.interfaces import DiskFull, Envelope, Mailbox, Resolution, Verdict
from appliance.smtp.server import MTA, ListenerMode, SMTPFactory, SMTPSettings

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

    def commit(self) -> defer.Deferred:
        if self.sink.fail_commit is not None:
            return defer.fail(self.sink.fail_commit)
        self.sink.committed.append(self)
        return defer.succeed(self.queue_id)

    def abort(self) -> None:
        self.aborted = True


class MemorySink:
    def __init__(self) -> None:
        self.committed: list[MemoryMessage] = []
        self.begun: list[MemoryMessage] = []
        self.fail_write = False
        self.fail_commit: Exception | None = None

    def begin(self, envelope: Envelope) -> MemoryMessage:
        m = MemoryMessage(self, envelope, f"{len(self.begun) + 1:010X}")
        self.begun.append(m)
        return m


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
def smtp(tmp_path):
    """make(mode=MTA, peer='127.0.0.1', **settings) -> Session with a fresh factory."""
    clock = Clock()
    logs: list[str] = []
    sink = MemorySink()
    policy = LabPolicy()
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(b"user1@example.test", b"secret")

    def make(
        mode: ListenerMode = MTA, peer: str = "127.0.0.1", tls=STARTTLS_CONTEXT, **kw
    ) -> Session:
        from appliance.auth.sasl import SaslExchange

        settings = SMTPSettings(hostname="mail.example.test", spool_dir=str(tmp_path), **kw)
        factory = SMTPFactory(
            settings,
            mode,
            sink=sink,
            policy=policy,
            checker=checker,
            tls=tls,
            throttle=None,
            maillog=logs.append,
            reactor=clock,
            sasl_factory=SaslExchange,
        )
        return Session(factory, clock, peer)

    make.clock = clock
    make.logs = logs
    make.sink = sink
    make.policy = policy
    return make
