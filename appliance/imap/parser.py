"""Parsing IMAP commands (RFC 3501 section 9, RFC 7888 LITERAL+), sans-IO.

The connection layer frames a command: it reads a line, and while the line ends in a
literal announcement (literal_at_end: "{N}" or "{N+}") it reads those N octets and the next
line. parse_command() gets the whole command as on the wire, literal octets inline, without
the final CRLF, and gives its tag, its name and its arguments as appliance.imap.tokens types:

    atom     Atom; "%" "*" "]" are allowed (list wildcards, "1:*", "BODY[]"), "\\" may lead
             (flags: \\Seen, \\*); a "[" runs to its "]" and all of it stays in the atom,
             spaces, parentheses and quoted strings included, and so does a "<0.2048>" after
             it: BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.2048> is one Atom. (A literal inside
             the brackets is rewritten there as a quoted string.)
    string   IString: a quoted string unescaped (8-bit octets allowed: UTF-8 clients), or a
             literal's octets (.literal set)
    list     a parenthesized list, nested at most MAX_DEPTH deep

The grammar is applied as written: arguments are separated by exactly one space, with none
after "(" or before ")", and nothing follows the last one. Every error is a BadCommand (a
ParseError) carrying the tag when it could be read: the session answers `<tag> BAD <text>`,
or `* BAD <text>` when the tag is None.

The argument helpers (sequence sets, dates, astring, mailbox names) are for the command
handlers, which know what each argument should be.
"""

from __future__ import annotations

import datetime
import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.imap import mutf7
from appliance.imap.tokens import Arg, Atom, IString, ParseError

MAX_DEPTH = 100  # parenthesized lists inside each other
MAX_NUMBER = 2**32 - 1  # number and nz-number, and literal sizes

_SP = 0x20
# tag: 1*<any ASTRING-CHAR except "+">; ASTRING-CHAR is ATOM-CHAR / "]"
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
# ATOM-CHAR: any CHAR except atom-specials: "(" ")" "{" SP CTL "%" "*" DQUOTE "\" "]"
_STRICT_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
# what this parser takes in an argument atom: also "%" "*" "]"; "[" opens a bracket
_ARG_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\\[]*')
# inside brackets: printable ASCII but the quote, literal, bracket and backslash characters
_BRACKET_RUN = re.compile(rb'[^\x00-\x1f\x7f-\xff"{\[\]\\]*')
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_UNESCAPE = re.compile(rb'\\(["\\])')
_LITERAL = re.compile(rb"\{([0-9]{1,10})(\+?)\}\r\n")


class BadCommand(ParseError):
    """A command that does not parse; tag is its tag if that could be read, else None."""

    def __init__(self, text: str, tag: str | None = None) -> None:
        super().__init__(text)
        self.tag = tag


@dataclass(frozen=True)
class Command:
    """A parsed command: tag as sent, name upper-cased, its arguments."""

    tag: str
    name: str
    args: list[Arg]


def literal_at_end(line: bytes) -> tuple[int, bool] | None:
    """(size, non-synchronizing) if the line (without CRLF) ends in "{size}" or "{size+}",
    else None; ParseError for a size over 10 digits or 2**32-1. (A line ending "~{N}", an
    RFC 3516 literal8, gets its size too, so the octets are read before the BAD.)"""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    if start < 0:
        return None
    inner = line[start + 1 : -1]
    plus = inner.endswith(b"+")
    digits = inner[:-1] if plus else inner
    if not digits or not digits.isdigit():
        return None
    if len(digits) > 10 or int(digits) > MAX_NUMBER:
        raise ParseError("Literal too big")
    return int(digits), plus


def parse_command(data: bytes) -> Command:
    """Parse a whole command (see the module docstring); BadCommand if it does not."""
    m = _TAG.match(data)
    if m is None or (m.end() < len(data) and data[m.end()] != _SP):
        raise BadCommand("Invalid tag")
    tag = m.group().decode("ascii")
    i = m.end() + 1
    name = _STRICT_ATOM.match(data, i)
    if name is None:
        raise BadCommand("Missing command name" if i >= len(data) else "Invalid command", tag)
    i = name.end()
    if i < len(data) and data[i] != _SP:
        raise BadCommand("Invalid command name", tag)
    try:
        args = _Scanner(data, i).arguments()
    except ParseError as e:
        raise BadCommand(str(e), tag) from None
    return Command(tag, name.group().decode("ascii").upper(), args)


class _Scanner:
    """The arguments of one command, from position i (at the space before the first one, or
    at the end)."""

    def __init__(self, data: bytes, i: int) -> None:
        self.data = data
        self.i = i

    def arguments(self) -> list[Arg]:
        data = self.data
        n = len(data)
        top: list[Arg] = []
        if self.i >= n:
            return top
        self.i += 1  # the space after the command name
        stack: list[list[Arg]] = [top]
        while True:
            # an argument starts at self.i
            if self.i >= n:
                raise ParseError("Missing argument" if len(stack) == 1 else "Missing )")
            c = data[self.i]
            if c == 0x28:  # (
                if len(stack) > MAX_DEPTH:
                    raise ParseError("Lists nested too deep")
                inner: list[Arg] = []
                stack[-1].append(inner)
                stack.append(inner)
                self.i += 1
                if self.i >= n or data[self.i] != 0x29:  # not "()"
                    continue
            elif c == 0x22:  # "
                stack[-1].append(self.quoted())
            elif c == 0x7B:  # {
                stack[-1].append(self.literal())
            elif c == _SP:
                raise ParseError("Unexpected space")
            elif c == 0x29:  # )
                raise ParseError("Unexpected )" if len(stack) == 1 else "Unexpected space before )")
            else:
                stack[-1].append(self.atom())
            # after an argument: ")"s, then a space or the end
            while True:
                if self.i >= n:
                    if len(stack) > 1:
                        raise ParseError("Missing )")
                    return top
                c = data[self.i]
                if c == 0x29:  # )
                    if len(stack) == 1:
                        raise ParseError("Unexpected )")
                    stack.pop()
                    self.i += 1
                elif c == _SP:
                    self.i += 1
                    break
                else:
                    raise ParseError("Expected space between arguments")

    def quoted(self) -> IString:
        m = _QUOTED.match(self.data, self.i)
        if m is None:
            raise ParseError(self._quoted_error())
        self.i = m.end()
        return IString(_UNESCAPE.sub(rb"\1", m.group(1)))

    def _quoted_error(self) -> str:
        data = self.data
        j = self.i + 1
        while j < len(data):
            c = data[j]
            if c == 0x22:
                break
            if c in (0x0D, 0x0A, 0x00):
                return "Invalid character in quoted string"
            if c == 0x5C:
                if data[j + 1 : j + 2] not in (b'"', b"\\"):
                    return "Invalid escape in quoted string"
                j += 1
            j += 1
        return "Unterminated quoted string"

    def literal(self) -> IString:
        data = self.data
        m = _LITERAL.match(data, self.i)
        if m is None:
            raise ParseError("Invalid literal")
        size = int(m.group(1))
        if size > MAX_NUMBER:
            raise ParseError("Literal too big")
        start = m.end()
        if start + size > len(data):
            raise ParseError("Literal octets missing")
        self.i = start + size
        return IString(data[start : self.i], literal=True)

    def atom(self) -> Atom:
        data = self.data
        start = self.i
        parts: list[bytes] = []
        if data[start] == 0x5C:  # a flag: "\" atom
            parts.append(b"\\")
            self.i += 1
        while True:
            m = _ARG_ATOM.match(data, self.i)
            assert m is not None  # (it matches the empty string)
            parts.append(m.group())
            self.i = m.end()
            if self.i < len(data) and data[self.i] == 0x5B:  # [
                start_bracket = self.i
                try:
                    parts.append(self.bracket())
                except ParseError:
                    # no "]" closes it: a plain "[" of an atom (a mailbox name may have one)
                    self.i = start_bracket + 1
                    parts.append(b"[")
                continue
            break
        text = b"".join(parts)
        if text in (b"", b"\\"):
            raise ParseError("Invalid character")
        return Atom(text.decode("ascii"))

    def bracket(self) -> bytes:
        """The bracketed part at self.i, "[" to "]", as it goes in the atom."""
        data = self.data
        parts = [b"["]
        self.i += 1
        while True:
            m = _BRACKET_RUN.match(data, self.i)
            assert m is not None
            parts.append(m.group())
            self.i = m.end()
            if self.i >= len(data):
                raise ParseError("Missing ]")
            c = data[self.i]
            if c == 0x5D:  # ]
                self.i += 1
                parts.append(b"]")
                return b"".join(parts)
            if c == 0x22:  # "
                start = self.i
                value = self.quoted()
                if any(b > 0x7E for b in value):
                    raise ParseError("8-bit character in brackets")
                parts.append(data[start : self.i])
            elif c == 0x7B:  # {: rewritten as a quoted string
                value = self.literal()
                if any(b < 0x20 or b > 0x7E for b in value):
                    raise ParseError("Invalid literal in brackets")
                parts.append(b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"')
            else:
                raise ParseError("Invalid character in brackets")


# -- sequence sets


def _number(text: str) -> int:
    """An nz-number."""
    if not text or not text.isascii() or not text.isdigit() or text[0] == "0":
        raise ParseError("Invalid sequence set")
    if len(text) > 10 or int(text) > MAX_NUMBER:
        raise ParseError("Invalid sequence set")
    return int(text)


def _seq_number(text: str) -> int | None:
    return None if text == "*" else _number(text)


class SequenceSet:
    """An RFC 3501 sequence-set: ranges as sent (None for "*"; a single number n is (n, n))."""

    __slots__ = ("ranges", "_cache")

    def __init__(self, ranges: tuple[tuple[int | None, int | None], ...]) -> None:
        self.ranges = ranges
        self._cache: tuple[int, list[tuple[int, int]], list[int]] | None = None

    def __repr__(self) -> str:
        return f"SequenceSet({self.ranges!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SequenceSet) and other.ranges == self.ranges

    def __hash__(self) -> int:
        return hash(self.ranges)

    def _resolved(self, largest: int) -> tuple[list[tuple[int, int]], list[int]]:
        if self._cache is not None and self._cache[0] == largest:
            return self._cache[1], self._cache[2]
        spans = []
        for low, high in self.ranges:
            a = largest if low is None else low
            b = largest if high is None else high
            spans.append((a, b) if a <= b else (b, a))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                if b > merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        lows = [a for a, _b in merged]
        self._cache = (largest, merged, lows)
        return merged, lows

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """The set as sorted, disjoint, non-adjacent (low, high) ranges, "*" standing for
        largest (the largest number in use: 0 for an empty mailbox) and n:m the same as m:n;
        so 5:* with largest 3 is 3:5."""
        return list(self._resolved(largest)[0])

    def contains(self, n: int, largest: int) -> bool:
        """Whether n is in the set."""
        merged, lows = self._resolved(largest)
        k = bisect_right(lows, n) - 1
        return k >= 0 and n <= merged[k][1]

    def members(self, sorted_values: Sequence[int], largest: int) -> list[int]:
        """The values (sorted ascending, e.g. a mailbox's UIDs) that are in the set, in
        order; O(ranges * log(values)) plus the size of the answer."""
        out: list[int] = []
        for low, high in self._resolved(largest)[0]:
            a = bisect_left(sorted_values, low)
            b = bisect_right(sorted_values, high, a)
            out.extend(sorted_values[a:b])
        return out


def parse_sequence_set(text: str) -> SequenceSet:
    """A sequence-set such as "1,3:5,7:*,*"; ParseError otherwise ("$" is not supported)."""
    ranges: list[tuple[int | None, int | None]] = []
    for part in text.split(","):
        low, colon, high = part.partition(":")
        a = _seq_number(low)
        ranges.append((a, _seq_number(high) if colon else a))
    return SequenceSet(tuple(ranges))


# -- dates

_MONTHS = {
    name: i + 1
    for i, name in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}
_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_DATETIME = re.compile(
    r"( [0-9]|[0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"
)


def _date(day: str, month: str, year: str) -> datetime.date:
    number = _MONTHS.get(month.upper())
    if number is None:
        raise ParseError("Invalid month")
    try:
        return datetime.date(int(year), number, int(day))
    except ValueError:
        raise ParseError("Invalid date") from None


def parse_date(text: str) -> datetime.date:
    """SEARCH's date-text: "1-Feb-1994" or "01-Feb-1994" (month name in any case)."""
    m = _DATE.fullmatch(text)
    if m is None:
        raise ParseError("Invalid date")
    return _date(*m.groups())


def parse_datetime(text: str) -> float:
    """APPEND's date-time without its quotes, "17-Jul-1996 02:44:25 -0700" (the day may be
    space-padded: " 7-Jul-1996 ..."), as a POSIX timestamp. A leap second (":60") counts as
    the next second."""
    m = _DATETIME.fullmatch(text)
    if m is None:
        raise ParseError("Invalid date-time")
    day, month, year, hh, mm, ss, sign, zh, zm = m.groups()
    date = _date(day.strip(), month, year)
    hour, minute, second = int(hh), int(mm), int(ss)
    if hour > 23 or minute > 59 or second > 60 or int(zh) > 23 or int(zm) > 59:
        raise ParseError("Invalid date-time")
    offset = (int(zh) * 60 + int(zm)) * 60 * (-1 if sign == "-" else 1)
    days = date.toordinal() - datetime.date(1970, 1, 1).toordinal()
    return float(days * 86400 + hour * 3600 + minute * 60 + second - offset)


# -- arguments


def astring(arg: Arg) -> bytes:
    """An astring (or list-mailbox) argument's octets: an atom's text or a string's octets;
    ParseError for a list, and for an atom that is no astring (a flag, brackets with spaces,
    parentheses or quotes in them)."""
    if isinstance(arg, IString):
        return bytes(arg)
    if isinstance(arg, Atom):
        if arg.startswith("\\") or any(c in arg for c in ' ()"'):
            raise ParseError("Invalid string")
        return arg.encode("ascii")
    raise ParseError("String expected, not a list")


def mailbox_name(arg: Arg) -> str:
    """A mailbox argument as a name: modified UTF-7 decoded if it is ASCII with an "&" (and
    valid modified UTF-7; otherwise as sent), UTF-8 as sent otherwise (RFC 6855 clients);
    "INBOX" in any case is "INBOX". ParseError for invalid UTF-8 and control characters."""
    raw = astring(arg)
    try:
        if raw.isascii():
            name = raw.decode("ascii")
            if "&" in name:
                try:
                    name = mutf7.decode(name)
                except ValueError:
                    pass  # not modified UTF-7: the name as sent (a NO later, not a BAD)
        else:
            name = raw.decode("utf-8")
    except ValueError as e:
        raise ParseError(f"Invalid mailbox name: {e}") from None
    if any(c < " " or c == "\x7f" for c in name):
        raise ParseError("Invalid mailbox name: control character")
    if name.upper() == "INBOX":
        return "INBOX"
    return name
