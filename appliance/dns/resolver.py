"""Our own DNS, asked in-process: the `Resolver` seam over the zones and the forwarders.

Other services (SMTP's reverse lookups, later the relay's MX lookups and SPF) resolve through
the appliance's zones and forwarders, never through the system resolver, so the lab's names
work and nothing is asked of servers the admin did not configure. The answers are the ones
clients get on port 53, without a socket round trip.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import TypeVar

from twisted.internet import defer
from twisted.names import dns
from twisted.python.failure import Failure

from appliance.dns.authority import Answer
from appliance.dns.server import DNSEngine
from appliance.interfaces import LookupFailed, NoSuchDomain

T = TypeVar("T")


def _name(value: dns.Name) -> str:
    return value.name.decode("ascii", "replace").rstrip(".").lower()


def _a(rr: dns.RRHeader) -> str:
    return str(rr.payload.dottedQuad())


def _aaaa(rr: dns.RRHeader) -> str:
    return socket.inet_ntop(socket.AF_INET6, rr.payload.address)


def _mx(rr: dns.RRHeader) -> tuple[int, str]:
    return int(rr.payload.preference), _name(rr.payload.name)


def _ptr(rr: dns.RRHeader) -> str:
    return _name(rr.payload.name)


def _txt(rr: dns.RRHeader) -> bytes:
    return b"".join(rr.payload.data)


class LocalResolver:
    """interfaces.Resolver answered by a DNSEngine's authority, then its forwarder."""

    def __init__(self, engine: DNSEngine) -> None:
        self.engine = engine

    def _lookup(
        self, name: str, qtype: int, extract: Callable[[dns.RRHeader], T]
    ) -> defer.Deferred[list[T]]:
        qname = name.encode("idna") if not name.isascii() else name.encode("ascii")
        qname = qname.rstrip(b".")
        answer = self.engine.authority.answer(qname, qtype, minimal=True)
        if answer is not None:
            d: defer.Deferred[Answer] = defer.succeed(answer)
        elif self.engine.forwarder is not None:
            d = self.engine.forwarder.resolve(qname, qtype, dns.IN)
        else:
            return defer.fail(LookupFailed(f"{name}: not in our zones and no forwarder"))

        def records(a: Answer) -> list[T]:
            if a.rcode == dns.ENAME:
                raise NoSuchDomain(f"{name}: no such domain")
            if a.rcode != dns.OK:
                raise LookupFailed(f"{name}: the server answered rcode {a.rcode}")
            return [extract(rr) for rr in a.answers if rr.type == qtype]

        def failed(failure: Failure) -> Failure:
            if failure.check(LookupFailed):
                return failure
            return Failure(LookupFailed(f"{name}: {failure.getErrorMessage()}"))

        return d.addCallback(records).addErrback(failed)

    def lookup_a(self, name: str) -> defer.Deferred[list[str]]:
        return self._lookup(name, dns.A, _a)

    def lookup_aaaa(self, name: str) -> defer.Deferred[list[str]]:
        return self._lookup(name, dns.AAAA, _aaaa)

    def lookup_mx(self, name: str) -> defer.Deferred[list[tuple[int, str]]]:
        return self._lookup(name, dns.MX, _mx)

    def lookup_ptr(self, ip: str) -> defer.Deferred[list[str]]:
        try:
            pointer = ipaddress.ip_address(ip).reverse_pointer
        except ValueError:
            return defer.fail(LookupFailed(f"{ip!r} is not an IP address"))
        return self._lookup(pointer, dns.PTR, _ptr)

    def lookup_txt(self, name: str) -> defer.Deferred[list[bytes]]:
        return self._lookup(name, dns.TXT, _txt)
