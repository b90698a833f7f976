"""DNS over TCP under abuse: fair connection slots (appliance.limits), stress timeouts, and
back-pressure against clients that send without reading."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.names import dns

from appliance.dns.authority import Answer, Authority
from appliance.dns.server import DNSEngine, DNSTCPFactory, DNSTCPProtocol
from tests.dns.test_server import LOOPBACK, example_zone, parse, query, rr


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def frames(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete length-prefixed messages in data, and what is left over."""
    out = []
    pos = 0
    while len(data) >= pos + 2:
        end = pos + 2 + int.from_bytes(data[pos : pos + 2], "big")
        if len(data) < end:
            break
        out.append(data[pos + 2 : end])
        pos = end
    return out, data[pos:]


class ClosingTransport(StringTransport):
    """Tells its protocol the connection is lost when aborted, as a TCP transport does."""

    def abortConnection(self) -> None:
        if not self.disconnected:
            super().abortConnection()
            self.protocol.connectionLost(None)


def connect(factory: DNSTCPFactory, host: str = "127.0.0.1"):
    proto = factory.buildProtocol(None)
    address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
    transport = ClosingTransport(peerAddress=address)
    transport.protocol = proto
    proto.makeConnection(transport)
    return proto, transport


def closed(transport: StringTransport) -> bool:
    return transport.disconnecting or transport.disconnected


def answer_ids(transport: StringTransport) -> list[int]:
    messages, rest = frames(transport.value())
    assert rest == b""
    return [parse(m).id for m in messages]


class SlowForwarder:
    """Forwarded questions wait until the test answers them, in any order it likes."""

    def __init__(self) -> None:
        self.waiting: list[defer.Deferred] = []

    def resolve(self, name: bytes, qtype: int, qclass: int) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.waiting.append(d)
        return d

    def answer_first(self) -> None:
        self.waiting.pop(0).callback(
            Answer(aa=False, answers=[rr("example.org", dns.Record_A("127.0.0.9"))])
        )


def factory_for(clock: Clock, forwarder=None, **kw) -> DNSTCPFactory:
    engine = DNSEngine(
        Authority([example_zone()]), forwarder=forwarder, recursion_networks=LOOPBACK
    )
    return DNSTCPFactory(engine, reactor=clock, **kw)


# ---------------------------------------------------------------------------- slots


def test_tcp_full_slots_new_client_answered_idlest_of_biggest_client_closed() -> None:
    """With all 200 slots held by idle clients, a new client is admitted and answered at
    once; the connection closed is the one idle longest of the client holding most slots
    (not the one idle longest overall)."""
    clock = Clock()
    factory = factory_for(clock)  # defaults: 200 slots, 20 per client
    conns = {}
    for i in range(10):  # 10 clients with 18 connections each, the oldest
        host = f"127.0.1.{i + 2}"
        conns[host] = [connect(factory, host) for _ in range(18)]
        clock.advance(0.01)
    conns["127.0.1.1"] = [connect(factory, "127.0.1.1") for _ in range(20)]  # the biggest
    assert factory.open_connections == 200 and factory.slots.stressed
    assert not any(closed(t) for held in conns.values() for _, t in held)

    proto, t = connect(factory, "127.0.1.99")
    proto.dataReceived(frame(query("example.test", dns.MX, qid=77)))
    assert not closed(t) and answer_ids(t) == [77]
    victims = [(host, n) for host, held in conns.items() for n, (_, vt) in enumerate(held)
               if closed(vt)]  # fmt: skip
    assert victims == [("127.0.1.1", 0)]
    assert factory.open_connections == 200 and factory.slots.evicted == 1


def test_tcp_connection_with_answer_in_flight_is_not_evicted() -> None:
    """Only connections without an answer in flight make room; when every slot is busy the
    newcomer is closed at once."""
    clock = Clock()
    fwd = SlowForwarder()
    factory = factory_for(clock, fwd, max_connections=2)
    busy, busy_t = connect(factory, "127.0.0.1")
    busy.dataReceived(frame(query("example.org", dns.A, qid=1)))  # forwarded: waits
    clock.advance(1)
    idle, idle_t = connect(factory, "127.0.0.2")
    clock.advance(1)
    new, new_t = connect(factory, "127.0.0.3")
    assert closed(idle_t) and not closed(busy_t) and not closed(new_t)
    new.dataReceived(frame(query("example.org", dns.A, qid=2)))  # now both are busy
    late, late_t = connect(factory, "127.0.0.4")
    assert closed(late_t) and not closed(busy_t) and not closed(new_t)
    fwd.answer_first()
    assert answer_ids(busy_t) == [1]


def test_tcp_client_over_its_share_closed_at_once_ipv6_per_64() -> None:
    """max_tcp_connections_per_ip: the next connection of that client is closed at once,
    other clients are not affected; IPv6 clients count per /64."""
    clock = Clock()
    factory = factory_for(clock, max_connections=10, max_connections_per_ip=2)
    a = [connect(factory, "127.0.0.1") for _ in range(3)]
    assert [closed(t) for _, t in a] == [False, False, True]
    assert not closed(connect(factory, "127.0.0.2")[1])
    v6 = [connect(factory, h) for h in ("2001:db8::1", "2001:db8::2", "2001:db8::3")]
    assert [closed(t) for _, t in v6] == [False, False, True]
    assert not closed(connect(factory, "2001:db8:0:1::1")[1])
    assert factory.open_connections == 6


def test_tcp_stress_shortens_idle_timeout_then_relaxes() -> None:
    """At 80% of the slots every connection's idle limit becomes tcp_stress_idle_timeout,
    counted from its last question; when the stress ends the normal limit applies again."""
    clock = Clock()
    factory = factory_for(clock, max_connections=5, idle_timeout=10, stress_idle_timeout=2)
    _, first = connect(factory)  # t=0
    clock.advance(1)
    _, second = connect(factory, "127.0.0.2")
    p3, third = connect(factory, "127.0.0.3")
    assert not factory.slots.stressed
    clock.advance(0.5)
    connect(factory, "127.0.0.4")  # 4 of 5: stressed
    assert factory.slots.stressed
    clock.advance(0.6)  # t=2.1: first has been idle for over 2s
    assert closed(first) and not closed(second) and not closed(third)
    assert not factory.slots.stressed  # 3 of 5 again
    p3.dataReceived(frame(query("example.test", dns.MX)))
    clock.advance(2)  # t=4.1: over 2s idle, but no longer stressed
    assert not closed(second) and not closed(third)
    clock.advance(7)  # t=11.1: over the normal 10s since connect
    assert closed(second) and not closed(third)


@pytest_twisted.inlineCallbacks
def test_tcp_full_slots_new_client_answered_on_real_sockets() -> None:
    """On loopback sockets: all slots held by idle clients; a new client gets its answer and
    the idlest held connection is closed by the server."""
    factory = DNSTCPFactory(DNSEngine(Authority([example_zone()])), max_connections=3)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    holders = []
    client = None
    try:
        for _ in range(3):
            holders.append(socket.create_connection(address, timeout=5))
            yield wait_for(lambda: factory.open_connections == len(holders))
        client = socket.create_connection(address, timeout=5)
        client.sendall(frame(query("example.test", dns.MX, qid=99)))
        client.setblocking(False)
        got = yield read_frames(client, 1)
        assert [parse(m).id for m in got] == [99]
        holders[0].setblocking(False)
        yield wait_for(lambda: peer_closed(holders[0]))
        assert factory.open_connections == 3
    finally:
        for s in [*holders, client]:
            if s is not None:
                s.close()
        yield port.stopListening()


# ---------------------------------------------------------------------------- back-pressure


def test_tcp_in_flight_answers_bounded_then_reading_resumes() -> None:
    """A forwarded question holds up the answers behind it (order is kept): once
    MAX_IN_FLIGHT are unfinished the connection stops reading, even when its transport says
    it may write again; answering resumes reading, and every answer comes, in order."""
    clock = Clock()
    fwd = SlowForwarder()
    proto, t = connect(factory_for(clock, fwd))
    limit = DNSTCPProtocol.MAX_IN_FLIGHT
    data = frame(query("example.org", dns.A, qid=0)) + b"".join(
        frame(query("example.test", dns.MX, qid=i)) for i in range(1, 200)
    )
    proto.dataReceived(data)
    assert len(proto._pending) == limit and t.producerState == "paused"
    assert t.value() == b""  # the authoritative answers wait behind the forwarded one
    proto.resumeProducing()  # what the transport says when its buffer has drained
    assert len(proto._pending) == limit and t.producerState == "paused"
    fwd.answer_first()
    assert t.producerState == "producing" and proto._pending == type(proto._pending)()
    assert answer_ids(t) == list(range(200))


def test_tcp_full_write_buffer_stops_parsing_until_drained() -> None:
    """While the transport's buffer is full (pauseProducing) nothing more is parsed, not
    even what was already read; resumeProducing parses and answers it."""
    proto, t = connect(factory_for(Clock()))
    proto.pauseProducing()
    assert t.producerState == "paused"
    proto.dataReceived(b"".join(frame(query("example.test", dns.MX, qid=i)) for i in range(5)))
    assert t.value() == b""
    proto.resumeProducing()
    assert t.producerState == "producing" and answer_ids(t) == list(range(5))


@pytest_twisted.inlineCallbacks
def test_tcp_client_not_reading_cannot_grow_server_buffer() -> None:
    """A client writes 20,000 questions (a quarter with 2 KB answers) without reading: the
    server's buffered answers stay under 256 KiB (it stops reading at 64 KiB); when the client
    reads, every answer arrives, in order."""
    factory = DNSTCPFactory(DNSEngine(Authority([example_zone()])))
    peak = {"buffered": 0, "paused": False}
    build = factory.buildProtocol

    def instrumented(addr):
        proto = build(addr)
        send = proto.sendString

        def measured(data: bytes) -> None:
            send(data)
            t = proto.transport
            buffered = len(t.dataBuffer) - t.offset + t._tempDataLen
            peak["buffered"] = max(peak["buffered"], buffered)
            peak["paused"] = peak["paused"] or proto._write_paused

        proto.sendString = measured
        return proto

    factory.buildProtocol = instrumented
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(5)
        client.connect(("127.0.0.1", port.getHost().port))
        client.setblocking(False)
        count = 20_000
        blob = b"".join(
            frame(
                query("big.example.test", dns.TXT, qid=i & 0xFFFF)
                if i % 4 == 0
                else query("example.test", dns.MX, qid=i & 0xFFFF)
            )
            for i in range(count)
        )
        sent = 0
        stalled = 0
        deadline = reactor.seconds() + 15
        # write until the kernel buffers are full both ways (or everything is written)
        while sent < len(blob) and stalled < 200 and reactor.seconds() < deadline:
            try:
                n = client.send(blob[sent : sent + 65536])
            except BlockingIOError:
                n = 0
            sent += n
            stalled = 0 if n else stalled + 1
            yield task.deferLater(reactor, 0, lambda: None)
        assert peak["paused"], "the server never had to stop reading"
        assert peak["buffered"] < 256 * 1024
        # now read (writing the rest, if the kernel buffers did not take it all)
        got = yield read_frames(client, count, keep_sending=(blob, sent))
        assert [parse(m).id for m in got] == [i & 0xFFFF for i in range(count)]
        assert peak["buffered"] < 256 * 1024
    finally:
        client.close()
        yield port.stopListening()


# ---------------------------------------------------------------------------- helpers


@defer.inlineCallbacks
def wait_for(condition, seconds: float = 5):
    """Let the reactor run until condition() holds (bounded)."""
    deadline = reactor.seconds() + seconds
    while not condition():
        assert reactor.seconds() < deadline, "condition not reached in time"
        yield task.deferLater(reactor, 0.001, lambda: None)


def peer_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


@defer.inlineCallbacks
def read_frames(sock: socket.socket, count: int, seconds: float = 30, keep_sending=None):
    """Read count answers from a non-blocking socket (bounded in time); keep_sending =
    (blob, sent) goes on writing the rest of blob meanwhile."""
    deadline = reactor.seconds() + seconds
    buffer = b""
    got: list[bytes] = []
    blob, sent = keep_sending or (b"", 0)
    while len(got) < count:
        assert reactor.seconds() < deadline, f"only {len(got)} of {count} answers"
        if sent < len(blob):
            try:
                sent += sock.send(blob[sent : sent + 65536])
            except BlockingIOError:
                pass
        progressed = False
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                break
            assert chunk, "the server closed the connection"
            buffer += chunk
            progressed = True
        if progressed:
            new, buffer = frames(buffer)
            got.extend(new)
        yield task.deferLater(reactor, 0 if progressed else 0.001, lambda: None)
    return got
