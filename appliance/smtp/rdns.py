"""Forward-confirmed reverse DNS for SMTP clients, asked of our own DNS service only.

A client's name is trusted only when its PTR name resolves back to its address (what Postfix
calls a verified name); otherwise it is 'unknown', like Postfix. Names feed the Received
header, the maillog and access-map host entries (Connect:163.com). Lookups are bounded by a
timeout and cached briefly, so a dead resolver never holds a greeting for long.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns

from appliance.config import is_hostname


class ReverseLookup:
    log = Logger()

    def __init__(self, resolver: Any, clock: Any, *, timeout: float = 2.0, ttl: float = 300.0,
                 max_entries: int = 10_000) -> None:  # fmt: skip
        self.resolver = resolver  # twisted.names IResolver (lookupPointer, lookupAddress...)
        self.clock = clock
        self.timeout = timeout
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, str | None]] = {}

    def lookup(self, ip: str) -> defer.Deferred[str | None]:
        """The verified host name of ip, or None; never fails."""
        now = self.clock.seconds()
        hit = self._cache.get(ip)
        if hit is not None and hit[0] > now:
            return defer.succeed(hit[1])
        d = self._verified(ip)
        d.addTimeout(self.timeout, self.clock)
        d.addErrback(lambda _f: None)
        d.addCallback(self._remember, ip)
        return d

    def _remember(self, name: str | None, ip: str) -> str | None:
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[ip] = (self.clock.seconds() + self.ttl, name)
        return name

    @defer.inlineCallbacks
    def _verified(self, ip: str):
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        answers, _, _ = yield self.resolver.lookupPointer(addr.reverse_pointer)
        names = [
            rr.payload.name.name.decode("ascii", "replace").rstrip(".").lower()
            for rr in answers
            if rr.type == dns.PTR
        ]
        for name in names[:3]:  # a few PTRs at most: each costs a forward lookup
            if not is_hostname(name):
                continue
            lookup = (
                self.resolver.lookupIPV6Address
                if addr.version == 6
                else self.resolver.lookupAddress
            )
            try:
                forward, _, _ = yield lookup(name)
            except Exception:
                continue
            if any(_address_of(rr) == addr for rr in forward if rr.type in (dns.A, dns.AAAA)):
                return name
        return None


def _address_of(rr: dns.RRHeader) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if rr.type == dns.A:
        return ipaddress.ip_address(rr.payload.dottedQuad())
    return ipaddress.ip_address(socket.inet_ntop(socket.AF_INET6, rr.payload.address))
