"""DNS block and allow lists (RFC 5782), asked at connect through our own Resolver.

A client is listed in a zone when <reversed address>.<zone> has an A record in 127.0.0.0/8
(IPv6: the 32 nibbles reversed). A client listed in an allow list ([dnsbl] allow_zones,
DNSWL) is never refused for a block list. action = reject refuses at the greeting, 554
5.7.1 with the list's name, as Postfix words it; action = tag accepts and says so at the end
of the data (X-DNSBL header), for the spam verdict. A list that cannot be asked (DNS
failure) does not block: the lists are advice, and a dead list must not stop all mail.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred

from appliance.filters.base import Filter, Memo, MessageCheck
from appliance.interfaces import (
    ACCEPT,
    Envelope,
    FilterVerdict,
    LookupFailed,
    Resolver,
    SessionFacts,
)

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def query_name(ip: str, zone: str) -> str | None:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        else:
            return ".".join(reversed(addr.exploded.replace(":", ""))) + "." + zone
    return ".".join(reversed(str(addr).split("."))) + "." + zone


class DNSBLFilter(Filter):
    name = "dnsbl"

    def __init__(
        self, resolver: Resolver, zones: Sequence[str], allow_zones: Sequence[str], action: str
    ) -> None:
        self.resolver = resolver
        self.zones = tuple(zones)
        self.allow_zones = tuple(allow_zones)
        self.action = action  # "reject" or "tag"
        self.memo: Memo[str, list[str]] = Memo()  # connect -> end of data, a while

    async def _listed(self, ip: str, zone: str) -> bool:
        name = query_name(ip, zone)
        if name is None:
            return False
        try:
            answers = await self.resolver.lookup_a(name)
        except LookupFailed:  # NXDOMAIN (not listed) or the list cannot be asked
            return False
        return any(ipaddress.ip_address(a) in LOOPBACK for a in answers)

    async def listings(self, ip: str) -> list[str]:
        """The block lists ip is in ([] when an allow list has it)."""
        known = self.memo.get(ip)
        if known is not None:
            return known
        found: list[str] = []
        for zone in self.allow_zones:
            if await self._listed(ip, zone):
                break
        else:
            found = [z for z in self.zones if await self._listed(ip, z)]
        self.memo.put(ip, found)
        return found

    def connect(self, facts: SessionFacts) -> Deferred[FilterVerdict]:
        return defer.ensureDeferred(self._connect(facts))

    async def _connect(self, facts: SessionFacts) -> FilterVerdict:
        if facts.trusted:
            return ACCEPT
        listed = await self.listings(facts.client_ip)
        if not listed:
            return ACCEPT
        reason = f"listed in {', '.join(listed)}"
        if self.action == "reject":
            text = (
                f"5.7.1 Service unavailable; client [{facts.client_ip}] blocked using {listed[0]}"
            )
            return FilterVerdict(554, text, reason=reason)
        return FilterVerdict(reason=reason)

    def wants_body(self, envelope: Envelope) -> bool:
        return self.action == "tag" and not envelope.ours

    def message(self, check: MessageCheck) -> Deferred[FilterVerdict]:
        d = defer.ensureDeferred(self.listings(check.envelope.client_ip))

        def tell(listed: list[str]) -> FilterVerdict:
            if not listed:
                return FilterVerdict(reason="not listed")
            check.results["dnsbl"] = " ".join(listed)
            return FilterVerdict(
                headers=(f"X-DNSBL: {check.envelope.client_ip} listed in {', '.join(listed)}",),
                reason=f"listed in {', '.join(listed)}",
            )

        return d.addCallback(tell)
