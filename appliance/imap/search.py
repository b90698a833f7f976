"""SEARCH criteria (RFC 3501 section 6.4.4) parsed into a program, and ESEARCH answers
(RFC 4731), sans-IO.

parse_search() turns what follows SEARCH (or UID SEARCH), a leading "CHARSET x" included, into
a SearchProgram: a small tree of keys (keys side by side must all match; OR and NOT nest). The
session runs program.matches() over the selected messages, each seen through the
SearchMessage protocol: the facts the mailbox index has at hand (sequence number, UID, flags,
size, INTERNALDATE) and, only when program.needs_content, the parsed message. Within an AND
the keys that need no content are tried first, so a search like "UNSEEN FROM x" parses only
the unseen messages.

How the keys match (what Dovecot does, and imaptest's search-* scripts expect):

    strings     substrings, case-insensitively (str.casefold), runs of white space counting as
                one space; "" matches everything the key applies to
    headers     HEADER name s (and FROM TO CC BCC SUBJECT) look at the decoded, unfolded
                values of every field of that name; none means no match, even for "";
                address fields are also seen written out as `name <mailbox@host>, ...` (and
                `group: ...;`), so a search for "user@host" finds "user (comment)@ host"
    BODY TEXT   the decoded text parts; TEXT also the header
    BEFORE ON SINCE             the INTERNALDATE's day, in UTC
    SENTBEFORE SENTON SENTSINCE the day written in the Date field, in the field's own zone
                (23:00 +0200 on the 24th is the 24th); without a valid Date, the
                INTERNALDATE's day
    flags       compared case-insensitively; NEW is RECENT UNSEEN, OLD is NOT RECENT
    sets        "*" is the largest sequence number (UID); n:m is m:n

The caller removes an ESEARCH "RETURN (...)" before calling parse_search(), and formats the
answer with esearch_response() (or SearchResult).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import parsedate_tz
from typing import TYPE_CHECKING, Protocol

from appliance.imap.parser import SequenceSet, astring, parse_date, parse_sequence_set
from appliance.imap.tokens import Arg, Atom, ParseError

if TYPE_CHECKING:
    from appliance.imap.mime import ParsedMessage

CHARSETS = ("UTF-8", "US-ASCII")  # what CHARSET may name; the BADCHARSET answer lists them
ADDRESS_FIELDS = frozenset(
    {"from", "to", "cc", "bcc", "sender", "reply-to", "resent-from", "resent-to", "resent-cc"}
    | {"resent-bcc", "resent-sender"}
)

_WS = re.compile(r"\s+")
_FLAG_KEYS = {  # key: (flag, wanted)
    "ANSWERED": ("\\answered", True),
    "DELETED": ("\\deleted", True),
    "DRAFT": ("\\draft", True),
    "FLAGGED": ("\\flagged", True),
    "RECENT": ("\\recent", True),
    "SEEN": ("\\seen", True),
    "OLD": ("\\recent", False),
    "UNANSWERED": ("\\answered", False),
    "UNDELETED": ("\\deleted", False),
    "UNDRAFT": ("\\draft", False),
    "UNFLAGGED": ("\\flagged", False),
    "UNSEEN": ("\\seen", False),
}
_HEADER_KEYS = ("BCC", "CC", "FROM", "SUBJECT", "TO")
_DATE_KEYS = {  # key: (sent, comparison)
    "BEFORE": (False, "<"),
    "ON": (False, "="),
    "SINCE": (False, ">="),
    "SENTBEFORE": (True, "<"),
    "SENTON": (True, "="),
    "SENTSINCE": (True, ">="),
}


class BadCharset(ParseError):
    """A CHARSET this server does not search in: answered `NO [BADCHARSET (UTF-8 US-ASCII)]`."""


class SearchMessage(Protocol):
    """What a search (and SORT, THREAD) knows of one message.

    flags holds the system flags ("\\Seen", any case), the keywords, and "\\Recent" when the
    message is recent in this session; largest_seq and largest_uid are what "*" stands for.
    content() parses the message; it is called only when the program needs it."""

    @property
    def seq(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def flags(self) -> frozenset[str]: ...
    @property
    def size(self) -> int: ...
    @property
    def internaldate(self) -> float: ...
    @property
    def largest_seq(self) -> int: ...
    @property
    def largest_uid(self) -> int: ...
    def content(self) -> ParsedMessage: ...


@dataclass
class MessageFacts:
    """A SearchMessage from known facts and a loader, called once, on the first content()."""

    seq: int
    uid: int
    flags: frozenset[str]
    size: int
    internaldate: float
    largest_seq: int
    largest_uid: int
    loader: Callable[[], ParsedMessage] = field(repr=False, compare=False)
    _content: ParsedMessage | None = field(default=None, init=False, repr=False, compare=False)

    def content(self) -> ParsedMessage:
        if self._content is None:
            self._content = self.loader()
        return self._content


# -- evaluating


class _Eval:
    """One message while a program runs over it: what several keys read, worked out once."""

    __slots__ = ("msg", "_flags", "_texts")

    def __init__(self, msg: SearchMessage) -> None:
        self.msg = msg
        self._flags: frozenset[str] | None = None
        self._texts: dict[str, str] = {}

    def flags(self) -> frozenset[str]:
        if self._flags is None:
            self._flags = _lowered(self.msg.flags)
        return self._flags

    def text(self, part: str) -> str:
        """The folded header ("header") or body ("body") text."""
        folded = self._texts.get(part)
        if folded is None:
            content = self.msg.content()
            raw = content.header_text() if part == "header" else content.body_text()
            folded = self._texts[part] = fold(raw)
        return folded


_LOWERED: dict[frozenset[str], frozenset[str]] = {}  # few distinct flag sets in a folder


def _lowered(flags: frozenset[str]) -> frozenset[str]:
    low = _LOWERED.get(flags)
    if low is None:
        if len(_LOWERED) > 4096:
            _LOWERED.clear()
        low = _LOWERED[flags] = frozenset(f.lower() for f in flags)
    return low


def fold(text: str) -> str:
    """A string as the substring matching compares it: case-folded, white space runs as one
    space."""
    return _WS.sub(" ", text).casefold()


def address_text(addresses: Iterable[tuple[str | None, str | None, str | None]]) -> str:
    """An address list written out as searches see it: `name <mailbox@host>`, `mailbox@host`,
    groups as `group: member, ...;`. (name, mailbox, host) as ParsedMessage.addresses gives
    them: a group starts with (None, group name, None) and ends with (None, None, None)."""
    out: list[str] = []
    sep = ""
    for name, mailbox, host in addresses:
        if mailbox is None and host is None:  # the end of a group
            out.append(";")
            sep = ", "
        elif host is None:  # the start of a group
            out.append(f"{sep}{mailbox}: ")
            sep = ""
        else:
            spec = f"{mailbox or ''}@{host}" if host else mailbox or ""
            out.append(sep + (f"{name} <{spec}>" if name else spec))
            sep = ", "
    return "".join(out)


class _Node:
    needs_content = False
    cost = 0  # keys that need content cost 1: an AND tries them last

    def match(self, ev: _Eval) -> bool:
        raise NotImplementedError


class _All(_Node):
    def match(self, ev: _Eval) -> bool:
        return True


class _Flag(_Node):
    def __init__(self, flag: str, wanted: bool) -> None:
        self.flag = flag.lower()
        self.wanted = wanted

    def match(self, ev: _Eval) -> bool:
        return (self.flag in ev.flags()) == self.wanted


class _New(_Node):
    def match(self, ev: _Eval) -> bool:
        flags = ev.flags()
        return "\\recent" in flags and "\\seen" not in flags


class _Set(_Node):
    def __init__(self, members: SequenceSet, uid: bool) -> None:
        self.members = members
        self.uid = uid

    def match(self, ev: _Eval) -> bool:
        m = ev.msg
        if self.uid:
            return self.members.contains(m.uid, m.largest_uid)
        return self.members.contains(m.seq, m.largest_seq)


class _Size(_Node):
    def __init__(self, limit: int, larger: bool) -> None:
        self.limit = limit
        self.larger = larger

    def match(self, ev: _Eval) -> bool:
        size = ev.msg.size
        return size > self.limit if self.larger else size < self.limit


def _utc_day(timestamp: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).date()


def sent_day(msg: SearchMessage) -> datetime.date:
    """The day the Date field names, in its own zone; the INTERNALDATE's (UTC) without one."""
    values = msg.content().header_values("Date")
    if values:
        try:
            parsed = parsedate_tz(values[0])
            if parsed is not None:
                return datetime.date(parsed[0], parsed[1], parsed[2])
        except (ValueError, OverflowError, TypeError):
            pass
    return _utc_day(msg.internaldate)


class _Date(_Node):
    def __init__(self, day: datetime.date, sent: bool, comparison: str) -> None:
        self.day = day
        self.sent = sent
        self.comparison = comparison
        self.needs_content = sent
        self.cost = 1 if sent else 0

    def match(self, ev: _Eval) -> bool:
        day = sent_day(ev.msg) if self.sent else _utc_day(ev.msg.internaldate)
        if self.comparison == "<":
            return day < self.day
        if self.comparison == "=":
            return day == self.day
        return day >= self.day


class _Header(_Node):
    needs_content = True
    cost = 1

    def __init__(self, name: str, needle: str) -> None:
        self.name = name.lower()
        self.needle = fold(needle)

    def match(self, ev: _Eval) -> bool:
        content = ev.msg.content()
        values = content.header_values(self.name)
        if not values:
            return False
        if not self.needle:
            return True
        if any(self.needle in fold(v) for v in values):
            return True
        if self.name in ADDRESS_FIELDS:
            return self.needle in fold(address_text(content.addresses(self.name)))
        return False


class _Text(_Node):
    needs_content = True
    cost = 1

    def __init__(self, needle: str, with_header: bool) -> None:
        self.needle = fold(needle)
        self.with_header = with_header

    def match(self, ev: _Eval) -> bool:
        if not self.needle:
            return True
        if self.with_header and self.needle in ev.text("header"):
            return True
        return self.needle in ev.text("body")


class _Not(_Node):
    def __init__(self, inner: _Node) -> None:
        self.inner = inner
        self.needs_content = inner.needs_content
        self.cost = inner.cost

    def match(self, ev: _Eval) -> bool:
        return not self.inner.match(ev)


class _Or(_Node):
    def __init__(self, left: _Node, right: _Node) -> None:
        self.left, self.right = sorted((left, right), key=lambda n: n.cost)
        self.needs_content = left.needs_content or right.needs_content
        self.cost = max(left.cost, right.cost)

    def match(self, ev: _Eval) -> bool:
        return self.left.match(ev) or self.right.match(ev)


class _And(_Node):
    def __init__(self, keys: list[_Node]) -> None:
        self.keys = sorted(keys, key=lambda n: n.cost)  # (stable: as sent, cheap ones first)
        self.needs_content = any(k.needs_content for k in keys)
        self.cost = max((k.cost for k in keys), default=0)

    def match(self, ev: _Eval) -> bool:
        return all(k.match(ev) for k in self.keys)


@dataclass(frozen=True)
class SearchProgram:
    """Parsed search criteria; uid_mode records whether they came with UID SEARCH."""

    root: _Node
    uid_mode: bool = False
    charset: str = "US-ASCII"

    @property
    def needs_content(self) -> bool:
        """Whether some key reads the message's header or text (then content() is called)."""
        return self.root.needs_content

    def matches(self, msg: SearchMessage) -> bool:
        return self.root.match(_Eval(msg))


# -- parsing


class _Args:
    """The arguments being parsed, left to right."""

    def __init__(self, args: list[Arg]) -> None:
        self.args = args
        self.i = 0

    def more(self) -> bool:
        return self.i < len(self.args)

    def next(self, what: str) -> Arg:
        if self.i >= len(self.args):
            raise ParseError(f"Missing {what}")
        arg = self.args[self.i]
        self.i += 1
        return arg

    def string(self, key: str) -> str:
        arg = self.next(f"argument for {key}")
        try:
            return astring(arg).decode("utf-8", "replace")
        except ParseError:
            raise ParseError(f"{key} needs a string argument") from None

    def atom(self, key: str) -> str:
        arg = self.next(f"argument for {key}")
        if not isinstance(arg, Atom):
            raise ParseError(f"{key} needs an atom argument")
        return str(arg)


def _number(text: str, key: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 10 or int(text) > 2**32 - 1:
        raise ParseError(f"{key} needs a number")
    return int(text)


def _key(a: _Args) -> _Node:
    arg = a.next("search key")
    if isinstance(arg, list):
        if not arg:
            raise ParseError("Empty search key list")
        inner = _Args(arg)
        keys = [_key(inner)]
        while inner.more():
            keys.append(_key(inner))
        return keys[0] if len(keys) == 1 else _And(keys)
    if not isinstance(arg, Atom):
        raise ParseError("Search key expected, not a string")
    text = str(arg)
    key = text.upper()
    if key in _FLAG_KEYS:
        return _Flag(*_FLAG_KEYS[key])
    if key == "ALL":
        return _All()
    if key == "NEW":
        return _New()
    if key in _HEADER_KEYS:
        return _Header(key, a.string(key))
    if key == "HEADER":
        name = a.string(key)
        if not name or any(c <= " " or c == ":" or c > "~" for c in name):
            raise ParseError("Invalid header field name")
        return _Header(name, a.string(key))
    if key in ("BODY", "TEXT"):
        return _Text(a.string(key), with_header=key == "TEXT")
    if key in ("KEYWORD", "UNKEYWORD"):
        return _Flag(a.atom(key), key == "KEYWORD")
    if key in _DATE_KEYS:
        sent, comparison = _DATE_KEYS[key]
        return _Date(parse_date(a.string(key)), sent, comparison)
    if key in ("LARGER", "SMALLER"):
        return _Size(_number(a.atom(key), key), key == "LARGER")
    if key == "UID":
        return _Set(parse_sequence_set(a.atom(key)), uid=True)
    if key == "NOT":
        return _Not(_key(a))
    if key == "OR":
        left = _key(a)
        return _Or(left, _key(a))
    if text[:1].isdigit() or text[:1] == "*":
        return _Set(parse_sequence_set(text), uid=False)
    raise ParseError(f"Unknown search key: {text}")


def parse_search(args: list[Arg], *, uid_mode: bool) -> SearchProgram:
    """SEARCH's arguments (after any RETURN (...)), a leading CHARSET included; ParseError
    (BadCharset for a charset other than UTF-8 and US-ASCII) when they do not parse."""
    a = _Args(args)
    charset = "US-ASCII"
    if args and isinstance(args[0], Atom) and args[0].upper() == "CHARSET":
        a.next("CHARSET")
        charset = a.string("CHARSET").upper()
        if charset not in CHARSETS:
            raise BadCharset(f"Unsupported charset: {charset}")
    if not a.more():
        raise ParseError("Missing search criteria")
    keys = [_key(a)]
    while a.more():
        keys.append(_key(a))
    return SearchProgram(keys[0] if len(keys) == 1 else _And(keys), uid_mode, charset)


# -- answers


def sequence_set_text(values: Iterable[int]) -> str:
    """Numbers as a sequence set, each run of consecutive ascending ones as a range, in the
    order given: [1, 2, 3, 5, 9] is "1:3,5,9", and a sort order [5, 3, 4, 2] is "5,3:4,2"
    (RFC 5267 ESORT)."""
    parts: list[str] = []
    start = prev = None
    for n in values:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def esearch_response(tag: str | None, uid: bool, values: list[int], options: set[str]) -> str:
    """The untagged ESEARCH response (without CRLF) for a search that found values (in
    ascending order), given RETURN's options (MIN MAX COUNT ALL, any case; none means ALL;
    others, such as SAVE, are left to the caller): `* ESEARCH (TAG "a1") UID MIN 1 MAX 9
    COUNT 5 ALL 1:3,5,9`. MIN, MAX and ALL are left out when nothing was found."""
    wanted = {o.upper() for o in options} or {"ALL"}
    out = ["* ESEARCH"]
    if tag is not None:
        quoted = tag.replace("\\", "\\\\").replace('"', '\\"')
        out.append(f'(TAG "{quoted}")')
    if uid:
        out.append("UID")
    if values and "MIN" in wanted:
        out.append(f"MIN {min(values)}")
    if values and "MAX" in wanted:
        out.append(f"MAX {max(values)}")
    if "COUNT" in wanted:
        out.append(f"COUNT {len(values)}")
    if values and "ALL" in wanted:
        out.append(f"ALL {sequence_set_text(values)}")
    return " ".join(out)


@dataclass
class SearchResult:
    """What a search found (sequence numbers, or UIDs for UID SEARCH), as either answer."""

    values: list[int]
    uid: bool = False

    def search_response(self) -> str:
        """`* SEARCH 1 2 3` (without CRLF)."""
        return " ".join(["* SEARCH", *map(str, self.values)])

    def esearch_response(self, tag: str | None, options: set[str]) -> str:
        return esearch_response(tag, self.uid, self.values, options)

    sequence_set_text = staticmethod(sequence_set_text)
