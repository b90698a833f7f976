"""One message's MIME structure for FETCH, SEARCH and SORT (RFC 3501 sections 6.4.4, 6.4.5,
7.4.2; RFC 5256).

IMAP addresses a message by octet ranges of the bytes as stored: BODY[1.2] is a slice, BODY
sizes are slice lengths. So the structure is found here on the stored octets themselves (no
email.message, which rewrites them): a part is four offsets, its header start, the blank line
ending its header, its body start and its body end. Line ends are CRLF as delivered; bare LF is
tolerated everywhere (a blank line is "\\n" or "\\r\\n").

ParsedMessage is cheap to make: it finds the end of the header block and nothing else. The
header fields are split when first asked for (ENVELOPE, HEADER.FIELDS, SEARCH), the part tree
when a part number or BODY / BODYSTRUCTURE asks; appliance.imap.bodystructure reads the
Content-* and address fields and writes ENVELOPE, BODY and BODYSTRUCTURE.

The tree follows Dovecot 2.3's message-parser, the reference the server is held to (its
imaptest suite): a boundary line is "--" and a prefix of the line (the longest active one,
nearest multipart first); the CRLF before it belongs to it, so a part's body ends before that
CRLF, unless the boundary is the first line after a header or another boundary, and a boundary
line that cuts a header short or follows its blank line takes the header's last CRLF; a
boundary line ends every part opened since its multipart; a multipart/* without a usable
boundary has no parts (BODY shows one empty text/plain); a part of a multipart/digest without
Content-Type is message/rfc822; a message that is not MIME (neither Mime-Version nor
Content-Type) is text/plain; at 100 nested or 10000 parts the parts stop (the part is shown as
application/octet-stream).

Part numbers are RFC 3501's: in a message that is not multipart, part 1 is its body; a part
number walks into a message/rfc822 part's message (N.1 is that message's first part, or its
body); N.HEADER and N.TEXT are the header and body of part N's message (an empty string when
part N is not message/rfc822), N.MIME part N's own header. A section that names no part is the
empty string (as Dovecot answers); only bad syntax is an error (ValueError). HEADER.FIELDS
and .NOT give the fields' own lines (folding kept) and the header's blank line; the message's
HEADER.FIELDS always ends with a blank line. Sections are the stored octets: a NUL goes out
as-is (Dovecot sends 0x80 in its place, which is the FETCH writer's to do if wanted).
"""

from __future__ import annotations

import binascii
import codecs
import re
from collections.abc import Sequence
from email.utils import mktime_tz, parsedate_tz
from typing import NamedTuple

from appliance.imap.bodystructure import (
    Content,
    Envelope,
    Field,
    parse_content,
    parse_content_type,
    render_body,
)
from appliance.imap.rfc822 import Address, full_value, parse_addresses

MAX_NESTED_PARTS = 100
MAX_PARTS = 10000
_BOUNDARY_MAX = 80  # octets of a boundary that count

_FIELD = re.compile(rb"[^\n]*(?:\n[ \t][^\n]*)*(?:\n|\Z)")
_ENVELOPE_FIELD = re.compile(
    rb"^(date|subject|from|sender|reply-to|to|cc|bcc|in-reply-to|message-id)[ \t]*:"
    rb"[^\n]*(?:\n[ \t][^\n]*)*(?:\n|\Z)",
    re.I | re.M,
)


def _header_end(data: bytes, start: int, limit: int) -> tuple[int, int]:
    """(where the blank line ending the header at start begins, where the body begins); both
    limit when there is no blank line before it."""
    if data.startswith(b"\n", start) or data.startswith(b"\r\n", start):
        return start, start + (1 if data[start] == 10 else 2)
    crlf = data.find(b"\n\r\n", start, limit)
    lf = data.find(b"\n\n", start, limit if crlf < 0 else crlf)
    if lf >= 0:
        return lf + 1, lf + 2
    if crlf >= 0:
        return crlf + 1, crlf + 3
    return limit, limit


def _fields(data: bytes, start: int, end: int) -> list[Field]:
    out: list[Field] = []
    for raw in _FIELD.findall(data, start, end):
        if not raw:
            continue
        nl = raw.find(b"\n")
        colon = raw.find(b":", 0, nl if nl >= 0 else len(raw))
        if not 0 <= colon <= 1000:  # no name: the line is all value
            out.append(("", raw, -1))
        else:
            name = raw[:colon].rstrip(b" \t").lower().decode("latin-1")
            out.append((name, raw, colon))
    return out


class _Part:
    """One part: the octets of its header are data[start:hdr_end] (then the blank line up to
    body_start), of its body data[body_start:end]."""

    __slots__ = (
        "data",
        "start",
        "hdr_end",
        "body_start",
        "end",
        "parent",
        "children",
        "message",
        "multipart",
        "digest",
        "rfc822",
        "in_digest",
        "boundary",
        "_fields",
        "_content",
    )

    def __init__(self, data: bytes, start: int, parent: _Part | None) -> None:
        self.data = data
        self.start = self.hdr_end = self.body_start = self.end = start
        self.parent = parent
        self.children: list[_Part] = []
        self.message: _Part | None = None  # the message of a message/rfc822 part
        self.multipart = self.digest = self.rfc822 = False
        self.in_digest = parent is not None and parent.digest
        self.boundary: bytes | None = None
        self._fields: list[Field] | None = None
        self._content: Content | None = None

    def fields(self) -> list[Field]:
        if self._fields is None:
            self._fields = _fields(self.data, self.start, self.hdr_end)
        return self._fields

    def is_mime(self) -> bool:
        """A part of a multipart is MIME; a message when it says so."""
        if self.parent is not None and self.parent.multipart:
            return True
        return any(f[0] in ("mime-version", "content-type") for f in self.fields())

    def classify(self) -> None:
        """Set the flags the tree needs from the first Content-Type."""
        ct = next((f for f in self.fields() if f[0] == "content-type"), None)
        if ct is not None:
            t = parse_content_type(full_value(ct[1], ct[2]))
            full = t.full.lower()
            if full == "message/rfc822":
                self.rfc822 = True
            elif full.startswith("multipart/"):
                self.multipart = True
                self.digest = full == "multipart/digest"
                if t.ok:
                    b = next((v for k, v in t.params if k.lower() == "boundary"), None)
                    if b is not None:
                        self.boundary = b[:_BOUNDARY_MAX].encode("latin-1")
        elif self.in_digest:
            self.rfc822 = True

    # --- appliance.imap.bodystructure.PartLike

    def content(self) -> Content:
        if self._content is None:
            self._content = parse_content(self.fields(), self.is_mime())
        return self._content

    def envelope(self) -> Envelope:
        if self._fields is not None:
            return Envelope(self._fields)
        return Envelope(  # (quicker than splitting every field)
            [
                (m.group(1).lower().decode("latin-1"), m.group(), m.group().find(b":"))
                for m in _ENVELOPE_FIELD.finditer(self.data, self.start, self.hdr_end)
            ]
        )

    def body_size(self) -> tuple[int, int]:
        return self.end - self.body_start, self.data.count(b"\n", self.body_start, self.end)


class _Boundary(NamedTuple):
    line: int  # where the boundary line starts
    next: int  # where the line after it starts (len(data) when it has no LF)
    marker: _Marker
    closing: bool  # --marker--


class _Marker:
    """An open multipart's boundary (compared by identity: two may have the same text)."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text


class _Tree:
    """Finds the parts of a message (Dovecot's message-parser on a whole buffer)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.n = len(data)
        self.stack: list[_Marker] = []  # the boundaries of the open multiparts, newest last
        self.count = 1

    def _find(self, pos: int) -> _Boundary | None:
        """The first boundary line at or after pos (a line start)."""
        if not self.stack or self.count >= MAX_PARTS:
            return None
        data = self.data
        line = pos if data.startswith(b"--", pos) else data.find(b"\n--", pos) + 1
        while line > 0:  # (no part but the first starts at 0, and it has no boundaries)
            lf = data.find(b"\n", line)
            end = self.n if lf < 0 else lf
            if lf > line and data[lf - 1] == 13:
                end -= 1
            text = data[line + 2 : end]
            marker = self._match(text)
            if marker is not None:
                size = len(marker.text)
                closing = text[size : size + 2] == b"--"
                return _Boundary(line, self.n if lf < 0 else lf + 1, marker, closing)
            line = data.find(b"\n--", line) + 1
        return None

    def _match(self, text: bytes) -> _Marker | None:
        best: _Marker | None = None
        dashes = len(text) > 2 and text.endswith(b"--")
        for marker in reversed(self.stack):
            size = len(marker.text)
            if size <= len(text) and text.startswith(marker.text):
                if best is None or len(best.text) < size:
                    best = marker
                    if size == len(text) or (dashes and size == len(text) - 2):
                        break
        return best

    def _take(self, found: _Boundary) -> _Boundary:
        """Close the multiparts inside the one this boundary is of (and it, when closing)."""
        k = self.stack.index(found.marker)
        del self.stack[k if found.closing else k + 1 :]
        return found

    def _cut(self, line: int, region: int) -> int:
        """Where what precedes a boundary line ends: before its [CR]LF, unless the line is
        the first of the region."""
        if line <= region:
            return line
        return line - 2 if line - 2 >= region and self.data[line - 2] == 13 else line - 1

    def parse(self, part: _Part, depth: int) -> tuple[_Boundary | None, bool]:
        """Fill in part, whose header starts at part.start: the boundary line that ends it
        (None: it runs to the end of the data), and whether the [CR]LF before that line is
        the parent's (when it ends the header: Dovecot gives it to the parent's body)."""
        found = self._find(part.start)
        limit = self.n if found is None else found.line
        part.hdr_end, part.body_start = _header_end(self.data, part.start, limit)
        part.classify()
        opens = part.multipart and part.boundary is not None
        if opens and depth + 1 >= MAX_NESTED_PARTS:
            opens = part.multipart = False  # (shown as application/octet-stream)
        if opens and part.hdr_end < part.body_start:
            assert part.boundary is not None
            marker = _Marker(part.boundary)
            self.stack.append(marker)
            first = self._find(part.body_start)
            if first is None or first.marker is marker or first.line > part.body_start:
                return self._multipart(part, depth, marker, first), False
            self.stack.pop()  # an enclosing boundary right after the header: no parts
        if part.rfc822 and (depth + 1 >= MAX_NESTED_PARTS or self.count >= MAX_PARTS):
            part.rfc822 = False  # (shown as application/octet-stream)
        if found is not None and part.body_start >= limit:
            # the boundary line cuts the header short or follows its blank line: the [CR]LF
            # before it (the blank line's, or the last field's) is the parent's
            part.hdr_end = part.body_start = part.end = self._cut(found.line, part.start)
            if part.rfc822:  # its message is empty
                part.message = _Part(self.data, part.end, part)
                self.count += 1
            return self._take(found), True
        if part.rfc822:
            child = part.message = _Part(self.data, part.body_start, part)
            self.count += 1
            found, gave = self.parse(child, depth + 1)
            part.end = found.line if found is not None and gave else child.end
            return found, False
        if found is None:
            part.end = self.n
            return None, False
        part.end = self._cut(found.line, part.body_start)
        return self._take(found), False

    def _multipart(
        self, part: _Part, depth: int, marker: _Marker, found: _Boundary | None
    ) -> _Boundary | None:
        region = part.body_start  # where the preamble, a part or the epilogue begins
        if found is not None:
            self._take(found)
        while True:
            if found is None:
                part.end = self.n
                return None
            if found.marker is not marker:  # an enclosing multipart's boundary
                part.end = self._cut(found.line, region)
                return found
            if found.closing:  # the epilogue runs to an enclosing boundary, or the end
                region = found.next
                found = self._find(region)
                if found is not None:
                    self._take(found)
                continue
            if found.next >= self.n and not self.data.endswith(b"\n"):
                part.end = self.n  # a boundary on the last line, no part after it
                return None
            child = _Part(self.data, found.next, part)
            part.children.append(child)
            self.count += 1
            found, gave = self.parse(child, depth + 1)  # (taken there)
            region = found.line if found is not None and gave else child.end


class SectionSpec(NamedTuple):
    """A FETCH BODY[...] section: part numbers, then "" (the part's body, or the whole
    message), "MIME", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT" or "TEXT"."""

    part: tuple[int, ...]
    text: str
    fields: tuple[str, ...] = ()  # HEADER.FIELDS[.NOT] names as the client wrote them

    def __str__(self) -> str:
        """The section as a FETCH response names it: BODY[<this>]."""
        nums = ".".join(map(str, self.part))
        s = nums + ("." if nums and self.text else "") + self.text
        if self.fields:
            s += " (" + " ".join(_astring(f) for f in self.fields) + ")"
        return s


_NUMBER = re.compile(r"[1-9][0-9]*")
_KEYWORD = re.compile(r"[A-Za-z.]*")
_ATOM_NAME = re.compile(r"[!#$&'+-\[^-z|-~]+")  # ASTRING-CHARs but ']'
_QUOTED_NAME = re.compile(r'"((?:[^"\\\r\n]|\\["\\])*)"')
_LITERAL_NAME = re.compile(r"\{([0-9]+)\+?\}\r\n")


def _astring(name: str) -> str:
    if _ATOM_NAME.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_section_spec(spec: str) -> SectionSpec:
    """What is inside the brackets of BODY[...] (RFC 3501 section-spec); ValueError when it
    is not one. Keywords in any case; field names as given (atoms, quoted or literals)."""
    i = 0
    nums: list[int] = []
    while i < len(spec) and spec[i] in "0123456789":
        m = _NUMBER.match(spec, i)
        if m is None:
            raise ValueError(f"bad part number in section {spec!r}")
        nums.append(int(m.group()))
        i = m.end()
        if i == len(spec):
            return SectionSpec(tuple(nums), "")
        if spec[i] != "." or i + 1 == len(spec):
            raise ValueError(f"bad section {spec!r}")
        i += 1
    m = _KEYWORD.match(spec, i)
    assert m is not None
    word, tail = m.group().upper(), spec[m.end() :]
    if word in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return SectionSpec(tuple(nums), word, _field_names(tail[1:] if tail[:1] == " " else tail))
    if tail or word not in ("", "HEADER", "TEXT", "MIME") or (word == "MIME" and not nums):
        raise ValueError(f"bad section {spec!r}")
    return SectionSpec(tuple(nums), word)


def _field_names(text: str) -> tuple[str, ...]:
    """A header-list: "(" astring *(SP astring) ")"."""
    if not text.startswith("(") or not text.endswith(")"):
        raise ValueError(f"bad header list {text!r}")
    body, i = text[1:-1], 0
    out: list[str] = []
    while i < len(body):
        if body[i] == " " and out:
            i += 1
            continue
        if m := _ATOM_NAME.match(body, i):
            out.append(m.group())
            i = m.end()
        elif m := _QUOTED_NAME.match(body, i):
            out.append(re.sub(r"\\(.)", r"\1", m.group(1)))
            i = m.end()
        elif m := _LITERAL_NAME.match(body, i):
            i = m.end() + int(m.group(1))
            if i > len(body):
                raise ValueError(f"bad header list {text!r}")
            out.append(body[m.end() : i])
        else:
            raise ValueError(f"bad header list {text!r}")
        if i < len(body) and body[i] != " ":
            raise ValueError(f"bad header list {text!r}")
    if not out:
        raise ValueError("empty header list")
    return tuple(out)


class ParsedMessage:
    """One stored message, for FETCH, SEARCH and SORT."""

    __slots__ = ("data", "_root", "_tree")

    def __init__(self, data: bytes) -> None:
        self.data = data
        root = self._root = _Part(data, 0, None)
        root.hdr_end, root.body_start = _header_end(data, 0, len(data))
        root.end = len(data)
        self._tree = False

    def _parts(self) -> _Part:
        if not self._tree:
            self._tree = True
            _Tree(self.data).parse(self._root, 0)
        return self._root

    # --- FETCH

    def header_bytes(self) -> bytes:
        """BODY[HEADER], RFC822.HEADER: the header with the blank line after it."""
        return self.data[: self._root.body_start]

    def text_bytes(self) -> bytes:
        """BODY[TEXT], RFC822.TEXT."""
        return self.data[self._root.body_start :]

    def section(self, spec: str | SectionSpec) -> bytes:
        """The octets of BODY[spec] (before any <partial>); b"" for a part there is not."""
        s = parse_section_spec(spec) if isinstance(spec, str) else spec
        data = self.data
        msg: _Part | None = self._root
        if s.part:
            part = self._part(s.part)
            if part is None:
                return b""
            if s.text == "":
                return data[part.body_start : part.end]
            if s.text == "MIME":
                return data[part.start : part.body_start]
            msg = part.message
        elif s.text == "":
            return data
        if msg is None:
            return b""
        if s.text == "HEADER":
            return data[msg.start : msg.body_start]
        if s.text == "TEXT":
            return data[msg.body_start : msg.end]
        names = {f.lower() for f in s.fields}
        keep = s.text == "HEADER.FIELDS"
        out = [raw for name, raw, _ in msg.fields() if (name in names) == keep]
        blank = data[msg.hdr_end : msg.body_start]  # (none when the header runs to the end)
        if keep and msg is self._root:  # as Dovecot's (cached) answer: lines, a blank line
            if out and not out[-1].endswith(b"\n"):
                out[-1] += b"\r\n"
            blank = blank or b"\r\n"
        out.append(blank)
        return b"".join(out)

    def _part(self, nums: Sequence[int]) -> _Part | None:
        part: _Part | None = self._parts()
        for k, num in enumerate(nums):
            assert part is not None
            more = k + 1 < len(nums)
            if part.multipart:
                part = part.children[num - 1] if num <= len(part.children) else None
            elif num != 1 or (more and part.message is None):
                part = None
            if part is None:
                return None
            if more and part.message is not None:
                part = part.message
        return part

    def envelope(self) -> bytes:
        """The ENVELOPE value, parentheses included."""
        return self._root.envelope().render()

    def bodystructure(self, extended: bool) -> bytes:
        """The BODY (extended=False) or BODYSTRUCTURE value, parentheses included."""
        return render_body(self._parts(), extended)

    # --- SEARCH and SORT

    def header_values(self, name: str) -> list[str]:
        """Every field of that name: unfolded, RFC 2047 words decoded, stripped."""
        name = name.lower()
        return [
            decode_header(_unfolded(raw, c)).strip()
            for n, raw, c in self._root.fields()
            if n == name
        ]

    def header_text(self) -> str:
        """The whole header decoded, a field a line (SEARCH TEXT)."""
        return "\n".join(
            raw[:c].decode("latin-1") + ": " + decode_header(_unfolded(raw, c)).strip()
            if c >= 0
            else decode_header(raw.rstrip(b"\r\n"))
            for _, raw, c in self._root.fields()
        )

    def body_text(self) -> str:
        """The text of the body (SEARCH BODY): every text/* part with its transfer encoding
        and charset decoded, message/rfc822 parts by their bodies, other parts skipped."""
        out: list[str] = []
        _texts(self._parts(), self.data, out)
        return "\n".join(out)

    def addresses(self, name: str) -> list[tuple[str | None, str | None, str | None]]:
        """(display name decoded, mailbox, host) of every address in the fields of that
        name (From, To, Cc, ...), in order. A group starts with (None, group name, None) and
        ends with (None, None, None); what a broken address lacks is "" (host "" is not
        None: that would start a group)."""
        name = name.lower()
        out: list[tuple[str | None, str | None, str | None]] = []
        for n, raw, c in self._root.fields():
            if n == name:
                out += map(_address, parse_addresses(full_value(raw, c), False))
        return out

    def sent_date(self) -> float | None:
        """The first Date field as a POSIX timestamp (a date without a zone as UTC); None when
        absent or unparseable."""
        for value in self.header_values("date"):
            try:
                parsed = parsedate_tz(value)
                if parsed is None:
                    return None
                return float(mktime_tz((*parsed[:9], parsed[9] or 0)))
            except (ValueError, OverflowError, TypeError):
                return None
        return None

    def message_id(self) -> str | None:
        """The first Message-ID's msg-id, angle brackets included."""
        for value in self.header_values("message-id"):
            ids = _msg_ids(value)
            return ids[0] if ids else (value or None)
        return None

    def references(self) -> list[str]:
        """The msg-ids threading links to (RFC 5256): References, or else the first msg-id
        of In-Reply-To."""
        ids = [i for v in self.header_values("references") for i in _msg_ids(v)]
        if ids:
            return ids
        irt = [i for v in self.header_values("in-reply-to") for i in _msg_ids(v)]
        return irt[:1]

    def subject(self) -> str:
        """The first Subject, decoded ("" when there is none)."""
        values = self.header_values("subject")
        return values[0] if values else ""


def _unfolded(raw: bytes, colon: int) -> bytes:
    v = raw[colon + 1 :]
    if v.endswith(b"\n"):
        v = v[:-2] if v.endswith(b"\r\n") else v[:-1]
    return v.replace(b"\r\n", b"").replace(b"\n", b"")


def _address(a: Address) -> tuple[str | None, str | None, str | None]:
    name, _, mailbox, host = a
    if host is None:  # a group's start (its name decoded) or end
        return None, None if mailbox is None else decode_header(mailbox.encode("latin-1")), None
    return (
        decode_header(name.encode("latin-1")) if name else None,
        _utf8(mailbox),
        _utf8(host),
    )


def _utf8(s: str | None) -> str | None:
    return None if s is None else s.encode("latin-1").decode("utf-8", "replace")


_MSG_ID = re.compile(r"<[^<>]*>")


def _msg_ids(value: str) -> list[str]:
    return ["".join(m.split()) for m in _MSG_ID.findall(value)]


# --- RFC 2047 and transfer encodings

_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(rb"[ \t\r\n]*")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")


def _charset(name: str) -> str:
    name = name.partition("*")[0].strip().lower()  # (RFC 2231 language suffix)
    if name in ("", "us-ascii", "ascii", "unknown-8bit", "x-unknown"):
        return "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


def _decode(octets: bytes, charset: str) -> str:
    try:
        return octets.decode(_charset(charset), "replace")
    except (LookupError, ValueError):
        return octets.decode("utf-8", "replace")


def decode_header(value: bytes) -> str:
    """A header value with RFC 2047 encoded-words decoded (the white space between two of
    them dropped); the other octets as UTF-8."""
    if b"=?" not in value:
        return value.decode("utf-8", "replace")
    out: list[str] = []
    pos = 0
    run: tuple[str, bytes] | None = None  # adjacent words of one charset decode together
    for m in _ENCODED_WORD.finditer(value):
        gap = value[pos : m.start()]
        if run is None or _BETWEEN_WORDS.fullmatch(gap) is None:
            if run is not None:
                out.append(_decode(run[1], run[0]))
                run = None
            out.append(gap.decode("utf-8", "replace"))
        charset, text = m.group(1).decode("latin-1"), m.group(3)
        try:
            if m.group(2) in b"bB":
                octets = binascii.a2b_base64(text + b"=" * (-len(text) % 4))
            else:
                octets = binascii.a2b_qp(text, header=True)
        except (binascii.Error, ValueError):
            charset, octets = "latin-1", m.group()  # not decodable: the word as it is
        if run is not None and run[0].lower() == charset.lower():
            run = (charset, run[1] + octets)
        else:
            if run is not None:
                out.append(_decode(run[1], run[0]))
            run = (charset, octets)
        pos = m.end()
    if run is not None:
        out.append(_decode(run[1], run[0]))
    out.append(value[pos:].decode("utf-8", "replace"))
    return "".join(out)


def _body_octets(data: bytes, encoding: str | None) -> bytes:
    enc = (encoding or "").lower()
    try:
        if enc == "base64":
            text = _NOT_BASE64.sub(b"", data)  # (padding too: blocks may be concatenated)
            if len(text) % 4 == 1:
                text = text[:-1]
            return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
        if enc == "quoted-printable":
            return binascii.a2b_qp(data)
    except (binascii.Error, ValueError):
        pass
    return data


def _texts(part: _Part, data: bytes, out: list[str]) -> None:
    if part.multipart:
        for child in part.children:
            _texts(child, data, out)
        return
    if part.message is not None:
        _texts(part.message, data, out)
        return
    c = part.content()
    if c.type is None or c.type.lower() == "text":
        octets = _body_octets(data[part.body_start : part.end], c.encoding)
        out.append(_decode(octets, c.param("charset") or ""))
