"""Formatting the parts of IMAP responses (RFC 3501 section 9, RFC 6855), sans-IO.

Each function gives the octets of one response element; the session puts them together.
A string goes out as a quoted string when that is possible and short, else as a literal
(always valid where a string is), so callers need not know which values are safe to quote.
Mailbox names are written in modified UTF-7 unless the client enabled UTF8=ACCEPT, when they
go out as UTF-8 quoted strings.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable

from appliance.imap import mutf7

QUOTED_MAX = 1024  # longer strings go out as literals

_NOT_QUOTABLE = re.compile(rb"[\x00\r\n\x80-\xff]")
_NOT_QUOTABLE_UTF8 = re.compile(rb"[\x00\r\n]")
# ATOM-CHAR: any CHAR except "(" ")" "{" SP CTL "%" "*" DQUOTE "\" "]"
_ATOM = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){%*"\\\]]+')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _octets(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def literal(data: bytes) -> bytes:
    """A literal: b"{N}\\r\\n" and the octets."""
    return b"{%d}\r\n" % len(data) + data


def quoted(value: bytes | str, utf8: bool = False) -> bytes:
    """An IMAP string (a str as UTF-8): quoted, "\\" and '"' escaped, if shorter than
    QUOTED_MAX octets with no NUL, CR, LF or 8-bit octet (8-bit allowed when utf8: RFC 6855
    for a client that enabled UTF8=ACCEPT), else a literal."""
    data = _octets(value)
    bad = _NOT_QUOTABLE_UTF8 if utf8 else _NOT_QUOTABLE
    if len(data) >= QUOTED_MAX or bad.search(data):
        return literal(data)
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def nstring(value: bytes | str | None) -> bytes:
    """NIL for None, else quoted()."""
    return b"NIL" if value is None else quoted(value)


def astring_out(value: str, utf8: bool = False) -> bytes:
    """An astring: an atom if value is a non-empty run of ATOM-CHARs and not NIL (in any
    case: a client would read NIL), else quoted(value, utf8)."""
    if _ATOM.fullmatch(value) and value.upper() != "NIL":
        return value.encode("ascii")
    return quoted(value, utf8)


def mailbox_out(name: str, utf8: bool = False) -> bytes:
    """A mailbox name for LIST, LSUB, STATUS...: modified UTF-7 encoded unless utf8 (the
    client enabled UTF8=ACCEPT), then astring_out."""
    return astring_out(name if utf8 else mutf7.encode(name), utf8)


def plist(items: Iterable[bytes]) -> bytes:
    """A parenthesized list of already-formatted elements."""
    return b"(" + b" ".join(items) + b")"


def imap_date(ts: float) -> str:
    """A POSIX timestamp as INTERNALDATE's date-time, in UTC, without the quotes:
    "17-Jul-1996 02:44:25 +0000" (fractions of a second dropped)."""
    t = time.gmtime(math.floor(ts))
    month = _MONTHS[t.tm_mon - 1]
    return (
        f"{t.tm_mday:02d}-{month}-{t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )
