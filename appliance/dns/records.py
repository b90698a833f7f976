"""What a mail domain needs in DNS, checked against what our zones serve (`dns records`).

needed_records() lists, for one domain: its MX (our hostname), the hostname's A/AAAA (each
SMTP listen address), the PTR of each address, SPF, DMARC, every published DKIM key, the
RFC 6186 SRV records of the client listeners and the autoconfig/autodiscover names.
check() looks each up in our Authority and says: ok, missing, or differs (with what is
served), and gives the zone-file line to add. A name outside every zone we serve is "not
ours": the line is for whoever serves that zone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.names import dns

from appliance.dns.authority import Authority

TYPES = {
    "MX": dns.MX,
    "A": dns.A,
    "AAAA": dns.AAAA,
    "PTR": dns.PTR,
    "TXT": dns.TXT,
    "SRV": dns.SRV,
    "CNAME": dns.CNAME,
}


@dataclass(frozen=True)
class Needed:
    name: str
    type: str
    value: str  # as in a zone file: "10 mail.163.com.", "127.0.1.1", '"v=spf1 mx -all"'
    why: str


@dataclass(frozen=True)
class Checked:
    needed: Needed
    state: str  # "ok", "missing", "differs", "not ours"
    served: tuple[str, ...] = ()

    @property
    def line(self) -> str:
        n = self.needed
        return f"{n.name}. IN {n.type} {n.value}"


def reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


def needed_records(
    domain: str,
    hostname: str,
    addresses: Sequence[str],
    *,
    spf: str,
    dmarc: str,
    dkim: Sequence[tuple[str, str]],
    srv: Sequence[tuple[str, int, int, int, str]] = (),
    aliases: Sequence[str] = (),
) -> list[Needed]:
    """srv: the RFC 6186 records of the client listeners ("_imaps._tcp", priority, weight,
    port, target); aliases: the names client autoconfiguration looks up ("autoconfig"),
    which must lead to our host."""
    out = [Needed(domain, "MX", f"10 {hostname}.", "mail for the domain comes to us")]
    for ip in addresses:
        kind = "AAAA" if ":" in ip else "A"
        out.append(Needed(hostname, kind, ip, "the MX host's address"))
        out.append(Needed(reverse_name(ip), "PTR", f"{hostname}.", "receivers check reverse DNS"))
    if spf:
        out.append(Needed(domain, "TXT", f'"{spf}"', "SPF: who may send as the domain"))
    for owner, text in dkim:
        out.append(Needed(owner, "TXT", f'"{text}"', "DKIM public key"))
    if dmarc:
        out.append(Needed(f"_dmarc.{domain}", "TXT", f'"{dmarc}"', "DMARC policy"))
    for label, priority, weight, port, target in srv:
        value = f"{priority} {weight} {port} {target.rstrip('.')}."
        out.append(Needed(f"{label}.{domain}", "SRV", value, "clients find the server: RFC 6186"))
    for label in aliases:
        out.append(Needed(f"{label}.{domain}", "CNAME", f"{hostname}.", "client autoconfiguration"))
    return out


def _served(rr: dns.RRHeader) -> str:
    p = rr.payload
    if rr.type == dns.MX:
        return f"{p.preference} {p.name.name.decode()}."
    if rr.type in (dns.A, dns.AAAA):
        return p.dottedQuad() if rr.type == dns.A else ipaddress.ip_address(p.address).compressed
    if rr.type == dns.PTR:
        return f"{p.name.name.decode()}."
    if rr.type == dns.TXT:
        return '"' + b"".join(p.data).decode("utf-8", "replace") + '"'
    if rr.type == dns.SRV:
        return f"{p.priority} {p.weight} {p.port} {p.target.name.decode()}."
    if rr.type == dns.CNAME:
        return f"{p.name.name.decode()}."
    return str(p)


def _same(kind: str, served: str, wanted: str) -> bool:
    if kind == "TXT":
        return served == wanted
    return served.lower().rstrip(".") == wanted.lower().rstrip(".")


def check(authority: Authority, needed: Sequence[Needed]) -> list[Checked]:
    out = []
    for n in needed:
        answer = authority.answer(n.name.encode("ascii"), TYPES[n.type], minimal=True)
        if answer is None:
            out.append(Checked(n, "not ours"))
            continue
        served = tuple(_served(rr) for rr in answer.answers if rr.type == TYPES[n.type])
        if n.type == "TXT" and n.value.lower().startswith('"v=spf1'):
            served = tuple(s for s in served if s.lower().startswith('"v=spf1'))
        if any(_same(n.type, s, n.value) for s in served):
            out.append(Checked(n, "ok", served))
        elif served:
            out.append(Checked(n, "differs", served))
        else:
            out.append(Checked(n, "missing"))
    return out
