"""Forward-confirmed reverse DNS through our own zones, and the greeting that waits for it."""

from __future__ import annotations

import ipaddress

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns

from appliance.dns.authority import Authority, Zone
from appliance.dns.resolver import LocalResolver
from appliance.dns.server import DNSEngine
from appliance.smtp.rdns import ReverseLookup
from tests.dns.test_server import fired, rr


def lab_engine() -> DNSEngine:
    soa = dns.Record_SOA(b"ns.163.com", b"root.163.com", 1, 3600, 900, 604800, 300)
    forward = Zone("163.com", [
        rr("163.com", soa), rr("163.com", dns.Record_NS(b"ns.163.com")),
        rr("mail.163.com", dns.Record_A("127.0.1.1")),
        rr("liar.163.com", dns.Record_A("127.0.1.2")),
    ])  # fmt: skip
    reverse = Zone("1.0.127.in-addr.arpa", [
        rr("1.0.127.in-addr.arpa", soa), rr("1.0.127.in-addr.arpa", dns.Record_NS(b"ns.163.com")),
        rr("1.1.0.127.in-addr.arpa", dns.Record_PTR(b"mail.163.com")),
        rr("3.1.0.127.in-addr.arpa", dns.Record_PTR(b"liar.163.com")),
    ])  # fmt: skip
    return DNSEngine(
        Authority([forward, reverse]), recursion_networks=(ipaddress.ip_network("127.0.0.0/8"),)
    )


def test_rdns_verified_name() -> None:
    """127.0.1.1 -> PTR mail.163.com -> A 127.0.1.1: the name is trusted."""
    lookup = ReverseLookup(LocalResolver(lab_engine()), Clock())
    assert fired(lookup.lookup("127.0.1.1")) == "mail.163.com"


def test_rdns_ptr_that_does_not_point_back_is_unknown() -> None:
    """A PTR whose name resolves elsewhere is not trusted (spoofed reverse zone)."""
    lookup = ReverseLookup(LocalResolver(lab_engine()), Clock())
    assert fired(lookup.lookup("127.0.1.3")) is None


def test_rdns_no_ptr_and_no_forwarder_is_unknown() -> None:
    """No reverse zone for the address and nobody to ask: unknown, quickly, no failure."""
    lookup = ReverseLookup(LocalResolver(lab_engine()), Clock())
    assert fired(lookup.lookup("127.0.0.1")) is None
    assert fired(lookup.lookup("not an ip")) is None


def test_rdns_slow_resolver_times_out_to_unknown() -> None:
    """A resolver that never answers costs at most the timeout."""

    class Silent:
        def lookup_ptr(self, ip):
            return defer.Deferred()

    clock = Clock()
    d = ReverseLookup(Silent(), clock, timeout=2).lookup("127.0.1.1")
    assert not d.called
    clock.advance(2)
    assert fired(d) is None


def test_greeting_waits_for_reverse_lookup(smtp) -> None:
    """No 220 (and no command handled) until the client's name is known; then it is used."""
    pending: defer.Deferred = defer.Deferred()

    class Pending:
        def lookup(self, ip):
            return pending

    from tests.smtp.conftest import Session

    base = smtp()
    base.factory.rdns = Pending()
    s = Session(base.factory, smtp.clock, "127.0.1.1")
    assert s.send("EHLO early\r\n") == []
    pending.callback("mail.163.com")
    lines = s.read()
    assert lines[0] == "220 mail.example.test ESMTP mailappliance"
    assert lines[1] == "250-mail.example.test"
    assert "connect from mail.163.com[127.0.1.1]" in smtp.logs
