"""The forwarder on real loopback sockets: RD control, cache, coalescing, timeouts, TCP retry;
and the TCP server protocol: answers in order, idle timeout, connection limit."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns

from appliance.config import HostPort
from appliance.dns.authority import Authority, Zone
from appliance.dns.server import (
    DNSEngine,
    DNSTCPFactory,
    Forwarder,
)
from appliance.dns.udp import DNSUDPProtocol
from tests.dns.test_server import LOOPBACK, example_zone, parse, query, rr


def upstream_zone() -> Zone:
    return Zone(
        "example.org",
        [
            rr(
                "example.org",
                dns.Record_SOA(b"ns.example.org", b"root.example.org", 1, 3600, 900, 604800, 60),
            ),
            rr("example.org", dns.Record_NS(b"ns.example.org")),
            rr("www.example.org", dns.Record_A("127.0.0.42"), ttl=120),
            *[rr("big.example.org", dns.Record_TXT(b"z" * 200)) for _ in range(10)],
        ],
    )


class RecordingEngine(DNSEngine):
    """The upstream: a real engine that also records the RD bit of what it was asked."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.seen: list[tuple[bytes, bool]] = []

    def handle(self, data: bytes, client_ip: str, tcp: bool):
        m = parse(data)
        self.seen.append((m.queries[0].name.name, bool(m.recDes), tcp))
        return super().handle(data, client_ip, tcp)


@pytest.fixture
def upstream():
    engine = RecordingEngine(Authority([upstream_zone()]))
    for _ in range(20):  # the UDP port's number may be taken for TCP: try another
        udp = reactor.listenUDP(0, DNSUDPProtocol(engine), interface="127.0.0.1")
        port = udp.getHost().port
        try:
            tcp = reactor.listenTCP(port, DNSTCPFactory(engine), interface="127.0.0.1")
            break
        except CannotListenError:
            udp.stopListening()
    engine.port = port
    yield engine
    udp.stopListening()
    tcp.stopListening()


def forwarder(
    port: int, rd: bool = False, timeout: float = 2, failure_ttl: float = 1.0
) -> Forwarder:
    return Forwarder(
        [HostPort("127.0.0.1", port)],
        recursion_desired=rd,
        timeout=timeout,
        cache_size=100,
        reactor=reactor,
        failure_ttl=failure_ttl,
    )


@pytest_twisted.inlineCallbacks
def test_forwarder_sends_rd_clear_by_default_and_caches(upstream) -> None:
    """Peers get RD=0 (loop-proof); a second question is answered from the cache."""
    fwd = forwarder(upstream.port)
    answer = yield fwd.resolve(b"www.example.org", dns.A, dns.IN)
    assert [r.payload.dottedQuad() for r in answer.answers] == ["127.0.0.42"]
    assert not answer.aa
    again = yield fwd.resolve(b"WWW.example.org", dns.A, dns.IN)
    assert again.answers[0].payload.dottedQuad() == "127.0.0.42"
    assert upstream.seen == [(b"www.example.org", False, False)]


@pytest_twisted.inlineCallbacks
def test_forwarder_rd_set_when_configured(upstream) -> None:
    """forward_recursion = yes sets RD for recursive upstreams."""
    yield forwarder(upstream.port, rd=True).resolve(b"www.example.org", dns.A, dns.IN)
    assert upstream.seen[0][1] is True


@pytest_twisted.inlineCallbacks
def test_forwarder_coalesces_identical_questions(upstream) -> None:
    """Ten simultaneous identical questions make one upstream query."""
    fwd = forwarder(upstream.port)
    results = yield defer.gatherResults(
        [fwd.resolve(b"www.example.org", dns.A, dns.IN) for _ in range(10)]
    )
    assert len(results) == 10 and len(upstream.seen) == 1


@pytest_twisted.inlineCallbacks
def test_forwarder_nxdomain_cached_by_soa_minimum(upstream) -> None:
    """Negative answers are relayed and cached (RFC 2308)."""
    fwd = forwarder(upstream.port)
    answer = yield fwd.resolve(b"none.example.org", dns.A, dns.IN)
    assert answer.rcode == dns.ENAME
    yield fwd.resolve(b"none.example.org", dns.A, dns.IN)
    assert len(upstream.seen) == 1


@pytest_twisted.inlineCallbacks
def test_forwarder_refused_upstream_fails(upstream) -> None:
    """An upstream REFUSED (a peer that does not serve the name) is a failure, not an answer."""
    with pytest.raises(LookupError, match="rcode 5"):
        yield forwarder(upstream.port).resolve(b"www.example.net", dns.A, dns.IN)


@pytest_twisted.inlineCallbacks
def test_forwarder_failure_remembered_for_failure_ttl(upstream) -> None:
    """A question the forwarder refused fails at once, with the same reason, until
    failure_ttl has passed (RFC 2308 7.1, BIND's servfail-ttl); then it is asked again."""
    from twisted.internet.task import deferLater

    fwd = forwarder(upstream.port, failure_ttl=0.3)
    for _ in range(3):
        with pytest.raises(LookupError, match="rcode 5"):
            yield fwd.resolve(b"www.example.net", dns.A, dns.IN)
    assert len(upstream.seen) == 1
    yield deferLater(reactor, 0.4, lambda: None)
    with pytest.raises(LookupError, match="rcode 5"):
        yield fwd.resolve(b"WWW.example.net", dns.A, dns.IN)  # the same question
    assert len(upstream.seen) == 2
    answer = yield fwd.resolve(b"www.example.org", dns.A, dns.IN)  # others still asked
    assert answer.rcode == dns.OK and len(upstream.seen) == 3


@pytest_twisted.inlineCallbacks
def test_forwarder_failure_ttl_zero_asks_every_time(upstream) -> None:
    fwd = forwarder(upstream.port, failure_ttl=0)
    for _ in range(2):
        with pytest.raises(LookupError, match="rcode 5"):
            yield fwd.resolve(b"www.example.net", dns.A, dns.IN)
    assert len(upstream.seen) == 2


@pytest_twisted.inlineCallbacks
def test_forwarder_silent_server_waited_for_once_per_failure_ttl(silent) -> None:
    """A forwarder that never answers (a black hole): the first lookup waits forward_timeout,
    the next ones for the same name fail at once without a datagram sent (each message's SPF
    and DMARC lookups used to wait it out again)."""
    fwd = forwarder(silent.port, timeout=0.3, failure_ttl=30)
    start = reactor.seconds()
    with pytest.raises(LookupError, match="TimeoutError"):
        yield fwd.resolve(b"x.example.org", dns.TXT, dns.IN)
    assert reactor.seconds() - start >= 0.3
    start = reactor.seconds()
    for _ in range(5):
        with pytest.raises(LookupError, match="TimeoutError"):
            yield fwd.resolve(b"x.example.org", dns.TXT, dns.IN)
    assert reactor.seconds() - start < 0.1
    assert silent.received() == [b"x.example.org"]


class SilentServer:
    """A loopback UDP port that reads and never answers (a forwarder that drops queries)."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def received(self) -> list[bytes]:
        """The questions (names) of the datagrams that arrived since the last call."""
        names = []
        while True:
            try:
                names.append(parse(self.sock.recv(512)).queries[0].name.name)
            except BlockingIOError:
                return names

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


@pytest_twisted.inlineCallbacks
def test_forwarder_that_timed_out_held_back_for_every_question(silent) -> None:
    """After one timeout the silent forwarder is not asked again during its hold, whatever
    the question (each new name would wait forward_timeout again); when the hold is over one
    question goes as the probe, and a question asked meanwhile fails at once."""
    from twisted.internet.task import deferLater

    from appliance.dns.health import ServerHealth

    fwd = forwarder(silent.port, timeout=0.3, failure_ttl=0)
    fwd.health = ServerHealth(reactor, first_hold=0.5)
    with pytest.raises(LookupError, match="TimeoutError"):
        yield fwd.resolve(b"a.example.org", dns.A, dns.IN)
    start = reactor.seconds()
    with pytest.raises(LookupError, match="held back"):
        yield fwd.resolve(b"b.example.org", dns.A, dns.IN)
    assert reactor.seconds() - start < 0.1
    assert silent.received() == [b"a.example.org"]
    yield deferLater(reactor, 0.6, lambda: None)
    probe = fwd.resolve(b"c.example.org", dns.A, dns.IN)
    with pytest.raises(LookupError, match="probe is on its way"):
        yield fwd.resolve(b"d.example.org", dns.A, dns.IN)
    with pytest.raises(LookupError, match="TimeoutError"):
        yield probe
    assert silent.received() == [b"c.example.org"]


@pytest_twisted.inlineCallbacks
def test_forwarder_silent_first_server_skipped_for_the_second(upstream, silent) -> None:
    """A dead first forwarder costs one timeout; after that the next one answers at once."""
    fwd = Forwarder(
        [HostPort("127.0.0.1", silent.port), HostPort("127.0.0.1", upstream.port)],
        recursion_desired=False,
        timeout=0.3,
        cache_size=100,
        reactor=reactor,
    )
    start = reactor.seconds()
    answer = yield fwd.resolve(b"www.example.org", dns.A, dns.IN)
    assert answer.rcode == dns.OK and reactor.seconds() - start >= 0.3
    start = reactor.seconds()
    answer = yield fwd.resolve(b"none.example.org", dns.A, dns.IN)
    assert answer.rcode == dns.ENAME and reactor.seconds() - start < 0.1
    assert silent.received() == [b"www.example.org"]


@pytest_twisted.inlineCallbacks
def test_forwarder_truncated_retried_over_tcp(upstream) -> None:
    """A TC answer over UDP is asked again over TCP and comes back whole."""
    answer = yield forwarder(upstream.port).resolve(b"big.example.org", dns.TXT, dns.IN)
    assert len(answer.answers) == 10
    assert [s[2] for s in upstream.seen] == [False, True]


@pytest_twisted.inlineCallbacks
def test_forwarder_silent_server_times_out(silent) -> None:
    """A forwarder that never answers fails after forward_timeout, not later."""
    start = reactor.seconds()
    with pytest.raises(LookupError, match="TimeoutError"):
        yield forwarder(silent.port, timeout=0.3).resolve(b"x.example.org", dns.A, dns.IN)
    assert reactor.seconds() - start < 2


@pytest_twisted.inlineCallbacks
def test_forwarder_down_refused_at_once_not_timed_out() -> None:
    """A forwarder with nothing on its port (the other lab appliance stopped): the query
    fails on the ICMP refusal, not after forward_timeout (each lookup used to wait it out)."""
    from tests.conftest import free_port

    fwd = forwarder(free_port("127.0.0.1"), timeout=30)
    with pytest.raises(LookupError, match="ConnectionRefusedError"):
        yield fwd.resolve(b"x.example.org", dns.A, dns.IN)


@pytest_twisted.inlineCallbacks
def test_forwarder_through_engine_end_to_end(upstream) -> None:
    """Engine + forwarder: a loopback client's foreign question is answered with RA."""
    engine = DNSEngine(
        Authority([example_zone()]), forwarder=forwarder(upstream.port), recursion_networks=LOOPBACK
    )
    data = yield engine.handle(query("www.example.org", dns.A), "127.0.0.1", tcp=False)
    m = parse(data)
    assert m.recAv and not m.auth and m.answers[0].payload.dottedQuad() == "127.0.0.42"


def tcp_conn(factory: DNSTCPFactory, clock: Clock):
    proto = factory.buildProtocol(None)
    proto.callLater = clock.callLater
    transport = StringTransport(peerAddress=type("A", (), {"host": "127.0.0.1", "port": 1})())
    proto.makeConnection(transport)
    return proto, transport


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def test_tcp_answers_each_message_in_order() -> None:
    """Two pipelined questions get two length-prefixed answers in order."""
    factory = DNSTCPFactory(DNSEngine(Authority([example_zone()])))
    proto, t = tcp_conn(factory, Clock())
    proto.dataReceived(
        frame(query("mail.example.test", dns.A, qid=1))
        + frame(query("example.test", dns.MX, qid=2))
    )
    out = t.value()
    first_len = int.from_bytes(out[:2], "big")
    first, rest = out[2 : 2 + first_len], out[2 + first_len :]
    assert parse(first).id == 1 and parse(rest[2:]).id == 2


def test_tcp_idle_connection_closed_after_timeout() -> None:
    """An idle TCP client is dropped after tcp_idle_timeout."""
    clock = Clock()
    factory = DNSTCPFactory(DNSEngine(Authority([example_zone()])), idle_timeout=10, reactor=clock)
    proto, t = tcp_conn(factory, clock)
    clock.advance(9)
    assert not t.disconnecting
    clock.advance(2)
    assert t.disconnecting or t.disconnected


def test_tcp_connection_limit_enforced() -> None:
    """Connections beyond the per-client share are closed at once; a connection that goes
    frees its slot. (Full slots make room for a new client instead: tests/dns/test_tcp.py.)"""
    factory = DNSTCPFactory(
        DNSEngine(Authority([example_zone()])), max_connections=3, max_connections_per_ip=2
    )
    conns = [tcp_conn(factory, Clock()) for _ in range(3)]
    assert [c[1].disconnecting or c[1].disconnected for c in conns] == [False, False, True]
    assert factory.open_connections == 2
    conns[0][0].connectionLost(None)
    assert factory.open_connections == 1
