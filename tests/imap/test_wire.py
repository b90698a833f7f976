"""Formatting response elements: strings quoted or literal, atoms, mailbox names, dates."""

from __future__ import annotations

import pytest

from appliance.imap.parser import parse_command, parse_datetime
from appliance.imap.wire import (
    QUOTED_MAX,
    astring_out,
    imap_date,
    literal,
    mailbox_out,
    nstring,
    plist,
    quoted,
)


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (b"hello", b'"hello"'),
        ("hello world", b'"hello world"'),
        (b"", b'""'),
        (b'a"b\\c', b'"a\\"b\\\\c"'),
        (b"tab\there", b'"tab\there"'),
        (b"a\r\nb", b"{4}\r\na\r\nb"),
        (b"a\nb", b"{3}\r\na\nb"),
        (b"a\x00", b"{2}\r\na\x00"),
        ("ü", b"{2}\r\n\xc3\xbc"),
        (b"\xff", b"{1}\r\n\xff"),
    ],
)
def test_quoted(value: bytes | str, wire: bytes) -> None:
    assert quoted(value) == wire


def test_quoted_length() -> None:
    assert quoted(b"x" * (QUOTED_MAX - 1)) == b'"' + b"x" * (QUOTED_MAX - 1) + b'"'
    assert quoted(b"x" * QUOTED_MAX) == b"{%d}\r\n" % QUOTED_MAX + b"x" * QUOTED_MAX


def test_quoted_utf8() -> None:
    assert quoted("Entwürfe", utf8=True) == '"Entwürfe"'.encode()
    assert quoted("a\r\n", utf8=True) == b"{3}\r\na\r\n"


@pytest.mark.parametrize(
    "value", [b"plain", b'q"uo\\te', b"\r\n{5}\r\n", "ü ä", b"\x00\xff", b"", b"x" * 5000]
)
def test_quoted_parses_back(value: bytes | str) -> None:
    octets = value.encode() if isinstance(value, str) else value
    assert parse_command(b"t X " + quoted(value)).args == [octets]


def test_nstring() -> None:
    assert nstring(None) == b"NIL"
    assert nstring("NIL") == b'"NIL"'
    assert nstring(b"") == b'""'


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("INBOX", b"INBOX"),
        ("Sent.2024", b"Sent.2024"),
        ("a&-b", b"a&-b"),
        ("NIL", b'"NIL"'),
        ("nil", b'"nil"'),
        ("", b'""'),
        ("two words", b'"two words"'),
        ("a*", b'"a*"'),
        ("a%", b'"a%"'),
        ("a]", b'"a]"'),
        ("(x)", b'"(x)"'),
        ("{1}", b'"{1}"'),
        ('a"b', b'"a\\"b"'),
        ("a\\b", b'"a\\\\b"'),
        ("ü", b"{2}\r\n\xc3\xbc"),
    ],
)
def test_astring_out(value: str, wire: bytes) -> None:
    assert astring_out(value) == wire


def test_mailbox_out() -> None:
    assert mailbox_out("INBOX") == b"INBOX"
    assert mailbox_out("Entwürfe") == b"Entw&APw-rfe"
    assert mailbox_out("R&D") == b"R&-D"
    assert mailbox_out("收件箱 2") == b'"&ZTZO9nux- 2"'
    assert mailbox_out("Entwürfe", utf8=True) == '"Entwürfe"'.encode()
    assert mailbox_out("R&D", utf8=True) == b"R&D"
    assert mailbox_out("Plain", utf8=True) == b"Plain"


def test_plist_and_literal() -> None:
    assert plist([]) == b"()"
    assert plist([b"\\Seen", b"\\Deleted"]) == b"(\\Seen \\Deleted)"
    assert plist(iter([b"a"])) == b"(a)"
    assert literal(b"") == b"{0}\r\n"
    assert literal(b"hello") == b"{5}\r\nhello"


def test_imap_date() -> None:
    assert imap_date(0) == "01-Jan-1970 00:00:00 +0000"
    assert imap_date(837596665) == "17-Jul-1996 09:44:25 +0000"
    assert imap_date(837596665.9) == "17-Jul-1996 09:44:25 +0000"
    assert imap_date(-0.5) == "31-Dec-1969 23:59:59 +0000"
    for ts in (0, 837596665, 1_700_000_000, 4_102_444_800, -86_400 * 365):
        assert parse_datetime(imap_date(ts)) == ts
