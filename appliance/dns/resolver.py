"""Our own DNS, asked in-process: the same answers clients get, without a socket round trip.

Other services (SMTP's reverse lookups, later the relay's MX lookups) resolve through the
appliance's zones and forwarders, never through the system resolver, so the lab's names work
and nothing is asked of servers the admin did not configure.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.names import dns, error

from appliance.dns.server import DNSEngine


class LocalResolver:
    """The IResolver methods we need, answered by a DNSEngine's authority and forwarder."""

    def __init__(self, engine: DNSEngine) -> None:
        self.engine = engine

    def _lookup(self, name: str | bytes, qtype: int) -> defer.Deferred:
        qname = name.encode("ascii") if isinstance(name, str) else name
        qname = qname.rstrip(b".")
        answer = self.engine.authority.answer(qname, qtype, minimal=True)
        if answer is not None:
            d = defer.succeed(answer)
        elif self.engine.forwarder is not None:
            d = self.engine.forwarder.resolve(qname, qtype, dns.IN)
        else:
            return defer.fail(error.DNSServerError(f"no forwarder for {qname!r}"))

        def sections(a):
            if a.rcode == dns.ENAME:
                raise error.DNSNameError(qname.decode("ascii", "replace"))
            if a.rcode != dns.OK:
                raise error.DNSServerError(f"rcode {a.rcode}")
            return a.answers, a.authority, a.additional

        return d.addCallback(sections)

    def lookupPointer(self, name, timeout=None):  # noqa: N802 (IResolver)
        return self._lookup(name, dns.PTR)

    def lookupAddress(self, name, timeout=None):  # noqa: N802
        return self._lookup(name, dns.A)

    def lookupIPV6Address(self, name, timeout=None):  # noqa: N802
        return self._lookup(name, dns.AAAA)

    def lookupMailExchange(self, name, timeout=None):  # noqa: N802
        return self._lookup(name, dns.MX)
