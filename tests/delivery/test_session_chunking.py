"""Relay sessions and CHUNKING (RFC 3030): a message held whole in memory goes as MAIL, RCPT
and BDAT LAST with its text in one write, to the scripted server and to our own over real
loopback sockets; refusals at each step give the same results as by DATA; a message read from
its queue file in chunks, or a server without CHUNKING, gets DATA. Helpers: test_session.py.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted

from appliance.delivery.session import Session
from appliance.interfaces import Outcome, QueuedMessage, RecipientResult
from tests.delivery.test_session import (
    BODY,
    dest,
    hop,
    message,
    open_,
    ours_fixture,  # noqa: F401 (the ours fixture)
    quit_,
)
from tests.delivery.test_smtp_client import (
    Script,
    Servers,
    servers_fixture,  # noqa: F401 (the servers fixture)
    within,
)

CHUNKING = ["PIPELINING", "SIZE 10485760", "8BITMIME", "DSN", "ENHANCEDSTATUSCODES", "CHUNKING"]


async def send_whole(session: Session, msg: QueuedMessage, text: bytes = BODY) -> Any:
    """transfer() with the message in memory (rest None), as a first relay attempt has it."""
    rcpts = [r.address for r in msg.envelope.recipients]
    results: list[RecipientResult] = await within(session.transfer(msg, rcpts, text, None))
    return results


@pytest_twisted.ensureDeferred
async def test_whole_message_goes_as_one_bdat_in_the_envelopes_write(servers: Servers) -> None:
    """MAIL, both RCPTs and BDAT <size> LAST with the text in one segment, sent before any
    reply; the text as it is (no dot-stuffing, no end-of-data line)."""
    f = servers.listen(Script(extensions=CHUNKING))
    session = await open_(dest(hop(f)))
    results = await send_whole(session, message("a@dest.test", "b@dest.test"))
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert results[0].reply.startswith("250 2.0.0 Ok: queued as")
    server = f.connections[0]
    start = server.verbs().index("MAIL")
    assert server.verbs()[start:] == ["MAIL", "RCPT", "RCPT", "BDAT"]
    assert len({server.segment_of[i] for i in range(start, start + 4)}) == 1
    assert server.bdat == [f"{len(BODY)} LAST"]
    assert server.messages == [BODY]
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_bdat_refusals_give_the_results_data_would(servers: Servers) -> None:
    """A refused recipient keeps its RCPT reply, the others get the final one; a refused
    MAIL FROM answers for all; a temporary final reply defers and the session is RSET."""
    f = servers.listen(
        Script(extensions=CHUNKING, rcpt={"b@dest.test": "550 5.1.1 <b@dest.test>: no such user"})
    )
    session = await open_(dest(hop(f)))
    a, b = await send_whole(session, message("a@dest.test", "b@dest.test"))
    assert a.outcome is Outcome.SENT and b.outcome is Outcome.BOUNCED
    assert "no such user" in b.text
    (c,) = await send_whole(session, message("b@dest.test"))
    assert c.outcome is Outcome.BOUNCED and "no such user" in c.text
    assert f.connections[0].verbs()[-2:] == ["BDAT", "RSET"]
    await quit_(session, f)

    f = servers.listen(Script(extensions=CHUNKING, mail="451 4.3.0 try later"))
    session = await open_(dest(hop(f)))
    (d,) = await send_whole(session, message("a@dest.test"))
    assert d.outcome is Outcome.DEFERRED and "try later" in d.text
    await quit_(session, f)

    f = servers.listen(Script(extensions=CHUNKING, final="452 4.3.1 Insufficient system storage"))
    session = await open_(dest(hop(f)))
    (e,) = await send_whole(session, message("a@dest.test"))
    assert e.outcome is Outcome.DEFERRED and "Insufficient system storage" in e.text
    assert f.connections[0].verbs()[-2:] == ["BDAT", "RSET"]
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_chunked_read_and_servers_without_chunking_get_data(servers: Servers) -> None:
    f = servers.listen(Script(extensions=CHUNKING))
    session = await open_(dest(hop(f)))
    msg = message("a@dest.test")
    rcpts = ["a@dest.test"]
    (a,) = await within(session.transfer(msg, rcpts, BODY[:10], iter([BODY[10:]])))
    assert a.outcome is Outcome.SENT and "BDAT" not in f.connections[0].verbs()
    await quit_(session, f)
    f = servers.listen(Script(extensions=[e for e in CHUNKING if e != "CHUNKING"]))
    session = await open_(dest(hop(f)))
    (b,) = await send_whole(session, msg)
    assert b.outcome is Outcome.SENT and f.connections[0].verbs()[-1] == "DATA"
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_our_server_takes_bdat_from_our_relay(ours) -> None:
    """Our relay to our own server: several messages over one session by BDAT, each stored
    byte for byte after the Received header (a dotted line and a last line without CRLF)."""
    server = ours()
    session = await open_(dest(hop(server.port)))
    texts = [BODY, b"Subject: two\r\n\r\n..two dots\r\nno final newline"]
    for text in texts:
        msg = message("user1@example.test", size=len(text))
        (r,) = await send_whole(session, msg, text)
        assert r.outcome is Outcome.SENT, r
    assert [s.counts.get("bdat") for s in server.sessions] == [2]
    stored = [bytes(m.data) for m in server.sink.committed]
    assert stored[0].endswith(BODY)
    assert stored[1].endswith(b"\r\n\r\n..two dots\r\nno final newline\r\n")
    await quit_(session)
