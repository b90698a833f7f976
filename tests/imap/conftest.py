"""IMAP protocol harness: a session over StringTransport with a Clock, on a real Maildir.

As POP3's (tests/pop3/conftest.py, whose SyncPool, in-memory Authenticator and recording
transport it shares): the store is the real MaildirStore over tmp_path, the throttle the
real FailureThrottle, and each worker call runs at once, so every answer is in the
transport when dataReceived returns.
"""

from __future__ import annotations

import ipaddress
import re

import pytest
from twisted.internet.task import Clock

from appliance.auth.throttle import FailureThrottle
from appliance.imap.factory import IMAPFactory
from appliance.imap.settings import IMAPSettings
from appliance.interfaces import Mailbox
from appliance.limits import ConnectionSlots
from appliance.log import mail_logger
from appliance.maillog import render
from appliance.store.store import MaildirStore
from tests.pop3.conftest import USER1, USER2, MemoryAuthenticator, SyncPool, TLSStringTransport

__all__ = ["USER1", "USER2"]
TLS_CONTEXT = object()


class Client:
    """One IMAP connection: send commands, read what the session answered."""

    def __init__(self, harness: Harness, peer: str, implicit_tls: bool = False) -> None:
        self.harness = harness
        self.transport = TLSStringTransport(peer)
        self.session = harness.factory(implicit_tls).buildProtocol(None)
        self.session.makeConnection(self.transport)
        self.greeting = self.read()
        self.n = 0

    def read(self) -> str:
        data = self.transport.value()
        self.transport.clear()
        return data.decode("utf-8", "replace")

    def send(self, data: bytes) -> str:
        self.session.dataReceived(data)
        return self.read()

    def raw(self, line: str) -> str:
        return self.send(line.encode() + b"\r\n")

    def cmd(self, text: str) -> str:
        """Send `<tag> text`; the answer, with the tag as 'T'."""
        self.n += 1
        tag = f"a{self.n}"
        out = self.send(f"{tag} {text}\r\n".encode())
        return re.sub(rf"(?m)^{tag} ", "T ", out)

    def ok(self, text: str) -> str:
        out = self.cmd(text)
        assert "\r\nT OK" in "\r\n" + out, out
        return out

    def login(self, user: str = USER1, password: str = "secret") -> str:
        return self.ok(f'LOGIN {user} "{password}"')

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


class Harness:
    def __init__(self, tmp_path) -> None:
        self.clock = Clock()
        self.store = MaildirStore(tmp_path / "mail", "mail.example.test")
        self.pool = SyncPool()
        self.authenticator = MemoryAuthenticator()
        self.throttle = FailureThrottle(self.clock, max_failures=3)
        self.events: list[dict] = []
        self.logger = mail_logger("imapd", self.events.append)
        self.settings = IMAPSettings(
            "mail.example.test", plaintext_networks=(ipaddress.ip_network("127.0.0.0/8"),)
        )
        self.tls: object | None = TLS_CONTEXT
        self.slots: ConnectionSlots | None = None

    def factory(self, implicit_tls: bool = False) -> IMAPFactory:
        return IMAPFactory(
            self.settings,
            implicit_tls=implicit_tls,
            store=self.store,
            authenticator=self.authenticator,
            tls=self.tls,  # type: ignore[arg-type]
            throttle=self.throttle,
            pool=self.pool,  # type: ignore[arg-type]
            events=self.logger,
            reactor=self.clock,
            slots=self.slots,
        )

    def connect(self, peer: str = "192.0.2.7", implicit_tls: bool = False) -> Client:
        return Client(self, peer, implicit_tls)

    def local(self) -> Client:
        """A client from a plaintext network (LOGIN allowed without TLS)."""
        return self.connect("127.0.0.1")

    def logged_in(self, user: str = USER1) -> Client:
        c = self.local()
        c.login(user)
        return c

    def deliver(self, data: bytes, user: str = USER1) -> str:
        key = self.store.deliver(Mailbox.of(user), iter([data]))
        self.store.announce(Mailbox.of(user))
        return key

    def lines(self, event: str | None = None) -> list[str]:
        return [render(e) for e in self.events if event is None or e.get("event") == event]


def message(
    subject: str = "hello", body: str = "body text", sender: str = "a@example.test"
) -> bytes:
    return (
        f"From: {sender}\r\nTo: {USER1}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n"
        f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()


@pytest.fixture
def imap(tmp_path) -> Harness:
    return Harness(tmp_path)
