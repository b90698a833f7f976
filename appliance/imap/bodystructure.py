"""ENVELOPE, BODY and BODYSTRUCTURE as FETCH writes them (RFC 3501 sections 7.4.2 and 9), and
the Content-* fields they are read from (RFC 2045, RFC 2231); addresses and the header lexer
are appliance.imap.rfc822's.

appliance.imap.mime finds a message's parts and header fields as octet offsets; this module
reads the few fields these FETCH items show and writes them. Dovecot is the reference the
server is held to (its imaptest suite), so the reading follows Dovecot 2.3's lib-mail where the
RFCs leave room: the display name of `user@host (Real Name)` is the comment, a broken address
keeps what parsed and fills the rest with MISSING_MAILBOX / MISSING_DOMAIN, sender and
reply-to fall back to from, the last Date / Subject / Message-ID / In-Reply-To wins while
address fields of the same name add up, subjects and display names are not decoded but their
white space runs are one space, a broken Content-Type is written as what parsed of it, RFC 2231
continuations are joined (not decoded), and the defaults are written in lower case ("text"
"plain" ("charset" "us-ascii") ... "7bit"). Sizes are of the stored octets. (One Dovecot slip is
not copied: after a continued parameter, a lone `key*=` comes out as `key*1*` there.)

Header values are handled as latin-1 str: one character per octet, so 8-bit octets pass
through unchanged and go out as literals (IMAP strings are quoted when they can be). A value is
what follows the colon with the spaces after the colon skipped and the folding line ends kept
as bare LF ("full value"); a NUL in it is U+FFFD in what is written, as in Dovecot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from appliance.imap.rfc822 import (
    Address,
    Lex,
    full_value,
    parse_addresses,
    strdup,
)

# (lower-cased name, the field's raw octets with its line ends, offset of the colon or -1)
Field = tuple[str, bytes, int]

# --- Content-* (Dovecot's message-part-data.c, rfc2231-parser.c)


class ContentType(NamedTuple):
    full: str  # "type/subtype" as written; what parsed of it when broken ("" or "type")
    ok: bool  # it parsed: params were read
    params: list[tuple[str, str]]


_BROKEN_VALUE = re.compile(r"[^; \t\r\n]*")
_SECTION_NUMBER = re.compile(r"[0-9]*")


def _content_param(lx: Lex) -> tuple[int, str, str]:
    s = lx.s
    if lx.i >= lx.n:
        return 0, "", ""
    if s[lx.i] != ";":
        return -1, "", ""
    lx.i += 1
    if lx.skip() <= 0:
        return -1, "", ""
    key: list[str] = []
    if lx.token(key) <= 0 or s[lx.i] != "=":
        return -1, "", ""
    lx.i += 1
    value: list[str] = []
    ret = lx.skip()
    if ret > 0:
        if s[lx.i] == '"':
            ret = lx.quoted(value)
        elif s[lx.i] == "=":  # broken input: name==?utf-8?b?...?=
            m = _BROKEN_VALUE.match(s, lx.i)
            assert m is not None
            value.append(m.group())
            lx.i = m.end()
        else:
            ret = lx.token(value)
    return (-1 if ret < 0 else 1), "".join(key), "".join(value)


def _params(lx: Lex) -> list[tuple[str, str]]:
    """`; key=value` pairs; RFC 2231 `key*0*=...; key*1=...` joined into `key*` (the value
    still encoded, as Dovecot writes it)."""
    out: list[tuple[str, str]] = []
    split: list[tuple[str, int, bool, str]] = []
    while True:
        ret, key, value = _content_param(lx)
        if ret == 0:
            break
        if ret < 0:
            if lx.i >= lx.n:
                break
            lx.i += 1
            continue
        star = key.find("*")
        if star < 0:
            out.append((key, value))
            continue
        rest = key[star + 1 :]  # key*, key*N or key*N*: one piece of an RFC 2231 value
        m = _SECTION_NUMBER.match(rest)
        assert m is not None
        digits, after = m.group(), rest[m.end() :]
        if rest and after not in ("", "*"):
            out.append((key, value))
        else:
            split.append(
                (key[:star], int(digits) if digits else 0, not rest or after == "*", value)
            )
    if not split:
        return out
    split.sort(key=lambda p: (p[0], p[1]))
    i = 0
    while i < len(split):
        name = split[i][0].lower()
        j = i
        while j < len(split) and split[j][0].lower() == name:
            j += 1
        run = split[i:j]
        if any(p[1] != k for k, p in enumerate(run)):  # missing indexes: keep them apart
            out.extend((f"{p[0]}*{p[1]}{'*' if p[2] else ''}", p[3]) for p in run)
        else:
            extended = any(p[2] for p in run)
            text = "''" if extended and not run[0][2] else ""
            text += "".join(p[3] if p[2] or not extended else p[3].replace("%", "%25") for p in run)
            out.append((run[0][0] + ("*" if extended else ""), text))
        i = j
    return out


def _no_nul_params(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(strdup(k), strdup(v)) for k, v in params]


def parse_content_type(value: str) -> ContentType:
    lx = Lex(value)
    if lx.skip() <= 0:
        return ContentType("", False, [])
    main: list[str] = []
    if lx.token(main) <= 0 or not main[0]:
        return ContentType("".join(main), False, [])
    if lx.s[lx.i] != "/":
        return ContentType("", False, [])
    lx.i += 1
    if lx.skip() <= 0:
        return ContentType("", False, [])
    sub: list[str] = []
    ret = lx.token(sub)
    if ret < 0 or not sub[0] or (lx.i < lx.n and lx.s[lx.i] != ";"):
        return ContentType("", False, [])
    params = _params(lx)
    return ContentType(
        main[0] + "/" + sub[0], True, _no_nul_params(params) if "\0" in value else params
    )


@dataclass(slots=True)
class Content:
    """A part's Content-* fields as BODYSTRUCTURE shows them (None: absent)."""

    type: str | None = None
    subtype: str = ""
    params: list[tuple[str, str]] = field(default_factory=list)
    id: str | None = None
    description: str | None = None
    encoding: str | None = None  # Content-Transfer-Encoding, when a lone token
    md5: str | None = None
    disposition: str | None = None
    disposition_params: list[tuple[str, str]] = field(default_factory=list)
    language: list[str] | None = None
    location: str | None = None

    def param(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.params if k.lower() == name), None)


def parse_content(fields: Sequence[Field], is_mime: bool) -> Content:
    """The Content-* fields of a part; none count in a message that is not MIME (neither
    Mime-Version nor Content-Type)."""
    c = Content()
    if not is_mime:
        return c
    for name, raw, colon in fields:
        if not name.startswith("content-"):
            continue
        what = name[8:]
        if what == "type":
            if c.type is None:
                ct = parse_content_type(full_value(raw, colon))
                c.type, _, c.subtype = ct.full.partition("/")
                c.params = ct.params
        elif what == "transfer-encoding":
            if c.encoding is None:
                lx = Lex(full_value(raw, colon))
                lx.skip()
                buf: list[str] = []
                if lx.token(buf) >= 0 and lx.skip() == 0 and buf[0]:
                    c.encoding = buf[0]
        elif what == "id":
            if c.id is None:
                c.id = strdup(full_value(raw, colon))
        elif what == "md5":
            if c.md5 is None:
                c.md5 = strdup(full_value(raw, colon))
        elif what == "description":
            if c.description is None:
                c.description = strdup(full_value(raw, colon))
        elif what == "location":
            if c.location is None:
                c.location = strdup(full_value(raw, colon))
        elif what == "language":
            if c.language is None:
                c.language = _languages(full_value(raw, colon)) or None
        elif what == "disposition" and not c.disposition_params:
            lx = Lex(full_value(raw, colon))
            lx.skip()
            buf = []
            if lx.token(buf) >= 0:
                c.disposition = buf[0]
                c.disposition_params = _no_nul_params(_params(lx))
    return c


def _languages(value: str) -> list[str]:
    lx = Lex(value)
    lx.skip()
    out: list[str] = []
    while True:
        buf: list[str] = []
        if lx.atom(buf) < 0:
            break
        out.append(buf[0])
        if lx.i >= lx.n or lx.s[lx.i] != ",":
            break
        lx.i += 1
        lx.skip()
    return out


# --- ENVELOPE

ENVELOPE_FIELDS = (
    *("date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc"),
    *("in-reply-to", "message-id"),
)
_ENVELOPE_INDEX = {name: k for k, name in enumerate(ENVELOPE_FIELDS)}


class Envelope:
    """The ENVELOPE fields of a header: strings are full values (None: absent), address
    fields every address of every field of that name."""

    __slots__ = ("strings", "addresses")

    def __init__(self, fields: Sequence[Field]) -> None:
        self.strings: list[str | None] = [None, None, None, None]  # date subject irt msgid
        self.addresses: list[list[Address]] = [[], [], [], [], [], []]  # from .. bcc
        for name, raw, colon in fields:
            k = _ENVELOPE_INDEX.get(name)
            if k is None:
                continue
            value = full_value(raw, colon)
            if 2 <= k <= 7:
                self.addresses[k - 2].extend(parse_addresses(value))
            else:
                self.strings[k if k < 2 else k - 6] = strdup(value)

    def render(self) -> bytes:
        return self.text().encode("latin-1")

    def text(self) -> str:
        date, subject, in_reply_to, message_id = self.strings
        frm, sender, reply_to, to, cc, bcc = map(_address_list, self.addresses)
        subj = "NIL" if subject is None else _humans(subject)
        return (
            f"({_nstr_nolf(date)} {subj} {frm} {sender if self.addresses[1] else frm}"
            f" {reply_to if self.addresses[2] else frm} {to} {cc} {bcc}"
            f" {_nstr_nolf(in_reply_to)} {_nstr_nolf(message_id)})"
        )


def _address_list(addresses: list[Address]) -> str:
    if not addresses:
        return "NIL"
    items = (
        f"({'NIL' if name is None else _humans(name)} {_nstr(route)} {_nstr(mailbox)}"
        f" {_nstr(host)})"
        for name, route, mailbox, host in addresses
    )
    return "(" + "".join(items) + ")"


# --- IMAP strings (latin-1 str: one character an octet)

_NOT_FOR_HUMANS = re.compile(r"[\0\t\r\n]|  |^ | $")
_SPACES = re.compile(r"[ \t\r\n]+")
_LINE_ENDS = re.compile(r"[\r\n]+(?![ \t\r\n]|\Z)")


def _q(value: str) -> str:
    """An IMAP string: quoted, or a literal when it holds CR, LF, NUL or 8-bit octets or more
    than four characters to escape."""
    if value.isascii() and "\r" not in value and "\n" not in value and "\0" not in value:
        if '"' not in value and "\\" not in value:
            return f'"{value}"'
        if value.count('"') + value.count("\\") <= 4:
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{{{len(value)}}}\r\n{value}"


def _nstr(value: str | None) -> str:
    return "NIL" if value is None else _q(value)


def _nstr_nolf(value: str | None) -> str:
    """NIL or the string with its line ends removed (a space kept between the lines)."""
    if value is None:
        return "NIL"
    if "\n" in value or "\r" in value:
        value = _LINE_ENDS.sub(" ", value).replace("\r", "").replace("\n", "")
    return _q(value)


def _humans(value: str) -> str:
    """A subject or display name: runs of white space (line ends included) as one space, none
    at the ends, NUL as 0x80."""
    if _NOT_FOR_HUMANS.search(value) is not None:
        value = " ".join(w for w in _SPACES.split(value.replace("\0", "\x80")) if w)
    return _q(value)


# --- BODY / BODYSTRUCTURE


class PartLike(Protocol):
    """What the writer needs of a part (appliance.imap.mime's parts are these)."""

    @property
    def multipart(self) -> bool: ...  # Content-Type multipart/* (maybe without any part)

    @property
    def in_digest(self) -> bool: ...  # a part of a multipart/digest

    @property
    def children(self) -> Sequence[PartLike]: ...  # a multipart's parts

    @property
    def message(self) -> PartLike | None: ...  # a message/rfc822 part's message

    def content(self) -> Content: ...

    def envelope(self) -> Envelope: ...

    def body_size(self) -> tuple[int, int]: ...  # octets and lines of the body


_CHARSET_DEFAULT = '"charset" "us-ascii"'
_EMPTY = '("text" "plain" (' + _CHARSET_DEFAULT + ') NIL NIL "7bit" 0 0'


def render_body(part: PartLike, extended: bool) -> bytes:
    """The BODY (extended=False) or BODYSTRUCTURE value of a part, parentheses included."""
    out = ["("]
    _write(part, extended, out)
    out.append(")")
    return "".join(out).encode("latin-1")


def _write(part: PartLike, extended: bool, out: list[str]) -> None:
    c = part.content()
    if part.multipart:
        for child in part.children:
            out.append("(")
            _write(child, extended, out)
            out.append(")")
        if not part.children:  # a multipart without parts: one empty text/plain
            out.append(_EMPTY + (" NIL NIL NIL NIL)" if extended else ")"))
        out += (" ", _q(c.subtype))
        if extended:
            out += (" ", _param_list(c.params, False))
            _write_common(c, out)
        return
    message = part.message
    text = False
    if message is not None:
        out.append('"message" "rfc822"')
    elif _truncated(part, c):  # a part the MIME depth / count limits cut short
        out.append('"application" "octet-stream"')
    elif c.type is None:
        text = True
        out.append('"text" "plain"')
    else:
        text = c.type.lower() == "text"
        out += (_q(c.type), " ", _q(c.subtype))
    size, lines = part.body_size()
    encoding = '"7bit"' if c.encoding is None else _q(c.encoding)
    out.append(
        f" {_param_list(c.params, text)} {_nstr_nolf(c.id)} {_nstr_nolf(c.description)}"
        f" {encoding} {size}"
    )
    if text:
        out.append(f" {lines}")
    elif message is not None:
        out += (" ", message.envelope().text(), " (")
        _write(message, extended, out)
        out.append(f") {lines}")
    if extended:
        out += (" ", _nstr_nolf(c.md5))
        _write_common(c, out)


def _truncated(part: PartLike, c: Content) -> bool:
    if c.type is None:
        return part.in_digest
    t = c.type.lower()
    return t == "multipart" or (t == "message" and c.subtype.lower() == "rfc822")


def _param_list(params: list[tuple[str, str]], text: bool) -> str:
    if not params and not text:
        return "NIL"
    items = [_q(k) + " " + _q(v) for k, v in params]
    if text and not any(k.lower() == "charset" for k, _ in params):
        items.append(_CHARSET_DEFAULT)
    return "(" + " ".join(items) + ")"


def _write_common(c: Content, out: list[str]) -> None:
    disposition = "NIL"
    if c.disposition is not None:
        disposition = f"({_q(c.disposition)} {_param_list(c.disposition_params, False)})"
    language = "NIL" if c.language is None else "(" + " ".join(map(_q, c.language)) + ")"
    out.append(f" {disposition} {language} {_nstr_nolf(c.location)}")
