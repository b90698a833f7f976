"""The forwarders' answer cache: answers kept until their TTL runs out (negative ones for the
SOA's minimum, RFC 2308), their TTLs aged when served; bounded, oldest dropped first."""

from __future__ import annotations

from typing import Any

from twisted.names import dns

from appliance.dns.authority import Answer

OPT = dns.OPT  # the EDNS pseudo-record: never aged


class ForwardCache:
    """Answers from forwarders, kept until their TTL runs out; bounded, oldest dropped first."""

    def __init__(self, max_entries: int, clock: Any) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[tuple[bytes, int, int], tuple[float, float, Answer]] = {}

    def get(self, key: tuple[bytes, int, int]) -> Answer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored, expires, answer = entry
        now = self.clock.seconds()
        if now >= expires:
            del self._entries[key]
            return None
        age = int(now - stored)
        if age == 0:
            return answer

        def aged(rrs: list[dns.RRHeader]) -> list[dns.RRHeader]:
            return [
                dns.RRHeader(rr.name.name, rr.type, rr.cls, max(rr.ttl - age, 0), rr.payload)
                if rr.type != OPT
                else rr
                for rr in rrs
            ]

        return Answer(
            answer.rcode,
            False,
            aged(answer.answers),
            aged(answer.authority),
            aged(answer.additional),
        )

    def put(self, key: tuple[bytes, int, int], answer: Answer) -> None:
        if self.max_entries <= 0:
            return
        if answer.rcode not in (dns.OK, dns.ENAME):
            return
        ttls = [rr.ttl for rr in answer.answers]
        if not ttls:
            # negative answer: cached for min(SOA TTL, SOA minimum) (RFC 2308), else not at all
            ttls = [
                min(rr.ttl, rr.payload.minimum) for rr in answer.authority if rr.type == dns.SOA
            ]
        if not ttls or min(ttls) <= 0:
            return
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        now = self.clock.seconds()
        self._entries[key] = (now, now + min(ttls), answer)
