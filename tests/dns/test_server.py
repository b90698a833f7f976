"""DNS answers on the wire: authority, negatives with SOA, glue, ACLs, AXFR, TC, forwarding."""

from __future__ import annotations

import ipaddress

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport
from twisted.names import dns

from appliance.dns.authority import Answer, Authority, Zone
from appliance.dns.cache import ForwardCache
from appliance.dns.server import DNSEngine, encode_response
from appliance.dns.udp import DNSUDPProtocol

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def rr(name: str, payload, ttl: int = 3600) -> dns.RRHeader:
    payload.ttl = ttl
    return dns.RRHeader(name.encode(), payload.TYPE, dns.IN, ttl, payload, auth=True)


def example_zone(allow_transfer=()) -> Zone:
    records = [
        rr(
            "example.test",
            dns.Record_SOA(b"ns.example.test", b"root.example.test", 7, 3600, 900, 604800, 300),
        ),
        rr("example.test", dns.Record_NS(b"ns.example.test")),
        rr("example.test", dns.Record_MX(10, b"mail.example.test")),
        rr("ns.example.test", dns.Record_A("127.0.1.1")),
        rr("mail.example.test", dns.Record_A("127.0.1.1")),
        rr("mail.example.test", dns.Record_AAAA("::1")),
        rr("www.example.test", dns.Record_CNAME(b"mail.example.test")),
        rr("out.example.test", dns.Record_CNAME(b"www.elsewhere.test")),
        rr("host.deep.example.test", dns.Record_A("127.0.1.9")),
        rr("*.wild.example.test", dns.Record_A("127.0.1.7")),
        rr("sub.example.test", dns.Record_NS(b"ns.sub.example.test")),
        rr("ns.sub.example.test", dns.Record_A("127.0.1.8")),
        *[rr("big.example.test", dns.Record_TXT(b"x" * 200)) for _ in range(10)],
    ]
    return Zone("example.test", records, allow_transfer)


def query(
    name: str, qtype: int, rd: bool = True, edns: int | None = None, qid: int = 4242
) -> bytes:
    m = dns.Message(id=qid, recDes=rd)
    m.queries = [dns.Query(name, qtype, dns.IN)]
    data = m.toStr()
    if edns is not None:
        data = (
            data[:10]
            + b"\x00\x01"
            + data[12:]
            + b"\x00\x00\x29"
            + edns.to_bytes(2, "big")
            + b"\x00" * 6
        )
    return data


def parse(data: bytes) -> dns.Message:
    m = dns.Message()
    m.fromStr(data)
    return m


def names(rrs) -> list[tuple[str, int]]:
    return [(r.name.name.decode(), r.type) for r in rrs]


def fired(d: defer.Deferred):
    """The result of a Deferred that has already fired (fake forwarders answer at once)."""
    out: list = []
    d.addBoth(out.append)
    assert out, "deferred has not fired"
    return out[0]


def engine(**kw) -> DNSEngine:
    kw.setdefault("recursion_networks", LOOPBACK)
    return DNSEngine(Authority([example_zone(kw.pop("allow_transfer", ()))]), **kw)


def test_answer_mx_is_authoritative_with_glue() -> None:
    """An MX answer carries aa and the target's A and AAAA in the additional section."""
    m = parse(engine().handle(query("example.test", dns.MX), "127.0.0.1", tcp=False))
    assert m.auth and m.answer and m.rCode == dns.OK
    assert names(m.answers) == [("example.test", dns.MX)]
    assert sorted(names(m.additional)) == [
        ("mail.example.test", dns.A),
        ("mail.example.test", dns.AAAA),
    ]
    assert m.id == 4242


def test_answer_non_recursive_query_gets_ns_in_authority() -> None:
    """Like BIND's default, a non-RD query gets the zone's NS (and their glue)."""
    m = parse(engine().handle(query("mail.example.test", dns.A, rd=False), "127.0.0.1", tcp=False))
    assert names(m.authority) == [("example.test", dns.NS)]
    assert ("ns.example.test", dns.A) in names(m.additional)


def test_answer_nxdomain_has_aa_and_soa_with_negative_ttl() -> None:
    """A name that does not exist: NXDOMAIN, aa, SOA in authority with min(TTL, minimum)."""
    m = parse(engine().handle(query("nope.example.test", dns.A), "127.0.0.1", tcp=False))
    assert m.rCode == dns.ENAME and m.auth
    assert names(m.authority) == [("example.test", dns.SOA)]
    assert m.authority[0].ttl == 300
    assert m.answers == []


def test_answer_nodata_has_soa_and_noerror() -> None:
    """An existing name without the asked type: NOERROR, no answers, SOA."""
    m = parse(engine().handle(query("mail.example.test", dns.TXT), "127.0.0.1", tcp=False))
    assert m.rCode == dns.OK and m.auth and m.answers == []
    assert names(m.authority) == [("example.test", dns.SOA)]


def test_answer_empty_non_terminal_is_nodata_not_nxdomain() -> None:
    """deep.example.test has a child, so it exists (RFC 8020)."""
    m = parse(engine().handle(query("deep.example.test", dns.A), "127.0.0.1", tcp=False))
    assert m.rCode == dns.OK and m.answers == []


def test_answer_cname_chased_inside_our_zones() -> None:
    """A CNAME to our own name is followed in the same answer."""
    m = parse(engine().handle(query("www.example.test", dns.A), "127.0.0.1", tcp=False))
    assert names(m.answers) == [("www.example.test", dns.CNAME), ("mail.example.test", dns.A)]


def test_answer_cname_out_of_zone_left_for_resolver() -> None:
    """A CNAME leading outside our zones is answered alone."""
    m = parse(engine().handle(query("out.example.test", dns.A), "127.0.0.1", tcp=False))
    assert names(m.answers) == [("out.example.test", dns.CNAME)]
    assert m.rCode == dns.OK


def test_answer_wildcard_synthesised_with_query_name() -> None:
    """*.wild answers any name below it, with the asked name as owner."""
    m = parse(engine().handle(query("Any.wild.example.test", dns.A), "127.0.0.1", tcp=False))
    assert names(m.answers) == [("any.wild.example.test", dns.A)]


def test_answer_below_delegation_is_referral() -> None:
    """Names under a delegated child zone get a referral: no aa, NS in authority, glue."""
    m = parse(engine().handle(query("www.sub.example.test", dns.A), "127.0.0.1", tcp=False))
    assert not m.auth and m.answers == []
    assert names(m.authority) == [("sub.example.test", dns.NS)]
    assert names(m.additional) == [("ns.sub.example.test", dns.A)]


def test_answer_case_insensitive_question_echoed() -> None:
    """Lookups ignore case; the question is echoed as asked (0x20 resolvers check it)."""
    m = parse(engine().handle(query("MAIL.Example.TEST", dns.A), "127.0.0.1", tcp=False))
    assert m.queries[0].name.name == b"MAIL.Example.TEST"
    assert names(m.answers) == [("mail.example.test", dns.A)]


def test_udp_large_answer_truncated_without_edns() -> None:
    """Over 512 bytes without EDNS: TC set, question only, a well-formed message."""
    data = engine().handle(query("big.example.test", dns.TXT), "127.0.0.1", tcp=False)
    m = parse(data)
    assert m.trunc and m.answers == [] and len(data) <= 512


def test_udp_large_answer_fits_with_edns() -> None:
    """With EDNS the 2 KB answer is sent whole up to our edns_udp_size, and OPT is echoed."""
    data = engine(edns_udp_size=4096).handle(
        query("big.example.test", dns.TXT, edns=4096), "127.0.0.1", tcp=False
    )
    m = parse(data)
    assert not m.trunc and len(m.answers) == 10
    assert [r.type for r in m.additional] == [41]
    assert m.additional[0].cls == 4096


def test_udp_edns_size_capped_by_config() -> None:
    """A client offering 4096 still gets at most edns_udp_size (1232) over UDP, then TC."""
    data = engine().handle(query("big.example.test", dns.TXT, edns=4096), "127.0.0.1", tcp=False)
    m = parse(data)
    assert m.trunc and len(data) <= 1232
    assert m.additional[0].cls == 1232


def test_tcp_large_answer_not_truncated() -> None:
    """Over TCP the limit is 64 KB."""
    m = parse(engine().handle(query("big.example.test", dns.TXT), "127.0.0.1", tcp=True))
    assert not m.trunc and len(m.answers) == 10


def test_not_our_zone_refused_without_recursion() -> None:
    """No forwarders, or a client outside recursion_networks: REFUSED, never an open resolver."""
    e = engine()
    m = parse(e.handle(query("example.org", dns.A), "127.0.0.1", tcp=False))
    assert m.rCode == dns.EREFUSED and not m.recAv


def test_not_our_zone_refused_for_outside_client_even_with_forwarder() -> None:
    """A client outside recursion_networks is refused even though we could forward."""
    e = engine(forwarder=FakeForwarder({}))
    m = parse(e.handle(query("example.org", dns.A), "192.0.2.1", tcp=False))
    assert m.rCode == dns.EREFUSED and not m.recAv


def test_not_our_zone_refused_when_rd_clear() -> None:
    """A non-recursive question for a foreign name is refused: this is what stops loops."""
    e = engine(forwarder=FakeForwarder({}))
    m = parse(e.handle(query("example.org", dns.A, rd=False), "127.0.0.1", tcp=False))
    assert m.rCode == dns.EREFUSED


class FakeForwarder:
    """Stands in for the network in engine tests; the forwarder itself is tested on sockets."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.asked: list[tuple[bytes, int]] = []

    def resolve(self, name: bytes, qtype: int, qclass: int) -> defer.Deferred:
        self.asked.append((name, qtype))
        if name in self.answers:
            return defer.succeed(self.answers[name])
        return defer.fail(LookupError("rcode 5"))


def test_forwarded_answer_relayed_without_aa() -> None:
    """A forwarded answer comes back with RA, without AA."""
    a = Answer(aa=False, answers=[rr("example.org", dns.Record_A("127.0.0.9"))])
    e = engine(forwarder=FakeForwarder({b"example.org": a}))
    d = e.handle(query("example.org", dns.A), "127.0.0.1", tcp=False)
    m = parse(fired(d))
    assert m.rCode == dns.OK and m.recAv and not m.auth
    assert names(m.answers) == [("example.org", dns.A)]


def test_forward_failure_is_servfail() -> None:
    """When every forwarder fails the client gets SERVFAIL at once."""
    e = engine(forwarder=FakeForwarder({}))
    d = e.handle(query("example.org", dns.A), "127.0.0.1", tcp=False)
    assert parse(fired(d)).rCode == dns.ESERVER


def test_axfr_refused_over_udp_and_for_unlisted_peer() -> None:
    """AXFR: UDP never; TCP only from allow_transfer networks."""
    e = engine(allow_transfer=(ipaddress.ip_network("127.0.0.2/32"),))
    assert (
        parse(e.handle(query("example.test", dns.AXFR), "127.0.0.2", tcp=False)).rCode
        == dns.EREFUSED
    )
    assert (
        parse(e.handle(query("example.test", dns.AXFR), "127.0.0.1", tcp=True)).rCode
        == dns.EREFUSED
    )
    m = parse(e.handle(query("example.test", dns.AXFR), "127.0.0.2", tcp=True))
    assert m.rCode == dns.OK
    assert m.answers[0].type == dns.SOA and m.answers[-1].type == dns.SOA
    assert len(m.answers) == len(example_zone().records) + 1


def test_garbage_gets_formerr_and_responses_are_dropped() -> None:
    """Unparseable queries get FORMERR; messages with QR set are never answered."""
    e = engine()
    bad = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff"
    m = parse(e.handle(bad, "127.0.0.1", tcp=False))
    assert m.id == 0x1234 and m.rCode == dns.EFORMAT
    assert e.handle(b"\x12\x34\x81\x00" + b"\x00" * 8, "127.0.0.1", tcp=False) is None
    assert e.handle(b"\x00", "127.0.0.1", tcp=False) is None


def test_edns_unknown_version_badvers() -> None:
    """EDNS version 1 is answered BADVERS (extended rcode 1 in the OPT record)."""
    data = query("example.test", dns.A, edns=1232)
    data = data[:-5] + b"\x01" + data[-4:]  # version byte of the OPT TTL
    m = parse(engine().handle(data, "127.0.0.1", tcp=False))
    opt = m.additional[0]
    assert (opt.ttl >> 24) == 1 and m.rCode == 0


def test_udp_fast_path_reuses_answer_with_new_id() -> None:
    """The second identical question is answered from the encoded cache with its own ID."""
    proto = DNSUDPProtocol(engine())
    proto.transport = FakeDatagramTransport()
    proto.datagramReceived(query("example.test", dns.MX, qid=1), ("127.0.0.1", 5000))
    assert len(proto._fast[False]) + len(proto._fast[True]) == 1
    proto.datagramReceived(query("example.test", dns.MX, qid=2), ("127.0.0.1", 5001))
    (first, a1), (second, a2) = proto.transport.written
    assert a2 == ("127.0.0.1", 5001)
    assert parse(first).id == 1 and parse(second).id == 2
    assert first[2:] == second[2:]


def test_udp_fast_path_keeps_each_clients_recursion_flag(monkeypatch) -> None:
    """A client that may recurse and one that may not ask the same authoritative question
    twice: each repeat is its own first answer (RA set for the first client only), the two
    are kept apart, and the remembered client addresses are bounded."""
    proto = DNSUDPProtocol(engine(forwarder=FakeForwarder({})))
    proto.transport = FakeDatagramTransport()
    inside, outside = ("127.0.0.1", 5000), ("192.0.2.1", 5000)
    for qid, peer in ((1, inside), (2, outside), (3, inside), (4, outside)):
        proto.datagramReceived(query("example.test", dns.MX, qid=qid), peer)
    answers = [parse(data) for data, _ in proto.transport.written]
    assert [m.id for m in answers] == [1, 2, 3, 4]
    assert [m.recAv for m in answers] == [True, False, True, False]
    sent = [data[2:] for data, _ in proto.transport.written]
    assert sent[0] == sent[2] and sent[1] == sent[3] and sent[0] != sent[1]
    assert len(proto._fast[True]) == 1 and len(proto._fast[False]) == 1
    monkeypatch.setattr("appliance.dns.udp.MAX_CLIENTS", 3)
    for n in range(2, 6):
        proto.datagramReceived(query("example.test", dns.MX), (f"192.0.2.{n}", 5000))
    assert len(proto._table_of) <= 3
    proto.datagramReceived(query("example.test", dns.MX, qid=9), inside)
    assert parse(proto.transport.written[-1][0]).recAv  # forgotten, then asked again


def test_udp_fast_path_skips_non_authoritative() -> None:
    """REFUSED answers are not cached (only AA answers are immutable)."""
    proto = DNSUDPProtocol(engine())
    proto.transport = FakeDatagramTransport()
    proto.datagramReceived(query("example.org", dns.A), ("127.0.0.1", 5000))
    assert proto._fast == ({}, {})


def test_forward_cache_ages_ttls_and_expires() -> None:
    """Cached forwarded answers count their TTL down and vanish when it runs out."""
    clock = Clock()
    cache = ForwardCache(10, clock)
    key = (b"example.org", dns.A, dns.IN)
    cache.put(key, Answer(aa=False, answers=[rr("example.org", dns.Record_A("127.0.0.9"), ttl=60)]))
    clock.advance(20)
    assert cache.get(key).answers[0].ttl == 40
    clock.advance(40)
    assert cache.get(key) is None


def test_forward_cache_bounded() -> None:
    """The cache never holds more than its configured size."""
    cache = ForwardCache(2, Clock())
    for i in range(5):
        cache.put((b"n%d" % i, 1, 1), Answer(answers=[rr(f"n{i}", dns.Record_A("127.0.0.9"))]))
    assert len(cache._entries) == 2
    assert cache.get((b"n4", 1, 1)) is not None and cache.get((b"n0", 1, 1)) is None


def test_encode_response_drops_glue_before_truncating() -> None:
    """If additional records make it too big, glue goes first and the answer stays whole."""
    q = parse(query("example.test", dns.MX))
    big_glue = [rr("mail.example.test", dns.Record_TXT(b"y" * 250)) for _ in range(3)]
    a = Answer(
        answers=[rr("example.test", dns.Record_MX(10, b"mail.example.test"))], additional=big_glue
    )
    m = parse(encode_response(q, a, recursion_available=False, edns_size=None, limit=512))
    assert not m.trunc and len(m.answers) == 1 and m.additional == []


def test_random_datagrams_never_raise() -> None:
    """Garbage and mutated queries: dropped or answered with a parseable message, never raising."""
    import random

    rng = random.Random(1129)
    e = engine()
    seeds = [query("example.test", dns.MX), query("big.example.test", dns.TXT, edns=4096),
             query("nope.example.test", dns.A, rd=False)]  # fmt: skip
    answered = 0
    for _ in range(3000):
        if rng.random() < 0.5:
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data[: rng.randrange(len(data) + 1)])
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        out = e.handle(data, "127.0.0.1", tcp=rng.random() < 0.3)
        if out is None:
            continue
        assert isinstance(out, bytes) and out[:2] == data[:2]
        assert out[2] & 0x80  # QR set: it is a response
        answered += 1
    assert answered > 500


# ---------------------------------------------------------------------------- malformed queries


def raw_query(qname: bytes, qtype: int = dns.A, flags: int = 0x0100, qdcount: int = 1) -> bytes:
    """A query built byte by byte: qname is the wire-form name, root octet included."""
    import struct

    return (
        struct.pack("!6H", 0x5151, flags, qdcount, 0, 0, 0)
        + qname
        + struct.pack("!HH", qtype, dns.IN)
    )


def wire_name(*labels: bytes) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def header_only_formerr(data: bytes | None, qid: int) -> dns.Message:
    assert isinstance(data, bytes)
    m = parse(data)
    assert m.id == qid and m.answer and m.rCode == dns.EFORMAT
    assert (m.queries, m.answers, m.authority, m.additional) == ([], [], [], [])
    return m


def test_formerr_when_header_claims_more_questions_than_present() -> None:
    """QDCOUNT 65535 with one question present (Twisted parses it quietly): FORMERR, never
    an answer to the first question."""
    good = query("example.test", dns.MX)
    bad = good[:4] + b"\xff\xff" + good[6:]
    header_only_formerr(engine().handle(bad, "127.0.0.1", tcp=False), 4242)
    header_only_formerr(engine().handle(bad, "127.0.0.1", tcp=True), 4242)


def test_formerr_when_qdcount_is_not_one() -> None:
    """Two complete questions, or none: FORMERR."""
    m = dns.Message(id=7, recDes=True)
    m.queries = [dns.Query("example.test", dns.MX), dns.Query("mail.example.test", dns.A)]
    header_only_formerr(engine().handle(m.toStr(), "127.0.0.1", tcp=False), 7)
    none = raw_query(b"", qdcount=0)[:12]
    header_only_formerr(engine().handle(none, "127.0.0.1", tcp=False), 0x5151)


def test_formerr_for_name_over_255_octets() -> None:
    """A 257-octet query name is FORMERR (RFC 1035 2.3.4); 255 octets is still a name."""
    long = wire_name(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 63)
    assert len(long) == 257
    header_only_formerr(engine().handle(raw_query(long), "127.0.0.1", tcp=False), 0x5151)
    longest = wire_name(b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61)
    assert len(longest) == 255
    m = parse(engine().handle(raw_query(longest), "127.0.0.1", tcp=False))
    assert m.rCode == dns.EREFUSED and len(m.queries[0].name.name) == 253


def test_formerr_for_bad_label_types_and_forward_pointers() -> None:
    """Label lengths 64-191 (extended/reserved label types, which Twisted reads as lengths)
    and compression pointers that do not point backwards are FORMERR."""
    e = engine()
    extended = b"\x41" + b"x" * 65 + b"\x00"
    header_only_formerr(e.handle(raw_query(extended), "127.0.0.1", tcp=False), 0x5151)
    forward = b"\x01a\xc0\x20" + b"\x00" * 40  # points past itself
    header_only_formerr(e.handle(raw_query(forward), "127.0.0.1", tcp=False), 0x5151)
    loop = b"\x01a\xc0\x0c"  # back to its own start: a loop
    header_only_formerr(e.handle(raw_query(loop), "127.0.0.1", tcp=False), 0x5151)


def test_formerr_for_two_opt_records() -> None:
    """More than one OPT record is FORMERR (RFC 6891 6.1.1)."""
    data = query("example.test", dns.MX, edns=1232)
    opt = data[-11:]
    bad = data[:10] + b"\x00\x02" + data[12:] + opt
    header_only_formerr(engine().handle(bad, "127.0.0.1", tcp=False), 4242)
    assert parse(engine().handle(data, "127.0.0.1", tcp=False)).rCode == dns.OK


def test_formerr_when_sections_are_shorter_than_their_counts() -> None:
    """ARCOUNT 1 without the record (Twisted stops quietly at the end): FORMERR."""
    data = query("example.test", dns.MX)
    bad = data[:10] + b"\x00\x01" + data[12:]
    header_only_formerr(engine().handle(bad, "127.0.0.1", tcp=False), 4242)


def test_udp_malformed_query_never_enters_fast_path() -> None:
    """A malformed copy of a cacheable question is FORMERR each time, and is not cached;
    once the good question is cached, the malformed copy still gets FORMERR."""
    proto = DNSUDPProtocol(engine())
    proto.transport = FakeDatagramTransport()
    good = query("example.test", dns.MX)
    bad = good[:4] + b"\xff\xff" + good[6:]
    peer = ("127.0.0.1", 5000)
    proto.datagramReceived(bad, peer)
    proto.datagramReceived(bad, peer)
    assert proto._fast == ({}, {})
    proto.datagramReceived(good, peer)
    proto.datagramReceived(bad, peer)
    rcodes = [parse(data).rCode for data, _ in proto.transport.written]
    assert rcodes == [dns.EFORMAT, dns.EFORMAT, dns.OK, dns.EFORMAT]
    assert len(proto._fast[False]) + len(proto._fast[True]) == 1


# ---------------------------------------------------------------------------- header flags

RD, RA, AD, CD = 0x0100, 0x0080, 0x0020, 0x0010


def flags_of(data: bytes) -> int:
    return int.from_bytes(data[2:4], "big")


def test_notimp_carries_no_ra_rd_cd_ad() -> None:
    """Opcode STATUS (2) with RD, CD and AD set, from a client that may recurse: NOTIMP with
    QR, the opcode and the ID only (as BIND and NSD answer)."""
    e = engine(forwarder=FakeForwarder({}))
    data = query("example.test", dns.A)
    data = data[:2] + (0x1000 | RD | AD | CD).to_bytes(2, "big") + data[4:]
    out = e.handle(data, "127.0.0.1", tcp=False)
    assert flags_of(out) == 0x8000 | 0x1000 | dns.ENOTIMP
    assert out[:2] == data[:2]
    assert parse(out).queries[0].name.name == b"example.test"  # the question is echoed


def test_query_answers_still_echo_rd_cd_and_set_ra() -> None:
    """A QUERY keeps RD and CD, and RA for a client that may recurse."""
    e = engine(forwarder=FakeForwarder({}))
    data = query("example.test", dns.A)
    data = data[:2] + (RD | CD).to_bytes(2, "big") + data[4:]
    assert flags_of(e.handle(data, "127.0.0.1", tcp=False)) & (RD | CD | RA) == RD | CD | RA


def test_formerr_keeps_rd_cd_for_query_opcode_only() -> None:
    """FORMERR for an unparseable or malformed QUERY echoes RD and CD (BIND's
    dns_message_reply keeps them for QUERY), never RA; for another opcode no flags at all."""
    e = engine(forwarder=FakeForwarder({}))
    garbage = b"\x12\x34" + (RD | CD | AD).to_bytes(2, "big") + b"\x00\x01" + b"\x00" * 6 + b"\xff"
    assert flags_of(e.handle(garbage, "127.0.0.1", tcp=False)) == 0x8000 | RD | CD | 1
    update = b"\x12\x34" + (0x2800 | RD | CD).to_bytes(2, "big") + garbage[4:]
    assert flags_of(e.handle(update, "127.0.0.1", tcp=False)) == 0x8000 | 0x2800 | 1
    good = query("example.test", dns.MX)
    two_questions = good[:4] + b"\x00\x02" + good[6:]
    assert flags_of(e.handle(two_questions, "127.0.0.1", tcp=False)) == 0x8000 | RD | 1


# ---------------------------------------------------------------------------- log lines


class LogLines:
    """Replaces target's Logger; lines() are the formatted events it got."""

    def __init__(self, target) -> None:
        from twisted.logger import Logger

        self.events: list[dict] = []
        target.log = Logger(observer=self.events.append)

    def lines(self) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events]


def test_transfer_refused_log_escapes_control_bytes_in_name() -> None:
    """A name with a newline and an escape sequence cannot split or colour a log line."""
    e = engine()
    log = LogLines(e)
    e.handle(query("evil\nforged line\x1b[31m.example.test", dns.AXFR), "127.0.0.1", tcp=True)
    (line,) = log.lines()
    assert "\n" not in line and "\x1b" not in line
    assert "evil?forged line?[31m.example.test" in line


def test_forwarder_failure_log_escapes_control_bytes_in_name() -> None:
    """The forwarding-failed line renders the asked name printable too."""
    from appliance.dns.server import Forwarder

    fwd = Forwarder([], recursion_desired=False, timeout=1, cache_size=0, reactor=Clock())
    log = LogLines(fwd)
    failure = fired(fwd.resolve(b"a\r\nb.example.org", dns.A, dns.IN))
    assert failure.check(LookupError)
    (line,) = log.lines()
    assert "\n" not in line and "\r" not in line and "a??b.example.org" in line
