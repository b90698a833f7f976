"""Back-pressure over a real loopback socket: a client that pipelines RCPTs and never reads
its replies leaves a bounded amount buffered in the server, whatever it sends."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import reactor, task, threads

from appliance.log import mail_logger
from appliance.smtp.factory import SMTPFactory
from appliance.smtp.settings import MTA, SMTPSettings
from tests.smtp.conftest import LabPolicy, MemoryAuthenticator, MemorySink

RCPT = b"RCPT TO:<user1@example.test>\r\n"
BOUND = 512 * 1024  # what the server may hold for one connection, input and output


class Recording(SMTPFactory):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.sessions = []

    def buildProtocol(self, addr):  # noqa: N802
        p = super().buildProtocol(addr)
        self.sessions.append(p)
        return p


def flood(port: int, lines: int) -> tuple[socket.socket, int]:
    """Pipeline up to `lines` RCPTs without reading; stop once the kernel stops taking them
    for a second (the server has stopped reading). Returns the socket and the lines sent."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.recv(1000)  # the greeting
    s.sendall(b"EHLO flood.test\r\nMAIL FROM:<a@example.org>\r\n")
    s.settimeout(1.0)
    chunk = RCPT * 2000
    sent = 0
    try:
        while sent < lines:
            s.sendall(chunk)
            sent += 2000
    except TimeoutError:
        pass
    return s, sent


def buffered(session) -> int:
    t = session.transport
    out = len(t.dataBuffer) + t._tempDataLen
    return out + len(session.buffer)


@pytest_twisted.inlineCallbacks
def test_client_that_never_reads_is_bounded() -> None:
    """Up to 3,000,000 RCPTs pipelined (78 MB) without reading: the server stops reading once
    its replies pile up, holds under 512 KiB for the connection, and goes on (in order) when
    the client drains them."""
    factory = Recording(
        SMTPSettings(hostname="mail.example.test"),
        MTA,
        sink=MemorySink(),
        policy=LabPolicy(),
        authenticator=MemoryAuthenticator(),
        tls=None,
        throttle=None,
        events=mail_logger("smtpd", lambda e: None),
        reactor=reactor,
    )
    listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
    sock = None
    try:
        d = threads.deferToThread(flood, listener.getHost().port, 3_000_000)
        peak = 0
        while not d.called:  # sample while the flood runs
            if factory.sessions:
                peak = max(peak, buffered(factory.sessions[0]))
            yield task.deferLater(reactor, 0.05, lambda: None)
        sock, sent = yield d
        session = factory.sessions[0]
        assert sent < 3_000_000, "the server never stopped reading"
        assert session.reading_stopped and session.write_blocked
        peak = max(peak, buffered(session))
        assert peak < BOUND, peak

        def drain() -> bytes:
            """Read replies for a while, then ask for one more answer."""
            sock.settimeout(2.0)
            got = b""
            try:
                while True:
                    data = sock.recv(1 << 20)
                    if not data:
                        break
                    got += data
            except TimeoutError:
                pass
            return got

        got = yield threads.deferToThread(drain)
        lines = got.split(b"\r\n")
        assert lines[0].startswith(b"250")
        assert b"250 2.1.0 Ok" in lines[:20]
        assert any(line.startswith(b"452 4.5.3") for line in lines)  # over max_recipients
        # once drained the server read and answered every RCPT, in order
        answers = [line[:3] for line in lines if line.startswith((b"250 2.1.5", b"452 4.5.3"))]
        assert len(answers) == sent
        assert answers[:100] == [b"250"] * 100 and set(answers[100:]) == {b"452"}
    finally:
        if sock is not None:
            sock.close()
        yield listener.stopListening()
        for session in factory.sessions:
            if session.link is not None:
                session.link.abortConnection()
        yield task.deferLater(reactor, 0.05, lambda: None)
