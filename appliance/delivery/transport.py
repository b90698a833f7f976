"""The transport map: per-domain routing overrides for the outgoing relay, read at start.

A Postfix-like file of `domain next-hop` lines, `#` starting a comment:

    sina.com        mail.sina.com:2525      # straight to that host (its A/AAAA, no MX)
    .example.org    [relay.example.org]:587 # every subdomain of example.org, not itself
    example.net     smarthost               # through the configured smarthost
    example.com     mx                      # MX routing even when a smarthost is set
    *               [10.0.0.1]:25           # every other domain

`host:port` and `[host]:port` mean the same here (Postfix's brackets, which turn off the MX
lookup, are implied): connect to that host, port 25 unless given; IPv6 literals need the
brackets. Keys are case-insensitive. A domain is looked up exactly, then as `.parent` from
its closest parent outward, then `*`. Every bad line is reported at once, as
`file:line: problem`, in a ConfigError.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import ConfigError
from appliance.names import is_hostname

DIRECT = "direct"
SMARTHOST = "smarthost"
MX = "mx"

DEFAULT_PORT = 25
_BRACKETED = re.compile(r"^\[([^\[\]]+)\](?::([^:]*))?$")
_EXPECTED = "expected host:port, [host]:port, 'smarthost' or 'mx'"


@dataclass(frozen=True)
class Route:
    """What the transport map says for a domain.

    kind "direct": connect to host:port (its address records, no MX lookup); "smarthost":
    through the configured smarthost; "mx": ordinary MX routing. host and port are only
    meaningful for "direct"; a host name is lower-case, an IP literal is kept as written.
    """

    kind: str
    host: str = ""
    port: int = DEFAULT_PORT


def normalize_domain(domain: str) -> str:
    """A domain as the map and the router compare it: lower-case ASCII, no trailing dot.

    A non-ASCII (IDN) name becomes its A-labels, so either spelling finds the same entry;
    a name that cannot be encoded is returned lower-cased, and then matches nothing.
    """
    name = domain.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return name


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _domain_name(raw: str) -> str | None:
    """raw as a normalized host name (one trailing root dot allowed), or None if it is not."""
    name = normalize_domain(raw)
    return name if is_hostname(name) and not raw.endswith("..") else None


def _parse_key(raw: str) -> str:
    """The normalized key, or ValueError saying what is wrong with it."""
    if raw == "*":
        return raw
    if raw.startswith("*."):
        raise ValueError(f"bad domain {raw!r}: write .{raw[2:]} for its subdomains")
    parent = raw.startswith(".")
    name = _domain_name(raw[1:] if parent else raw)
    if name is None:
        raise ValueError(f"bad domain {raw!r}: expected a domain like example.com")
    return "." + name if parent else name


def _parse_port(raw: str | None, value: str) -> int:
    if raw is None:
        return DEFAULT_PORT
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"bad port in {value!r}: expected 1-65535")
    return int(raw)


def _parse_value(value: str) -> Route:
    """The route a next-hop field names, or ValueError saying what is wrong with it."""
    word = value.lower()
    if word in (SMARTHOST, MX):
        return Route(word)
    m = _BRACKETED.match(value)
    if m:
        host, port = m.group(1), m.group(2)
        if host.lower().startswith("ipv6:"):  # the SMTP address-literal spelling
            host = host[5:]
    elif "[" in value or "]" in value:
        raise ValueError(f"{_EXPECTED}, got {value!r}")
    elif value.count(":") > 1:
        raise ValueError(f"{_EXPECTED}, got {value!r} (an IPv6 address needs [brackets])")
    else:
        host, sep, port_text = value.partition(":")
        port = port_text if sep else None
    port_number = _parse_port(port, value)
    if is_ip_literal(host):
        return Route(DIRECT, host, port_number)
    name = _domain_name(host)
    if name is None:
        raise ValueError(f"{_EXPECTED}, got {value!r}")
    return Route(DIRECT, name, port_number)


class TransportMap:
    """A transport map file, parsed when constructed (ConfigError lists every bad line)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._routes: dict[str, Route] = {}
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                [f"{self.path}: cannot read transport map: {exc.strerror or exc}"]
            ) from None
        problems: list[str] = []
        first_line: dict[str, int] = {}
        for number, raw_line in enumerate(data.splitlines(), start=1):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(f"{self.path}:{number}: not UTF-8 text")
                continue
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != 2:
                what = "a next hop is missing" if len(fields) == 1 else f"{len(fields)} fields"
                problems.append(
                    f"{self.path}:{number}: expected 'domain next-hop', {what}: {line.strip()!r}"
                )
                continue
            try:
                key = _parse_key(fields[0])
                route = _parse_value(fields[1])
            except ValueError as exc:
                problems.append(f"{self.path}:{number}: {exc}")
                continue
            if key in first_line:
                problems.append(
                    f"{self.path}:{number}: duplicate entry for {fields[0]!r}"
                    f" (first on line {first_line[key]})"
                )
                continue
            first_line[key] = number
            self._routes[key] = route
        if problems:
            raise ConfigError(problems)

    def __len__(self) -> int:
        return len(self._routes)

    def lookup(self, domain: str) -> Route | None:
        """The route for domain: exact entry, then `.parent` entries closest first, then `*`."""
        name = normalize_domain(domain)
        route = self._routes.get(name)
        if route is not None:
            return route
        labels = name.split(".")
        for i in range(1, len(labels)):
            route = self._routes.get("." + ".".join(labels[i:]))
            if route is not None:
                return route
        return self._routes.get("*")
