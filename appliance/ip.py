"""Client addresses as sockets report them, made comparable with configured networks."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)  # addresses are immutable; clients come back
def client_ip(text: str) -> IPAddress | None:
    """The address in text, or None; without an IPv6 zone id, IPv4-mapped IPv6 unwrapped
    (dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d)."""
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_networks(
    text: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Whether the client address text lies in one of networks (False if it is no address)."""
    ip = client_ip(text)
    return ip is not None and any(ip in net for net in networks)


def client_key(text: str) -> str:
    """The unit limits count a client by: its IPv4 address, or its IPv6 /64 (one host
    usually owns a whole /64); text that is no address stands for itself."""
    ip = client_ip(text)
    if ip is None:
        return text
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
