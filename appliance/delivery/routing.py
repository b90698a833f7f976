"""Next-hop routing for the outgoing relay: a recipient domain in, the hosts to try out.

Everything is found through our own DNS (the `Resolver` seam), never the system resolver,
and computed afresh for each call (the resolver caches). The rules are RFC 5321 section 5
and RFC 7505, the way Postfix's smtp(8) applies them:

- The transport map decides first: a direct host, the smarthost, or MX routing. A domain
  it does not name goes to the smarthost if one is set, else through its MX records.
- A direct or smarthost host is an IP literal used as is, or a name whose A then AAAA
  records are the hops; no MX lookup. An address literal domain (`[192.0.2.1]`) is
  routed the same way, to itself.
- MX routing: the MX hosts by preference, in random order among equal preferences, each
  host's A then AAAA addresses. A null MX (RFC 7505) refuses mail; no MX at all means the
  domain's own addresses (the implicit MX). An MX host without an address is skipped.
- We never send to ourselves: an MX host that is us (by name, or by address and port) and
  every MX at its preference or worse are dropped (RFC 5321 5.1: only better MXes may be
  used); a direct route to us is refused.

Failures are RouteErrors with an enhanced status code (RFC 3463) and Postfix's wording;
`permanent` says whether the mail bounces or is retried.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from appliance.config import HostPort
from appliance.delivery.transport import (
    DIRECT,
    MX,
    SMARTHOST,
    Route,
    TransportMap,
    is_ip_literal,
    normalize_domain,
)
from appliance.interfaces import LookupFailed, NoSuchDomain, Resolver
from appliance.names import is_hostname


@dataclass(frozen=True)
class NextHop:
    """One address to try: the MX (or direct) host's name, one address of it, the port."""

    host: str  # lower-case name; an IP literal stays as given
    ip: str
    port: int
    preference: int  # MX preference; 0 for a direct route or the implicit MX

    def __str__(self) -> str:
        """Postfix's relay= form: mail.sina.com[127.0.1.4]:25."""
        return f"{self.host}[{self.ip}]:{self.port}"


@dataclass(frozen=True)
class Destination:
    """Where mail for a domain goes: the hops in the order to try them.

    key is what connections are shared by: the domain for MX routing, "[host]:port" for a
    direct or smarthost route (so every domain routed through one relay shares it).
    """

    key: str
    hops: tuple[NextHop, ...]
    smarthost: bool = False  # the route is the configured smarthost (AUTH credentials apply)


class RouteError(Exception):
    """No next hop for the domain: str() is "<status> <text>", e.g. "5.1.10 Recipient
    address has null MX"; permanent failures bounce, temporary ones are retried."""

    def __init__(self, status: str, text: str, permanent: bool) -> None:
        super().__init__(status, text, permanent)
        self.status = status
        self.text = text
        self.permanent = permanent

    def __str__(self) -> str:
        return f"{self.status} {self.text}"


@dataclass(frozen=True)
class _Addresses:
    """What the address lookups of one host gave."""

    ips: tuple[str, ...] = ()
    missing: bool = False  # the name does not exist (NXDOMAIN)
    failure: str | None = None  # a lookup failed temporarily: why


def _not_found(name: str, qtype: str, detail: str) -> str:
    return (
        f"Host or domain name not found. Name service error for name={name} type={qtype}: {detail}"
    )


def _canonical_ip(text: str) -> str:
    """One spelling per address, so "::ffff:127.0.0.1" and "127.0.0.1" compare equal."""
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _address_literal(domain: str) -> str | None:
    """The IP of an RFC 5321 address literal domain ("[192.0.2.1]", "[IPv6:2001:db8::1]")."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    return text if is_ip_literal(text) else None


class Router:
    """interfaces.Resolver lookups turned into the next hops for a recipient domain.

    port is the SMTP port of MX hosts; smarthost the relay for every domain the transport
    map does not name (and for its `smarthost` entries); local_names and local_addresses
    say who we are, to refuse routes that loop back to us. local_addresses are the (ip,
    port) pairs we accept mail on, each a specific address (expand a wildcard listener).
    rng orders MX hosts of equal preference (tests seed it).
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        port: int = 25,
        smarthost: HostPort | None = None,
        transport: TransportMap | None = None,
        local_names: Iterable[str] = (),
        local_addresses: Iterable[tuple[str, int]] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.resolver = resolver
        self.port = port
        if smarthost is not None and not is_ip_literal(smarthost.host):
            smarthost = HostPort(normalize_domain(smarthost.host), smarthost.port)
        self.smarthost = smarthost
        self.transport = transport
        self.local_names = frozenset(normalize_domain(name) for name in local_names)
        self.local_addresses = frozenset((_canonical_ip(ip), p) for ip, p in local_addresses)
        self.rng = rng if rng is not None else random.Random()

    def route(self, domain: str) -> Deferred[Destination]:
        """The destination for mail to domain; fails with RouteError."""
        return self._route(domain)

    @defer.inlineCallbacks
    def _route(self, domain: str) -> Generator[Deferred[Any], Any, Destination]:
        name = normalize_domain(domain)
        literal = _address_literal(name)
        if literal is None and not is_hostname(name):
            raise RouteError("5.1.2", f"bad destination domain {domain!r}", True)
        route: Route | None = self.transport.lookup(name) if self.transport else None
        if route is None:
            route = Route(SMARTHOST) if self.smarthost is not None else Route(MX)
        if route.kind == DIRECT:
            result: Destination = yield self._direct(name, route.host, route.port, False)
        elif route.kind == SMARTHOST:
            if self.smarthost is None:
                raise RouteError(
                    "4.3.5",
                    f"no smarthost configured (the transport map routes {name} through it)",
                    False,
                )
            result = yield self._direct(name, self.smarthost.host, self.smarthost.port, True)
        elif literal is not None:
            result = yield self._direct(name, literal, self.port, False)
        else:
            result = yield self._mx(name)
        return result

    def _is_local(self, ip: str, port: int) -> bool:
        return (_canonical_ip(ip), port) in self.local_addresses

    def _loops(self, domain: str) -> RouteError:
        return RouteError("5.4.6", f"mail for {domain} loops back to myself", True)

    @defer.inlineCallbacks
    def _addresses(self, host: str) -> Generator[Deferred[Any], Any, _Addresses]:
        """A then AAAA of host; a temporary failure of one is remembered, not fatal."""
        ips: list[str] = []
        failure: str | None = None
        try:
            ips.extend((yield self.resolver.lookup_a(host)))
        except NoSuchDomain:
            return _Addresses(missing=True)
        except LookupFailed as exc:
            failure = str(exc)
        try:
            ips.extend((yield self.resolver.lookup_aaaa(host)))
        except NoSuchDomain:
            if not ips:
                return _Addresses(missing=True)
        except LookupFailed as exc:
            failure = failure or str(exc)
        return _Addresses(tuple(dict.fromkeys(ips)), failure=failure)

    @defer.inlineCallbacks
    def _direct(
        self, domain: str, host: str, port: int, smarthost: bool
    ) -> Generator[Deferred[Any], Any, Destination]:
        """A route straight to host (no MX lookup): the smarthost, a transport entry."""
        if is_ip_literal(host):
            ips: tuple[str, ...] = (_canonical_ip(host),)
        else:
            if host in self.local_names:
                raise self._loops(domain)
            found: _Addresses = yield self._addresses(host)
            if not found.ips:
                if found.failure is not None:
                    raise RouteError(
                        "4.4.3", _not_found(host, "A", "Host not found, try again"), False
                    )
                detail = (
                    "Host not found"
                    if found.missing
                    else "Host found but no data record of requested type"
                )
                if smarthost:  # our misconfiguration: keep the mail until it is fixed
                    raise RouteError(
                        "4.3.5", f"smarthost misconfigured: {_not_found(host, 'A', detail)}", False
                    )
                raise RouteError("5.1.2", _not_found(host, "A", detail), True)
            ips = found.ips
        if any(self._is_local(ip, port) for ip in ips):
            raise self._loops(domain)
        hops = tuple(NextHop(host, ip, port, 0) for ip in ips)
        return Destination(f"[{host}]:{port}", hops, smarthost)

    def _ordered(self, records: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """MX hosts by preference (each once, at its best), shuffled among equals."""
        best: dict[str, int] = {}
        for preference, exchange in records:
            host = normalize_domain(exchange)
            best[host] = min(preference, best.get(host, preference))
        ordered: list[tuple[int, str]] = []
        for preference in sorted(set(best.values())):
            # sorted first, so the order depends on the rng alone, not on how DNS served it
            group = sorted(host for host, p in best.items() if p == preference)
            self.rng.shuffle(group)
            ordered.extend((preference, host) for host in group)
        return ordered

    @defer.inlineCallbacks
    def _mx(self, domain: str) -> Generator[Deferred[Any], Any, Destination]:
        try:
            records: list[tuple[int, str]] = yield self.resolver.lookup_mx(domain)
        except NoSuchDomain:
            raise RouteError("5.1.2", _not_found(domain, "MX", "Host not found"), True) from None
        except LookupFailed:
            raise RouteError(
                "4.4.3", _not_found(domain, "MX", "Host not found, try again"), False
            ) from None
        # RFC 7505: "." is null MX; mixed with other MXes it still says "no mail here"
        if any(exchange.rstrip(".") == "" for _, exchange in records):
            raise RouteError("5.1.10", "Recipient address has null MX", True)
        implicit = not records
        mx = [(0, domain)] if implicit else self._ordered(records)
        hops: tuple[NextHop, ...] = yield self._mx_hops(domain, mx, implicit)
        return Destination(domain, hops)

    @defer.inlineCallbacks
    def _mx_hops(
        self, domain: str, mx: list[tuple[int, str]], implicit: bool
    ) -> Generator[Deferred[Any], Any, tuple[NextHop, ...]]:
        """The addresses of the MX hosts in order, with ourselves and worse MXes cut off."""
        name_cut = min((p for p, host in mx if host in self.local_names), default=None)
        candidates = [(p, host) for p, host in mx if name_cut is None or p < name_cut]
        try:
            found: list[_Addresses] = yield defer.gatherResults(
                [self._addresses(host) for _, host in candidates], consumeErrors=True
            )
        except defer.FirstError as exc:  # not a lookup failure (those are caught): a bug
            exc.subFailure.raiseException()
        hops: list[NextHop] = []
        seen: set[str] = set()
        for (preference, host), addresses in zip(candidates, found, strict=True):
            for ip in addresses.ips:
                if ip not in seen:  # one address reached through two names is tried once
                    seen.add(ip)
                    hops.append(NextHop(host, ip, self.port, preference))
        address_cut = min(
            (hop.preference for hop in hops if self._is_local(hop.ip, hop.port)), default=None
        )
        cuts = [c for c in (name_cut, address_cut) if c is not None]
        if cuts:
            cut = min(cuts)
            hops = [hop for hop in hops if hop.preference < cut]
            if not hops:
                if any(p < cut for p, _ in candidates):
                    # we are a backup MX and no better one resolves now: hold the mail
                    raise RouteError("4.4.4", f"unable to find primary relay for {domain}", False)
                raise self._loops(domain)
        if hops:
            return tuple(hops)
        failed = [host for (_, host), a in zip(candidates, found, strict=True) if a.failure]
        if failed:
            raise RouteError(
                "4.4.3", _not_found(failed[0], "A", "Host not found, try again"), False
            )
        if implicit:
            raise RouteError("5.1.2", _not_found(domain, "A", "no MX and no address record"), True)
        hosts = ", ".join(host for _, host in candidates)
        raise RouteError(
            "5.4.4", f"unable to look up host {hosts}: no MX host of {domain} has an address", True
        )
