"""BDAT (RFC 3030 CHUNKING): chunks counted by length, never read as commands, with DATA's checks.

The session over a StringTransport (tests/smtp/conftest.py); the relay's use of it against a
real server is in tests/delivery and tests/integration.
"""

from __future__ import annotations

import random

from appliance.limits import SessionLimits
from appliance.smtp.data import ChunkReader

ENVELOPE = "MAIL FROM:<a@example.org>\r\nRCPT TO:<user1@example.test>\r\n"
OK_ENVELOPE = ["250 2.1.0 Ok", "250 2.1.5 Ok"]
BARE = "550 5.5.2 Message contains bare <CR> or <LF>, refused"


def bdat(data: bytes, last: bool = True) -> bytes:
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


def test_ehlo_offers_chunking(smtp) -> None:
    s = smtp()
    s.read()
    assert "250-CHUNKING" in s.send("EHLO client\r\n")


def test_whole_transaction_pipelined_in_one_write(smtp) -> None:
    """MAIL, RCPT and BDAT LAST in one packet (what our relay sends): one reply each; the
    text is kept byte for byte after our Received header, a leading dot not taken off."""
    s = smtp().ready()
    text = b"Subject: hi\r\n\r\n.leading dot stays\r\nQUIT\r\nbody\r\n"
    lines = s.send(ENVELOPE.encode() + bdat(text) + b"NOOP\r\n")
    assert lines == [*OK_ENVELOPE, "250 2.0.0 Ok: queued as 0000000001", "250 2.0.0 Ok"]
    (m,) = smtp.sink.committed
    data = bytes(m.data)
    assert data.startswith(b"Received: from client.example.org") and data.endswith(text)
    assert "with ESMTP id 0000000001" in data.decode()


def test_chunks_in_several_commands_and_bytes_split_anywhere(smtp) -> None:
    """Three chunks, their bytes arriving one at a time: 250 with the count after each
    chunk, the queue id after LAST; a CRLF split between two chunks is one line end."""
    s = smtp().ready()
    assert s.send(ENVELOPE) == OK_ENVELOPE
    stream = bdat(b"Subject: x\r\n\r\nline one\r", last=False) + bdat(b"\nline two\r\n", last=False)
    stream += bdat(b"end\r\n")
    replies = []
    for i in range(len(stream)):
        replies += s.send(stream[i : i + 1])
    assert replies == [
        "250 2.0.0 Ok: 23 octets received",
        "250 2.0.0 Ok: 34 octets received",
        "250 2.0.0 Ok: queued as 0000000001",
    ]
    (m,) = smtp.sink.committed
    assert bytes(m.data).endswith(b"Subject: x\r\n\r\nline one\r\nline two\r\nend\r\n")


def test_bdat_zero_last_ends_the_message_and_a_last_line_gets_its_crlf(smtp) -> None:
    s = smtp().ready()
    s.send(ENVELOPE)
    assert s.send(bdat(b"Subject: x\r\n\r\nno newline at the end", last=False)) == [
        "250 2.0.0 Ok: 35 octets received"
    ]
    assert s.send(b"BDAT 0 LAST\r\n") == ["250 2.0.0 Ok: queued as 0000000001"]
    assert bytes(smtp.sink.committed[0].data).endswith(b"\r\n\r\nno newline at the end\r\n")


def test_refused_chunks_are_still_read_so_nothing_in_them_runs(smtp) -> None:
    """BDAT before MAIL (503) and with no valid recipient (554): the chunk's bytes, here
    whole SMTP commands, are skipped, not executed; the session goes on after them."""
    s = smtp().ready()
    smuggled = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<user2@example.test>\r\nDATA\r\n"
    assert s.send(bdat(smuggled) + b"NOOP\r\n") == [
        "503 5.5.1 Error: need MAIL command",
        "250 2.0.0 Ok",
    ]
    lines = s.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@example.test>\r\n")
    assert lines[-1].startswith("550 5.1.1")
    assert s.send(bdat(smuggled) + b"RSET\r\n") == [
        "554 5.5.1 Error: no valid recipients",
        "250 2.0.0 Ok",
    ]
    assert smtp.sink.begun == [] and smtp.sink.committed == []


def test_bad_bdat_syntax_closes_the_connection(smtp) -> None:
    """Without a size we cannot know where the chunk ends: 501, then the connection ends
    (what follows would otherwise be read as commands)."""
    for arg in ("", "x", "10 NOTLAST", "-1", "1 LAST extra", "9" * 16):
        s = smtp().ready()
        s.send(ENVELOPE)
        assert s.send(f"BDAT {arg}\r\nRSET\r\n".encode()) == ["501 5.5.4 Syntax: BDAT size [LAST]"]
        assert s.transport.disconnecting, arg


def test_bare_lf_and_overlong_line_refused_then_later_chunks_503(smtp) -> None:
    """DATA's checks apply: a bare LF anywhere refuses the message at the chunk that has it
    (the client is told at once); chunks pipelined after it get 503, their bytes skipped."""
    s = smtp().ready()
    s.send(ENVELOPE)
    lines = s.send(bdat(b"a\nb\r\n", last=False) + bdat(b"more\r\n"))
    assert lines == [BARE, "503 5.5.1 Error: need MAIL command"]
    assert smtp.sink.committed == [] and smtp.sink.begun[0].aborted
    s = smtp(max_text_line=100).ready()
    s.send(ENVELOPE)
    assert s.send(bdat(b"y" * 99 + b"\r\n" + b"z" * 101 + b"\r\n")) == [
        "500 5.5.6 Message line longer than 100 octets, refused"
    ]


def test_size_limit_over_several_chunks_552(smtp) -> None:
    s = smtp(max_message_size=1000).ready()
    s.send(ENVELOPE)
    line = b"x" * 98 + b"\r\n"
    assert s.send(bdat(line * 5, last=False)) == ["250 2.0.0 Ok: 500 octets received"]
    assert s.send(bdat(line * 6, last=False)) == [
        "552 5.3.4 Message size exceeds fixed maximum message size"
    ]
    assert smtp.sink.committed == [] and smtp.sink.begun[0].aborted
    assert s.send(bdat(line)) == ["503 5.5.1 Error: need MAIL command"]


def test_rset_and_ehlo_between_chunks_drop_the_message(smtp) -> None:
    s = smtp().ready()
    s.send(ENVELOPE)
    s.send(bdat(b"part\r\n", last=False))
    assert s.cmd("RSET") == "250 2.0.0 Ok"
    assert smtp.sink.begun[0].aborted
    assert s.send(bdat(b"rest\r\n")) == ["503 5.5.1 Error: need MAIL command"]
    s.send(ENVELOPE)
    s.send(bdat(b"part\r\n", last=False))
    assert s.send("EHLO again\r\n")[-1] == "250 HELP"
    assert smtp.sink.begun[1].aborted and smtp.sink.committed == []


def test_data_after_bdat_in_the_same_transaction_503(smtp) -> None:
    s = smtp().ready()
    s.send(ENVELOPE)
    s.send(bdat(b"part\r\n", last=False))
    assert s.cmd("DATA") == "503 5.5.1 Error: BDAT in progress, DATA not allowed"
    assert s.send(bdat(b"rest\r\n")) == ["250 2.0.0 Ok: queued as 0000000001"]
    assert bytes(smtp.sink.committed[0].data).endswith(b"part\r\nrest\r\n")


def test_chunk_dripping_below_the_min_rate_cut_as_data_would_be(smtp) -> None:
    """A BDAT chunk sent a byte a second (below 500 B/s): the DATA deadline runs out, 421;
    a chunk that keeps the rate is taken."""
    s = smtp(limits=SessionLimits(data_timeout=30, min_data_rate=500, idle_timeout=60)).ready()
    s.send(ENVELOPE)
    s.send(b"BDAT 1000 LAST\r\n")
    for _ in range(29):
        s.send(b"x")
        smtp.clock.advance(1)
    assert s.read() == []
    smtp.clock.advance(2)
    assert s.read() == ["421 4.4.2 mail.example.test Error: timeout exceeded"]
    assert smtp.sink.committed == [] and s.transport.disconnecting
    s = smtp(limits=SessionLimits(data_timeout=30, min_data_rate=500, idle_timeout=60)).ready()
    s.send(ENVELOPE)
    line = b"y" * 998 + b"\r\n"
    s.send(b"BDAT %d LAST\r\n" % (len(line) * 60))
    for _ in range(59):
        assert s.send(line) == []
        smtp.clock.advance(1)
    assert s.send(line) == ["250 2.0.0 Ok: queued as 0000000002"]


def test_chunk_reader_agrees_with_the_data_reader_on_random_text() -> None:
    """Any text cut into chunks anywhere: refused or taken as when read whole, and the same
    bytes when taken; taken exactly when it has no bare CR/LF and no line over the limit."""
    rng = random.Random(3030)
    alphabet = [b"a", b"b", b"\r\n", b"\r", b"\n", b".", b"x" * 30]
    for _ in range(500):
        text = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        whole = ChunkReader(max_size=400, max_line=40)
        whole.feed_bytes(text)
        whole.finish()
        expected = (whole.problem(), whole.take_output())
        cut = ChunkReader(max_size=400, max_line=40)
        out = b""
        pos = 0
        while pos < len(text):
            step = rng.randint(1, 7)
            cut.feed_bytes(text[pos : pos + step])
            out += cut.take_output()
            pos += step
        cut.finish()
        out += cut.take_output()
        # the same decision; which of two faults is named may differ (a dropped long line)
        assert (cut.problem() is None) == (expected[0] is None), text
        if expected[0] is None:
            assert out == expected[1], text
        ends_clean = text.endswith(b"\r\n") or not text
        bare = text.replace(b"\r\n", b"").count(b"\r") + text.replace(b"\r\n", b"").count(b"\n")
        if not bare and expected[0] is None:
            assert expected[1] == (text if ends_clean else text + b"\r\n")
