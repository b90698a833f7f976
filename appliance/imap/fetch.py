"""FETCH (RFC 3501 6.4.5, 7.4.2): what the client asks for, and the untagged answers.

`parse_items(arg)` turns the attribute list into `FetchItem`s (macros ALL, FAST and FULL
expanded); `render(...)` makes one `* n FETCH (...)` answer from the message's listing facts
and, when an item needs them, its octets (a `ParsedMessage` gives the ENVELOPE, the body
structure and the sections). The session reads the octets of a batch of messages in a worker
thread and renders there too: the reactor only writes. A partial `<origin.count>` answers
`BODY[...]<origin>` as RFC 3501 says; a section of a part that does not exist is empty.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.imap.mime import ParsedMessage, parse_section_spec
from appliance.imap.tokens import Arg, Atom, ParseError
from appliance.imap.wire import imap_date, literal

SIMPLE = {
    "FLAGS",
    "UID",
    "INTERNALDATE",
    "RFC822.SIZE",
    "ENVELOPE",
    "BODY",
    "BODYSTRUCTURE",
    "RFC822",
    "RFC822.HEADER",
    "RFC822.TEXT",
}
MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
CONTENT = {"ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822", "RFC822.HEADER", "RFC822.TEXT"}
_SECTION = re.compile(r"(BODY(?:\.PEEK)?)\[(.*)\](?:<(\d+)\.(\d+)>)?\Z", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class FetchItem:
    kind: str  # one of SIMPLE, or "SECTION"
    section: str = ""  # BODY[<section>]: the spec inside the brackets
    partial: tuple[int, int] | None = None  # <origin.count>
    peek: bool = False

    @property
    def needs_content(self) -> bool:
        return self.kind == "SECTION" or self.kind in CONTENT

    @property
    def sets_seen(self) -> bool:
        return (self.kind == "SECTION" and not self.peek) or self.kind in ("RFC822", "RFC822.TEXT")


def _item(text: str) -> list[FetchItem]:
    upper = text.upper()
    if upper in MACROS:
        return [FetchItem(k) for k in MACROS[upper]]
    if upper in SIMPLE:
        return [FetchItem(upper)]
    m = _SECTION.match(text)
    if m is None:
        raise ParseError(f"Unknown FETCH attribute {text[:40]}")
    name, spec, origin, count = m.groups()
    spec_upper = spec.upper()
    try:
        parse_section_spec(spec_upper)
    except ValueError as exc:
        raise ParseError(f"Invalid section {spec[:40]}: {exc}") from None
    partial = None
    if origin is not None:
        if len(origin) > 10 or len(count) > 10 or int(count) == 0:
            raise ParseError("Invalid partial")
        partial = (int(origin), int(count))
    return [FetchItem("SECTION", spec_upper, partial, name.upper() == "BODY.PEEK")]


def parse_items(arg: Arg) -> list[FetchItem]:
    """The attributes of a FETCH (one atom or a parenthesized list); ParseError if bad."""
    if isinstance(arg, Atom):
        items = _item(str(arg))
    elif isinstance(arg, list) and arg and all(isinstance(a, Atom) for a in arg):
        items = []
        for a in arg:
            if str(a).upper() in MACROS:
                raise ParseError("FETCH macros cannot be in a list")
            items += _item(str(a))
    else:
        raise ParseError("Invalid FETCH attributes")
    return items


_FLAG_LISTS: dict[frozenset[str], bytes] = {}  # a folder has few distinct flag sets


def flag_list(flags: frozenset[str]) -> bytes:
    out = _FLAG_LISTS.get(flags)
    if out is None:
        if len(_FLAG_LISTS) > 4096:
            _FLAG_LISTS.clear()
        out = _FLAG_LISTS[flags] = b"(" + " ".join(sorted(flags)).encode("utf-8") + b")"
    return out


def _section_name(item: FetchItem) -> bytes:
    name = f"BODY[{item.section}]"
    if item.partial is not None:
        name += f"<{item.partial[0]}>"
    return name.encode("utf-8")


def _cut(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return data
    origin, count = partial
    return data[origin : origin + count]


def _section(item: FetchItem, body: bytes) -> bytes:
    """`BODY[section]<origin> ...` of a section's octets (b"": a part the message has not)."""
    body = _cut(body, item.partial)
    return _section_name(item) + b" " + (literal(body) if body else b'""')


def render(
    seq: int,
    uid: int,
    flags: frozenset[str] | None,
    internaldate: float,
    size: int,
    items: Sequence[FetchItem],
    data: bytes | None,
    with_uid: bool,
) -> bytes:
    """One `* seq FETCH (...)` line (CRLF included). data: the message's octets when an
    item needs them (None: it was expunged meanwhile and those items are left out); flags:
    None to leave FLAGS out even if asked (it is added by the caller otherwise)."""
    parts: list[bytes] = []
    done: set[str] = set()
    parsed: ParsedMessage | None = None
    if with_uid:
        parts.append(b"UID %d" % uid)
        done.add("UID")
    for item in items:
        kind = item.kind
        if kind in done and kind != "SECTION":
            continue
        done.add(kind)
        if kind == "UID":
            parts.append(b"UID %d" % uid)
        elif kind == "FLAGS":
            if flags is not None:
                parts.append(b"FLAGS " + flag_list(flags))
        elif kind == "INTERNALDATE":
            parts.append(b'INTERNALDATE "' + imap_date(internaldate).encode("ascii") + b'"')
        elif kind == "RFC822.SIZE":
            parts.append(b"RFC822.SIZE %d" % size)
        elif data is None:
            continue
        elif kind == "RFC822":
            parts.append(b"RFC822 " + literal(data))
        elif kind == "SECTION" and item.section == "":
            parts.append(_section(item, data))  # the whole message: nothing to parse
        else:
            if parsed is None:
                parsed = ParsedMessage(data)
            if kind == "ENVELOPE":
                parts.append(b"ENVELOPE " + parsed.envelope())
            elif kind == "BODY":
                parts.append(b"BODY " + parsed.bodystructure(False))
            elif kind == "BODYSTRUCTURE":
                parts.append(b"BODYSTRUCTURE " + parsed.bodystructure(True))
            elif kind == "RFC822.HEADER":
                parts.append(b"RFC822.HEADER " + literal(parsed.header_bytes()))
            elif kind == "RFC822.TEXT":
                parts.append(b"RFC822.TEXT " + literal(parsed.text_bytes()))
            else:  # SECTION of a part
                parts.append(_section(item, parsed.section(item.section)))
    return b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n"


def flags_update(seq: int, uid: int | None, flags: frozenset[str]) -> bytes:
    """An unsolicited `* n FETCH (FLAGS (...))` (with UID n in a UID command's answer)."""
    uid_part = b"UID %d " % uid if uid is not None else b""
    return b"* %d FETCH (%sFLAGS %s)\r\n" % (seq, uid_part, flag_list(flags))
