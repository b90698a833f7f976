"""The names a certificate may carry: host names and IP literals, in the form the CA writes.

normalize_name is the CA's own rule on top of appliance.names: an IP literal is allowed (and
written in its canonical form), a wildcard label is allowed, one root dot is dropped and the
name is lower-cased. general_name turns the result into the SAN entry for it.
"""

from __future__ import annotations

import ipaddress

from cryptography import x509

from appliance.errors import CAError
from appliance.names import is_hostname

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(name: str) -> IPAddress | None:
    """The address if name is an IPv4 or IPv6 literal, else None."""
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def normalize_name(name: str) -> str:
    """Lower-case a host name or IP literal and check it; CAError if it is neither."""
    raw = name
    name = name.strip().lower()
    ip = parse_ip(name)
    if ip is not None:
        return str(ip)
    # A fully qualified name with its root dot is the same name; certificates never carry it.
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    # is_hostname matches case-insensitively, which lets a few non-ASCII letters through
    # (U+0131, U+017F); a certificate's DNS name is ASCII only.
    if not (name.isascii() and is_hostname(name, wildcard=True)):
        raise CAError(f"invalid host name {raw!r}")
    return name


def normalize_names(names: list[str]) -> list[str]:
    """normalize_name of each, duplicates dropped, first occurrence's order kept."""
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(normalize_name(name), None)
    return list(seen)


def general_name(name: str) -> x509.GeneralName:
    """The SAN entry for a normalized name: an IP address or a DNS name."""
    ip = parse_ip(name)
    return x509.IPAddress(ip) if ip is not None else x509.DNSName(name)
