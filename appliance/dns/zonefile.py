"""Load a BIND master (zone) file into Twisted ``RRHeader`` records for our authority.

Twisted's ``BindAuthority`` mis-reads ordinary zone files (relative names in rdata, blank
owners, numeric owners in reverse zones, one-line parenthesised SOA records), so we parse
them ourselves, with BIND's ``named-checkzone`` as the reference for every rule.

The module has three layers:

* ``_tokenize`` turns the text into entries (one record or directive each) of tokens,
  resolving comments, quotes and parentheses, and remembering the line each entry starts on;
* ``_Loader`` applies the directives ($TTL, $ORIGIN, $INCLUDE) and the owner / TTL / class
  rules of each record, then checks the zone as a whole (SOA, NS, CNAME);
* ``_CONVERTERS`` maps each record type to a function that reads its rdata with an
  ``_Rdata`` cursor and builds the Twisted record object.

Every problem is a ``ZoneError(path, line, message)`` naming the line the record starts on.
Like BIND, exact duplicate records are dropped, and a record whose TTL differs from the
earlier records of its RRset takes theirs (RFC 2181: one TTL per RRset).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.names import dns

from appliance.errors import ZoneError
from appliance.units import parse_time

CAA = 257  # RFC 8659; twisted.names has no Record_CAA, so CAA travels as an UnknownRecord
MAX_INCLUDE_DEPTH = 10
MAX_TTL = 2**31 - 1  # RFC 2181 section 8; also the largest SOA timer Twisted can pack
_NUMBER_RE = re.compile(r"[0-9]+")
_CLASS_RE = re.compile(r"IN|CH|CHAOS|HS|HESIOD|ANY|NONE|CLASS[0-9]+", re.IGNORECASE)
_CAA_TAG_RE = re.compile(rb"[A-Za-z0-9]{1,255}")
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"  # zone files are bytes: keep any non-UTF-8 byte as it is


# a twisted.names Record_* instance: they share no typed base with ttl/compareAttributes
Record = Any


def _to_bytes(text: str) -> bytes:
    return text.encode(_ENCODING, _ERRORS)


# --- tokenizer --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    text: str  # quotes removed, backslash escapes still in place
    quoted: bool = False


@dataclass
class _Entry:
    line: int  # where the entry starts: errors point here, even for multi-line records
    indented: bool  # starts with whitespace: the owner is the previous record's owner
    tokens: list[_Token]


_WORD_END = frozenset(' \t\r\n;()"')


def _tokenize(text: str, path: str) -> Iterator[_Entry]:
    """Split master-file text into entries; parentheses join physical lines into one."""
    i, n = 0, len(text)
    line = 1
    depth = 0
    at_line_start = True
    entry = _Entry(1, False, [])
    while i < n:
        c = text[i]
        if at_line_start:
            at_line_start = False
            if depth == 0:
                entry = _Entry(line, c in " \t", [])
        if c == "\n":
            line += 1
            at_line_start = True
            if depth == 0 and entry.tokens:
                yield entry
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == ";":
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c == "(":
            depth += 1
            i += 1
        elif c == ")":
            if depth == 0:
                raise ZoneError(path, entry.line, "unbalanced parentheses")
            depth -= 1
            i += 1
        elif c == '"':
            j = _scan(text, i + 1, '"\n')
            if j >= n or text[j] != '"':
                raise ZoneError(path, entry.line, "unterminated quoted string")
            entry.tokens.append(_Token(text[i + 1 : j], quoted=True))
            i = j + 1
        else:
            j = _scan(text, i, _WORD_END)
            entry.tokens.append(_Token(text[i:j]))
            i = j
    if depth:
        raise ZoneError(path, entry.line, "unbalanced parentheses")
    if entry.tokens:
        yield entry


def _scan(text: str, i: int, stop: str | frozenset[str]) -> int:
    """Index of the first unescaped `stop` character from i (len(text) if none)."""
    n = len(text)
    while i < n and text[i] not in stop:
        # a backslash protects the next character, but never a newline (keeps line numbers)
        i += 2 if text[i] == "\\" and i + 1 < n and text[i + 1] != "\n" else 1
    return min(i, n)


# --- small value parsers ----------------------------------------------------------------


class _Bad(Exception):
    """A problem in the current entry; the loader adds the file and line."""


def _checked_time(text: str, what: str) -> int:
    """A TTL or SOA timer in seconds; _Bad with what went wrong otherwise."""
    seconds = parse_time(text)
    if seconds is None:
        raise _Bad(f"{what} must be a time like 3600, 1h or 1w2d, got '{text}'")
    if seconds > MAX_TTL:
        raise _Bad(f"{what} must be at most {MAX_TTL} seconds, got '{text}'")
    return seconds


def _unescape(raw: bytes) -> bytes:
    r"""Resolve master-file escapes: \DDD is a decimal byte, \X is X itself."""
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        if b != 0x5C:
            out.append(b)
            i += 1
            continue
        if i + 1 >= n:
            raise _Bad(f"backslash at the end of '{raw.decode(_ENCODING, _ERRORS)}'")
        if raw[i + 1 : i + 2].isdigit():
            digits = raw[i + 1 : i + 4]
            if len(digits) != 3 or not digits.isdigit() or int(digits) > 255:
                shown = digits.decode(_ENCODING, _ERRORS)
                raise _Bad(f"bad escape '\\{shown}': use \\DDD with a byte value 000-255")
            out.append(int(digits))
            i += 4
        else:
            out.append(raw[i + 1])
            i += 2
    return bytes(out)


def _split_name(text: str) -> tuple[list[bytes], bool]:
    """Labels of a presentation-format name and whether it is absolute (ends in '.')."""
    raw = _to_bytes(text)
    pieces: list[bytes] = []
    start = i = 0
    n = len(raw)
    while i < n:
        if raw[i] == 0x5C:  # skip the escaped character so '\.' does not split
            i += 2
            continue
        if raw[i] == 0x2E:
            pieces.append(raw[start:i])
            start = i + 1
        i += 1
    absolute = n > 0 and start == n  # the last character was an unescaped dot
    if not absolute:
        pieces.append(raw[start:])
    labels = [_unescape(piece) for piece in pieces]
    if any(label == b"" for label in labels):
        raise _Bad(f"empty label in name '{text}'")
    if any(b"." in label for label in labels):
        # Twisted's Name keeps names as dotted bytes, so a literal dot in a label is unservable
        raise _Bad(f"escaped dot in name '{text}' is not supported")
    return labels, absolute


def _check_name(labels: list[bytes]) -> None:
    if any(len(label) > 63 for label in labels):
        raise _Bad("label longer than 63 characters")
    if sum(len(label) + 1 for label in labels) + 1 > 255:
        raise _Bad("name longer than 255 bytes")


def _show(name: bytes) -> str:
    """A name as it appears in messages: no trailing dot, '.' for the root."""
    return name.decode(_ENCODING, "backslashreplace") if name else "."


# --- rdata converters -------------------------------------------------------------------


class _Rdata:
    """A cursor over one record's rdata tokens that names the record type in its errors."""

    def __init__(self, loader: _Loader, rtype: str, tokens: list[_Token]) -> None:
        self.loader = loader
        self.rtype = rtype
        self.tokens = tokens
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.tokens)

    def token(self, field: str) -> _Token:
        if not self.more():
            if not self.tokens:
                raise _Bad(f"missing rdata for {self.rtype} record")
            raise _Bad(f"missing {field} in {self.rtype} record")
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def word(self, field: str) -> str:
        tok = self.token(field)
        if tok.quoted:
            raise _Bad(f'{self.rtype} {field} must not be a quoted string, got "{tok.text}"')
        return tok.text

    def name(self, field: str) -> bytes:
        return self.loader.name(self.word(field))

    def number(self, field: str, maximum: int) -> int:
        text = self.word(field)
        if not _NUMBER_RE.fullmatch(text) or int(text) > maximum:
            raise _Bad(f"{self.rtype} {field} must be 0-{maximum}, got '{text}'")
        return int(text)

    def time(self, field: str) -> int:
        return _checked_time(self.word(field), f"{self.rtype} {field}")

    def string(self, field: str) -> bytes:
        """A character-string: quoted or a single unquoted word."""
        return _unescape(_to_bytes(self.token(field).text))

    def end(self) -> None:
        if self.more():
            tok = self.tokens[self.pos]
            shown = f'"{tok.text}"' if tok.quoted else f"'{tok.text}'"
            raise _Bad(f"unexpected {shown} after {self.rtype} record data")


def _soa(r: _Rdata) -> dns.Record_SOA:
    record = dns.Record_SOA(
        mname=r.name("primary name server"),
        rname=r.name("responsible mailbox"),
        serial=r.number("serial", 2**32 - 1),
        refresh=r.time("refresh"),
        retry=r.time("retry"),
        expire=r.time("expire"),
        minimum=r.time("minimum"),
    )
    r.end()
    return record


def _single_name(cls: type, field: str) -> Callable[[_Rdata], Record]:
    def convert(r: _Rdata) -> object:
        record = cls(name=r.name(field))
        r.end()
        return record

    return convert


def _a(r: _Rdata) -> dns.Record_A:
    text = r.word("address")
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise _Bad(f"bad IPv4 address '{text}' in A record") from None
    r.end()
    return dns.Record_A(address=text)


def _aaaa(r: _Rdata) -> dns.Record_AAAA:
    text = r.word("address")
    try:
        if "%" in text:  # a scope id means nothing in DNS data, though ipaddress accepts it
            raise ValueError(text)
        ipaddress.IPv6Address(text)
    except ValueError:
        raise _Bad(f"bad IPv6 address '{text}' in AAAA record") from None
    r.end()
    return dns.Record_AAAA(address=text)


def _mx(r: _Rdata) -> dns.Record_MX:
    record = dns.Record_MX(preference=r.number("preference", 65535), name=r.name("exchange"))
    r.end()
    return record


def _txt(r: _Rdata) -> dns.Record_TXT:
    strings = [r.string("text")]
    while r.more():
        strings.append(r.string("text"))
    if any(len(s) > 255 for s in strings):
        raise _Bad("TXT string longer than 255 bytes")
    return dns.Record_TXT(*strings)


def _srv(r: _Rdata) -> dns.Record_SRV:
    record = dns.Record_SRV(
        priority=r.number("priority", 65535),
        weight=r.number("weight", 65535),
        port=r.number("port", 65535),
        target=r.name("target"),
    )
    r.end()
    return record


def _caa(r: _Rdata) -> dns.UnknownRecord:
    flags = r.number("flags", 255)
    tag_text = r.word("tag")
    tag = _to_bytes(tag_text)
    if not _CAA_TAG_RE.fullmatch(tag):
        raise _Bad(f"bad CAA tag '{tag_text}': use letters and digits only")
    value = r.string("value")
    r.end()
    # RFC 8659 section 4.1: flags, tag length, tag, then the value up to the end of rdata
    return dns.UnknownRecord(bytes([flags, len(tag)]) + tag + value)


_CONVERTERS: dict[str, tuple[int, Callable[[_Rdata], Record]]] = {
    "SOA": (dns.SOA, _soa),
    "NS": (dns.NS, _single_name(dns.Record_NS, "name server")),
    "A": (dns.A, _a),
    "AAAA": (dns.AAAA, _aaaa),
    "MX": (dns.MX, _mx),
    "CNAME": (dns.CNAME, _single_name(dns.Record_CNAME, "target")),
    "PTR": (dns.PTR, _single_name(dns.Record_PTR, "target")),
    "TXT": (dns.TXT, _txt),
    "SRV": (dns.SRV, _srv),
    "CAA": (CAA, _caa),
}


def _same_rdata(a: Record, b: Record) -> bool:
    """Equal rdata, ignoring TTL; Twisted's Name compares case-insensitively, like DNS."""
    return type(a) is type(b) and all(
        getattr(a, attr) == getattr(b, attr) for attr in a.compareAttributes if attr != "ttl"
    )


# --- loader -----------------------------------------------------------------------------


@dataclass
class _FileState:
    """What $ORIGIN and owners mean while reading one file; an $INCLUDE gets its own copy."""

    path: str
    origin: bytes
    owner: bytes | None


class _Loader:
    """Reads one zone (its file and the files it includes) into checked RRHeaders."""

    def __init__(self, top_path: str, origin: bytes) -> None:
        self.top_path = top_path
        self.apex = origin
        self.apex_key = origin.lower()
        self.records: list[dns.RRHeader] = []
        # owner (lower-case) -> type -> records, for duplicate, CNAME and SOA checks
        self.nodes: dict[bytes, dict[int, list[dns.RRHeader]]] = {}
        self.have_soa = False
        # BIND's TTL rules: $TTL (or the SOA minimum when there is none) is the default;
        # without one, a record with no TTL takes the last TTL written (RFC 1035)
        self.default_ttl: int | None = None
        self.last_ttl: int | None = None
        self.state = _FileState(top_path, origin, None)

    # names

    def name(self, text: str) -> bytes:
        """A name from the file, fully qualified against the current $ORIGIN, no trailing dot."""
        origin = self.state.origin
        if text == "@":
            return origin
        if text == ".":
            return b""
        labels, absolute = _split_name(text)
        if not absolute and origin:
            labels.append(origin)
        name = b".".join(labels)
        _check_name(name.split(b".") if name else [])
        return name

    def in_zone(self, name: bytes) -> bool:
        key = name.lower()
        return not self.apex_key or key == self.apex_key or key.endswith(b"." + self.apex_key)

    # files and entries

    def load_file(self, path: str, stack: tuple[Path, ...]) -> None:
        text = Path(path).read_bytes().decode("utf-8-sig", _ERRORS)
        for entry in _tokenize(text, path):
            try:
                first = entry.tokens[0]
                if not entry.indented and first.text.startswith("$") and not first.quoted:
                    self.directive(entry, stack)
                else:
                    self.record(entry)
            except _Bad as exc:
                raise ZoneError(path, entry.line, str(exc)) from None

    def directive(self, entry: _Entry, stack: tuple[Path, ...]) -> None:
        word, args = entry.tokens[0].text.upper(), entry.tokens[1:]
        if word == "$TTL":
            if len(args) != 1:
                raise _Bad("$TTL needs exactly one value, e.g. $TTL 1D")
            self.default_ttl = self.ttl(args[0].text)
        elif word == "$ORIGIN":
            if len(args) != 1 or args[0].quoted:
                raise _Bad("$ORIGIN needs exactly one domain name")
            self.state.origin = self.name(args[0].text)
        elif word == "$INCLUDE":
            if not 1 <= len(args) <= 2 or (len(args) == 2 and args[1].quoted):
                raise _Bad("$INCLUDE needs a file name and optionally an origin")
            origin = self.name(args[1].text) if len(args) == 2 else self.state.origin
            self.include(entry, args[0].text, origin, stack)
        elif word == "$GENERATE":
            raise _Bad("unsupported directive '$GENERATE'")
        else:
            raise _Bad(f"unknown directive '{entry.tokens[0].text}'")

    def include(self, entry: _Entry, name: str, origin: bytes, stack: tuple[Path, ...]) -> None:
        including = self.state
        path = str(Path(including.path).parent / name)
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop before 3.13
            raise _Bad(f"cannot read included file '{name}': {exc}") from None
        if resolved in stack:
            raise _Bad(f"$INCLUDE loop: '{name}' is already being read")
        if len(stack) > MAX_INCLUDE_DEPTH:
            raise _Bad(f"$INCLUDE nested more than {MAX_INCLUDE_DEPTH} levels deep")
        # the included file starts with our owner; its $ORIGIN changes and owners stay in it
        self.state = _FileState(path, origin, including.owner)
        try:
            self.load_file(path, (*stack, resolved))
        except OSError as exc:
            raise ZoneError(
                including.path,
                entry.line,
                f"cannot read included file '{name}': {exc.strerror or exc}",
            ) from None
        finally:
            self.state = including

    def ttl(self, text: str) -> int:
        return _checked_time(text, "TTL")

    def record(self, entry: _Entry) -> None:
        tokens = entry.tokens
        if entry.indented:
            if tokens[0].text.startswith("$") and not tokens[0].quoted:
                raise _Bad(f"directive '{tokens[0].text}' must start at the beginning of the line")
            if self.state.owner is None:
                raise _Bad("no owner name: the first record starts with whitespace")
            owner, pos = self.state.owner, 0
        else:
            if tokens[0].quoted:
                raise _Bad(f'owner name must not be a quoted string, got "{tokens[0].text}"')
            owner, pos = self.name(tokens[0].text), 1
            if not self.in_zone(owner):
                raise _Bad(f"out-of-zone owner '{_show(owner)}' in zone {_show(self.apex)}")
            self.state.owner = owner

        # [TTL] [class] type, or [class] [TTL] type; a leading number here is always a TTL
        # because the owner column has been consumed already
        ttl: int | None = None
        seen_class = False
        while pos < len(tokens) and not tokens[pos].quoted:
            text = tokens[pos].text
            if ttl is None and text[:1].isdigit():
                ttl = self.ttl(text)
            elif not seen_class and _CLASS_RE.fullmatch(text):
                if text.upper() != "IN":
                    raise _Bad(f"class '{text}' is not supported, only IN")
                seen_class = True
            else:
                break
            pos += 1
        if pos >= len(tokens):
            raise _Bad("missing record type")
        rtype = tokens[pos].text
        if tokens[pos].quoted or rtype.upper() not in _CONVERTERS:
            raise _Bad(f"unknown record type '{rtype}'")
        rtype = rtype.upper()
        type_code, convert = _CONVERTERS[rtype]
        payload = convert(_Rdata(self, rtype, tokens[pos + 1 :]))

        if ttl is not None:
            self.last_ttl = ttl
        elif self.default_ttl is not None:
            ttl = self.default_ttl
        elif self.last_ttl is not None:
            ttl = self.last_ttl
        elif type_code == dns.SOA:
            ttl = self.default_ttl = payload.minimum
        else:
            raise _Bad("no TTL for this record: put $TTL at the top of the file or give it a TTL")
        payload.ttl = ttl
        self.add(dns.RRHeader(owner, type_code, dns.IN, ttl, payload, auth=True))

    def add(self, rr: dns.RRHeader) -> None:
        owner = rr.name.name
        node = self.nodes.setdefault(owner.lower(), {})
        rrset = node.setdefault(rr.type, [])
        if any(_same_rdata(rr.payload, other.payload) for other in rrset):
            return  # BIND drops an exact duplicate silently
        if rr.type == dns.SOA:
            if owner.lower() != self.apex_key:
                raise _Bad("SOA record must be at the zone apex")
            if self.have_soa:
                raise _Bad("more than one SOA record")
            self.have_soa = True
        if rr.type == dns.CNAME and rrset:
            raise _Bad(f"more than one CNAME record at '{_show(owner)}'")
        others = any(t != dns.CNAME and records for t, records in node.items())
        has_cname = bool(node.get(dns.CNAME))
        if (rr.type == dns.CNAME and others) or (rr.type != dns.CNAME and has_cname):
            raise _Bad(f"CNAME and other data at '{_show(owner)}'")
        if rrset and rr.ttl != rrset[0].ttl:
            # RFC 2181 section 5.2: one TTL per RRset; like BIND, the first one written wins
            rr.ttl = rr.payload.ttl = rrset[0].ttl
        rrset.append(rr)
        self.records.append(rr)

    def check_zone(self) -> None:
        apex = self.nodes.get(self.apex_key, {})
        if not apex.get(dns.SOA):
            raise ZoneError(self.top_path, 0, "no SOA record at the zone apex")
        if not apex.get(dns.NS):
            raise ZoneError(self.top_path, 0, "no NS record at the zone apex")


def _origin_name(origin: str, path: str) -> bytes:
    text = origin.strip()
    if text in ("", ".", "@"):
        return b""
    try:
        labels, _ = _split_name(text if text.endswith(".") else text + ".")
        _check_name(labels)
    except _Bad as exc:
        raise ZoneError(path, 0, f"bad zone origin '{origin}': {exc}") from None
    return b".".join(labels)


def load_zone(path: Path | str, origin: str) -> list[dns.RRHeader]:
    """Parse a BIND master file for zone `origin` (e.g. "163.com" or "1.0.127.in-addr.arpa",
    with or without trailing dot).

    Returns every record, in file order, as an authoritative class-IN ``RRHeader`` whose
    owner and rdata names are fully qualified bytes without the trailing dot.  Raises
    ZoneError(path, line, message) for anything BIND would reject (and for out-of-zone data,
    which BIND merely ignores).
    """
    path = str(path)
    loader = _Loader(path, _origin_name(origin, path))
    try:
        loader.load_file(path, (Path(path).resolve(),))
    except OSError as exc:
        raise ZoneError(path, 0, f"cannot read zone file: {exc.strerror or exc}") from None
    loader.check_zone()
    return loader.records
