"""The relay target end to end: real routing over zone files, real worker threads reading
the message, real loopback connections to the scripted server of test_smtp_client.py (which
counts connections, concurrency and messages) or to our own SMTP server.

Every domain's MX host is 127.0.0.1 and the Router's port is the test server's, so one server
takes several destinations (each domain is one: its own queue and connections).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

import appliance.delivery.relay as relay_module
from appliance.delivery.relay import RelayLimits, RelayTarget, _Job, count_received
from appliance.delivery.routing import Router
from appliance.delivery.session import SessionSettings
from appliance.delivery.transport import TransportMap
from appliance.dns.authority import Authority, Zone
from appliance.dns.resolver import LocalResolver
from appliance.dns.server import DNSEngine
from appliance.dns.zonefile import load_zone
from appliance.interfaces import Envelope, Outcome, QueuedMessage, Recipient, RecipientResult
from appliance.smtp.settings import MTA
from appliance.workers import WorkerPool
from tests.conftest import free_port
from tests.delivery.test_session import ours_fixture  # noqa: F401 (the ours fixture)
from tests.delivery.test_smtp_client import (
    ClockedReactor,
    Script,
    ScriptedFactory,
    Servers,
    servers_fixture,  # noqa: F401 (the servers fixture)
    within,
)
from tests.queue.test_scheduler import wait_until

ZONE = """\
$TTL 1H
@               IN SOA  ns.test. root.test. ( 1 3H 15M 1W 1D )
                IN NS   ns
ns              IN A    127.0.0.1
one             IN MX   10 mx.one
mx.one          IN A    127.0.0.1
two             IN MX   10 mx.two
mx.two          IN A    127.0.0.1
three           IN MX   10 mx.three
mx.three        IN A    127.0.0.1
null            IN MX   0 .
tempfail        IN MX   10 mx.outside.invalid.
"""

BODY = b"Received: from a by b\r\nSubject: relay\r\n\r\nHello.\r\n.dot\r\n"
SENDER = "sender@origin.test"


class Body:
    """interfaces.MessageBody over bytes, in chunks of a given size."""

    def __init__(self, data: bytes, chunk: int = 1 << 20) -> None:
        self.data, self.chunk, self.size = data, chunk, len(data)

    def chunks(self) -> Iterator[bytes]:
        for i in range(0, len(self.data), self.chunk):
            yield self.data[i : i + self.chunk]

    def in_memory(self) -> bytes | None:
        return None  # read through chunks(), in a worker thread, as a queue file is


def queued(
    *rcpts: str | Recipient, queue_id: str = "5B1C2D3E", text: bytes = BODY
) -> QueuedMessage:
    recipients = tuple(r if isinstance(r, Recipient) else Recipient(r, remote=True) for r in rcpts)
    envelope = Envelope(SENDER, recipients, "192.0.2.1", "client.origin.test")
    return QueuedMessage(queue_id, envelope, 0.0, len(text))


async def deliver(
    target: RelayTarget, *rcpts: str | Recipient, text: bytes = BODY, chunk: int = 1 << 20
) -> list[RecipientResult]:
    """One message through target.start(): add_recipient each, body, commit; returns once
    the relay's own stack has unwound too (its session is idle by then, if it idles)."""
    results = await within(deliver_d(target, *rcpts, text=text, chunk=chunk))
    await deferLater(reactor, 0, lambda: None)
    return results


def deliver_d(
    target: RelayTarget, *rcpts: str | Recipient, text: bytes = BODY, chunk: int = 1 << 20
) -> Deferred[list[RecipientResult]]:
    delivery = target.start(queued(*rcpts, text=text))
    for r in rcpts:
        delivery.add_recipient(r if isinstance(r, str) else r.address)
    delivery.body(Body(text, chunk))
    return delivery.commit()


def stuffed(text: bytes) -> bytes:
    return text.replace(b"\r\n.", b"\r\n..")


def outcomes(results: list[RecipientResult]) -> list[Outcome]:
    return [r.outcome for r in results]


@pytest.fixture
def resolver(tmp_path: Path) -> LocalResolver:
    path = tmp_path / "test.zone"
    path.write_text(ZONE)
    return LocalResolver(DNSEngine(Authority([Zone("test", load_zone(path, "test"))])))


@pytest_twisted.async_yield_fixture
async def pool():
    workers = WorkerPool(reactor, 4, "relay-test")
    workers.start()
    yield workers
    await within(workers.stop())


class Relays:
    """Builds RelayTargets for a test and stops each at its end."""

    def __init__(self, resolver: LocalResolver, pool: WorkerPool, tmp_path: Path) -> None:
        self.resolver, self.pool, self.tmp_path = resolver, pool, tmp_path
        self.made: list[RelayTarget] = []

    def __call__(
        self,
        port: int,
        transport: str | None = None,
        reactor_: Any = reactor,
        settings: SessionSettings | None = None,
        **limits: Any,
    ) -> RelayTarget:
        tmap = None
        if transport is not None:
            path = self.tmp_path / "transport"
            path.write_text(transport)
            tmap = TransportMap(path)
        router = Router(self.resolver, port=port, transport=tmap)
        s = settings or SessionSettings(helo="relay.origin.test", tls="none")
        target = RelayTarget(router, s, self.pool, reactor_, RelayLimits(**limits))
        self.made.append(target)
        return target

    def stop(self) -> None:
        for target in self.made:
            target.stop()


@pytest.fixture
def relays(resolver: LocalResolver, pool: WorkerPool, tmp_path: Path) -> Iterator[Relays]:
    made = Relays(resolver, pool, tmp_path)
    yield made
    made.stop()


class Holder:
    """Final replies held until released: the transfer stays busy meanwhile."""

    def __init__(self, f: ScriptedFactory) -> None:
        self.f = f
        self.held: list[Deferred[str]] = []
        self.releasing = False
        f.script.final = self.final

    def final(self, server: Any) -> Any:
        if self.releasing:
            return "250 2.0.0 Ok: queued"
        d: Deferred[str] = Deferred()
        self.held.append(d)
        return d

    def release(self) -> None:
        self.releasing = True
        for d in self.held:
            d.callback("250 2.0.0 Ok: queued")


def counting_open_session(monkeypatch: pytest.MonkeyPatch) -> list[Deferred[Any]]:
    """Every open_session() the relay makes, as the Deferred it got."""
    calls: list[Deferred[Any]] = []
    real = relay_module.open_session

    def counted(*args: Any, **kw: Any) -> Deferred[Any]:
        d = real(*args, **kw)
        calls.append(d)
        return d

    monkeypatch.setattr(relay_module, "open_session", counted)
    return calls


def handled(d: Deferred[Any]) -> Deferred[None]:
    """Fires once whatever d's result set off synchronously (in the relay) has run."""
    done: Deferred[None] = Deferred()

    def later(result: Any) -> Any:
        reactor.callLater(0, done.callback, None)
        return result

    d.addBoth(later)
    return within(done)


# ---------------------------------------------------------------------------- sharing


@pytest_twisted.ensureDeferred
async def test_relay_messages_share_connection_up_to_limit(
    servers: Servers, relays: Relays
) -> None:
    """Five messages to one destination, one connection at a time, two messages each:
    three connections, carrying 2, 2 and 1 messages."""
    f = servers.listen()
    target = relays(f.port, max_per_destination=1, max_messages_per_connection=2)
    results = await within(
        defer.gatherResults([deliver_d(target, f"r{i}@one.test") for i in range(5)])
    )
    assert [outcomes(r) for r in results] == [[Outcome.SENT]] * 5
    assert [len(c.messages) for c in f.connections] == [2, 2, 1]
    assert f.peak == 1
    assert all(m == stuffed(BODY) for m in f.messages)


@pytest_twisted.ensureDeferred
async def test_relay_next_message_reuses_idle_connection(servers: Servers, relays: Relays) -> None:
    """A message arriving while the last session idles (within cache_time) takes it."""
    f = servers.listen()
    target = relays(f.port, cache_time=30.0)
    for i in range(3):
        (r,) = await deliver(target, f"r{i}@one.test")
        assert r.outcome is Outcome.SENT and r.relay == f"mx.one.test[127.0.0.1]:{f.port}"
    assert len(f.connections) == 1 and len(f.messages) == 3
    assert "QUIT" not in f.connections[0].verbs()


@pytest_twisted.ensureDeferred
async def test_relay_idle_connection_quits_after_cache_time(
    servers: Servers, relays: Relays
) -> None:
    """An idle session says QUIT once cache_time has passed without a message (Clock); the
    next message opens a new connection."""
    f = servers.listen()
    clock = Clock()
    target = relays(f.port, reactor_=ClockedReactor(clock), cache_time=5.0)
    (r,) = await deliver(target, "a@one.test")
    assert r.outcome is Outcome.SENT
    clock.advance(4.9)
    (r,) = await deliver(target, "b@one.test")
    assert r.outcome is Outcome.SENT and len(f.connections) == 1
    clock.advance(4.9)
    assert "QUIT" not in f.connections[0].verbs()
    clock.advance(0.1)
    await f.when(lambda: "QUIT" in f.connections[0].verbs())
    await within(f.connections[0].closed)
    (r,) = await deliver(target, "c@one.test")
    assert r.outcome is Outcome.SENT and len(f.connections) == 2


@pytest_twisted.ensureDeferred
async def test_relay_idle_connection_closed_by_server_not_reused(
    servers: Servers, relays: Relays
) -> None:
    """A cached session the server ended meanwhile (421 and hang-up) is not handed the next
    message: that one goes over a new connection and is SENT."""
    f = servers.listen()
    target = relays(f.port, cache_time=30.0)
    (r,) = await deliver(target, "a@one.test")
    assert r.outcome is Outcome.SENT
    (session, _waiter, _timer) = target.queues["one.test"].idle[0]
    server = f.connections[0]
    server.send("421 4.4.2 mx.dest.test Error: timeout exceeded")
    server.transport.loseConnection()
    await within(session.protocol.lost)
    (r,) = await deliver(target, "b@one.test")
    assert (r.outcome, r.text) == (Outcome.SENT, "250 2.0.0 Ok: queued as Q2")
    assert len(f.connections) == 2


# ---------------------------------------------------------------------------- limits


@pytest_twisted.ensureDeferred
async def test_relay_max_per_destination_respected(servers: Servers, relays: Relays) -> None:
    """Six messages at once to one destination with max_per_destination 2: two connections
    open at once, never more, and they carry all six."""
    f = servers.listen()
    holder = Holder(f)
    target = relays(f.port, max_per_destination=2)
    d = defer.gatherResults([deliver_d(target, f"r{i}@one.test") for i in range(6)])
    await f.when(lambda: len(f.messages) == 2)
    assert f.current == 2 and target.total == 2
    holder.release()
    results = await within(d)
    assert [outcomes(r) for r in results] == [[Outcome.SENT]] * 6
    assert f.peak == 2 and len(f.connections) == 2


@pytest_twisted.ensureDeferred
async def test_relay_max_connections_across_destinations(servers: Servers, relays: Relays) -> None:
    """Three messages each to two destinations with max_connections 3 (2 per destination):
    three connections at once, never more."""
    f = servers.listen()
    holder = Holder(f)
    target = relays(f.port, max_connections=3, max_per_destination=2)
    d = defer.gatherResults(
        [
            deliver_d(target, f"r{i}@{domain}")
            for domain in ("one.test", "two.test")
            for i in range(3)
        ]
    )
    await f.when(lambda: len(f.messages) == 3)
    assert f.current == 3 and target.total == 3
    assert {dq: q.sessions for dq, q in target.queues.items()} == {"one.test": 2, "two.test": 1}
    holder.release()
    results = await within(d)
    assert [outcomes(r) for r in results] == [[Outcome.SENT]] * 6
    assert f.peak == 3


@pytest_twisted.ensureDeferred
async def test_relay_idle_session_gives_its_slot_to_another_destination(
    servers: Servers, relays: Relays
) -> None:
    """With every connection slot held by an idle cached session, a message for another
    destination does not wait for cache_time: the idle session gives up its slot."""
    f = servers.listen()
    target = relays(f.port, max_connections=1, cache_time=60.0)
    (r,) = await deliver(target, "a@one.test")
    assert r.outcome is Outcome.SENT
    (r,) = await deliver(target, "b@two.test")
    assert r.outcome is Outcome.SENT
    assert len(f.connections) == 2 and f.peak == 1
    assert f.connections[0].verbs()[-1] == "QUIT"


# ---------------------------------------------------------------------------- failures


def submit_all(target: RelayTarget, destination: Any, rcpts: list[str]) -> Deferred[Any]:
    """One job per recipient handed to the relay's destination queue at once (the way the
    queue hands over a burst), all waiting before any connection is made."""
    jobs = [_Job(queued(r), [r], BODY, Body(BODY)) for r in rcpts]
    for job in jobs:
        target.submit(destination, job)
    done = within(defer.gatherResults([job.done for job in jobs]))
    # and once the relay's own stack has unwound past the results
    return done.addCallback(lambda results: deferLater(reactor, 0, lambda: results))


@pytest_twisted.ensureDeferred
async def test_relay_dead_destination_defers_every_waiting_job_at_once(
    relays: Relays, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No host reachable: every job waiting for the destination is deferred with the
    connect reason after one attempt, not one attempt each."""
    calls = counting_open_session(monkeypatch)
    closed = free_port()
    target = relays(closed, transport=f"dead.test [127.0.0.1]:{closed}\n", max_per_destination=1)
    destination = await within(target.router.route("dead.test"))
    results = await submit_all(target, destination, [f"r{i}@dead.test" for i in range(4)])
    text = f"connect to 127.0.0.1[127.0.0.1]:{closed}: Connection refused"
    assert [[(r.outcome, r.text, r.relay) for r in batch] for batch in results] == [
        [(Outcome.DEFERRED, text, "none")]
    ] * 4
    assert len(calls) == 1
    assert target.queues == {} and target.total == 0


@pytest_twisted.ensureDeferred
async def test_relay_dead_destination_421_greeting(servers: Servers, relays: Relays) -> None:
    """A destination whose only host greets with 421: every waiting job deferred with its
    reply, after one connection (several allowed, so several are tried at once)."""
    f = servers.listen(Script(greeting="421 4.3.2 Service shutting down"))
    target = relays(f.port, max_per_destination=2)
    destination = await within(target.router.route("one.test"))
    results = await submit_all(target, destination, [f"r{i}@one.test" for i in range(5)])
    text = "host mx.one.test[127.0.0.1] refused to talk to me: 421 4.3.2 Service shutting down"
    assert [[(r.outcome, r.text) for r in batch] for batch in results] == [
        [(Outcome.DEFERRED, text)]
    ] * 5
    assert len(f.connections) == 2


@pytest_twisted.ensureDeferred
async def test_relay_dead_destination_with_deliveries(servers: Servers, relays: Relays) -> None:
    """Through start()/commit(): a message to an unreachable destination is deferred with
    the connect reason and relay=none, and leaves nothing behind."""
    closed = free_port()
    target = relays(closed, transport=f"dead.test [127.0.0.1]:{closed}\n")
    (r,) = await deliver(target, "a@dead.test")
    assert (r.outcome, r.text, r.relay) == (
        Outcome.DEFERRED,
        f"connect to 127.0.0.1[127.0.0.1]:{closed}: Connection refused",
        "none",
    )
    assert target.queues == {} and target.total == 0


@pytest_twisted.ensureDeferred
async def test_relay_connect_failure_while_a_session_is_open_waits_for_it(
    servers: Servers, relays: Relays, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second connection refused (421: too many from you) while the first is busy: the
    waiting message is neither deferred nor retried at once in a loop; the open session
    takes it when done."""
    calls = counting_open_session(monkeypatch)
    f = servers.listen()
    f.script.greeting = lambda conn: (
        "220 mx.dest.test ESMTP" if len(f.connections) == 1 else "421 4.7.0 too many connections"
    )
    holder = Holder(f)
    target = relays(f.port, max_per_destination=2)
    first = deliver_d(target, "a@one.test")
    await f.when(lambda: len(f.messages) == 1)
    second = deliver_d(target, "b@one.test")
    await f.when(lambda: len(calls) == 2)
    await handled(calls[1])
    assert len(calls) == 2, "the refused connection was retried at once"
    assert not second.called
    holder.release()
    (a,) = await within(first)
    (b,) = await within(second)
    assert a.outcome is b.outcome is Outcome.SENT
    assert len(f.connections) == 2 and len(f.connections[0].messages) == 2


@pytest_twisted.ensureDeferred
async def test_relay_too_many_received_bounced_without_connecting(
    servers: Servers, relays: Relays
) -> None:
    """More Received: fields than max_hops in the header: BOUNCED 5.4.6, no connection;
    exactly max_hops, or Received: lines in the body, are relayed."""
    f = servers.listen()
    target = relays(f.port, max_hops=3)
    looped = b"Received: x\r\n" * 2 + b"received: y\r\nRECEIVED: z\r\nSubject: l\r\n\r\nbody\r\n"
    results = await deliver(target, "a@one.test", "b@two.test", text=looped)
    assert [(r.outcome, r.text, r.relay) for r in results] == [
        (Outcome.BOUNCED, "5.4.6 too many hops (4 Received headers): mail forwarding loop", "none")
    ] * 2
    assert f.connections == []
    ok = b"Received: x\r\n" * 3 + b"Subject: ok\r\n\r\nReceived: in the body\r\n" * 3
    assert count_received(ok) == 3
    (r,) = await deliver(target, "a@one.test", text=ok)
    assert r.outcome is Outcome.SENT


@pytest_twisted.ensureDeferred
async def test_relay_routing_errors_become_results(servers: Servers, relays: Relays) -> None:
    """A domain that cannot be routed gets the RouteError text: BOUNCED if permanent,
    DEFERRED if not; the other recipients are relayed; results in add_recipient order."""
    f = servers.listen()
    target = relays(f.port)
    results = await deliver(
        target, "a@null.test", "b@one.test", "c@tempfail.test", "d@nosuch.test", "e@bad_domain"
    )
    assert [(r.address, r.outcome, r.text, r.relay) for r in results] == [
        ("a@null.test", Outcome.BOUNCED, "5.1.10 Recipient address has null MX", "none"),
        (
            "b@one.test",
            Outcome.SENT,
            "250 2.0.0 Ok: queued as Q1",
            f"mx.one.test[127.0.0.1]:{f.port}",
        ),
        (
            "c@tempfail.test",
            Outcome.DEFERRED,
            "4.4.3 Host or domain name not found. Name service error for name=mx.outside.invalid"
            " type=A: Host not found, try again",
            "none",
        ),
        (
            "d@nosuch.test",
            Outcome.BOUNCED,
            "5.1.2 Host or domain name not found. Name service error for name=nosuch.test"
            " type=MX: Host not found",
            "none",
        ),
        ("e@bad_domain", Outcome.BOUNCED, "5.1.2 bad destination domain 'bad_domain'", "none"),
    ]
    assert [c for c in f.connections[0].commands if c.startswith("RCPT")] == [
        "RCPT TO:<b@one.test>"
    ]


@pytest_twisted.ensureDeferred
async def test_relay_two_domains_two_destinations_results_in_order(
    servers: Servers, relays: Relays
) -> None:
    """Recipients of one message in two domains: two destinations (two connections), each
    with its own recipients in order; the results come in add_recipient order."""
    f = servers.listen(Script(rcpt={"a2@one.test": "550 5.1.1 no such user"}))
    target = relays(f.port)
    rcpts = ["b1@two.test", "a1@one.test", "b2@two.test", "a2@one.test"]
    results = await deliver(target, *rcpts)
    assert [r.address for r in results] == rcpts
    assert outcomes(results) == [Outcome.SENT, Outcome.SENT, Outcome.SENT, Outcome.BOUNCED]
    assert results[0].relay == f"mx.two.test[127.0.0.1]:{f.port}"
    assert results[1].relay == f"mx.one.test[127.0.0.1]:{f.port}"
    assert len(f.connections) == 2
    by_connection = sorted(
        [c for c in conn.commands if c.startswith("RCPT")] for conn in f.connections
    )
    assert by_connection == [
        ["RCPT TO:<a1@one.test>", "RCPT TO:<a2@one.test>"],
        ["RCPT TO:<b1@two.test>", "RCPT TO:<b2@two.test>"],
    ]


@pytest_twisted.ensureDeferred
async def test_relay_domains_sharing_a_route_share_one_transaction(
    servers: Servers, relays: Relays
) -> None:
    """Two domains the transport map sends to one host:port are one destination: one
    connection, one MAIL FROM with both recipients."""
    f = servers.listen()
    tmap = f"one.test [127.0.0.1]:{f.port}\ntwo.test [127.0.0.1]:{f.port}\n"
    target = relays(f.port, transport=tmap)
    results = await deliver(target, "a@one.test", "b@two.test", "c@one.test")
    assert outcomes(results) == [Outcome.SENT] * 3
    assert {r.relay for r in results} == {f"127.0.0.1[127.0.0.1]:{f.port}"}
    (conn,) = f.connections
    assert conn.verbs().count("MAIL") == 1
    assert [c for c in conn.commands if c.startswith("RCPT")] == [
        "RCPT TO:<a@one.test>",
        "RCPT TO:<c@one.test>",
        "RCPT TO:<b@two.test>",
    ]


@pytest_twisted.ensureDeferred
async def test_relay_body_in_many_chunks_arrives_whole(servers: Servers, relays: Relays) -> None:
    """A message read by the worker threads in many chunks (dots at chunk starts) reaches
    the server byte for byte, dot-stuffed."""
    f = servers.listen()
    target = relays(f.port)
    text = b"Subject: chunks\r\n\r\n" + b"".join(b".%05d\r\n" % i for i in range(20000))
    (r,) = await deliver(target, "a@one.test", text=text, chunk=997)
    assert r.outcome is Outcome.SENT
    assert f.messages == [stuffed(text)]
    assert f.connections[0].line("MAIL") == f"MAIL FROM:<{SENDER}> SIZE={len(text)}"


# ---------------------------------------------------------------------------- stopping


@pytest_twisted.ensureDeferred
async def test_relay_stop_defers_waiting_and_aborts_busy(servers: Servers, relays: Relays) -> None:
    """stop(): the message in flight is cut short (DEFERRED, lost while sending end of DATA),
    the waiting one deferred as shutting down, and new ones refused the same way."""
    f = servers.listen()
    Holder(f)
    target = relays(f.port, max_per_destination=1)
    busy = deliver_d(target, "a@one.test")
    waiting = deliver_d(target, "b@one.test")
    await f.when(lambda: len(f.messages) == 1)
    target.stop()
    (a,) = await within(busy)
    (b,) = await within(waiting)
    assert (a.outcome, a.text, a.relay) == (
        Outcome.DEFERRED,
        "lost connection with mx.one.test[127.0.0.1] while sending end of DATA",
        f"mx.one.test[127.0.0.1]:{f.port}",
    )
    assert (b.outcome, b.text, b.relay) == (
        Outcome.DEFERRED,
        "4.3.2 the relay is shutting down",
        "none",
    )
    await within(f.connections[0].closed)
    (c,) = await deliver(target, "c@one.test")
    assert (c.outcome, c.text) == (Outcome.DEFERRED, "4.3.2 the relay is shutting down")
    assert len(f.connections) == 1


@pytest_twisted.ensureDeferred
async def test_relay_stop_idle_sessions_say_quit(servers: Servers, relays: Relays) -> None:
    """stop() ends idle cached sessions with QUIT at once."""
    f = servers.listen()
    target = relays(f.port, cache_time=60.0)
    await deliver(target, "a@one.test")
    await deliver(target, "b@two.test")
    target.stop()
    await within(defer.gatherResults([c.closed for c in f.connections]))
    assert [c.verbs()[-1] for c in f.connections] == ["QUIT", "QUIT"]


# ---------------------------------------------------------------------------- our own server


@pytest_twisted.ensureDeferred
async def test_relay_into_our_smtp_server(ours: Any, relays: Relays) -> None:
    """Relayed to our own SMTP server: it stores the message as sent, with the envelope and
    the DSN request, and the result says the DSN went along."""
    server = ours(MTA)
    # our server takes example.test as local; the transport map sends it there
    tmap = f"example.test [127.0.0.1]:{server.port}\n"
    target = relays(server.port, transport=tmap)
    rcpt = Recipient("user1@example.test", remote=True, notify="SUCCESS,FAILURE")
    (r,) = await deliver(target, rcpt)
    assert r.outcome is Outcome.SENT and r.dsn_forwarded, r
    assert r.text.startswith("250 ")
    (stored,) = server.sink.committed
    assert stored.envelope.mail_from == SENDER
    assert [(x.address, x.notify) for x in stored.envelope.recipients] == [
        ("user1@example.test", "SUCCESS,FAILURE")
    ]
    assert bytes(stored.data).endswith(BODY)


# ---------------------------------------------------------------------------- at once (cut-through)


def at_once_d(
    target: RelayTarget, rcpt: str, wait: float, text: bytes = BODY
) -> Deferred[list[RecipientResult]]:
    delivery = target.start_at_once(queued(rcpt, text=text), wait)
    delivery.add_recipient(rcpt)
    delivery.body(Body(text))
    return delivery.commit()


@pytest_twisted.ensureDeferred
async def test_relay_at_once_goes_ahead_of_waiting_jobs(servers: Servers, relays: Relays) -> None:
    """One connection, busy; b waits; then c, whose sender waits: c is sent before b."""
    f = servers.listen()
    holder = Holder(f)
    target = relays(f.port, max_per_destination=1)
    texts = {r: BODY + f"{r}\r\n".encode() for r in ("a", "b", "c")}
    a = deliver_d(target, "a@one.test", text=texts["a"])
    await f.when(lambda: len(f.messages) == 1)
    b = deliver_d(target, "b@one.test", text=texts["b"])
    pending = target.queues["one.test"].pending
    await within(wait_until(lambda: len(pending) == 1))  # b's head is read in a thread first
    c = at_once_d(target, "c@one.test", 30.0, text=texts["c"])
    await within(wait_until(lambda: len(pending) == 2))
    holder.release()
    results = await within(defer.gatherResults([a, b, c]))
    assert [outcomes(r) for r in results] == [[Outcome.SENT]] * 3
    assert f.messages == [stuffed(texts[r]) for r in ("a", "c", "b")]


@pytest_twisted.ensureDeferred
async def test_relay_at_once_withdrawn_unsent_if_no_connection_takes_it_in_time(
    servers: Servers, relays: Relays
) -> None:
    """The only connection stays busy past the wait: the job is withdrawn DEFERRED with the
    reason and relay=none, and the server never sees it (only a, once released)."""
    f = servers.listen()
    holder = Holder(f)
    target = relays(f.port, max_per_destination=1)
    a = deliver_d(target, "a@one.test")
    await f.when(lambda: len(f.messages) == 1)
    (c,) = await within(at_once_d(target, "c@one.test", 0.2))
    assert (c.outcome, c.text, c.relay) == (
        Outcome.DEFERRED,
        "4.4.1 no connection to one.test was free within 0.2 s",
        "none",
    )
    assert target.queues["one.test"].pending == deque()
    holder.release()
    (r,) = await within(a)
    assert r.outcome is Outcome.SENT
    await deferLater(reactor, 0.05, lambda: None)
    assert len(f.messages) == 1
    assert [c for c in f.connections[0].commands if c.upper().startswith("RCPT")] == [
        "RCPT TO:<a@one.test>"
    ]


@pytest_twisted.ensureDeferred
async def test_relay_at_once_taken_in_time_runs_to_the_reply(
    servers: Servers, relays: Relays
) -> None:
    """Once a session has the job, its wait no longer applies: the server holds its reply
    past the wait, and the result is still the server's 250."""
    f = servers.listen()
    holder = Holder(f)
    target = relays(f.port)
    c = at_once_d(target, "c@one.test", 0.1)
    await f.when(lambda: len(f.messages) == 1)
    await deferLater(reactor, 0.3, lambda: None)
    assert not c.called
    holder.release()
    (r,) = await within(c)
    assert (r.outcome, r.text) == (Outcome.SENT, "250 2.0.0 Ok: queued")
