"""ClamAVFilter and SpamAssassinFilter against Debian's real clamd and spamd on loopback:
EICAR refused, GTUBE tagged or refused, and a daemon down, mute or garbled is 451 (or an
accept that says so, when the admin chose that), never a silent pass."""

from __future__ import annotations

import base64
import socket
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from appliance.filters.base import MessageCheck
from appliance.filters.body import SpillBuffer
from appliance.filters.clamav import ClamAVFilter
from appliance.filters.daemon import DaemonAddress
from appliance.filters.scanning import ScannerSettings
from appliance.filters.spamassassin import SpamAssassinFilter, SpamSettings
from appliance.interfaces import Envelope, FilterVerdict, Recipient
from tests.conftest import free_port
from tests.filters.daemons import EICAR, GTUBE, Daemon

ENVELOPE = Envelope(
    mail_from="sender@sina.test",
    recipients=(Recipient("user1@163.test"),),
    client_ip="127.0.0.1",
    helo="client.test",
)


def body(text: bytes, memory: int = 256 * 1024) -> SpillBuffer:
    b = SpillBuffer(Path(tempfile.gettempdir()), memory=memory)
    b.write(text)
    return b


def check(text: bytes, memory: int = 256 * 1024) -> MessageCheck:
    return MessageCheck(ENVELOPE, "4AB12CD", body(text, memory))


def message(subject: str, text: bytes) -> bytes:
    return (
        f"From: a@sina.test\r\nTo: user1@163.test\r\nSubject: {subject}\r\n\r\n".encode()
        + text
        + b"\r\n"
    )


def attachment(data: bytes) -> bytes:
    return (
        b"From: a@sina.test\r\nSubject: see attached\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain"
        b"\r\n\r\nthe file\r\n--XX\r\nContent-Type: application/octet-stream; name=t.com\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(data) + b"\r\n--XX--\r\n"
    )


def clam(port: int, **kw) -> ClamAVFilter:
    return ClamAVFilter(ScannerSettings(DaemonAddress("127.0.0.1", port), **kw), reactor)


def spam(port: int, reject_score: float = 0.0, **kw) -> SpamAssassinFilter:
    scanner = ScannerSettings(DaemonAddress("127.0.0.1", port), **kw)
    return SpamAssassinFilter(SpamSettings(scanner, reject_score=reject_score), reactor)


async def verdict_of(f, c: MessageCheck) -> FilterVerdict:
    from twisted.internet import defer

    return await defer.maybeDeferred(f.message, c).addTimeout(60, reactor)


@pytest.fixture
def mute_port():
    """A port that accepts connections and never answers (a hung daemon)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


# ---------------------------------------------------------------------------- clamd


@pytest_twisted.ensureDeferred
async def test_clamav_eicar_in_body_refused_554(clamd: Daemon) -> None:
    """The EICAR test string in a message's text: 554 5.7.1 with the signature's name."""
    v = await verdict_of(clam(clamd.port), check(message("virus", EICAR)))
    assert v.code == 554 and v.text.startswith("5.7.1 ")
    assert "Eicar-Test-Signature" in v.reason


@pytest_twisted.ensureDeferred
async def test_clamav_eicar_attachment_refused_even_from_a_file_buffer(clamd: Daemon) -> None:
    """EICAR as a base64 attachment, the text spilled to a file (read back in chunks)."""
    c = check(attachment(EICAR) + b"x" * 300_000 + b"\r\n", memory=1024)
    assert c.body.in_memory() is None
    v = await verdict_of(clam(clamd.port), c)
    assert v.code == 554 and "Eicar-Test-Signature" in v.reason


@pytest_twisted.ensureDeferred
async def test_clamav_clean_message_accepted(clamd: Daemon) -> None:
    """A clean message passes, its verdict saying it was scanned."""
    v = await verdict_of(clam(clamd.port), check(message("hello", b"just text")))
    assert v.ok and v.reason == "clean" and v.headers == ()


@pytest_twisted.ensureDeferred
async def test_clamav_down_tempfails_451_or_accepts_unscanned_when_asked() -> None:
    """Nothing listening: 451 4.7.1 by default; on_failure=accept says 'not scanned'."""
    port = free_port(udp_too=False)
    v = await verdict_of(clam(port), check(message("x", b"y")))
    assert v.code == 451 and v.text.startswith("4.7.1 ") and "clamd" in v.reason
    v = await verdict_of(clam(port, on_failure="accept"), check(message("x", b"y")))
    assert v.ok and v.reason.startswith("not scanned: clamd")


@pytest_twisted.ensureDeferred
async def test_clamav_mute_daemon_times_out_451(mute_port: int) -> None:
    """A daemon that accepts and never answers: 451 once the timeout passes."""
    v = await verdict_of(clam(mute_port, timeout=0.5), check(message("x", b"y")))
    assert v.code == 451 and "no answer within 0.5 s" in v.reason


@pytest_twisted.ensureDeferred
async def test_clamav_over_max_size_not_scanned_and_says_so(clamd: Daemon) -> None:
    """A message over max_size is passed without asking clamd, and the reason says so."""
    v = await verdict_of(clam(clamd.port, max_size=100), check(message("virus", EICAR)))
    assert v.ok and "not scanned" in v.reason and "max_size 100" in v.reason


# ---------------------------------------------------------------------------- spamd


@pytest_twisted.ensureDeferred
async def test_spamassassin_gtube_tagged_with_spamassassin_headers(spamd: Daemon) -> None:
    """GTUBE scores 1000+: accepted (no reject_score) with X-Spam-Flag and the tests hit."""
    c = check(message("spam", GTUBE))
    v = await verdict_of(spam(spamd.port), c)
    assert v.ok
    assert v.headers[0] == "X-Spam-Flag: YES"
    score = float(v.headers[1].split(": ")[1])
    assert score >= 1000
    assert v.headers[2].startswith("X-Spam-Status: Yes, score=") and "GTUBE" in v.headers[2]
    assert c.results["spam"] == "yes"


@pytest_twisted.ensureDeferred
async def test_spamassassin_gtube_refused_at_reject_score(spamd: Daemon) -> None:
    """With reject_score set, GTUBE is refused 550 5.7.1."""
    v = await verdict_of(spam(spamd.port, reject_score=15), check(message("spam", GTUBE)))
    assert v.code == 550 and v.text == "5.7.1 Message rejected as spam"
    assert v.reason.startswith("score=")


@pytest_twisted.ensureDeferred
async def test_spamassassin_plain_note_not_spam(spamd: Daemon) -> None:
    """An ordinary note is accepted with X-Spam-Status: No and no X-Spam-Flag."""
    v = await verdict_of(spam(spamd.port, reject_score=15), check(message("lunch", b"At one?")))
    assert v.ok
    assert not any(h.startswith("X-Spam-Flag") for h in v.headers)
    assert any(h.startswith("X-Spam-Status: No, score=") for h in v.headers)


@pytest_twisted.ensureDeferred
async def test_spamassassin_down_or_garbled_tempfails(mute_port: int) -> None:
    """spamd down: 451 4.7.1; a daemon that answers nonsense: 451 too."""
    port = free_port(udp_too=False)
    v = await verdict_of(spam(port), check(message("x", b"y")))
    assert v.code == 451 and "spamd" in v.reason
    v = await verdict_of(spam(mute_port, timeout=0.5), check(message("x", b"y")))
    assert v.code == 451 and "no answer" in v.reason
    from twisted.internet import protocol

    class Garbage(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            assert self.transport is not None
            self.transport.write(b"HTTP/1.0 400 Bad\r\n\r\n")
            self.transport.loseConnection()

    listener = reactor.listenTCP(0, protocol.Factory.forProtocol(Garbage), interface="127.0.0.1")
    try:
        v = await verdict_of(spam(listener.getHost().port), check(message("x", b"y")))
    finally:
        await listener.stopListening()
    assert v.code == 451 and "not a spamd answer" in v.reason
