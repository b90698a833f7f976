"""SORT (RFC 5256, with RFC 5957's DISPLAYFROM and DISPLAYTO), and the base subject that
SORT and THREAD share, sans-IO.

The session parses the criteria with parse_sort_criteria(), runs the search program
(appliance.imap.search) over the mailbox, and orders what it found with sort_messages().
Each criterion is a key worked out once per message:

    ARRIVAL     INTERNALDATE
    DATE        the Date field's time; INTERNALDATE without a valid one
    SIZE        RFC822.SIZE
    SUBJECT     the base subject (section 2.1, below)
    FROM TO CC  the mailbox part of the field's first address (the group name when the
                field starts with a group, as in ENVELOPE)
    DISPLAYFROM DISPLAYTO   that address's display name, else its mailbox@host

Strings compare as i;ascii-casemap does (upper-cased), "" for a missing field. Messages
equal under every criterion keep sequence order, also when REVERSE turned a criterion: the
sort is a run of stable sorts, the last criterion first, starting from sequence order.

Base subject (RFC 5256 section 2.1): the decoded subject, white space runs as one space,
loses trailing "(fwd)"s, then leading "Re:", "Fw:", "Fwd:" (with any "[blob]" before the
colon or before them) and "[blob]"s that are not the whole rest, then a "[fwd: ...]" wrapper,
over and over. Whether any "Re:"/"Fwd:", "(fwd)" or "[fwd:]" went is what THREAD's
"reply or forward" is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from appliance.imap.search import SearchMessage
from appliance.imap.tokens import Arg, Atom, ParseError

M = TypeVar("M", bound=SearchMessage)

SORT_KEYS = frozenset(
    {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
)

_SPACES = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?:[ \t]|\(fwd\))+$", re.IGNORECASE)
_BLOB = r"\[[^\[\]]*\][ \t]*"
_REFWD = rf"(?:re|fwd?)[ \t]*(?:{_BLOB})?:"
_LEADER = re.compile(rf"(?:{_BLOB})*{_REFWD}|[ \t]+", re.IGNORECASE)
_BLOB_RE = re.compile(_BLOB)

Address = tuple[str | None, str | None, str | None]


def subject_info(subject: str) -> tuple[str, bool]:
    """The base subject of a decoded subject, and whether it was a reply or forward."""
    s = _SPACES.sub(" ", subject)
    reply = False
    while True:
        # (2) trailers
        m = _TRAILER.search(s)
        if m is not None:
            if "(" in m.group():
                reply = True
            s = s[: m.start()]
        # (3) to (5): leaders and blobs, until none is left
        while True:
            m = _LEADER.match(s)
            if m is not None and m.end() > 0:
                if m.group().strip():
                    reply = True
                s = s[m.end() :]
                continue
            m = _BLOB_RE.match(s)
            if m is not None and s[m.end() :]:
                s = s[m.end() :]
                continue
            break
        # (6) a [fwd: ...] wrapper, and again from (2)
        if s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            reply = True
            continue
        return s, reply


def base_subject(subject: str) -> str:
    """RFC 5256 section 2.1's base subject of a (decoded) subject."""
    return subject_info(subject)[0]


def parse_sort_criteria(arg: Arg) -> list[tuple[str, bool]]:
    """SORT's parenthesized criteria as (key, reverse) pairs, keys upper-cased; ParseError
    for anything else."""
    if not isinstance(arg, list):
        raise ParseError("Sort criteria must be a parenthesized list")
    if not arg:
        raise ParseError("Empty sort criteria")
    out: list[tuple[str, bool]] = []
    reverse = False
    for item in arg:
        if not isinstance(item, Atom):
            raise ParseError("Invalid sort criterion")
        key = item.upper()
        if key == "REVERSE":
            if reverse:
                raise ParseError("REVERSE twice")
            reverse = True
            continue
        if key not in SORT_KEYS:
            raise ParseError(f"Unknown sort key: {item}")
        out.append((key, reverse))
        reverse = False
    if reverse:
        raise ParseError("REVERSE without a sort key")
    return out


def sent_time(msg: SearchMessage) -> float:
    """The Date field's time, or INTERNALDATE when there is no valid Date (RFC 5256)."""
    sent = msg.content().sent_date()
    return msg.internaldate if sent is None else sent


def _first_address(msg: SearchMessage, name: str) -> Address | None:
    for address in msg.content().addresses(name):
        if address[1] is not None:  # (a group's end has no mailbox)
            return address
    return None


def address_key(msg: SearchMessage, name: str) -> str:
    """FROM, TO, CC: the first address's mailbox, upper-cased."""
    address = _first_address(msg, name)
    return (address[1] or "").upper() if address is not None else ""


def display_name(address: Address | None) -> str:
    """RFC 5957: the display name, else mailbox@host (the mailbox alone without a host)."""
    if address is None:
        return ""
    name, mailbox, host = address
    if name and name.strip():
        return name.strip()
    return f"{mailbox}@{host}" if host else mailbox or ""


def _key_function(key: str) -> Callable[[SearchMessage], Any]:
    if key == "ARRIVAL":
        return lambda m: m.internaldate
    if key == "DATE":
        return sent_time
    if key == "SIZE":
        return lambda m: m.size
    if key == "SUBJECT":
        return lambda m: base_subject(m.content().subject()).upper()
    if key in ("FROM", "TO", "CC"):
        return lambda m: address_key(m, key)
    if key in ("DISPLAYFROM", "DISPLAYTO"):
        field = key[len("DISPLAY") :]
        return lambda m: display_name(_first_address(m, field)).upper()
    raise ParseError(f"Unknown sort key: {key}")


def needs_content(criteria: Iterable[tuple[str, bool]]) -> bool:
    """Whether some criterion reads the message (all but ARRIVAL and SIZE)."""
    return any(key not in ("ARRIVAL", "SIZE") for key, _reverse in criteria)


def sort_messages(criteria: list[tuple[str, bool]], messages: Iterable[M]) -> list[M]:
    """The messages in the order the criteria give (see the module docstring)."""
    out = sorted(messages, key=lambda m: m.seq)
    for key, reverse in reversed(criteria):
        out.sort(key=_key_function(key), reverse=reverse)
    return out
