"""What an IMAP command's arguments are once parsed (RFC 3501 section 4 and 9).

appliance.imap.parser turns a whole command (its literals included) into these; the command
handlers, appliance.imap.search and the fetch-attribute parsing read them.

    Atom     an atom as the client sent it (case kept; compare with .upper()); NIL is Atom("NIL")
             a bracketed section stays inside its atom: BODY.PEEK[HEADER.FIELDS (FROM)]<0.10>
    IString  a quoted string (unescaped) or a literal: its octets
    list     a parenthesized list of these
"""

from __future__ import annotations

from typing import TypeAlias


class Atom(str):
    """An IMAP atom, as sent."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str(self)!r})"


class IString(bytes):
    """An IMAP string: quoted or literal, as octets."""

    literal: bool  # sent as a literal (bytes subclasses cannot have __slots__)

    def __new__(cls, value: bytes, literal: bool = False) -> IString:
        obj = super().__new__(cls, value)
        obj.literal = literal
        return obj

    def __repr__(self) -> str:
        return f"IString({bytes(self)!r})"


Arg: TypeAlias = Atom | IString | list["Arg"]


class ParseError(ValueError):
    """A command that does not parse: answered `<tag> BAD <text>`."""


def text_of(arg: Arg) -> str | None:
    """An atom or string argument as text (UTF-8; invalid octets replaced), None for a list."""
    if isinstance(arg, Atom):
        return str(arg)
    if isinstance(arg, IString):
        return bytes(arg).decode("utf-8", "replace")
    return None
