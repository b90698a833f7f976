"""The records the appliance publishes in its zones: SPF and DMARC at each mail domain,
the zone file's own records kept, long TXT data split into 255-byte strings."""

from __future__ import annotations

from twisted.names import dns

from appliance.dns.authority import Authority, Zone
from appliance.dns.published import published, txt_record, txt_strings

SOA = dns.RRHeader(
    b"163.test",
    dns.SOA,
    dns.IN,
    3600,
    dns.Record_SOA(b"ns.163.test", b"root.163.test", 1, 3600, 900, 604800, 3600),
    auth=True,
)
MX = dns.RRHeader(b"163.test", dns.MX, dns.IN, 3600, dns.Record_MX(10, b"mail.163.test"), auth=True)


def txts(zone: Zone, name: bytes) -> list[bytes]:
    a = Authority([zone]).answer(name, dns.TXT)
    assert a is not None
    return [b"".join(rr.payload.data) for rr in a.answers if rr.type == dns.TXT]


def test_published_spf_and_dmarc_served_for_a_mail_domain() -> None:
    """A zone with an MX at its apex gets the configured SPF and DMARC records."""
    records = [SOA, MX]
    records += published("163.test", records, spf="v=spf1 mx -all", dmarc="v=DMARC1; p=reject")
    zone = Zone("163.test", records)
    assert txts(zone, b"163.test") == [b"v=spf1 mx -all"]
    assert txts(zone, b"_dmarc.163.test") == [b"v=DMARC1; p=reject"]


def test_published_zone_file_records_win() -> None:
    """A zone file with its own SPF (or DMARC) record keeps it; nothing is added twice."""
    own = txt_record("163.test", "v=spf1 ip4:127.0.1.1 -all")
    extra = published("163.test", [SOA, MX, own], spf="v=spf1 mx -all", dmarc="")
    assert extra == []


def test_published_nothing_for_zones_without_mx_or_when_empty() -> None:
    """A reverse zone (no MX) gets nothing, nor does a mail domain when both keys are empty."""
    assert published("1.0.127.in-addr.arpa", [SOA], spf="v=spf1 mx -all", dmarc="x") == []
    assert published("163.test", [SOA, MX], spf="", dmarc="") == []


def test_published_long_txt_split_into_255_byte_strings() -> None:
    """A TXT value over 255 bytes (a DKIM key) becomes several strings that join back."""
    text = "v=DKIM1; k=rsa; p=" + "A" * 400
    parts = txt_strings(text)
    assert [len(p) for p in parts] == [255, 163] and b"".join(parts) == text.encode()
    rr = txt_record("s1._domainkey.163.test", text)
    assert rr.payload.data == list(parts) or tuple(rr.payload.data) == parts
