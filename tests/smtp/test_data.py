"""The DATA reader alone: end of data, dot-unstuffing, and the smuggling and size checks."""

from __future__ import annotations

import random

from appliance.smtp.data import DataReader

BARE = (550, "5.5.2", "Message contains bare <CR> or <LF>, refused")


def reader(max_size: int = 10_000, max_line: int = 1000) -> DataReader:
    return DataReader(max_size=max_size, max_line=max_line)


def test_data_reader_crlf_dot_crlf_ends_data_rest_left_over() -> None:
    """CRLF.CRLF ends the data; what follows it (pipelined commands) is handed back."""
    r = reader()
    assert r.feed(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n") == (True, b"QUIT\r\n")
    assert r.take_output() == b"Subject: x\r\n\r\nbody\r\n"
    assert r.problem() is None


def test_data_reader_lf_dot_lf_does_not_end_data() -> None:
    """`<LF>.<LF>` is message text, not the end: the data goes on and is refused at its end."""
    r = reader()
    assert r.feed(b"body\n.\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<x@example.test>\r\n") == (
        False,
        b"",
    )
    assert r.failed and r.take_output() == b""
    assert r.feed(b".\r\n") == (True, b"")
    assert r.problem() == BARE


def test_data_reader_cr_dot_cr_does_not_end_data() -> None:
    """`<CR>.<CR>` does not end the data either."""
    r = reader()
    assert r.feed(b"a\r.\rRSET\r\n") == (False, b"")
    assert r.feed(b".\r\n") == (True, b"")
    assert r.problem() == BARE


def test_data_reader_end_marker_split_across_feeds_found() -> None:
    """`\\r\\n.\\r\\n` split across two feeds at any byte still ends the data."""
    data = b"hello\r\n.\r\nNOOP\r\n"
    for split in range(1, len(data) - len(b"NOOP\r\n")):
        r = reader()
        done, rest = r.feed(data[:split])
        assert not done, split
        out = r.take_output()
        assert r.feed(rest + data[split:]) == (True, b"NOOP\r\n"), split
        assert out + r.take_output() == b"hello\r\n", split
        assert r.problem() is None


def test_data_reader_dot_stuffing_removed() -> None:
    """A leading dot doubled by the client is taken off, at the start and after every CRLF."""
    r = reader()
    assert r.feed(b"..first\r\nmid\r\n...two\r\n.\r\n") == (True, b"")
    assert r.take_output() == b".first\r\nmid\r\n..two\r\n"


def test_data_reader_overlong_line_dropped_refused_at_end() -> None:
    """A line past max_line is dropped without leaving DATA; the end gives 500 5.5.6."""
    r = reader(max_line=10)
    assert r.feed(b"x" * 20) == (False, b"")
    assert r.feed(b"yy\r\nQUIT\r\n") == (False, b"")  # still message text, not a command
    assert r.feed(b".\r\n") == (True, b"")
    assert r.problem() == (500, "5.5.6", "Message line longer than 10 octets, refused")
    assert r.take_output() == b""


def test_data_reader_size_over_limit_552() -> None:
    """More bytes than max_size: read to the end, then 552 5.3.4, nothing handed out after."""
    r = reader(max_size=8)
    assert r.feed(b"12345\r\n67890\r\n.\r\n") == (True, b"")
    assert r.too_big and r.size == 14
    assert r.problem() == (552, "5.3.4", "Message size exceeds fixed maximum message size")


def test_data_reader_disk_full_reported_first() -> None:
    """A write failure (disk_full, set by the writer) is the reply even if more went wrong."""
    r = reader(max_size=1)
    r.disk_full = True
    r.feed(b"bare\nlf\r\n.\r\n")
    assert r.problem() == (452, "4.3.1", "Insufficient system storage")


def test_data_reader_line_limit_boundary_inside_a_big_chunk() -> None:
    """1000 octets with the CRLF is allowed (RFC 5321 4.5.3.1.6), 1001 is not, wherever the
    line is in a chunk of many lines."""
    for length, refused in ((998, False), (999, True), (5000, True)):
        r = DataReader(max_size=10**7, max_line=1000)
        r.take(b"a" * 10 + b"\r\n" + b"x" * length + b"\r\n" + b"b" * 600 + b"\r\n")
        assert r.line_too_long is refused, length


def test_data_reader_line_limit_agrees_with_splitting_the_lines() -> None:
    """The windowed scan gives the answer of measuring every line, for chunks of random
    lines around the limit (short ones, empty ones, max_line - 2 and - 1 octets, far over)."""
    rng = random.Random(1321)
    lengths = (0, 1, 5, 7, 8, 9, 20)
    for _ in range(2000):
        max_line = rng.choice((10, 11, 1000))
        lines = [
            b"y" * rng.choice(lengths + (max_line - 2, max_line - 1))
            for _ in range(rng.randint(1, 30))
        ]
        chunk = b"".join(line + b"\r\n" for line in lines)
        expected = max(map(len, chunk.split(b"\r\n"))) + 2 > max_line
        r = DataReader(max_size=10**7, max_line=max_line)
        r.take(chunk)
        assert r.line_too_long is expected, (max_line, lines)


def _reference(data: bytes) -> tuple[bytes | None, bytes, bool]:
    """Line by line, as RFC 5321 4.5.2 reads it: (the un-stuffed message up to CRLF.CRLF or
    None if there is none, what follows the marker, whether any line has a bare CR or LF)."""
    out, bare, pos = [], False, 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return None, b"", bare
        line = data[pos:end]
        if line == b".":
            return b"".join(out), data[end + 2 :], bare
        if b"\r" in line or b"\n" in line:
            bare = True
        out.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
        pos = end + 2


def test_data_reader_agrees_with_a_line_by_line_reading() -> None:
    """Random bodies of text, dots, bare CRs and LFs and end markers, fed in random pieces:
    the reader finds the same end, the same un-stuffed bytes and the same bare-newline verdict
    as a reading line by line (the bulk searches are there for speed only)."""
    rng = random.Random(5321)
    atoms = [b"a", b"text ", b".", b"..", b"\r\n", b"\r\n", b"\r\n.", b"\r", b"\n", b"\n."]
    for _ in range(3000):
        body = b"".join(rng.choice(atoms) for _ in range(rng.randrange(0, 40)))
        data = body + rng.choice([b"\r\n.\r\n", b"\r\n.\r\nQUIT\r\n", b""])
        expected, rest_expected, bare_expected = _reference(data)
        r, buf, done, out, pos = reader(max_line=1000), b"", False, [], 0
        while pos < len(data) and not done:
            step = rng.randrange(1, 12)
            done, buf = r.feed(buf + data[pos : pos + step])
            out.append(r.take_output())
            pos += step
        assert done == (expected is not None), data
        if done:
            assert r.bare_newline == bare_expected, data
            assert buf + data[pos:] == rest_expected, data
            if not bare_expected:  # a refused message's bytes are not handed out
                assert b"".join(out) == expected, data
