"""DNSUDPServer on a real loopback socket: the read loop's answer table, its misses, reloads,
both with batched system calls (recvmmsg/sendmmsg, Linux) and one datagram at a time."""

from __future__ import annotations

import sys

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.names import dns

from appliance.dns.authority import Authority, Zone
from appliance.dns.server import DNSEngine
from appliance.dns.udp import DNSUDPPort, DNSUDPProtocol, DNSUDPServer, send_datagram
from tests.dns.test_server import LOOPBACK, example_zone, parse, query, rr


class Client(protocol.DatagramProtocol):
    """Sends datagrams to the server and collects the answers until `expected` arrived."""

    def __init__(self, port: int, expected: int) -> None:
        self.port = port
        self.expected = expected
        self.answers: list[bytes] = []
        self.done: defer.Deferred[list[bytes]] = defer.Deferred()

    def send(self, data: bytes) -> None:
        self.transport.write(data, ("127.0.0.1", self.port))

    def datagramReceived(self, data: bytes, addr) -> None:  # noqa: N802
        self.answers.append(data)
        if len(self.answers) == self.expected and not self.done.called:
            self.done.callback(self.answers)


def with_txt(text: bytes) -> Zone:
    zone = example_zone()
    return Zone(zone.origin.decode(), [*zone.records, rr("key.example.test", dns.Record_TXT(text))])


@pytest_twisted.inlineCallbacks
def ask(port: int, datagrams: list[bytes], expected: int | None = None):
    client = Client(port, len(datagrams) if expected is None else expected)
    listening = reactor.listenUDP(0, client, interface="127.0.0.1")
    try:
        for data in datagrams:
            client.send(data)
        timeout = reactor.callLater(5, client.done.cancel)
        answers = yield client.done
        timeout.cancel()
    finally:
        yield listening.stopListening()
    return answers


def serving(engine: DNSEngine, batched: bool = True) -> DNSUDPServer:
    server = DNSUDPServer(
        0, DNSUDPProtocol(engine), interface="127.0.0.1", maxPacketSize=65535, reactor=reactor
    )
    server.startService()
    assert isinstance(server._port, DNSUDPPort)
    server._port.batched = batched  # before its first read
    return server


def read_path(port: DNSUDPPort) -> str:
    """Which loop the port's reads took: 'batches' (recvmmsg) or 'one by one'."""
    assert port._batch_checked, "no read yet"
    return "batches" if port._batch is not None else "one by one"


BATCHED = pytest.mark.parametrize("batched", [True, False], ids=["batches", "one-by-one"])


@BATCHED
@pytest_twisted.inlineCallbacks
def test_read_loop_answers_repeats_from_the_table_with_their_own_ids(batched: bool) -> None:
    """The first question goes through the engine, the next 49 are answered from the table
    inside the read loop, each with its own ID and the same bytes otherwise; a malformed copy
    still gets FORMERR and a question not ours is REFUSED, both outside the table."""
    engine = DNSEngine(Authority([example_zone()]), recursion_networks=LOOPBACK)
    server = serving(engine, batched)
    listening = server._port
    port = listening.getHost().port
    proto, missed = listening.protocol, []
    slow_path = proto.answer
    proto.answer = lambda data, *rest: (missed.append(data), slow_path(data, *rest))
    try:
        first = yield ask(port, [query("example.test", dns.MX, qid=1)])
        good = [query("example.test", dns.MX, qid=100 + i) for i in range(49)]
        twin = query("example.test", dns.MX, qid=99)
        bad = twin[:4] + b"\xff\xff" + twin[6:]
        answers = yield ask(port, [*good, bad, query("example.org", dns.A, qid=7)])
    finally:
        yield server.stopService()
    by_id = {parse(a).id: a for a in answers}
    assert sorted(by_id) == [7, 99, *range(100, 149)]
    for i in range(100, 149):
        assert by_id[i][2:] == first[0][2:]
    rcodes = sorted(parse(a).rCode for a in answers)
    assert rcodes.count(dns.OK) == 49 and dns.EFORMAT in rcodes and dns.EREFUSED in rcodes
    assert engine.answered[dns.OK] == 50
    assert len(missed) == 3  # the first question, the malformed copy, the one not ours
    linux = sys.platform.startswith("linux")
    assert read_path(listening) == ("batches" if batched and linux else "one by one")


@pytest_twisted.inlineCallbacks
def test_batches_answer_every_client_at_its_own_address() -> None:
    """Three clients' 120 questions at once (more than one batch; few enough for the socket
    buffers): each client gets exactly its own answers, by ID, from the table after the
    first."""
    engine = DNSEngine(Authority([example_zone()]), recursion_networks=LOOPBACK)
    server = serving(engine)
    port = server._port.getHost().port
    try:
        yield ask(port, [query("example.test", dns.MX, qid=1)])
        got = yield defer.gatherResults(
            [
                ask(port, [query("example.test", dns.MX, qid=c * 1000 + i) for i in range(40)])
                for c in (1, 2, 3)
            ]
        )
    finally:
        yield server.stopService()
    for c, answers in zip((1, 2, 3), got, strict=True):
        assert sorted(parse(a).id for a in answers) == [c * 1000 + i for i in range(40)]
        assert all(parse(a).answers[0].type == dns.MX for a in answers)
    assert engine.answered[dns.OK] == 121


@BATCHED
@pytest_twisted.inlineCallbacks
def test_reloaded_zones_are_answered_at_once_not_from_the_table(batched: bool) -> None:
    """After Authority.replace (dkim rotate's reload) the table is empty: the next answer is
    the new zone's, over the same socket."""
    engine = DNSEngine(Authority([with_txt(b"old key")]), recursion_networks=LOOPBACK)
    server = serving(engine, batched)
    port = server._port.getHost().port
    try:
        before = yield ask(port, [query("key.example.test", dns.TXT, qid=i) for i in (1, 2)])
        engine.authority.replace([with_txt(b"new key")])
        after = yield ask(port, [query("key.example.test", dns.TXT, qid=3)])
    finally:
        yield server.stopService()
    assert [parse(a).answers[0].payload.data for a in before] == [[b"old key"]] * 2
    assert parse(after[0]).answers[0].payload.data == [b"new key"]


def test_send_datagram_tries_an_interrupted_send_again_and_drops_a_full_buffer() -> None:
    """The one send of both paths: EINTR once -> sent on the second try; a full socket
    buffer, a refusal or a second interruption drop the answer without raising."""
    calls: list[tuple[bytes, object]] = []

    def sendto_failing(*errors: type[OSError]):
        left = list(errors)

        def sendto(data: bytes, addr) -> int:
            calls.append((data, addr))
            if left:
                raise left.pop(0)()
            return len(data)

        return sendto

    send_datagram(sendto_failing(InterruptedError), b"answer", ("127.0.0.1", 5353))
    assert calls == [(b"answer", ("127.0.0.1", 5353))] * 2
    for errors, tries in [
        ((BlockingIOError,), 1),
        ((ConnectionRefusedError,), 1),
        ((InterruptedError, InterruptedError), 2),
        ((InterruptedError, BlockingIOError), 2),
    ]:
        calls.clear()
        send_datagram(sendto_failing(*errors), b"answer", ("127.0.0.1", 5353))
        assert len(calls) == tries
