"""RFC 5322 header syntax for FETCH and SEARCH: a field's full value, the lexer, addresses.

Split from appliance.imap.bodystructure (which reads Content-* and writes ENVELOPE and
BODYSTRUCTURE with it); the reading follows Dovecot 2.3's lib-mail where the RFCs leave room
(see that module's docstring). Header values are latin-1 str: one character per octet.
"""

from __future__ import annotations

import re

# (name, route, mailbox, host) as RFC 3501 writes an address; group start: (None, None,
# group name, None); group end: all None
Address = tuple["str | None", "str | None", "str | None", "str | None"]

_NUL_REPLACEMENT = "\xef\xbf\xbd"  # U+FFFD as UTF-8 octets (latin-1 str)


def full_value(raw: bytes, colon: int) -> str:
    """A field's value: after the colon and the spaces that follow it on its first line (all
    but one if there is nothing else), without the final line end, folding CRLF as LF. NULs
    stay (address syntax stops at them); strdup replaces them where Dovecot does."""
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


def strdup(value: str) -> str:
    return value.replace("\0", _NUL_REPLACEMENT) if "\0" in value else value


# --- RFC 822 lexing (Dovecot's rfc822-parser: 1 = more input, 0 = at the end, -1 = broken)

_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\xff]+")
_ATOM_OR_DOT = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.\x80-\xff]*")
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-^_`{|}~.\x80-\xff]*")  # MIME token, and '.'
_ATEXT = frozenset("!#$%&'*+-/=?^_`{|}~" + "".join(map(chr, range(0x80, 0x100))))


def _is_atext(c: str) -> bool:
    return c.isascii() and c.isalnum() or c in _ATEXT


class Lex:
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
        ret, self.comment = self._scan(")", "(")
        return ret

    def _scan(self, close: str, nest: str = "") -> tuple[int, str]:
        """The text after the opening character at i up to its closing one, quoted-pairs
        unescaped and folding line ends removed; i after it (1), or at the end (-1)."""
        s, n = self.s, self.n
        i = start = self.i + 1
        level, out = 1, []
        while i < n:
            c = s[i]
            if c == close:
                level -= 1
                if level == 0:
                    out.append(s[start:i])
                    self.i = i + 1
                    return 1, "".join(out)
            elif c == nest:
                level += 1
            elif c == "\n":
                out.append(s[start : i - 1] if i > start and s[i - 1] == "\r" else s[start:i])
                start = i + 1
            elif c == "\\":
                i += 1
                if i >= n:
                    break
                if s[i] in "\r\n\0":  # (not a quoted-pair: the backslash stays)
                    i -= 1
                else:
                    out.append(s[start : i - 1])
                    start = i
            i += 1
        self.i = n
        return -1, ""

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
        s, i = self.s, self.i + 1
        end = s.find('"', i)
        if end >= 0 and "\\" not in s[i:end] and "\n" not in s[i:end]:
            out.append(s[i:end])
            self.i = end + 1
        else:
            ret, text = self._scan('"')
            if ret < 0:
                return -1
            out.append(text)
        return self.skip()

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


class _Addresses(Lex):
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
        name and strdup(name),
        route and strdup(route),
        mailbox and strdup(mailbox),
        host and strdup(host),
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
