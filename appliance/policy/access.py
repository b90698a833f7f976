"""access: what clients, senders and recipients may do, by address, network, domain or user.

`KEY VALUE` per line. Keys, optionally tagged `Connect:`, `From:` or `To:` (an untagged key
applies to all three, as in Sendmail without FEATURE(delay_checks)):

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

What each value means at connect, MAIL and RCPT is `appliance.policy.sendmail`'s business.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from appliance.ip import client_ip
from appliance.policy.mapfile import (
    map_lines,
    parse_reply,
    split_address,
    suffixes,
    valid_domain,
    valid_local,
)

TAGS = ("connect", "from", "to")
ACTIONS = ("OK", "RELAY", "REJECT", "DISCARD", "SKIP")
_TAG_NAMES = {"connect": "Connect:", "from": "From:", "to": "To:"}
_OCTETS_RE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){0,3}$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
        local, domain = split_address(address)
        tables = ((self.addresses, f"{local}@{domain}"), (self.localparts, local)) if local else ()
        for table, key in tables:
            for t in (tag, None):
                rule = table.get((t, key))
                if rule is not None:
                    return None if rule.action == "SKIP" else rule
        return self._domain(tag, domain) if domain else None

    def _domain(self, tag: str, domain: str) -> AccessRule | None:
        for suffix in suffixes(domain):
            for t in (tag, None):
                rule = self.domains.get((t, suffix))
                if rule is not None:
                    return None if rule.action == "SKIP" else rule
        return None


def parse_key(key: str) -> tuple[str | None, str, Network | str]:
    """'Connect:127.0.0' -> ('connect', 'network', IPv4Network('127.0.0.0/24')).

    The kind is 'network', 'domain', 'address' or 'localpart'; ValueError names the problem.
    """
    tag: str | None = None
    head, sep, rest = key.partition(":")
    if sep and head.lower() in TAGS:
        tag, key = head.lower(), rest
        if not key:
            raise ValueError(f"nothing after the tag {head}:")
    low = key.lower()
    kind: str
    value: Network | str
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
        local, domain = split_address(low)
        if not valid_local(local):
            raise ValueError(f"not a valid local part: {key!r}")
        if domain:
            if not valid_domain(domain):
                raise ValueError(f"not a valid address: {key!r}")
            kind, value = "address", f"{local}@{domain}"
        else:
            kind, value = "localpart", local
    else:
        domain = low.rstrip(".")
        if not valid_domain(domain):
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


def parse_value(value: str, line: int) -> AccessRule:
    """'REJECT' or 'ERROR:550 text' -> its AccessRule; ValueError names the problem."""
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
    for number, line in map_lines(text):
        parts = line.split(None, 1)
        if len(parts) < 2:
            problems.append(f"{path}:{number}: expected 'KEY VALUE', got {line!r}")
            continue
        key, value = parts[0], parts[1].strip()
        parsed_key = rule = None
        try:
            parsed_key = parse_key(key)
        except ValueError as e:
            problems.append(f"{path}:{number}: {e}")
        try:
            rule = parse_value(value, number)
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
        if not isinstance(norm, str):  # kind == "network"
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
