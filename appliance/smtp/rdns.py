"""Forward-confirmed reverse DNS for SMTP clients, asked of our own DNS service only.

A client's name is trusted only when its PTR name resolves back to its address (what Postfix
calls a verified name); otherwise it is 'unknown', like Postfix. Names feed the Received
header, the maillog and access-map host entries (Connect:163.com). Lookups go through the
Resolver seam, are bounded by a timeout and cached briefly, so a dead resolver never holds a
greeting for long.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from appliance.interfaces import Resolver
from appliance.names import is_hostname

MAX_NAMES = 3  # PTR names tried at most: each costs a forward lookup


class ReverseLookup:
    log = Logger()

    def __init__(self, resolver: Resolver, clock: IReactorTime, *, timeout: float = 2.0,
                 ttl: float = 300.0, max_entries: int = 10_000) -> None:  # fmt: skip
        self.resolver = resolver
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
    def _verified(self, ip: str) -> Generator[defer.Deferred[Any], Any, str | None]:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        names: list[str] = yield self.resolver.lookup_ptr(str(addr))
        lookup = self.resolver.lookup_aaaa if addr.version == 6 else self.resolver.lookup_a
        for name in [n.rstrip(".").lower() for n in names][:MAX_NAMES]:
            if not is_hostname(name):
                continue
            try:
                forward: list[str] = yield lookup(name)
            except Exception:
                continue
            if any(_same_address(a, addr) for a in forward):
                return name
        return None


def _same_address(text: str, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text) == addr
    except ValueError:
        return False
