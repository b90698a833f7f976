"""The records the appliance publishes in its own zones, kept in step with its configuration:
SPF at the apex of each mail domain (a zone with an MX record at its apex) and DMARC at
_dmarc.<domain>, from [dns] spf and dmarc, the public DKIM keys (<selector>._domainkey
TXT records) the key store lists, and for client autoconfiguration the RFC 6186 SRV records
(_imaps._tcp.<domain> ...) of the listeners configured and, when the web listener serves
autoconfiguration, autoconfig.<domain> and autodiscover.<domain> as CNAMEs of our host.

A zone file that has its own record of a kind keeps it: what the admin wrote wins, and
`dns records` shows where the two differ. TXT data longer than 255 bytes is split into
several character-strings (RFC 1035 3.3.14), which resolvers join again.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.names import dns

MAX_STRING = 255
TTL = 3600


def txt_strings(text: str) -> tuple[bytes, ...]:
    """text as TXT character-strings of at most 255 bytes each."""
    data = text.encode("ascii")
    return tuple(data[i : i + MAX_STRING] for i in range(0, len(data), MAX_STRING)) or (b"",)


def txt_record(owner: str, text: str, ttl: int = TTL) -> dns.RRHeader:
    payload = dns.Record_TXT(*txt_strings(text), ttl=ttl)
    return dns.RRHeader(owner.encode("ascii"), dns.TXT, dns.IN, ttl, payload, auth=True)


def _has_txt(records: Sequence[dns.RRHeader], owner: bytes, prefix: bytes) -> bool:
    for rr in records:
        if rr.type == dns.TXT and rr.name.name.lower() == owner:
            joined = b"".join(rr.payload.data).lower()
            if (
                joined == prefix
                or joined.startswith(prefix + b" ")
                or joined.startswith(prefix + b";")
            ):
                return True
    return False


def is_mail_domain(origin: str, records: Sequence[dns.RRHeader]) -> bool:
    apex = origin.encode("ascii")
    return any(rr.type == dns.MX and rr.name.name.lower() == apex for rr in records)


def _has_owner(records: Sequence[dns.RRHeader], owner: bytes, rtype: int | None = None) -> bool:
    return any(
        rr.name.name.lower() == owner and (rtype is None or rr.type == rtype) for rr in records
    )


def published(
    origin: str,
    records: Sequence[dns.RRHeader],
    *,
    spf: str,
    dmarc: str,
    keys: Sequence[tuple[str, str]] = (),
    srv: Sequence[tuple[str, int, int, int, str]] = (),
    aliases: Sequence[str] = (),
    host: str = "",
) -> list[dns.RRHeader]:
    """The records to add to zone origin: keys (owner, TXT data) that fall inside it, and
    for a mail domain SPF, DMARC, srv ((label such as "_imaps._tcp", priority, weight, port,
    target) under the apex) and aliases (labels such as "autoconfig", CNAMEs of host); a name
    the zone file has data of that kind for keeps its own."""
    origin = origin.rstrip(".").lower()
    out = []
    for owner, text in keys:
        owner = owner.lower()
        inside = owner == origin or owner.endswith("." + origin)
        if inside and not _has_txt(records, owner.encode("ascii"), b"v=dkim1"):
            out.append(txt_record(owner, text))
    if not is_mail_domain(origin, records):
        return out
    apex = origin.encode("ascii")
    if spf and not _has_txt(records, apex, b"v=spf1"):
        out.append(txt_record(origin, spf))
    owner = f"_dmarc.{origin}"
    if dmarc and not _has_txt(records, owner.encode("ascii"), b"v=dmarc1"):
        out.append(txt_record(owner, dmarc))
    for label, priority, weight, port, target in srv:
        owner = f"{label}.{origin}"
        if not _has_owner(records, owner.encode("ascii"), dns.SRV):
            srv_data = dns.Record_SRV(priority, weight, port, target.rstrip("."), ttl=TTL)
            out.append(dns.RRHeader(owner.encode(), dns.SRV, dns.IN, TTL, srv_data, auth=True))
    for label in aliases if host else ():
        owner = f"{label}.{origin}"
        if not _has_owner(records, owner.encode("ascii")):
            alias = dns.Record_CNAME(host.rstrip(".").encode("ascii"), ttl=TTL)
            out.append(dns.RRHeader(owner.encode(), dns.CNAME, dns.IN, TTL, alias, auth=True))
    return out
