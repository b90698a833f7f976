"""Relay sessions to a next hop over real loopback sockets: what goes out with the message.

The MAIL FROM and RCPT TO parameters (SIZE, BODY, SMTPUTF8, the DSN ones) as the next hop
advertises them, a message refused unsent for its size or its UTF-8 addresses, the text
dot-stuffed however it is chunked, and a next hop that stops reading not read ahead of. The
next hops (the scripted server, our own) and the helpers are those of test_session.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineReceiver

from appliance.delivery.session import open_session
from appliance.interfaces import Outcome, Recipient, Verdict
from tests.delivery.test_session import (
    BODY,
    dest,
    hop,
    message,
    open_,
    ours_fixture,  # noqa: F401 (the ours fixture)
    quit_,
    relay_of,
    settings,
    transfer,
)
from tests.delivery.test_smtp_client import (
    Script,
    Servers,
    chunks_of,
    servers_fixture,  # noqa: F401 (the servers fixture)
    within,
)

# ---------------------------------------------------------------------------- parameters


@pytest_twisted.ensureDeferred
async def test_mail_rcpt_parameters_sent_when_advertised(servers: Servers) -> None:
    """SIZE, BODY=8BITMIME, SMTPUTF8, RET, ENVID, NOTIFY and ORCPT go out when the server
    advertises them; dsn_forwarded for a SENT recipient that had NOTIFY."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    msg = message(
        Recipient("a@dest.test", remote=True, notify="SUCCESS,FAILURE", orcpt="rfc822;a@dest.test"),
        Recipient("b@dest.test", remote=True),
        body="8BITMIME",
        smtputf8=True,
        dsn_ret="HDRS",
        dsn_envid="QQ+2B1",
    )
    a, b = await transfer(session, msg)
    server = f.connections[0]
    assert server.line("MAIL") == (
        f"MAIL FROM:<sender@origin.test> SIZE={len(BODY)} BODY=8BITMIME SMTPUTF8 RET=HDRS"
        " ENVID=QQ+2B1"
    )
    rcpts = [c for c in server.commands if c.startswith("RCPT")]
    assert rcpts == [
        "RCPT TO:<a@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@dest.test",
        "RCPT TO:<b@dest.test>",
    ]
    assert a.outcome is b.outcome is Outcome.SENT
    assert a.dsn_forwarded and not b.dsn_forwarded
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_mail_rcpt_parameters_not_sent_when_not_advertised(servers: Servers) -> None:
    """A server offering none of SIZE, 8BITMIME, SMTPUTF8, DSN gets bare MAIL and RCPT
    lines; without DSN nothing is dsn_forwarded (we owe the success notice)."""
    f = servers.listen(Script(extensions=["PIPELINING"]))
    session = await open_(dest(hop(f)))
    msg = message(
        Recipient("a@dest.test", remote=True, notify="SUCCESS", orcpt="rfc822;a@dest.test"),
        body="8BITMIME",
        dsn_ret="FULL",
        dsn_envid="E1",
    )
    (a,) = await transfer(session, msg)
    server = f.connections[0]
    assert server.line("MAIL") == "MAIL FROM:<sender@origin.test>"
    assert server.line("RCPT") == "RCPT TO:<a@dest.test>"
    assert a.outcome is Outcome.SENT and not a.dsn_forwarded
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_null_sender_and_forwarded_address_get_their_dsn_parameters(servers: Servers) -> None:
    """MAIL FROM:<> for the null sender; an alias's forward_to address carries the NOTIFY
    and ORCPT of the RCPT it came from."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    original = Recipient(
        "alias@origin.test",
        forward_to=("far@dest.test",),
        remote=True,
        notify="FAILURE",
        orcpt="rfc822;alias@origin.test",
    )
    (far,) = await transfer(session, message(original, mail_from=""), ["far@dest.test"])
    server = f.connections[0]
    assert server.line("MAIL").startswith("MAIL FROM:<> SIZE=")
    assert (
        server.line("RCPT")
        == "RCPT TO:<far@dest.test> NOTIFY=FAILURE ORCPT=rfc822;alias@origin.test"
    )
    assert far.outcome is Outcome.SENT and far.dsn_forwarded
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_message_bigger_than_server_size_bounced_unsent(servers: Servers) -> None:
    """A message over the server's SIZE bounces 5.3.4 without a MAIL FROM."""
    f = servers.listen(Script(extensions=["PIPELINING", "SIZE 1000"]))
    session = await open_(dest(hop(f)))
    results = await transfer(session, message("a@dest.test", "b@dest.test", size=5000))
    assert [(r.outcome, r.text, r.relay) for r in results] == [
        (
            Outcome.BOUNCED,
            f"5.3.4 message size 5000 exceeds size limit 1000 of server {relay_of(f)}",
            relay_of(f),
        )
    ] * 2
    assert "MAIL" not in f.connections[0].verbs()
    (ok,) = await transfer(session, message("a@dest.test", size=1000))
    assert ok.outcome is Outcome.SENT
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_utf8_address_to_server_without_smtputf8_bounced_unsent(servers: Servers) -> None:
    """A non-ASCII address to a server that does not offer SMTPUTF8 bounces 5.6.7, unsent."""
    f = servers.listen(Script(extensions=["PIPELINING", "8BITMIME"]))
    session = await open_(dest(hop(f)))
    results = await transfer(session, message("jörg@dest.test", "ascii@dest.test", smtputf8=True))
    assert [(r.outcome, r.text) for r in results] == [
        (Outcome.BOUNCED, f"5.6.7 SMTPUTF8 is required, but was not offered by host {relay_of(f)}")
    ] * 2
    (sender,) = await transfer(session, message("ascii@dest.test", mail_from="andré@origin.test"))
    assert sender.outcome is Outcome.BOUNCED and sender.text.startswith("5.6.7 ")
    assert "MAIL" not in f.connections[0].verbs()
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_utf8_address_to_server_with_smtputf8_sent_as_utf8(servers: Servers) -> None:
    """With SMTPUTF8 offered, a non-ASCII address goes out as UTF-8 with the SMTPUTF8 flag."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    (r,) = await transfer(session, message("jörg@dest.test", smtputf8=True))
    assert r.outcome is Outcome.SENT
    server = f.connections[0]
    assert "SMTPUTF8" in server.line("MAIL").split()
    assert "RCPT TO:<jörg@dest.test>".encode() in b"".join(server.segments)
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_utf8_recipient_of_ascii_message_gets_smtputf8(ours: Any) -> None:
    """A message that arrived without SMTPUTF8 but goes to a non-ASCII address (an alias
    rewrote it) still needs SMTPUTF8 in MAIL FROM: our server refuses the RCPT otherwise."""
    server = ours()
    server.policy.connect = Verdict(relay=True)
    session = await open_(dest(hop(server.port)))
    alias = Recipient("alias@origin.test", forward_to=("jörg@far.test",), remote=True)
    (r,) = await transfer(session, message(alias, smtputf8=False), ["jörg@far.test"])
    assert r.outcome is Outcome.SENT, r
    (stored,) = server.sink.committed
    assert stored.envelope.smtputf8 and stored.envelope.recipients[0].address == "jörg@far.test"
    await within(session.quit())


# ---------------------------------------------------------------------------- message text


@pytest_twisted.ensureDeferred
async def test_body_dot_stuffed_across_chunk_boundaries(servers: Servers) -> None:
    """Dots at line starts are doubled however the text is chunked (a chunk ending in LF,
    another in CR); the server reads back exactly the original."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    text = b"Subject: dots\r\n\r\n.one\r\n..two\r\nx\r\n.\r\nthree.\r\n.four\r\n"
    cuts = [
        b"Subject: dots\r\n\r\n",
        b".one\r",
        b"\n..two\r\nx\r\n",
        b".\r\nthree.\r",
        b"\n",
        b".four\r\n",
    ]
    assert b"".join(cuts) == text
    (r,) = await transfer(session, message("a@dest.test", size=len(text)), chunks=cuts)
    assert r.outcome is Outcome.SENT
    wire = f.messages[0]
    assert wire == b"Subject: dots\r\n\r\n..one\r\n...two\r\nx\r\n..\r\nthree.\r\n..four\r\n"
    unstuffed = b"\r\n".join(
        line[1:] if line.startswith(b".") else line for line in wire.split(b"\r\n")
    )
    assert unstuffed == text
    await quit_(session, f)


@pytest.mark.parametrize(
    "chunks, wire",
    [
        ([b"Subject: x\r\n\r\nno line end"], b"Subject: x\r\n\r\nno line end\r\n"),
        ([b"Subject: x\r\n\r\nend\r", b"\n"], b"Subject: x\r\n\r\nend\r\n"),
        ([b"Subject: x\r\n\r\n", b"e", b"n", b"d"], b"Subject: x\r\n\r\nend\r\n"),
        ([b"Subject: x\r\n\r\nends.", b""], b"Subject: x\r\n\r\nends.\r\n"),
    ],
    ids=["no-crlf", "crlf-split", "one-byte-chunks", "empty-last-chunk"],
)
@pytest_twisted.ensureDeferred
async def test_body_final_crlf_added_only_when_missing(
    servers: Servers, chunks: list[bytes], wire: bytes
) -> None:
    """Text not ending in CRLF gets one before the final dot, and text ending in it (even
    split as CR | LF across chunks) gets none."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    size = sum(map(len, chunks))
    (r,) = await transfer(session, message("a@dest.test", size=size), chunks=chunks)
    assert r.outcome is Outcome.SENT
    assert f.messages == [wire]
    raw = b"".join(f.connections[0].segments)
    assert raw.count(b"\r\n.\r\n") == 1
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_body_many_chunks_arrive_whole(servers: Servers) -> None:
    """A message read in many small chunks arrives byte for byte (dot-stuffed)."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    text = b"Subject: big\r\n\r\n" + b"".join(b".%d line of text\r\n" % i for i in range(2000))
    chunks = list(chunks_of(text, 37))
    (r,) = await transfer(session, message("a@dest.test", size=len(text)), chunks=chunks)
    assert r.outcome is Outcome.SENT
    assert f.messages == [text.replace(b"\r\n.", b"\r\n..")]
    await quit_(session, f)


# ---------------------------------------------------------------------------- flow control


class _StallingServer(LineReceiver):
    """Says yes to everything, then stops reading the message after 354 until told."""

    MAX_LENGTH = 1 << 20  # the test's message lines are 256 KiB

    def connectionMade(self) -> None:  # noqa: N802
        self.data = False
        self.received = 0
        self.sendLine(b"220 stall.test ESMTP")

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if self.data:
            self.received += len(line) + 2
            if line == b".":
                self.data = False
                self.sendLine(b"250 2.0.0 Ok: queued")
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-stall.test\r\n250 PIPELINING")
        elif verb == b"DATA":
            self.data = True
            self.sendLine(b"354 go ahead")
            self.transport.pauseProducing()  # a next hop that does not read
            self.factory.stalled.callback(self)
        else:
            self.sendLine(b"250 2.0.0 Ok")


@pytest_twisted.ensureDeferred
async def test_body_of_slow_next_hop_not_read_ahead() -> None:
    """A next hop that stops reading mid-message: the relay stops reading the queue file
    (a 16 MiB body is not all buffered in memory), then sends the rest once it reads."""
    factory = Factory.forProtocol(_StallingServer)
    factory.stalled = defer.Deferred()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    chunk, count = b"x" * (256 * 1024 - 2) + b"\r\n", 64
    consumed = 0

    def body() -> Iterator[bytes]:
        nonlocal consumed
        for _ in range(count):
            consumed += 1
            yield chunk

    async def read_later(chunks: Iterator[bytes]) -> bytes | None:
        return next(chunks, None)

    try:
        session = await within(
            open_session(
                reactor,
                dest(hop(port.getHost().port)),
                settings(),
                lambda it: defer.ensureDeferred(read_later(it)),
            )
        )
        msg = message("user@dest.test", size=len(chunk) * (count + 1))
        sending = defer.ensureDeferred(session.transfer(msg, ["user@dest.test"], chunk, body()))
        server = await within(factory.stalled)
        for _ in range(50):  # let the relay write as far as the buffers take it
            await deferLater(reactor, 0.01, lambda: None)
        assert consumed < count / 2, f"read {consumed} of {count} chunks ahead of a stalled peer"
        server.transport.resumeProducing()
        (result,) = await within(sending)
        assert result.outcome is Outcome.SENT, result
        assert consumed == count
        assert server.received >= len(chunk) * (count + 1)
        await within(session.quit())
    finally:
        await port.stopListening()
