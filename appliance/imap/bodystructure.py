"""ENVELOPE, BODY and BODYSTRUCTURE as FETCH writes them (RFC 3501 sections 7.4.2 and 9), and
the header syntax they are read from (RFC 5322 addresses, RFC 2045 Content-*, RFC 2231).

appliance.imap.mime finds a message's parts and header fields as octet offsets; this module
reads the few fields these FETCH items show and writes them. Dovecot is the reference the
server is held to (its imaptest suite), so the reading follows Dovecot 2.3's lib-mail where the
RFCs leave room: the display name of `user@host (Real Name)` is the comment, a broken address
keeps what parsed and fills the rest with MISSING_MAILBOX / MISSING_DOMAIN, sender and
reply-to fall back to from, the last Date / Subject / Message-ID / In-Reply-To wins while
address fields of the same name add up, a broken Content-Type is written as what parsed of it,
RFC 2231 continuations are joined (not decoded), and the defaults are written in lower case
("text" "plain" ("charset" "us-ascii") ... "7bit"). Sizes are of the stored octets.

Header values are handled as latin-1 str: one character per octet, so 8-bit octets pass
through unchanged and go out as literals. A value is what follows the colon with the spaces
after the colon skipped and the folding line ends kept as bare LF ("full value").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple, Protocol

# (lower-cased name, the field's raw octets with its line ends, offset of the colon or -1)
Field = tuple[str, bytes, int]
# (name, route, mailbox, host) as RFC 3501 writes an address; group start: (None, None,
# group name, None); group end: all None
Address = tuple["str | None", "str | None", "str | None", "str | None"]

_NUL_REPLACEMENT = "\xef\xbf\xbd"  # U+FFFD as UTF-8 octets (latin-1 str)


def full_value(raw: bytes, colon: int) -> str:
    """A field's value: after the colon and the spaces that follow it on its first line (all
    but one if there is nothing else), without the final line end, folding CRLF as LF. NULs
    stay (address syntax stops at them); _strdup replaces them where Dovecot does."""
    v = raw[colon + 1 :]
    if v[-1:] == b"\n":
        v = v[:-2] if v[-2:-1] == b"\r" else v[:-1]
    if v[:1] == b" " or v[:1] == b"\t":
        nl = v.find(b"\n")
        first = v if nl < 0 else v[: nl - 1 if v[nl - 1 : nl] == b"\r" else nl]
        rest = first.lstrip(b" \t")
        v = v[len(first) - len(rest) if rest else 1 :]
    if b"\n" in v:
        v = v.replace(b"\r\n", b"\n")
    return v.decode("latin-1")


def _strdup(value: str) -> str:
    return value.replace("\0", _NUL_REPLACEMENT) if "\0" in value else value


# --- RFC 822 lexing (Dovecot's rfc822-parser: 1 = more input, 0 = at the end, -1 = broken)

_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\xff]+")
_ATOM_OR_DOT = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.\x80-\xff]*")
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-^_`{|}~.\x80-\xff]*")  # MIME token, and '.'
_ATEXT = frozenset("!#$%&'*+-/=?^_`{|}~" + "".join(map(chr, range(0x80, 0x100))))


def _is_atext(c: str) -> bool:
    return c.isascii() and c.isalnum() or c in _ATEXT


class _Lex:
    """A cursor over a header value; `comment` is the text of the last comment skipped."""

    __slots__ = ("s", "i", "n", "comment")

    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0
        self.n = len(s)
        self.comment = ""

    def skip(self) -> int:
        """Whitespace (folding line ends included) and comments."""
        s, n, i = self.s, self.n, self.i
        while i < n:
            c = s[i]
            if c in " \t\r\n":
                i += 1
            elif c == "(":
                self.i = i
                if self._comment() < 0:
                    return -1
                i = self.i
            else:
                break
        self.i = i
        return 1 if i < n else 0

    def _comment(self) -> int:
        s, n = self.s, self.n
        i = start = self.i + 1
        level, out = 1, []
        self.comment = ""
        while i < n:
            c = s[i]
            if c == "(":
                level += 1
            elif c == ")":
                level -= 1
                if level == 0:
                    out.append(s[start:i])
                    self.comment = "".join(out)
                    self.i = i + 1
                    return 1
            elif c == "\n":
                out.append(s[start : i - 1] if i > start and s[i - 1] == "\r" else s[start:i])
                start = i + 1
            elif c == "\\":
                i += 1
                if i >= n:
                    break
                if s[i] in "\r\n\0":
                    i -= 1
                else:
                    out.append(s[start : i - 1])
                    start = i
            i += 1
        self.i = n
        return -1

    def _run(self, pattern: re.Pattern[str], out: list[str]) -> int:
        m = pattern.match(self.s, self.i)
        assert m is not None  # (the patterns that may match nothing)
        out.append(m.group())
        self.i = m.end()
        return 0 if self.i >= self.n else self.skip()

    def token(self, out: list[str]) -> int:
        """A MIME token (possibly empty)."""
        return self._run(_TOKEN, out)

    def atom(self, out: list[str]) -> int:
        m = _ATOM.match(self.s, self.i)
        if m is None:
            return -1
        out.append(m.group())
        self.i = m.end()
        return 0 if self.i >= self.n else self.skip()

    def dot_atom(self, out: list[str]) -> int:
        s = self.s
        m = _ATOM.match(s, self.i)
        while m is not None:
            out.append(m.group())
            self.i = m.end()
            if self.i >= self.n:
                return 0
            ret = self.skip()
            if ret <= 0:
                return ret
            if s[self.i] != ".":
                return 1
            self.i += 1
            out.append(".")
            if self.skip() <= 0:
                return -1
            m = _ATOM.match(s, self.i)
        return -1

    def quoted(self, out: list[str]) -> int:
        """A quoted string at '"': unescaped, folding line ends removed."""
        s, n = self.s, self.n
        i = start = self.i + 1
        end = s.find('"', i)
        if end >= 0 and "\\" not in s[i:end] and "\n" not in s[i:end]:
            out.append(s[i:end])
            self.i = end + 1
            return self.skip()
        while i < n:
            c = s[i]
            if c == '"':
                out.append(s[start:i])
                self.i = i + 1
                return self.skip()
            if c == "\n":
                out.append(s[start : i - 1] if i > start and s[i - 1] == "\r" else s[start:i])
                start = i + 1
            elif c == "\\":
                i += 1
                if i >= n:
                    break
                if s[i] in "\r\n\0":
                    i -= 1
                else:
                    out.append(s[start : i - 1])
                    start = i
            i += 1
        self.i = n
        return -1

    def phrase(self, out: list[str]) -> int:
        """Words (atoms, dots, quoted strings) joined by single spaces."""
        s = self.s
        if self.i >= self.n:
            return 0
        if s[self.i] == ".":
            return -1
        while True:
            ret = self.quoted(out) if s[self.i] == '"' else self._run(_ATOM_OR_DOT, out)
            if ret <= 0:
                return ret
            c = s[self.i]
            if c != '"' and c != "." and not _is_atext(c):
                break
            out.append(" ")
        return self.skip()

    def domain(self, out: list[str]) -> int:
        """'@' and a domain (dot-atom or [literal])."""
        self.i += 1
        if self.skip() <= 0:
            return -1
        if self.s[self.i] != "[":
            return self.dot_atom(out)
        s, n = self.s, self.n
        start = i = self.i
        i += 1
        while i < n:
            c = s[i]
            if c == "[":
                self.i = i
                return -1
            if c == "]":
                out.append(s[start : i + 1])
                self.i = i + 1
                return self.skip()
            if c == "\n":
                out.append(s[start : i - 1] if s[i - 1] == "\r" else s[start:i])
                start = i + 1
            elif c == "\\":
                i += 1
                if i >= n:
                    break
            i += 1
        self.i = n
        return -1


# --- addresses (Dovecot's message-address.c)


class _Addresses(_Lex):
    __slots__ = ("fill", "out", "name", "route", "mailbox", "host", "invalid")

    def __init__(self, s: str, fill: bool) -> None:
        super().__init__(s)
        self.fill = fill
        self.out: list[Address] = []
        self._clear()

    def _clear(self) -> None:
        self.name: str | None = None
        self.route: str | None = None
        self.mailbox: str | None = None
        self.host: str | None = None
        self.invalid = False

    def _add(self) -> None:
        self.out.append((self.name, self.route, self.mailbox, self.host))
        self._clear()

    def _add_fixed(self) -> None:
        if self.mailbox is None:
            self.mailbox = "MISSING_MAILBOX" if self.fill else ""
        if not self.host:
            self.host = "MISSING_DOMAIN" if self.fill else ""
        self._add()

    def parse(self) -> list[Address]:
        if self.skip() <= 0:
            return self.out
        while True:
            if self._address() == 0:
                break
            if self.i >= self.n or self.s[self.i] != ",":
                break
            self.i += 1
            ret = self.skip()
            if ret <= 0:
                if ret < 0:
                    self._add_fixed()
                break
        return self.out

    def _address(self) -> int:
        start = self.i
        ret = self._group()
        if ret < 0:
            self.i = start
            ret = self._mailbox()
        return ret

    def _group(self) -> int:
        buf: list[str] = []
        if self.phrase(buf) <= 0 or self.s[self.i] != ":":
            return -1
        self.i += 1
        ret = self.skip()
        self.mailbox = "".join(buf)
        self._add()
        if ret > 0 and self.s[self.i] != ";":
            while True:
                self._mailbox()
                if self.i >= self.n or self.s[self.i] != ",":
                    break
                self.i += 1
                if self.skip() <= 0:
                    ret = -1
                    break
        if ret >= 0:
            if self.i >= self.n or self.s[self.i] != ";":
                ret = -1
            else:
                self.i += 1
                ret = self.skip()
        self._add()  # the end of the group
        return 0 if ret == 0 else 1

    def _mailbox(self) -> int:
        start = self.i
        ret = self._name_addr()
        if ret < 0:
            self.i = start
            ret = self._addr_spec()
            if self.invalid and self.name is None and self.mailbox is not None:
                if self.host is None:
                    self.name, self.mailbox = self.mailbox, None
        self._add_fixed()
        return ret

    def _name_addr(self) -> int:
        buf: list[str] = []
        if self.phrase(buf) <= 0 or self.s[self.i] != "<":
            return -1
        self.name = "".join(buf) or None
        if self._angle_addr() < 0:
            if self.fill:
                self.host = "SYNTAX_ERROR"
            self.invalid = True
        return 1 if self.i < self.n else 0

    def _angle_addr(self) -> int:
        s = self.s
        self.i += 1
        if self.skip() <= 0:
            return -1
        if s[self.i] == "@":
            if self._route() > 0 and s[self.i] == ":":
                self.i += 1
            else:
                if self.fill:
                    self.route = "INVALID_ROUTE"
                if self.i >= self.n:
                    return -1
            if self.skip() <= 0:
                return -1
        if s[self.i] != ">":
            if self._local_part() <= 0:
                return -1
            if s[self.i] == "@" and self._domain() <= 0:
                return -1
        if s[self.i] != ">":
            return -1
        self.i += 1
        return self.skip()

    def _route(self) -> int:
        buf: list[str] = []
        while True:
            if self.i >= self.n:
                return 0
            if self.s[self.i] != "@":
                break
            if buf:
                buf.append(",")
            buf.append("@")
            ret = self.domain(buf)
            if ret <= 0:
                return ret
            while self.skip() > 0 and self.s[self.i] == ",":
                self.i += 1
        self.route = "".join(buf)
        return 1

    def _local_part(self, buf: list[str] | None = None) -> int:
        out: list[str] = [] if buf is None else buf
        s = self.s
        if s[self.i] == '"':
            ret = self.quoted(out)
        else:  # a dot-atom, but dots anywhere (".user..name")
            ret = -1
            while True:
                while s[self.i] == ".":
                    out.append(".")
                    self.i += 1
                    if self.i >= self.n:
                        self.mailbox = "".join(out)
                        return 0
                    ret = 1
                if s[self.i] == "@":
                    break
                ret = self.atom(out)
                if ret <= 0 or s[self.i] != ".":
                    break
        if ret < 0:
            return -1
        self.mailbox = "".join(out)
        return ret

    def _domain(self) -> int:
        buf: list[str] = []
        ret = self.domain(buf)
        if ret < 0:
            return -1
        self.host = "".join(buf)
        return ret

    def _addr_spec(self) -> int:
        self.comment = ""
        quoted = self.s[self.i] == '"'
        buf: list[str] = []
        ret = self._local_part(buf)
        if ret <= 0:
            self.invalid = True
        ret2 = -2
        if ret != 0 and self.i < self.n and self.s[self.i] == "@":
            ret2 = self._domain()
            if ret2 <= 0:
                ret = ret2
        if self.comment:
            self.name = self.comment
        elif ret2 == -2:
            # "user" alone is a mailbox; "user and more words" a display name
            buf.append(" ")
            size = sum(map(len, buf))
            self.phrase(buf)
            if sum(map(len, buf)) != size:
                self.mailbox = None
                self.name = "".join(buf)
            elif not quoted:
                self.host = ""
            self.invalid = True
            ret = -1
        return ret


_A = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_D = _A + r"(?:\." + _A + r")*"  # dot-atom
_W = _A + r'|"[^"\\\r\n]*"'  # word
_WORD = re.compile(_W)
_SIMPLE_ADDRESS = re.compile(  # `addr@host` or `words <addr@host>`, and a comma or the end
    rf"[ \t]*(?:(?P<phrase>(?:{_W})(?:[ \t]+(?:{_W}))*)?[ \t]*<(?P<l1>{_D})@(?P<d1>{_D})>"
    rf"|(?P<l2>{_D})@(?P<d2>{_D}))[ \t]*(?:,|\Z)"
)


def _no_nul(a: Address) -> Address:
    """(NULs are left only in quoted strings, comments and domain literals)"""
    name, route, mailbox, host = a
    return (
        name and _strdup(name),
        route and _strdup(route),
        mailbox and _strdup(mailbox),
        host and _strdup(host),
    )


def parse_addresses(value: str, fill_missing: bool = True) -> list[Address]:
    """An address-list field's value (a full value) as RFC 3501 addresses, groups included.
    fill_missing: what a broken address lacks is MISSING_MAILBOX / MISSING_DOMAIN (as in an
    ENVELOPE), else the empty string."""
    out: list[Address] = []
    pos, n = 0, len(value)
    while pos < n:  # the usual simple forms, without the parser
        m = _SIMPLE_ADDRESS.match(value, pos)
        if m is None:
            out = _Addresses(value, fill_missing).parse()
            return list(map(_no_nul, out)) if "\0" in value else out
        if m.group("l2") is not None:
            out.append((None, None, m.group("l2"), m.group("d2")))
        else:
            words = _WORD.findall(m.group("phrase") or "")
            name = " ".join(w[1:-1] if w[0] == '"' else w for w in words)
            out.append((name or None, None, m.group("l1"), m.group("d1")))
        pos = m.end()
    return out


# --- Content-* (Dovecot's message-part-data.c, rfc2231-parser.c)


class ContentType(NamedTuple):
    full: str  # "type/subtype" as written; what parsed of it when broken ("" or "type")
    ok: bool  # it parsed: params were read
    params: list[tuple[str, str]]


_BROKEN_VALUE = re.compile(r"[^; \t\r\n]*")
_SECTION_NUMBER = re.compile(r"[0-9]*")


def _content_param(lx: _Lex) -> tuple[int, str, str]:
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


def _params(lx: _Lex) -> list[tuple[str, str]]:
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


def parse_content_type(value: str) -> ContentType:
    lx = _Lex(value)
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
    return ContentType(main[0] + "/" + sub[0], True, _params(lx))


class Content:
    """A part's Content-* fields as BODYSTRUCTURE shows them (None: absent)."""

    __slots__ = (
        "type",
        "subtype",
        "params",
        "id",
        "description",
        "encoding",
        "md5",
        "disposition",
        "disposition_params",
        "language",
        "location",
    )

    def __init__(self) -> None:
        self.type: str | None = None
        self.subtype = ""
        self.params: list[tuple[str, str]] = []
        self.id: str | None = None
        self.description: str | None = None
        self.encoding: str | None = None  # Content-Transfer-Encoding, when a lone token
        self.md5: str | None = None
        self.disposition: str | None = None
        self.disposition_params: list[tuple[str, str]] = []
        self.language: list[str] | None = None
        self.location: str | None = None

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
                lx = _Lex(full_value(raw, colon))
                lx.skip()
                buf: list[str] = []
                if lx.token(buf) >= 0 and lx.skip() == 0 and buf[0]:
                    c.encoding = buf[0]
        elif what == "id":
            if c.id is None:
                c.id = _strdup(full_value(raw, colon))
        elif what == "md5":
            if c.md5 is None:
                c.md5 = _strdup(full_value(raw, colon))
        elif what == "description":
            if c.description is None:
                c.description = _strdup(full_value(raw, colon))
        elif what == "location":
            if c.location is None:
                c.location = _strdup(full_value(raw, colon))
        elif what == "language":
            if c.language is None:
                c.language = _languages(full_value(raw, colon)) or None
        elif what == "disposition" and not c.disposition_params:
            lx = _Lex(full_value(raw, colon))
            lx.skip()
            buf = []
            if lx.token(buf) >= 0:
                c.disposition = buf[0]
                c.disposition_params = _params(lx)
    return c


def _languages(value: str) -> list[str]:
    lx = _Lex(value)
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
                self.strings[k if k < 2 else k - 6] = _strdup(value)

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
