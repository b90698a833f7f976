"""SMTP policy from Sendmail's files: local-host-names, access, virtusertable, aliases.

The files keep Sendmail's source syntax (what `makemap` and `newaliases` read), so the tutorial's
files work unchanged; the rules below say where we are stricter or differ.

API::

    policy = Policy(local_domains=[...], local_host_names=Path | None, access=Path | None,
                    virtusertable=Path | None, aliases=Path | None, users=UserDirectory,
                    clock=time.monotonic)        # ConfigError listing every problem at start-up
    policy.is_local_domain(domain) -> bool
    policy.local_domains() -> frozenset[str]
    policy.check_connect(ip, hostname) -> Verdict                         # on connect
    policy.check_sender(address, ip, hostname, auth_user) -> Deferred[Verdict]          # MAIL
    policy.resolve_recipient(address, ip, hostname, auth_user, client_relay)
        -> Deferred[Resolved]                                                           # RCPT

`Resolved` is a `Resolution` with `forward_to`: the remote addresses to relay to. For a plain
relayed recipient that is the address itself; for a local address that virtusertable or aliases
send elsewhere it is the rewritten target(s), which are *not* the RCPT address.

Addresses are compared case-insensitively: domains and local parts are both lower-cased (every
local user store here is lower-case). Remote targets written in virtusertable or aliases keep
the case of their local part.

**local-host-names**: one domain per line, `#` comments. The local domains are these plus
`local_domains`; at least one is required.

**access**: `KEY VALUE` per line. Keys, optionally tagged `Connect:`, `From:` or `To:` (an
untagged key applies to all three, as in Sendmail without FEATURE(delay_checks)):

- `127.0.0.1` (host), `127.0.1` (network by octets, 127.0.1.0/24), `127.0.0.0/8` (CIDR, our
  extension), `IPv6:::1` / `IPv6:2001:db8::/32`: the client address (Connect only);
- `163.com`: that domain and its subdomains: the client's host name (Connect), the sender's or
  recipient's domain (From, To);
- `user@163.com` (an address) and `user@` (a local part in any domain): From and To only.

Values: `OK`, `RELAY`, `REJECT` (550 5.7.1 ... Access denied), `DISCARD` (accept, then drop
the message), `SKIP` (stop looking: no decision), `ERROR:"5.7.1 text"`, `ERROR:5.7.1:550 text`,
`ERROR:550 text` (reply code and enhanced code from the value; the missing one follows the
other's class: 550/5.7.1, 450/4.7.1). The most specific entry wins: for the client, the host
address, then longer network prefixes, then the host name from its longest suffix; for an
address, the full address, then `user@`, then the domain from its longest suffix. At each level
a tagged key beats an untagged one. Other Sendmail tags (`Spam:`, `GreetPause:`...) are errors,
as are duplicate keys and inline comments.

- Connect: REJECT/ERROR refuse the connection; RELAY lets the client relay; DISCARD drops every
  message of the connection (check_sender answers discard); OK and RELAY also let an
  unauthenticated client use a local sender domain.
- From: REJECT/ERROR/DISCARD for that sender; OK/RELAY let an unauthenticated client use that
  local sender address. An authenticated user may only send as an address it owns: its login,
  or an address whose virtusertable/aliases resolution reaches its mailbox (553 otherwise).
  Unauthenticated senders in a local domain get 530 5.7.0. The null sender is always allowed.
- To: REJECT/ERROR/DISCARD for that recipient; OK passes the access check (the address is still
  resolved and must exist; OK does not open relaying); RELAY also allows relaying to it.

**virtusertable**: `user@domain target` and `@domain target` (catch-all, used when no exact
entry matches, before aliases, as in Sendmail: list real users before a catch-all to local
users). Targets: a local name (`user2`: aliases, then the mailbox user2 in the same domain), an
address (local: resolved again; remote: forwarded), `%1` for the catch-all's local part, or
`error:nouser`, `error:5.1.1:550 User unknown`, `error:550 text`. A target equal to its key ends
the lookup (the usual way to exempt a user from a catch-all).

**aliases** (aliases(5)): `name: target, target2`, continuation lines start with whitespace.
Names are local parts and apply in every local domain. Targets are local names (aliases again,
then a mailbox in the same domain), `\\name` (that mailbox, no aliasing), or addresses. A name
listed in its own expansion is delivered to its mailbox (Sendmail's self-reference). Program
(`|cmd`), file (`/path`) and `:include:` targets are configuration errors, as are loops between
names. At run time expansion stops after 10 levels or on a loop (550 5.4.6). When an alias fans
out, unknown users and error targets are logged and skipped; the recipient is refused only when
nothing deliverable is left.

Recipients with routing tricks (`user%other.com@163.com`, `@163.com:user@other.com`,
`other.com!user@163.com`, a quoted `@`) get 550 5.7.1 unless the client authenticated.

Each file is re-read when its (mtime_ns, size, inode) changes, checked at most once a second on
lookup. A file that fails to parse on reload keeps the previous content and logs each problem.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance.errors import ConfigError
from appliance.interfaces import Mailbox, Resolution, UserDirectory, Verdict
from appliance.ip import client_ip

MAX_ALIAS_DEPTH = 10
STAT_INTERVAL = 1.0  # seconds between stat() calls per file

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
# RFC 5322 atext without '%' and '!': in our files those could only mean source routing
_ATEXT = r"[a-z0-9#$&'*+/=?^_`{|}~-]"
_LOCAL_RE = re.compile(rf"^{_ATEXT}+(?:\.{_ATEXT}+)*$")
_OCTETS_RE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){0,3}$")
_DSN_RE = re.compile(r"([245]\.\d{1,3}\.\d{1,3})(?=[:\s]|$):?\s*")
_CODE_RE = re.compile(r"(\d{3})(?=\s|$)\s*")
_SOURCE_ROUTE_RE = re.compile(r"^@[^:]*:")
_PERCENT_RE = re.compile(r"%(?!1)")

TAGS = ("connect", "from", "to")
ACTIONS = ("OK", "RELAY", "REJECT", "DISCARD", "SKIP")
_TAG_NAMES = {"connect": "Connect:", "from": "From:", "to": "To:"}

# Sendmail's named error-mailer statuses that make sense for a recipient
_NAMED_ERRORS = {
    "nouser": (550, "5.1.1", "Recipient address rejected: User unknown"),
    "nohost": (550, "5.1.2", "Recipient address rejected: Host unknown"),
    "noperm": (550, "5.7.1", "Recipient address rejected: Permission denied"),
    "unavailable": (550, "5.0.0", "Recipient address rejected: Service unavailable"),
    "tempfail": (450, "4.0.0", "Recipient address rejected: Try again later"),
}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


# ---------------------------------------------------------------------- small helpers


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) for each line that is neither blank nor a comment."""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].strip()
    return text


def _split(address: str) -> tuple[str, str]:
    """('user', 'domain') lower-cased; the domain loses a trailing dot."""
    local, _, domain = address.rpartition("@")
    return local.lower(), domain.lower().rstrip(".")


def _valid_domain(domain: str) -> bool:
    return len(domain) <= 253 and bool(_DOMAIN_RE.match(domain))


def _valid_local(local: str) -> bool:
    return len(local) <= 64 and bool(_LOCAL_RE.match(local))


def _suffixes(domain: str) -> Iterator[str]:
    """'a.b.c' -> 'a.b.c', 'b.c', 'c'."""
    labels = domain.lower().rstrip(".").split(".")
    for i in range(len(labels)):
        yield ".".join(labels[i:])


def routing_trick(address: str) -> bool:
    """Whether address uses source routing, the percent hack, a bang path or a quoted '@'."""
    if address.startswith("@"):
        return True
    local = address.rpartition("@")[0]
    return any(c in local for c in "%!@:")


def parse_reply(spec: str, subject: str, default_text: str) -> tuple[int, str, str]:
    """Sendmail's error forms -> (code, enhanced code, text); ValueError names the problem.

    '"5.7.1 text"', '5.7.1:550 text', '550 text', '550 5.7.1 text'. A missing code follows the
    enhanced code's class (x50) and a missing enhanced code is <class>.<subject>.
    """
    s = _unquote(spec)
    dsn: str | None = None
    code: int | None = None
    m = _DSN_RE.match(s)
    if m:
        dsn = m[1]
        s = _unquote(s[m.end() :])
    m = _CODE_RE.match(s)
    if m:
        code = int(m[1])
        s = s[m.end() :]
        if dsn is None:
            m = _DSN_RE.match(s)
            if m:
                dsn = m[1]
                s = s[m.end() :]
    text = s.strip() or default_text
    if code is None and dsn is None:
        raise ValueError(
            f"expected a reply code like 550 or an enhanced status code like 5.7.1, got {spec.strip()!r}"
        )
    if code is not None and not 400 <= code <= 599:
        raise ValueError(f"the reply code must be 4xx or 5xx, got {code}")
    if dsn is not None and dsn[0] == "2":
        raise ValueError(f"the enhanced status code must be 4.x.x or 5.x.x, got {dsn}")
    if code is None:
        assert dsn is not None
        code = 550 if dsn[0] == "5" else 450
    if dsn is None:
        dsn = f"{str(code)[0]}.{subject}"
    if str(code)[0] != dsn[0]:
        raise ValueError(f"reply code {code} and enhanced status code {dsn} disagree")
    return code, dsn, text


# ---------------------------------------------------------------------- local-host-names


def parse_local_host_names(text: str, path: str) -> tuple[frozenset[str], list[str]]:
    """The domains of a local-host-names file, and its problems (one line each)."""
    domains: set[str] = set()
    problems: list[str] = []
    for number, line in _lines(text):
        words = line.split()
        if len(words) != 1:
            problems.append(f"{path}:{number}: expected one domain per line, got {line!r}")
            continue
        domain = words[0].lower().rstrip(".")
        if not _valid_domain(domain):
            problems.append(f"{path}:{number}: not a valid domain name: {words[0]!r}")
            continue
        domains.add(domain)
    return frozenset(domains), problems


# ---------------------------------------------------------------------- access


@dataclass(frozen=True)
class AccessRule:
    """One access value: action OK/RELAY/REJECT/DISCARD/SKIP/ERROR (ERROR: code and text)."""

    action: str
    code: int = 0
    text: str = ""  # ERROR only: "5.7.1 Go away"
    line: int = 0


@dataclass
class AccessMap:
    """A parsed access file; keys are (tag or None, lower-cased key)."""

    networks: list[tuple[Network, str | None, AccessRule]] = field(default_factory=list)
    domains: dict[tuple[str | None, str], AccessRule] = field(default_factory=dict)
    addresses: dict[tuple[str | None, str], AccessRule] = field(default_factory=dict)
    localparts: dict[tuple[str | None, str], AccessRule] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.networks) + len(self.domains) + len(self.addresses) + len(self.localparts)

    def connect(self, ip: str, hostname: str | None) -> AccessRule | None:
        """The rule for a client: its address and networks, then its host name."""
        addr = client_ip(ip)
        if addr is not None:
            # networks are sorted most specific first, tagged before untagged
            for network, _tag, rule in self.networks:
                if network.version == addr.version and addr in network:
                    return None if rule.action == "SKIP" else rule
        if hostname:
            return self._domain("connect", hostname)
        return None

    def lookup(self, tag: str, address: str) -> AccessRule | None:
        """The From: or To: rule for address: full address, then user@, then the domain."""
        local, domain = _split(address)
        tables = ((self.addresses, f"{local}@{domain}"), (self.localparts, local)) if local else ()
        for table, key in tables:
            for t in (tag, None):
                rule = table.get((t, key))
                if rule is not None:
                    return None if rule.action == "SKIP" else rule
        return self._domain(tag, domain) if domain else None

    def _domain(self, tag: str, domain: str) -> AccessRule | None:
        for suffix in _suffixes(domain):
            for t in (tag, None):
                rule = self.domains.get((t, suffix))
                if rule is not None:
                    return None if rule.action == "SKIP" else rule
        return None


def _access_key(key: str) -> tuple[str | None, str, Any]:
    """'Connect:127.0.0' -> ('connect', 'network', IPv4Network('127.0.0.0/24'))."""
    tag: str | None = None
    head, sep, rest = key.partition(":")
    if sep and head.lower() in TAGS:
        tag, key = head.lower(), rest
        if not key:
            raise ValueError(f"nothing after the tag {head}:")
    low = key.lower()
    kind: str
    value: Any
    if low.startswith("ipv6:"):
        try:
            value = ipaddress.IPv6Network(key[5:], strict=True)
        except ValueError:
            raise ValueError(f"not an IPv6 address or network: {key!r}") from None
        kind = "network"
    elif ":" in key:
        try:
            value = ipaddress.IPv6Network(key, strict=True)  # a bare IPv6 address is unambiguous
        except ValueError:
            other = key.partition(":")[0] + ":"
            raise ValueError(
                f"unsupported tag {other!r} (supported: Connect:, From:, To:)"
            ) from None
        kind = "network"
    elif "/" in key:
        try:
            value = ipaddress.IPv4Network(key, strict=True)
        except ValueError as e:
            if "host bits" in str(e):
                loose = ipaddress.IPv4Network(key, strict=False)
                raise ValueError(f"{key!r} has host bits set (the network is {loose})") from None
            raise ValueError(f"not an IPv4 network: {key!r}") from None
        kind = "network"
    elif _OCTETS_RE.match(key):
        octets = [int(o) for o in key.split(".")]
        if any(o > 255 for o in octets):
            raise ValueError(f"not an IPv4 address or network: {key!r}")
        base = ".".join(str(o) for o in octets + [0] * (4 - len(octets)))
        value = ipaddress.IPv4Network(f"{base}/{8 * len(octets)}")
        kind = "network"
    elif "@" in key:
        if low.startswith("@"):
            raise ValueError(f"{key!r} is not a key; write the domain alone: {low[1:]!r}")
        local, domain = _split(low)
        if not _valid_local(local):
            raise ValueError(f"not a valid local part: {key!r}")
        if domain:
            if not _valid_domain(domain):
                raise ValueError(f"not a valid address: {key!r}")
            kind, value = "address", f"{local}@{domain}"
        else:
            kind, value = "localpart", local
    else:
        domain = low.rstrip(".")
        if not _valid_domain(domain):
            raise ValueError(f"not a valid IP address, network, domain or address: {key!r}")
        kind, value = "domain", domain
    if tag == "connect" and kind in ("address", "localpart"):
        raise ValueError(f"Connect: entries match an IP address, network or host name, not {key!r}")
    if tag in ("from", "to") and kind == "network":
        raise ValueError(
            f"{_TAG_NAMES[tag]} entries match an address, local part or domain, not an IP"
            f" address or network: {key!r}"
        )
    return tag, kind, value


def _access_value(value: str, line: int) -> AccessRule:
    word = value.split()[0]
    if value.upper() in ACTIONS:
        return AccessRule(value.upper(), line=line)
    if word.upper() in ACTIONS:
        rest = value[len(word) :].strip()
        raise ValueError(f"unexpected text after {word.upper()}: {rest!r}")
    if value.upper().startswith("ERROR:") or re.match(r'^"?\d{3}(?:\s|"|$)', value):
        spec = value[6:] if value.upper().startswith("ERROR:") else value
        code, dsn, text = parse_reply(spec, "7.1", "Access denied")
        return AccessRule("ERROR", code, f"{dsn} {text}", line)
    raise ValueError(
        f"unknown value {value!r} (expected OK, RELAY, REJECT, DISCARD, SKIP or ERROR:...)"
    )


def parse_access(text: str, path: str) -> tuple[AccessMap, list[str]]:
    """A parsed access file, and its problems (one line each)."""
    access = AccessMap()
    problems: list[str] = []
    seen: dict[tuple[str | None, str, str], int] = {}
    for number, line in _lines(text):
        parts = line.split(None, 1)
        if len(parts) < 2:
            problems.append(f"{path}:{number}: expected 'KEY VALUE', got {line!r}")
            continue
        key, value = parts[0], parts[1].strip()
        parsed_key = rule = None
        try:
            parsed_key = _access_key(key)
        except ValueError as e:
            problems.append(f"{path}:{number}: {e}")
        try:
            rule = _access_value(value, number)
        except ValueError as e:
            problems.append(f"{path}:{number}: {e}")
        if parsed_key is None or rule is None:
            continue
        tag, kind, norm = parsed_key
        ident = (tag, kind, str(norm))
        if ident in seen:
            problems.append(f"{path}:{number}: duplicate key {key!r} (first on line {seen[ident]})")
            continue
        seen[ident] = number
        if kind == "network":
            access.networks.append((norm, tag, rule))
        else:
            table = {
                "domain": access.domains,
                "address": access.addresses,
                "localpart": access.localparts,
            }[kind]
            table[(tag, norm)] = rule
    access.networks.sort(key=lambda n: (-n[0].prefixlen, n[1] is None))
    return access, problems


# ---------------------------------------------------------------------- virtusertable


@dataclass(frozen=True)
class VirtualTarget:
    """kind 'local' (a bare name), 'address', or 'error' (code, dsn, text)."""

    kind: str
    value: str = ""
    code: int = 0
    dsn: str = ""
    text: str = ""
    line: int = 0


@dataclass
class VirtualMap:
    """Parsed virtusertable: 'user@domain' and '@domain' (catch-all) keys."""

    entries: dict[str, VirtualTarget] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, local: str, domain: str) -> VirtualTarget | None:
        target = self.entries.get(f"{local}@{domain}")
        if target is not None:
            return target
        target = self.entries.get(f"@{domain}")
        if target is not None and "%1" in target.value:
            return dataclasses.replace(target, value=target.value.replace("%1", local))
        return target


def _virtual_target(value: str, catch_all: bool, line: int) -> VirtualTarget:
    if value.lower().startswith("error:"):
        spec = value[6:].strip()
        name, _, rest = spec.partition(" ")
        if name.lower() in _NAMED_ERRORS:
            code, dsn, text = _NAMED_ERRORS[name.lower()]
            return VirtualTarget("error", code=code, dsn=dsn, text=rest.strip() or text, line=line)
        code, dsn, text = parse_reply(spec, "1.1", "Recipient address rejected: User unknown")
        return VirtualTarget("error", code=code, dsn=dsn, text=text, line=line)
    if len(value.split()) != 1:
        raise ValueError(f"expected one target, got {value!r}")
    if value.startswith(("|", "/", '"')) or value.lower().startswith(":include:"):
        raise ValueError(f"program, file and :include: targets are not supported: {value!r}")
    if "%1" in value and not catch_all:
        raise ValueError("%1 is only meaningful in a catch-all (@domain) entry")
    if _PERCENT_RE.search(value):
        raise ValueError(f"only %1 may follow a '%' (the percent hack is not supported): {value!r}")
    local, at, domain = value.rpartition("@")
    if not at:
        name = value.lower()
        if not _valid_local(name.replace("%1", "x")):
            raise ValueError(f"not a valid user name or address: {value!r}")
        return VirtualTarget("local", name, line=line)
    domain = domain.lower().rstrip(".")
    if not _valid_local(local.lower().replace("%1", "x")) or not _valid_domain(domain):
        raise ValueError(f"not a valid address: {value!r}")
    return VirtualTarget("address", f"{local}@{domain}", line=line)


def parse_virtusertable(text: str, path: str) -> tuple[VirtualMap, list[str]]:
    """A parsed virtusertable, and its problems (one line each)."""
    table = VirtualMap()
    problems: list[str] = []
    for number, line in _lines(text):
        parts = line.split(None, 1)
        if len(parts) < 2:
            problems.append(
                f"{path}:{number}: expected 'user@domain target' or '@domain target', got {line!r}"
            )
            continue
        key, value = parts[0].lower(), parts[1].strip()
        local, at, domain = key.rpartition("@")
        domain = domain.rstrip(".")
        if not at or not _valid_domain(domain) or (local and not _valid_local(local)):
            problems.append(
                f"{path}:{number}: expected 'user@domain' or '@domain' as the key, got {parts[0]!r}"
            )
            continue
        key = f"{local}@{domain}"
        try:
            target = _virtual_target(value, catch_all=not local, line=number)
        except ValueError as e:
            problems.append(f"{path}:{number}: {e}")
            continue
        if key in table.entries:
            first = table.entries[key].line
            problems.append(f"{path}:{number}: duplicate key {parts[0]!r} (first on line {first})")
            continue
        table.entries[key] = target
    return table, problems


# ---------------------------------------------------------------------- aliases


@dataclass(frozen=True)
class AliasTarget:
    """kind 'name' (aliased again), 'literal' (\\name: that mailbox), or 'address'."""

    kind: str
    value: str
    line: int


@dataclass
class AliasMap:
    entries: dict[str, tuple[AliasTarget, ...]] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, name: str) -> tuple[AliasTarget, ...] | None:
        return self.entries.get(name)


def _split_targets(text: str) -> tuple[list[str], bool]:
    """Comma-separated pieces, commas inside quotes kept; and whether the quotes balance."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            pieces.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current).strip())
    return [p for p in pieces if p], not quoted


def _alias_target(piece: str, line: int) -> AliasTarget:
    value = _unquote(piece)
    if value.startswith(("|", "/")):
        raise ValueError(f"program and file targets are not supported: {value!r}")
    if value.lower().startswith(":include:"):
        raise ValueError(f":include: targets are not supported: {value!r}")
    if len(value.split()) != 1:
        raise ValueError(f"expected targets separated by commas, got {piece!r}")
    if value.startswith("\\"):
        name = value[1:].lower()
        if not _valid_local(name):
            raise ValueError(f"not a valid user name: {value!r}")
        return AliasTarget("literal", name, line)
    local, at, domain = value.rpartition("@")
    if at:
        domain = domain.lower().rstrip(".")
        if not _valid_local(local.lower()) or not _valid_domain(domain):
            raise ValueError(f"not a valid address: {value!r}")
        return AliasTarget("address", f"{local}@{domain}", line)
    if not _valid_local(value.lower()):
        raise ValueError(f"not a valid user name or address: {value!r}")
    return AliasTarget("name", value.lower(), line)


def parse_aliases(text: str, path: str) -> tuple[AliasMap, list[str]]:
    """Parsed aliases(5), and its problems (one line each), loops between names included."""
    aliases = AliasMap()
    found: list[tuple[int, str]] = []  # (line, problem), reported in line order
    entries: list[tuple[str, int, list[tuple[str, int]]]] = []  # name, line, [(text, line)]
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0] in " \t":
            if not entries:
                found.append((number, "continuation line without an alias before it"))
            else:
                entries[-1][2].append((stripped, number))
            continue
        name, colon, rest = stripped.partition(":")
        name = _unquote(name).lower()
        if not colon or not name:
            found.append((number, f"expected 'name: target, ...', got {stripped!r}"))
            entries.append(("", number, []))  # swallow its continuation lines
            continue
        entries.append((name, number, [(rest, number)]))
    for name, number, segments in entries:
        if not name:
            continue
        if "@" in name:
            found.append(
                (
                    number,
                    f"alias names are local parts, not addresses: {name!r}"
                    " (use virtusertable for addresses)",
                )
            )
            continue
        if not _valid_local(name):
            found.append((number, f"not a valid alias name: {name!r}"))
            continue
        targets: list[AliasTarget] = []
        for segment, line in segments:
            pieces, balanced = _split_targets(segment)
            if not balanced:
                found.append((line, f"unbalanced quote in {segment!r}"))
                continue
            for piece in pieces:
                try:
                    targets.append(_alias_target(piece, line))
                except ValueError as e:
                    found.append((line, str(e)))
        if not targets and not any(_split_targets(s)[0] for s, _ in segments):
            found.append((number, f"alias {name!r} has no targets"))
            continue
        if name in aliases.lines:
            first = aliases.lines[name]
            found.append((number, f"duplicate alias {name!r} (first on line {first})"))
            continue
        aliases.lines[name] = number
        aliases.entries[name] = tuple(dict.fromkeys(targets))
    found.extend(_alias_loops(aliases))
    found.sort(key=lambda p: p[0])
    return aliases, [f"{path}:{line}: {problem}" for line, problem in found]


def _alias_loops(aliases: AliasMap) -> list[tuple[int, str]]:
    """One problem per loop between alias names (a name listing itself is not a loop)."""
    graph = {
        name: [t.value for t in targets if t.kind == "name" and t.value != name]
        for name, targets in aliases.entries.items()
    }
    problems: list[tuple[int, str]] = []
    done: set[str] = set()
    for start in sorted(graph, key=lambda n: aliases.lines[n]):
        if start in done:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(graph[start]))]
        on_stack = {start}
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_stack.discard(node)
                done.add(node)
            elif child in on_stack:
                chain = [n for n, _ in stack]
                cycle = chain[chain.index(child) :] + [child]
                problems.append((aliases.lines[child], f"alias loop: {' -> '.join(cycle)}"))
            elif child in graph and child not in done:
                stack.append((child, iter(graph[child])))
                on_stack.add(child)
    return problems


# ---------------------------------------------------------------------- reloading


class _Watched(Generic[T]):
    """One optional policy file: parsed at start-up, re-read when it changes."""

    log = Logger()

    def __init__(
        self,
        path: Path | None,
        parse: Callable[[str, str], tuple[T, list[str]]],
        empty: T,
        clock: Callable[[], float],
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.parse = parse
        self.value = empty
        self.clock = clock
        self.on_change = on_change
        self.signature: tuple[int, int, int] | None = None
        self.checked_at: float | None = None
        self.missing_logged = False

    def load(self) -> list[str]:
        """The first load: every problem, for a ConfigError."""
        if self.path is None:
            return []
        self.checked_at = self.clock()
        try:
            st = os.stat(self.path)
            data = self.path.read_bytes()
        except OSError as e:
            return [f"{self.path}: cannot read: {e.strerror or e}"]
        self.signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        value, problems = self._parse(data)
        if not problems:
            self.value = value
        return problems

    def get(self) -> T:
        if self.path is not None:
            now = self.clock()
            if self.checked_at is None or now - self.checked_at >= STAT_INTERVAL:
                self.checked_at = now
                self._reload()
        return self.value

    def _parse(self, data: bytes) -> tuple[T, list[str]]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            return self.value, [f"{self.path}:{line}: not valid UTF-8"]
        return self.parse(text, str(self.path))

    def _reload(self) -> None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError as e:
            if not self.missing_logged:
                self.missing_logged = True
                self.log.warn(
                    "{path}: cannot stat: {reason}; keeping the previous content",
                    path=str(self.path),
                    reason=e.strerror or str(e),
                )
            return
        self.missing_logged = False
        # stat before read: a write racing with the read changes the signature seen next time
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self.signature:
            return
        try:
            data = self.path.read_bytes()
        except OSError as e:
            self.log.warn(
                "{path}: cannot read: {reason}; keeping the previous content",
                path=str(self.path),
                reason=e.strerror or str(e),
            )
            return
        # remembered even when broken, so that a bad file is reported once, not on every lookup
        self.signature = signature
        value, problems = self._parse(data)
        if problems:
            for problem in problems:
                self.log.warn("{reason}; keeping the previous content", reason=problem)
            return
        self.value = value
        self.log.info("{path}: reloaded", path=str(self.path))
        if self.on_change is not None:
            self.on_change()


# ---------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class Resolved(Resolution):
    """A Resolution with the remote addresses to relay to (rewritten by our maps, or not)."""

    forward_to: tuple[str, ...] = ()


@dataclass
class _Expansion:
    original: str  # the address as the client gave it, for reply texts
    mailboxes: list[Mailbox] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)
    errors: list[Verdict] = field(default_factory=list)


class Policy:
    """Connect, sender and recipient decisions from the Sendmail-style files."""

    log = Logger()

    def __init__(
        self,
        *,
        local_domains: Iterable[str],
        local_host_names: Path | None = None,
        access: Path | None = None,
        virtusertable: Path | None = None,
        aliases: Path | None = None,
        users: UserDirectory,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        problems: list[str] = []
        configured: set[str] = set()
        for domain in local_domains:
            d = domain.lower().rstrip(".")
            if _valid_domain(d):
                configured.add(d)
            else:
                problems.append(f"local_domains: not a valid domain name: {domain!r}")
        self._configured = frozenset(configured)
        self.users = users
        self._local_host_names: _Watched[frozenset[str]] = _Watched(
            local_host_names, parse_local_host_names, frozenset(), clock, self._check_virtual
        )
        self._access: _Watched[AccessMap] = _Watched(access, parse_access, AccessMap(), clock)
        self._virtual: _Watched[VirtualMap] = _Watched(
            virtusertable, parse_virtusertable, VirtualMap(), clock, self._check_virtual
        )
        self._aliases: _Watched[AliasMap] = _Watched(aliases, parse_aliases, AliasMap(), clock)
        for watched in (self._local_host_names, self._access, self._virtual, self._aliases):
            problems.extend(watched.load())
        if not problems and not self.local_domains():
            problems.append("no local domains: set [smtp] local_domains or local_host_names")
        if problems:
            raise ConfigError(problems)
        self._check_virtual()

    # ------------------------------------------------------------------ domains

    def local_domains(self) -> frozenset[str]:
        return self._configured | self._local_host_names.get()

    def is_local_domain(self, domain: str) -> bool:
        d = domain.lower().rstrip(".")
        return d in self._configured or d in self._local_host_names.get()

    def _check_virtual(self) -> None:
        """Warn about virtusertable entries for domains we do not accept: they never apply."""
        table = self._virtual.value
        local = self._configured | self._local_host_names.value
        for key, target in table.entries.items():
            domain = key.rpartition("@")[2]
            if domain not in local:
                self.log.warn(
                    "{path}:{line}: {domain} is not a local domain, so this entry never applies",
                    path=str(self._virtual.path),
                    line=target.line,
                    domain=domain,
                )

    # ------------------------------------------------------------------ connect

    def check_connect(self, ip: str, hostname: str | None) -> Verdict:
        """The access decision for a new client (Connect: and untagged IP and host entries)."""
        rule = self._access.get().connect(ip, hostname)
        return self._connect_verdict(rule, ip, hostname)

    @staticmethod
    def _connect_verdict(rule: AccessRule | None, ip: str, hostname: str | None) -> Verdict:
        if rule is None or rule.action == "OK":
            return Verdict()
        if rule.action == "RELAY":
            return Verdict(relay=True)
        if rule.action == "DISCARD":
            return Verdict(discard=True)
        if rule.action == "ERROR":
            return Verdict(rule.code, rule.text)
        return Verdict(
            550, f"5.7.1 <{hostname or 'unknown'}[{ip}]>: Client host rejected: Access denied"
        )

    # ------------------------------------------------------------------ sender

    def check_sender(
        self, address: str, ip: str, hostname: str | None, auth_user: str | None
    ) -> Deferred[Verdict]:
        """The MAIL FROM decision (always fired; a Deferred for directory-backed checks later)."""
        return defer.maybeDeferred(self._check_sender, address, ip, hostname, auth_user)

    def _check_sender(
        self, address: str, ip: str, hostname: str | None, auth_user: str | None
    ) -> Verdict:
        access = self._access.get()
        client = access.connect(ip, hostname)
        if client is not None and client.action in ("REJECT", "ERROR"):
            # refused at connect already; answered again in case the caller went on
            return self._connect_verdict(client, ip, hostname)
        discard = client is not None and client.action == "DISCARD"
        if address == "":
            return Verdict(discard=discard)  # bounces must always get through
        sender = access.lookup("from", address)
        if sender is not None:
            if sender.action == "REJECT":
                return Verdict(550, f"5.7.1 <{address}>: Sender address rejected: Access denied")
            if sender.action == "ERROR":
                return Verdict(sender.code, sender.text)
            if sender.action == "DISCARD":
                return Verdict(discard=True)
        if auth_user is not None:
            if not self._owns(auth_user, address):
                return Verdict(553, f"5.7.1 Sender address rejected: not owned by user {auth_user}")
            return Verdict(discard=discard)
        trusted = (client is not None and client.action in ("OK", "RELAY")) or (
            sender is not None and sender.action in ("OK", "RELAY")
        )
        if self.is_local_domain(_split(address)[1]) and not trusted:
            return Verdict(530, "5.7.0 Authentication required")
        return Verdict(discard=discard)

    def _owns(self, auth_user: str, address: str) -> bool:
        """Whether the login auth_user may use address as its sender."""
        login = auth_user.lower()
        local, domain = _split(address)
        if f"{local}@{domain}" == login:
            return True
        if not self.is_local_domain(domain):
            return False
        if "@" in login:
            user_local, user_domain = _split(login)
            mine = Mailbox(user_domain, user_local)

            def matches(box: Mailbox) -> bool:
                return box == mine
        else:
            # a directory that logs users in by bare name owns that name in every local domain
            if local == login:
                return True

            def matches(box: Mailbox) -> bool:
                return box.localpart == login

        expansion = self._expand(f"{local}@{domain}", address)
        return any(matches(box) for box in expansion.mailboxes)

    # ------------------------------------------------------------------ recipient

    def resolve_recipient(
        self,
        address: str,
        ip: str,
        hostname: str | None,
        auth_user: str | None,
        client_relay: bool,
    ) -> Deferred[Resolution]:
        """The RCPT TO decision: where the address goes, or the reply refusing it."""
        try:
            return self._resolve_recipient(address, ip, hostname, auth_user, client_relay)
        except Exception:
            return defer.fail(Failure())

    def _resolve_recipient(
        self,
        address: str,
        ip: str,
        hostname: str | None,
        auth_user: str | None,
        client_relay: bool,
    ) -> Deferred[Resolution]:
        original = address
        if routing_trick(address):
            if auth_user is None:
                return _refuse(550, f"5.7.1 <{original}>: Relay access denied")
            address = _SOURCE_ROUTE_RE.sub("", address)
        access = self._access.get()
        rule = access.lookup("to", address)
        to_relay = False
        if rule is not None:
            if rule.action == "REJECT":
                return _refuse(
                    550, f"5.7.1 <{original}>: Recipient address rejected: Access denied"
                )
            if rule.action == "ERROR":
                return _refuse(rule.code, rule.text)
            if rule.action == "DISCARD":
                return defer.succeed(Resolved(Verdict(discard=True)))
            to_relay = rule.action == "RELAY"
        local, domain = _split(address)
        if not self.is_local_domain(domain):
            client = access.connect(ip, hostname)
            if (
                auth_user is not None
                or client_relay
                or to_relay
                or (client is not None and client.action == "RELAY")
            ):
                relay_to = f"{address.rpartition('@')[0]}@{domain}"
                return defer.succeed(Resolved(remote=True, forward_to=(relay_to,)))
            return _refuse(550, f"5.7.1 <{original}>: Relay access denied")
        expansion = self._expand(f"{local}@{domain}", original)
        boxes = list(dict.fromkeys(expansion.mailboxes))
        checks = [defer.maybeDeferred(self.users.exists, box.address) for box in boxes]
        d = defer.gatherResults(checks, consumeErrors=True)

        def decide(found: list[bool]) -> Resolution:
            good = [box for box, ok in zip(boxes, found, strict=True) if ok]
            missing = [box.address for box, ok in zip(boxes, found, strict=True) if not ok]
            remote = list(dict.fromkeys(expansion.remote))
            if good or remote:
                if missing or expansion.errors:
                    self.log.warn(
                        "{rcpt}: skipped unknown users {missing} and {errors} failed targets",
                        rcpt=original,
                        missing=", ".join(missing) or "(none)",
                        errors=len(expansion.errors),
                    )
                return Resolved(
                    mailboxes=tuple(good), remote=bool(remote), forward_to=tuple(remote)
                )
            if expansion.errors:
                return Resolved(expansion.errors[0])
            return Resolved(
                Verdict(550, f"5.1.1 <{original}>: Recipient address rejected: User unknown")
            )

        def lookup_failed(failure: Failure) -> Resolution:
            reason = getattr(failure.value, "subFailure", failure).getErrorMessage()
            self.log.warn("{rcpt}: user lookup failed: {reason}", rcpt=original, reason=reason)
            return Resolved(
                Verdict(
                    451, f"4.3.0 <{original}>: Recipient address rejected: temporary lookup failure"
                )
            )

        return d.addCallbacks(decide, lookup_failed)

    # ------------------------------------------------------------------ expansion

    def _expand(self, address: str, original: str) -> _Expansion:
        """Where a local address goes: mailboxes (not yet checked), remote addresses, errors."""
        out = _Expansion(original)
        self._expand_address(address, (), 0, out, self._virtual.get(), self._aliases.get())
        return out

    def _enter(self, node: str, path: tuple[str, ...], depth: int, out: _Expansion) -> bool:
        if node not in path and depth <= MAX_ALIAS_DEPTH:
            return True
        self.log.warn(
            "{rcpt}: mail forwarding loop or more than {depth} levels: {reason}",
            rcpt=out.original,
            depth=MAX_ALIAS_DEPTH,
            reason=" -> ".join((*path, node)),
        )
        out.errors.append(
            Verdict(
                550, f"5.4.6 <{out.original}>: Recipient address rejected: Mail forwarding loop"
            )
        )
        return False

    def _expand_address(
        self,
        address: str,
        path: tuple[str, ...],
        depth: int,
        out: _Expansion,
        virtual: VirtualMap,
        aliases: AliasMap,
    ) -> None:
        local, domain = _split(address)
        if not self.is_local_domain(domain):
            out.remote.append(f"{address.rpartition('@')[0]}@{domain}")
            return
        here = f"{local}@{domain}"
        node = f"virtual {here}"
        if not self._enter(node, path, depth, out):
            return
        path = (*path, node)
        target = virtual.lookup(local, domain)
        if target is not None:
            if target.kind == "error":
                out.errors.append(
                    Verdict(target.code, f"{target.dsn} <{out.original}>: {target.text}")
                )
                return
            if target.kind == "local":
                if target.value != local:
                    self._expand_name(
                        target.value, domain, None, path, depth + 1, out, virtual, aliases
                    )
                    return
            elif target.value.lower() != here:
                self._expand_address(target.value, path, depth + 1, out, virtual, aliases)
                return
            # a target equal to its key ends the virtusertable lookup
        self._expand_name(local, domain, None, path, depth, out, virtual, aliases)

    def _expand_name(
        self,
        name: str,
        domain: str,
        parent: str | None,
        path: tuple[str, ...],
        depth: int,
        out: _Expansion,
        virtual: VirtualMap,
        aliases: AliasMap,
    ) -> None:
        targets = aliases.get(name)
        if targets is None or name == parent:
            # not an alias, or an alias listing itself: Sendmail delivers to the mailbox
            out.mailboxes.append(Mailbox(domain, name))
            return
        node = f"alias {name}@{domain}"
        if not self._enter(node, path, depth + 1, out):
            return
        path = (*path, node)
        for t in targets:
            if t.kind == "literal":
                out.mailboxes.append(Mailbox(domain, t.value))
            elif t.kind == "name":
                self._expand_name(t.value, domain, name, path, depth + 1, out, virtual, aliases)
            elif t.value.lower() == f"{name}@{domain}":
                out.mailboxes.append(Mailbox(domain, name))
            else:
                self._expand_address(t.value, path, depth + 1, out, virtual, aliases)


def _refuse(code: int, text: str) -> Deferred[Resolution]:
    return defer.succeed(Resolved(Verdict(code, text)))
