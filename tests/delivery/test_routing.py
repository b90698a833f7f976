"""Next hops for the relay, resolved through our own DNS engine over real zone files.

The zones are loaded with the zone-file parser and answered by LocalResolver, exactly what
the appliance runs; without a forwarder, a name outside the zones is a LookupFailed (a
temporary failure), which stands in for an unreachable upstream. Answers come from zones,
so every route() has fired by the time it returns.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.python.failure import Failure

from appliance.config import HostPort
from appliance.delivery.routing import Destination, NextHop, RouteError, Router
from appliance.delivery.transport import TransportMap
from appliance.dns.authority import Authority, Zone
from appliance.dns.resolver import LocalResolver
from appliance.dns.server import DNSEngine
from appliance.dns.zonefile import load_zone

ZONE = """\
$TTL 1H
@               IN SOA  ns.test. root.test. ( 1 3H 15M 1W 1D )
                IN NS   ns
ns              IN A    127.0.1.1

; MX preference order (served out of order)
pref            IN MX   20 mx2.pref
                IN MX   10 mx1.pref
                IN MX   30 mx3.pref
mx1.pref        IN A    127.0.2.1
mx2.pref        IN A    127.0.2.2
mx3.pref        IN A    127.0.2.3

; two MXes of equal preference, and a worse one
equal           IN MX   10 a.equal
                IN MX   10 b.equal
                IN MX   20 c.equal
a.equal         IN A    127.0.3.1
b.equal         IN A    127.0.3.2
c.equal         IN A    127.0.3.3

; no MX: the implicit MX is the domain's own address
implicit        IN A    127.0.4.1
                IN AAAA fd00::4:1
; exists, with neither MX nor address
bare            IN TXT  "nothing here"

; RFC 7505 null MX, alone and among others
null            IN MX   0 .
nullmixed       IN MX   0 .
                IN MX   10 mx1.pref

; MX hosts without an address are skipped
skip            IN MX   10 gone.skip
                IN MX   20 noaddr.skip
                IN MX   30 ok.skip
noaddr.skip     IN TXT  "no address"
ok.skip         IN A    127.0.5.3
allgone         IN MX   10 gone.skip
                IN MX   20 noaddr.skip

; MX hosts outside our zones (no forwarder): temporary lookup failures
tempfail        IN MX   10 mx.outside.invalid.
mixedfail       IN MX   10 mx.outside.invalid.
                IN MX   20 gone.skip
tempok          IN MX   10 mx.outside.invalid.
                IN MX   20 mx1.pref

; one MX host with several addresses, and an address shared by two MX names
multi           IN MX   10 mx.multi
mx.multi        IN A    127.0.6.1
                IN A    127.0.6.2
                IN AAAA fd00::6:1
shared          IN MX   10 mx.multi
                IN MX   20 alias.multi
alias.multi     IN A    127.0.6.2
                IN A    127.0.6.3

; ourselves: me.test by name, 127.0.0.10 by address
me              IN A    127.0.0.10
ouralias        IN A    127.0.0.10
primary         IN A    127.0.7.1
tertiary        IN A    127.0.7.3
backupname      IN MX   10 primary
                IN MX   20 me
                IN MX   30 tertiary
backupaddr      IN MX   10 primary
                IN MX   20 ouralias
                IN MX   30 tertiary
loopname        IN MX   10 me
                IN MX   20 tertiary
loopaddr        IN MX   10 ouralias
                IN MX   20 tertiary
primarydown     IN MX   10 gone.skip
                IN MX   20 me

; direct and smarthost hosts
relay           IN A    127.0.8.1
                IN AAAA fd00::8:1
noaddr          IN TXT  "a host without an address"
"""

TRANSPORT = """\
# the transport map of these tests
shop.test       relay.test:2525     # no MX lookup: shop.test does not even exist
.corp.test      [relay.test]:587    # subdomains of corp.test
.b.corp.test    [127.0.0.22]          # closer parent
partner.test    smarthost
pref.test       mx                  # MX routing although a smarthost is set
gone.test       nosuch.test:25
far.test        [mx.outside.invalid]:25
mine.test       [127.0.0.10]:25
mineport.test   [127.0.0.10]:2525
myname.test     ME.test
*               [127.0.0.21]:25
"""

OURS = {"local_names": ["Me.Test"], "local_addresses": [("127.0.0.10", 25)]}


@pytest.fixture
def resolver(tmp_path: Path) -> LocalResolver:
    path = tmp_path / "test.zone"
    path.write_text(ZONE)
    zone = Zone("test", load_zone(path, "test"))
    return LocalResolver(DNSEngine(Authority([zone])))


@pytest.fixture
def transport(tmp_path: Path) -> TransportMap:
    path = tmp_path / "transport"
    path.write_text(textwrap.dedent(TRANSPORT))
    return TransportMap(path)


def fired(d: defer.Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired (zones answer at once)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "deferred has not fired"
    return out[0]


def routed(router: Router, domain: str) -> Destination:
    result = fired(router.route(domain))
    assert isinstance(result, Destination), result
    return result


def refused(router: Router, domain: str) -> RouteError:
    result = fired(router.route(domain))
    assert isinstance(result, Failure) and result.check(RouteError), result
    error = result.value
    assert isinstance(error, RouteError)
    return error


def hops(router: Router, domain: str) -> list[str]:
    return [str(hop) for hop in routed(router, domain).hops]


# ---------------------------------------------------------------------------- MX routing


def test_route_mx_preference_order(resolver: LocalResolver) -> None:
    """MX hosts are tried best preference first, whatever order DNS served them in."""
    dest = routed(Router(resolver), "pref.test")
    assert dest == Destination(
        "pref.test",
        (
            NextHop("mx1.pref.test", "127.0.2.1", 25, 10),
            NextHop("mx2.pref.test", "127.0.2.2", 25, 20),
            NextHop("mx3.pref.test", "127.0.2.3", 25, 30),
        ),
    )
    assert not dest.smarthost


def test_route_mx_hop_str_is_postfix_relay_form(resolver: LocalResolver) -> None:
    """str(NextHop) is Postfix's relay= form host[ip]:port."""
    assert str(routed(Router(resolver), "pref.test").hops[0]) == "mx1.pref.test[127.0.2.1]:25"


def test_route_mx_port_applies_to_every_hop(resolver: LocalResolver) -> None:
    """The router's port is the port of every MX hop."""
    assert {hop.port for hop in routed(Router(resolver, port=2525), "pref.test").hops} == {2525}


def test_route_mx_equal_preferences_random_order_seeded(resolver: LocalResolver) -> None:
    """MXes of equal preference come in rng order (both orders over seeds), worse ones after."""
    orders = set()
    for seed in range(20):
        names = [
            hop.host for hop in routed(Router(resolver, rng=random.Random(seed)), "equal.test").hops
        ]
        assert names[2] == "c.equal.test"
        orders.add(tuple(names[:2]))
    assert orders == {("a.equal.test", "b.equal.test"), ("b.equal.test", "a.equal.test")}
    again = [routed(Router(resolver, rng=random.Random(7)), "equal.test") for _ in range(2)]
    assert again[0] == again[1]


def test_route_mx_domain_case_and_trailing_dot_ignored(resolver: LocalResolver) -> None:
    """The domain is lower-cased (and its root dot dropped) for the lookup and the key."""
    dest = routed(Router(resolver), "PREF.Test.")
    assert dest.key == "pref.test"
    assert dest.hops[0].host == "mx1.pref.test"


def test_route_implicit_mx_uses_domain_addresses(resolver: LocalResolver) -> None:
    """No MX records: the domain's own A then AAAA, preference 0."""
    assert routed(Router(resolver), "implicit.test") == Destination(
        "implicit.test",
        (
            NextHop("implicit.test", "127.0.4.1", 25, 0),
            NextHop("implicit.test", "fd00::4:1", 25, 0),
        ),
    )


def test_route_no_mx_and_no_address_is_permanent(resolver: LocalResolver) -> None:
    """A domain that exists with neither MX nor address bounces: 5.1.2."""
    error = refused(Router(resolver), "bare.test")
    assert (error.status, error.permanent) == ("5.1.2", True)
    assert "no MX and no address record" in error.text


def test_route_null_mx_is_permanent(resolver: LocalResolver) -> None:
    """A null MX (RFC 7505) bounces: 5.1.10."""
    error = refused(Router(resolver), "null.test")
    assert str(error) == "5.1.10 Recipient address has null MX"
    assert error.permanent


def test_route_null_mx_among_others_still_null(resolver: LocalResolver) -> None:
    """A null MX mixed with real MXes is treated as a null MX."""
    error = refused(Router(resolver), "nullmixed.test")
    assert (error.status, error.permanent) == ("5.1.10", True)


def test_route_nxdomain_is_permanent(resolver: LocalResolver) -> None:
    """A domain that does not exist bounces with Postfix's wording: 5.1.2."""
    error = refused(Router(resolver), "nosuch.test")
    assert str(error) == (
        "5.1.2 Host or domain name not found. "
        "Name service error for name=nosuch.test type=MX: Host not found"
    )
    assert error.permanent


def test_route_mx_lookup_failure_is_temporary(resolver: LocalResolver) -> None:
    """An MX lookup that gets no answer (outside our zones, no forwarder) is retried: 4.4.3."""
    error = refused(Router(resolver), "elsewhere.invalid")
    assert (error.status, error.permanent) == ("4.4.3", False)
    assert "name=elsewhere.invalid type=MX: Host not found, try again" in error.text


def test_route_mx_host_without_address_skipped(resolver: LocalResolver) -> None:
    """MX hosts that do not exist or have no address are skipped; the next one is used."""
    assert hops(Router(resolver), "skip.test") == ["ok.skip.test[127.0.5.3]:25"]


def test_route_every_mx_host_without_address_is_permanent(resolver: LocalResolver) -> None:
    """No MX host has an address and no lookup failed: 5.4.4 unable to look up host."""
    error = refused(Router(resolver), "allgone.test")
    assert (error.status, error.permanent) == ("5.4.4", True)
    assert error.text.startswith("unable to look up host gone.skip.test, noaddr.skip.test")


def test_route_every_mx_host_lookup_failed_is_temporary(resolver: LocalResolver) -> None:
    """The only MX host's lookups fail: 4.4.3, retried."""
    error = refused(Router(resolver), "tempfail.test")
    assert (error.status, error.permanent) == ("4.4.3", False)
    assert "name=mx.outside.invalid type=A" in error.text


def test_route_some_failed_some_missing_is_temporary(resolver: LocalResolver) -> None:
    """Nothing left, but one lookup failed temporarily: 4.4.3, not a bounce."""
    error = refused(Router(resolver), "mixedfail.test")
    assert (error.status, error.permanent) == ("4.4.3", False)


def test_route_failed_mx_host_skipped_when_another_resolves(resolver: LocalResolver) -> None:
    """An MX host whose lookup fails is skipped when a worse one resolves."""
    assert hops(Router(resolver), "tempok.test") == ["mx1.pref.test[127.0.2.1]:25"]


def test_route_mx_host_several_addresses_a_first(resolver: LocalResolver) -> None:
    """Every address of an MX host is a hop, A records before AAAA."""
    assert hops(Router(resolver), "multi.test") == [
        "mx.multi.test[127.0.6.1]:25",
        "mx.multi.test[127.0.6.2]:25",
        "mx.multi.test[fd00::6:1]:25",
    ]


def test_route_address_shared_by_two_mx_hosts_tried_once(resolver: LocalResolver) -> None:
    """An address behind two MX names is tried once, at the better preference."""
    assert hops(Router(resolver), "shared.test") == [
        "mx.multi.test[127.0.6.1]:25",
        "mx.multi.test[127.0.6.2]:25",
        "mx.multi.test[fd00::6:1]:25",
        "alias.multi.test[127.0.6.3]:25",
    ]


# ---------------------------------------------------------------------------- loops


def test_route_mx_ourselves_by_name_keeps_better_mx(resolver: LocalResolver) -> None:
    """We are MX 20 (by name): only MX 10 is used, MX 30 is dropped with us."""
    assert hops(Router(resolver, **OURS), "backupname.test") == ["primary.test[127.0.7.1]:25"]


def test_route_mx_ourselves_by_address_keeps_better_mx(resolver: LocalResolver) -> None:
    """We are MX 20 (its address is ours): only MX 10 is used."""
    assert hops(Router(resolver, **OURS), "backupaddr.test") == ["primary.test[127.0.7.1]:25"]


def test_route_mx_ourselves_by_name_best_loops(resolver: LocalResolver) -> None:
    """We are the best MX (by name): nothing may be used, 5.4.6."""
    error = refused(Router(resolver, **OURS), "loopname.test")
    assert str(error) == "5.4.6 mail for loopname.test loops back to myself"
    assert error.permanent


def test_route_mx_ourselves_by_address_best_loops(resolver: LocalResolver) -> None:
    """We are the best MX (by address): 5.4.6."""
    error = refused(Router(resolver, **OURS), "loopaddr.test")
    assert (error.status, error.permanent) == ("5.4.6", True)


def test_route_mx_our_address_on_another_port_is_not_us(resolver: LocalResolver) -> None:
    """Our address on a port we do not listen on is someone else (e.g. a lab peer)."""
    router = Router(resolver, local_addresses=[("127.0.0.10", 2525)])
    assert hops(router, "loopaddr.test")[0] == "ouralias.test[127.0.0.10]:25"


def test_route_mx_backup_with_primary_unresolvable_is_temporary(resolver: LocalResolver) -> None:
    """We are a backup MX and the better one has no address now: hold the mail, 4.4.4."""
    error = refused(Router(resolver, **OURS), "primarydown.test")
    assert (error.status, error.permanent) == ("4.4.4", False)
    assert error.text == "unable to find primary relay for primarydown.test"


def test_route_without_local_identity_uses_every_mx(resolver: LocalResolver) -> None:
    """A router that knows no local names or addresses cuts nothing."""
    assert len(routed(Router(resolver), "backupname.test").hops) == 3


# ---------------------------------------------------------------------------- smarthost


def test_route_smarthost_ip_literal(resolver: LocalResolver) -> None:
    """A smarthost IP literal is used as is, for every domain, without DNS."""
    router = Router(resolver, smarthost=HostPort("127.0.0.25", 587))
    assert routed(router, "nosuch.test") == Destination(
        "[127.0.0.25]:587", (NextHop("127.0.0.25", "127.0.0.25", 587, 0),), smarthost=True
    )


def test_route_smarthost_name_every_address(resolver: LocalResolver) -> None:
    """A smarthost name gives its A then AAAA addresses; the key is [host]:port."""
    router = Router(resolver, smarthost=HostPort("Relay.Test", 587))
    dest = routed(router, "pref.test")
    assert dest.key == "[relay.test]:587"
    assert dest.smarthost
    assert [str(h) for h in dest.hops] == ["relay.test[127.0.8.1]:587", "relay.test[fd00::8:1]:587"]


def test_route_smarthost_not_found_is_temporary(resolver: LocalResolver) -> None:
    """A smarthost name that does not resolve is our misconfiguration: 4.3.5, retried."""
    for host in ("nosuch.test", "noaddr.test"):
        error = refused(Router(resolver, smarthost=HostPort(host, 25)), "pref.test")
        assert (error.status, error.permanent) == ("4.3.5", False), host
        assert f"name={host}" in error.text


def test_route_smarthost_lookup_failure_is_temporary(resolver: LocalResolver) -> None:
    """A smarthost whose lookup fails: 4.4.3."""
    error = refused(Router(resolver, smarthost=HostPort("relay.outside.invalid", 25)), "pref.test")
    assert (error.status, error.permanent) == ("4.4.3", False)


def test_route_smarthost_pointing_at_ourselves_loops(resolver: LocalResolver) -> None:
    """A smarthost that is us, by address or by name: 5.4.6."""
    for smarthost in (
        HostPort("127.0.0.10", 25),
        HostPort("me.test", 25),
        HostPort("ouralias.test", 25),
    ):
        error = refused(Router(resolver, smarthost=smarthost, **OURS), "pref.test")
        assert str(error) == "5.4.6 mail for pref.test loops back to myself", smarthost


# ---------------------------------------------------------------------------- transport map


def test_route_transport_exact_direct_no_mx_lookup(
    resolver: LocalResolver, transport: TransportMap
) -> None:
    """host:port in the map: that host's addresses, no MX lookup (shop.test does not exist)."""
    dest = routed(Router(resolver, transport=transport), "Shop.Test")
    assert dest == Destination(
        "[relay.test]:2525",
        (NextHop("relay.test", "127.0.8.1", 2525, 0), NextHop("relay.test", "fd00::8:1", 2525, 0)),
    )


def test_route_transport_parent_entry(resolver: LocalResolver, transport: TransportMap) -> None:
    """.corp.test covers its subdomains, the closest parent winning; not corp.test itself."""
    router = Router(resolver, transport=transport)
    assert routed(router, "a.corp.test").key == "[relay.test]:587"
    assert routed(router, "x.b.corp.test").hops == (NextHop("127.0.0.22", "127.0.0.22", 25, 0),)
    assert routed(router, "corp.test").key == "[127.0.0.21]:25"


def test_route_transport_star_default(resolver: LocalResolver, transport: TransportMap) -> None:
    """An unlisted domain takes the * entry, even with a smarthost set."""
    router = Router(resolver, transport=transport, smarthost=HostPort("relay.test", 587))
    dest = routed(router, "gmail.example")
    assert dest == Destination("[127.0.0.21]:25", (NextHop("127.0.0.21", "127.0.0.21", 25, 0),))


def test_route_transport_smarthost_entry(resolver: LocalResolver, transport: TransportMap) -> None:
    """A smarthost entry goes through the configured smarthost, marked as such."""
    router = Router(resolver, transport=transport, smarthost=HostPort("127.0.0.25", 587))
    dest = routed(router, "partner.test")
    assert (dest.key, dest.smarthost) == ("[127.0.0.25]:587", True)


def test_route_transport_smarthost_entry_without_smarthost(
    resolver: LocalResolver, transport: TransportMap
) -> None:
    """A smarthost entry with no smarthost configured: 4.3.5, retried until it is fixed."""
    error = refused(Router(resolver, transport=transport), "partner.test")
    assert (error.status, error.permanent) == ("4.3.5", False)
    assert "no smarthost configured" in error.text


def test_route_transport_mx_entry_overrides_smarthost(
    resolver: LocalResolver, transport: TransportMap
) -> None:
    """An mx entry routes by MX even when a smarthost is set."""
    router = Router(resolver, transport=transport, smarthost=HostPort("127.0.0.25", 587))
    dest = routed(router, "pref.test")
    assert (dest.key, dest.smarthost, dest.hops[0].host) == ("pref.test", False, "mx1.pref.test")


def test_route_transport_direct_host_not_found_is_permanent(
    resolver: LocalResolver, transport: TransportMap
) -> None:
    """A direct host that does not exist bounces: 5.1.2."""
    error = refused(Router(resolver, transport=transport), "gone.test")
    assert (error.status, error.permanent) == ("5.1.2", True)
    assert "name=nosuch.test type=A: Host not found" in error.text


def test_route_transport_direct_lookup_failure_is_temporary(
    resolver: LocalResolver, transport: TransportMap
) -> None:
    """A direct host whose lookup fails: 4.4.3."""
    error = refused(Router(resolver, transport=transport), "far.test")
    assert (error.status, error.permanent) == ("4.4.3", False)


def test_route_transport_direct_to_ourselves_loops(
    resolver: LocalResolver, transport: TransportMap
) -> None:
    """A direct route to our own address and port, or our name: 5.4.6; another port is fine."""
    router = Router(resolver, transport=transport, **OURS)
    assert refused(router, "mine.test").status == "5.4.6"
    assert refused(router, "myname.test").status == "5.4.6"
    assert routed(router, "mineport.test").key == "[127.0.0.10]:2525"


def test_route_without_transport_uses_smarthost(resolver: LocalResolver) -> None:
    """No transport map, a smarthost set: every domain goes through it."""
    router = Router(resolver, smarthost=HostPort("relay.test", 25))
    assert routed(router, "implicit.test").key == "[relay.test]:25"


# ---------------------------------------------------------------------------- odd domains


def test_route_address_literal_domain_goes_to_itself(resolver: LocalResolver) -> None:
    """user@[192.0.2.1] is routed to that address (RFC 5321 5.1), no DNS."""
    assert routed(Router(resolver), "[192.0.2.1]") == Destination(
        "[192.0.2.1]:25", (NextHop("192.0.2.1", "192.0.2.1", 25, 0),)
    )
    assert routed(Router(resolver), "[IPv6:2001:db8::1]").key == "[2001:db8::1]:25"


def test_route_bad_domain_is_permanent(resolver: LocalResolver) -> None:
    """A domain that is not a host name bounces without asking DNS: 5.1.2."""
    for domain in ("", "bad_domain!", "[not-an-ip]"):
        error = refused(Router(resolver), domain)
        assert (error.status, error.permanent) == ("5.1.2", True), domain


def test_route_error_str_and_fields() -> None:
    """RouteError keeps status, text and permanence; str() is "<status> <text>"."""
    error = RouteError("4.4.3", "try later", False)
    assert (error.status, error.text, error.permanent, str(error)) == (
        "4.4.3",
        "try later",
        False,
        "4.4.3 try later",
    )
