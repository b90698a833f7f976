"""Authoritative answers from our zones, the way BIND gives them.

A Zone indexes the records of one loaded master file by lower-cased owner name and type.
`Authority.answer()` returns a complete `Answer` (rcode, aa, answer, authority, additional):
positive answers with glue for MX/NS/SRV targets, CNAME chains followed inside our zones,
NXDOMAIN and NODATA with the SOA (negative TTL per RFC 2308), empty non-terminals as NODATA,
wildcards, and referrals below delegation points.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from twisted.names import dns

from appliance.errors import ZoneError

ANY = dns.ALL_RECORDS
_GLUE_TYPES = (dns.A, dns.AAAA)
_MAX_CNAME_CHAIN = 8


def _target(rr: dns.RRHeader) -> bytes | None:
    """The host name an MX/NS/SRV/CNAME record points to, lower-cased."""
    p = rr.payload
    if rr.type in (dns.MX, dns.NS, dns.SRV, dns.CNAME):
        name = p.name if rr.type != dns.SRV else p.target
        return name.name.lower()
    return None


@dataclass
class Answer:
    rcode: int = dns.OK
    aa: bool = True
    answers: list[dns.RRHeader] = field(default_factory=list)
    authority: list[dns.RRHeader] = field(default_factory=list)
    additional: list[dns.RRHeader] = field(default_factory=list)


class Zone:
    """One zone's records, indexed for lookups; built once at load time."""

    def __init__(self, origin: str, records: Sequence[dns.RRHeader], allow_transfer=()) -> None:
        self.origin = origin.rstrip(".").lower().encode("ascii")
        self.allow_transfer = tuple(allow_transfer)
        self.records = list(records)
        self.nodes: dict[bytes, dict[int, list[dns.RRHeader]]] = {}
        for rr in self.records:
            owner = rr.name.name.lower()
            self.nodes.setdefault(owner, {}).setdefault(rr.type, []).append(rr)
        apex = self.nodes.get(self.origin, {})
        if dns.SOA not in apex:
            raise ZoneError(origin, 0, "no SOA record at the zone apex")
        self.soa = apex[dns.SOA][0]
        self.ns = apex.get(dns.NS, [])
        soa = self.soa.payload
        # RFC 2308: negative answers are cached for min(SOA TTL, SOA minimum)
        neg_ttl = min(self.soa.ttl, soa.minimum)
        self.negative_soa = dns.RRHeader(
            self.soa.name.name, dns.SOA, dns.IN, neg_ttl, soa, auth=True
        )
        # names that exist only because something lives below them (RFC 8020: not NXDOMAIN)
        self.empty_nonterminals: set[bytes] = set()
        for owner in self.nodes:
            name = owner
            while name != self.origin and b"." in name:
                name = name.split(b".", 1)[1]
                if name not in self.nodes:
                    self.empty_nonterminals.add(name)
        self.delegations = {
            owner for owner, types in self.nodes.items() if owner != self.origin and dns.NS in types
        }

    def contains(self, name: bytes) -> bool:
        return name == self.origin or name.endswith(b"." + self.origin)

    def exists(self, name: bytes) -> bool:
        return name in self.nodes or name in self.empty_nonterminals

    def transfer_records(self) -> list[dns.RRHeader]:
        """AXFR order: SOA, everything else, SOA."""
        rest = [rr for rr in self.records if rr.type != dns.SOA]
        return [self.soa, *rest, self.soa]


class Authority:
    """All our zones; answers a question or says it is not ours (None)."""

    def __init__(self, zones: Iterable[Zone] = ()) -> None:
        self.zones: dict[bytes, Zone] = {z.origin: z for z in zones}
        self._on_replace: list[Callable[[], object]] = []

    def on_replace(self, call: Callable[[], object]) -> None:
        """call() after every replace(): whoever keeps answers made from the zones (the UDP
        answer table) forgets them."""
        self._on_replace.append(call)

    def replace(self, zones: Iterable[Zone]) -> None:
        """Serve these zones from now on (a reload: one swap, no half-updated state)."""
        self.zones = {z.origin: z for z in zones}
        for call in self._on_replace:
            call()

    def find_zone(self, name: bytes) -> Zone | None:
        """The closest enclosing zone we serve for a lower-cased name, or None."""
        while True:
            zone = self.zones.get(name)
            if zone is not None:
                return zone
            if b"." not in name:
                return None
            name = name.split(b".", 1)[1]

    def answer(self, qname: bytes, qtype: int, minimal: bool = False) -> Answer | None:
        name = qname.rstrip(b".").lower()
        zone = self.find_zone(name)
        if zone is None:
            return None
        result = Answer()
        seen: set[bytes] = set()
        for _ in range(_MAX_CNAME_CHAIN):
            seen.add(name)
            target = self._lookup(zone, name, qtype, result)
            if target is None or target in seen:
                break
            zone = self.find_zone(target)
            if zone is None:  # CNAME leads out of our zones: the resolver chases it
                break
            name = target
        if result.aa and result.rcode == dns.OK and result.answers and not minimal:
            last = self.find_zone(result.answers[-1].name.name.lower()) or zone
            if not any(
                rr.type == dns.NS and rr.name.name.lower() == last.origin for rr in result.answers
            ):
                result.authority.extend(last.ns)
        self._add_glue(result)
        return result

    def _lookup(self, zone: Zone, name: bytes, qtype: int, result: Answer) -> bytes | None:
        """Fill result for name in zone; return a CNAME target to follow, if any."""
        if zone.delegations:
            cut = self._delegation(zone, name)
            if cut is not None:
                if not result.answers:  # a referral is not an authoritative answer
                    result.aa = False
                result.authority.extend(zone.nodes[cut][dns.NS])
                return None
        node = zone.nodes.get(name)
        if node is None:
            node = self._wildcard(zone, name)
            if node is None:
                if not zone.exists(name):
                    result.rcode = dns.ENAME
                result.authority.append(zone.negative_soa)
                return None
            node = {
                t: [
                    dns.RRHeader(name, rr.type, rr.cls, rr.ttl, rr.payload, auth=True) for rr in rrs
                ]
                for t, rrs in node.items()
            }
        if qtype == ANY:
            for rrs in node.values():
                result.answers.extend(rrs)
            return None
        rrs = node.get(qtype) or []
        if rrs:
            result.answers.extend(rrs)
            return None
        cname = node.get(dns.CNAME)
        if cname and qtype != dns.CNAME:
            result.answers.extend(cname)
            return _target(cname[0])
        result.authority.append(zone.negative_soa)
        return None

    @staticmethod
    def _delegation(zone: Zone, name: bytes) -> bytes | None:
        """The highest zone cut at or above name (below the apex), if any."""
        cut = None
        while name != zone.origin and b"." in name:
            if name in zone.delegations:
                cut = name
            name = name.split(b".", 1)[1]
        return cut

    @staticmethod
    def _wildcard(zone: Zone, name: bytes) -> dict[int, list[dns.RRHeader]] | None:
        """RFC 4592: the wildcard at the closest encloser of a name that does not exist."""
        if zone.exists(name):
            return None
        encloser = name
        while encloser != zone.origin:
            encloser = encloser.split(b".", 1)[1]
            if zone.exists(encloser) or encloser == zone.origin:
                return zone.nodes.get(b"*." + encloser)
        return None

    def _add_glue(self, result: Answer) -> None:
        """Addresses for MX/NS/SRV targets that we serve, in the additional section."""
        present = {(rr.name.name.lower(), rr.type) for rr in result.answers}
        for rr in (*result.answers, *result.authority):
            if rr.type == dns.CNAME:
                continue
            target = _target(rr)
            if target is None:
                continue
            zone = self.find_zone(target)
            if zone is None:
                continue
            node = zone.nodes.get(target, {})
            for t in _GLUE_TYPES:
                if (target, t) in present:
                    continue
                present.add((target, t))
                result.additional.extend(node.get(t, ()))
