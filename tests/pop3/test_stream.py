"""Dot-stuffing and TOP's cut, whatever the chunk boundaries."""

from __future__ import annotations

import pytest

from appliance.pop3.stream import DotStuffer, TopCut, stuffed

MESSAGES = [
    b"Subject: a\r\n\r\n.one\r\n..two\r\n.\r\nend\r\n",
    b".starts with a dot\r\n\r\nbody\r\n",
    b"Subject: lf\n\n.a\nb\n",
    b"Subject: mixed\r\n\n.x\r\r\n.y",
    b"no blank line at all\r\n.dot\r\n",
    b"",
]


def stuff(chunks: list[bytes]) -> bytes:
    s = DotStuffer()
    return b"".join(s.feed(c) for c in chunks) + s.end()


def reference(msg: bytes) -> bytes:
    lines = msg.replace(b"\r\n", b"\n").split(b"\n")
    last = lines.pop()
    out = b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in lines)
    if last:
        out += (b"." + last if last.startswith(b".") else last) + b"\r\n"
    return out + b".\r\n"


@pytest.mark.parametrize("msg", MESSAGES)
def test_dotstuffer_any_split_same_output(msg: bytes) -> None:
    """Every split of a message into two chunks, and byte-by-byte, stuff as the whole does."""
    whole = stuff([msg])
    if b"\r\r" not in msg:
        assert whole == reference(msg)
    for i in range(len(msg) + 1):
        assert stuff([msg[:i], msg[i:]]) == whole
    assert stuff([bytes([b]) for b in msg]) == whole


def top(chunks: list[bytes], k: int) -> bytes:
    cut = TopCut(k)
    out = b""
    for c in chunks:
        out += cut.feed(c)
        if cut.done:
            break
    return out


@pytest.mark.parametrize("k", [0, 1, 2, 5])
def test_topcut_any_split_same_output(k: int) -> None:
    """TOP's cut finds the blank line and k body lines across any chunk boundary."""
    msg = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n\r\nl4\r\n"
    lines = msg.split(b"\r\n")
    expected = b"".join(x + b"\r\n" for x in lines[: 3 + k])[: len(msg)]
    assert top([msg], k) == expected
    for i in range(len(msg) + 1):
        assert top([msg[:i], msg[i:]], k) == expected
    assert top([bytes([b]) for b in msg], k) == expected


def test_topcut_bare_lf_blank_line() -> None:
    """A blank line of a bare LF ends the headers too."""
    assert top([b"A: 1\n\nbody\nmore\n"], 1) == b"A: 1\n\nbody\n"


def test_topcut_cr_only_line_not_blank_twice() -> None:
    """A header line of a single character is not taken for the blank line."""
    assert top([b"A\r\nX\r\n\r\nb\r\n"], 0) == b"A\r\nX\r\n\r\n"


@pytest.mark.parametrize("msg", MESSAGES)
def test_stuffed_whole_message_same_as_dotstuffer(msg: bytes) -> None:
    """stuffed() (a whole message read ahead) gives what DotStuffer gives for it: the body,
    then the end of the answer."""
    body, end = stuffed(msg)
    assert body + end == stuff([msg])
    assert end in (b".\r\n", b"\r\n.\r\n")
