"""LineConnection's generic byte side, driven through a tiny echo protocol over StringTransport."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport

from appliance.lineconn import MAX_BATCH, MAX_PIPELINED, LineConnection

LIMIT = 16  # the echo protocol's longest line, CRLF included


class Recording(StringTransport):
    """StringTransport (with its producer support) that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class Echo(LineConnection):
    """Echoes each line as `+line`; WAIT waits on a Deferred, LIT n reads n raw bytes,
    BAD counts an error, QUIT closes."""

    def __init__(self, errors: int = 3, utf8: bool = False) -> None:
        super().__init__()
        self.allowed_errors = errors
        self.utf8 = utf8
        self.too_long = 0
        self.pending: list[defer.Deferred[None]] = []
        self.literal: int | None = None
        self.literals: list[bytes] = []

    def line_limit(self) -> int:
        return LIMIT

    def line_received(self, raw: bytes) -> None:
        if raw == b"WAIT":
            d: defer.Deferred[None] = defer.Deferred()
            self.pending.append(d)
            self.wait(d.addCallback(lambda _: self.send_line("+OK waited")), "waiting")
        elif raw.startswith(b"LIT "):
            self.literal = int(raw[4:])
        elif raw == b"BAD":
            self.send_line("-ERR bad")
            self.note_error()
        elif raw == b"QUIT":
            self.send_line("+OK bye")
            self.close_connection()
        else:
            self.send_line("+" + raw.decode("utf-8", "replace"))

    def in_data(self) -> bool:
        return self.literal is not None

    def feed_data(self) -> bool:
        assert self.literal is not None
        if len(self.buffer) < self.literal:
            return False
        self.literals.append(self.buffer[: self.literal])
        self.buffer = self.buffer[self.literal :]
        self.literal = None
        self.send_line("+OK literal")
        return True

    def line_too_long(self) -> None:
        self.too_long += 1
        self.send_line("-ERR line too long")

    def max_errors(self) -> int:
        return self.allowed_errors

    def too_many_errors(self) -> None:
        self.send_line("-ERR too many errors")
        self.close_connection()

    def local_error(self, what: str) -> None:
        self.send_line(f"-ERR local error ({what})")

    def utf8_replies(self) -> bool:
        return self.utf8


def connect(errors: int = 3, utf8: bool = False) -> tuple[Echo, Recording]:
    proto = Echo(errors, utf8)
    transport = Recording()
    proto.makeConnection(transport)
    return proto, transport


def replies(transport: Recording) -> list[bytes]:
    return transport.value().split(b"\r\n")[:-1]


def test_lines_crlf_framed_each_handed_over_without_crlf() -> None:
    """Lines end in CRLF; a partial line waits for its end; a bare LF stays inside a line."""
    proto, t = connect()
    proto.dataReceived(b"one\r\ntw")
    assert replies(t) == [b"+one"]
    proto.dataReceived(b"o\nx\r\n")
    assert replies(t) == [b"+one", b"+two?x"]  # the echoed bare LF is made printable
    assert proto.buffer == b""


def test_line_at_limit_accepted_one_byte_more_rejected() -> None:
    """line_limit() counts the CRLF: LIMIT bytes pass, LIMIT + 1 are too long."""
    proto, t = connect()
    proto.dataReceived(b"a" * (LIMIT - 2) + b"\r\n" + b"b" * (LIMIT - 1) + b"\r\nnext\r\n")
    assert replies(t) == [b"+" + b"a" * (LIMIT - 2), b"-ERR line too long", b"+next"]
    assert proto.too_long == 1


def test_overlong_line_in_pieces_reported_once_skipped_buffer_bounded() -> None:
    """An over-long line arriving in many pieces calls line_too_long() once, is skipped up to
    its CRLF (even a CRLF split across pieces) and never grows the buffer past the limit."""
    proto, t = connect()
    for _ in range(100):
        proto.dataReceived(b"x" * 1000)
        assert len(proto.buffer) <= LIMIT
    proto.dataReceived(b"xx\r")
    proto.dataReceived(b"\nafter\r\n")
    assert proto.too_long == 1
    assert replies(t) == [b"-ERR line too long", b"+after"]
    assert not proto.skipping


def test_burst_of_lines_answered_in_one_write() -> None:
    """All replies made while one dataReceived is handled go out in a single write."""
    proto, t = connect()
    proto.dataReceived(b"a\r\nb\r\nc\r\n")
    assert t.writes == [b"+a\r\n+b\r\n+c\r\n"]


def test_send_line_outside_process_written_at_once() -> None:
    """A reply made outside input handling (a greeting, a timer) is written immediately."""
    proto, t = connect()
    proto.send_line("+OK hello")
    assert t.writes == [b"+OK hello\r\n"]


def test_wait_holds_input_until_deferred_fires_then_resumes_in_order() -> None:
    """Lines after WAIT are not handled until its Deferred fires; then they are, in order."""
    proto, t = connect()
    proto.dataReceived(b"WAIT\r\na\r\n")
    assert replies(t) == [] and proto.busy
    proto.dataReceived(b"b\r\n")
    assert replies(t) == []
    proto.pending[0].callback(None)
    assert replies(t) == [b"+OK waited", b"+a", b"+b"]
    assert not proto.busy
    # the Deferred's own reply is written when it fires; the held lines' go out together
    assert t.writes == [b"+OK waited\r\n", b"+a\r\n+b\r\n"]


def test_wait_failure_logged_answered_by_local_error(logged_errors: list[dict]) -> None:
    """A failing Deferred is logged and answered by local_error(what); input then resumes."""
    proto, t = connect()
    proto.dataReceived(b"WAIT\r\na\r\n")
    proto.pending[0].errback(RuntimeError("boom"))
    assert replies(t) == [b"-ERR local error (waiting)", b"+a"]
    assert len(logged_errors) == 1
    logged_errors.clear()


def test_literal_bytes_go_to_feed_data_then_lines_resume() -> None:
    """While in_data() is true the bytes go to feed_data(), CRLFs and all, not to lines."""
    proto, t = connect()
    proto.dataReceived(b"LIT 7\r\nab\r")
    assert replies(t) == []
    proto.dataReceived(b"\ncd\r\nnext\r\n")
    assert proto.literals == [b"ab\r\ncd\r"]
    assert replies(t) == [b"+OK literal", b"+?next"]  # the literal's last byte opens the line


def test_producer_paused_holds_processing_until_resumed() -> None:
    """While the transport says its buffer is full (pauseProducing) no input is handled."""
    proto, t = connect()
    assert t.producer is proto and t.streaming
    proto.pauseProducing()
    proto.dataReceived(b"a\r\nb\r\n")
    assert replies(t) == [] and proto.write_blocked
    assert t.producerState == "producing"  # a little pipelining does not stop reading
    proto.resumeProducing()
    assert replies(t) == [b"+a", b"+b"]
    assert not proto.write_blocked


def test_pipelining_past_max_while_write_blocked_stops_reading() -> None:
    """Past MAX_PIPELINED unanswered bytes while write-blocked, the transport is paused;
    once the client reads its replies, reading resumes and everything is answered."""
    proto, t = connect()
    proto.pauseProducing()
    n = MAX_PIPELINED // 3 + 1
    proto.dataReceived(b"a\r\n" * n)
    assert t.producerState == "paused"
    assert proto.paused and proto.reading_stopped
    proto.resumeProducing()
    assert t.producerState == "producing"
    assert not proto.paused and not proto.reading_stopped
    assert replies(t) == [b"+a"] * n


def test_pipelining_past_max_while_waiting_stops_reading_until_fired() -> None:
    """Past MAX_PIPELINED bytes held behind a wait(), the transport is paused until the
    Deferred fires; a blocked writer keeps it paused until it drains."""
    proto, t = connect()
    proto.dataReceived(b"WAIT\r\n")
    n = MAX_PIPELINED // 3 + 1
    proto.dataReceived(b"a\r\n" * n)
    assert t.producerState == "paused" and proto.reading_stopped
    proto.pauseProducing()
    proto.resumeProducing()  # drained, but still busy: stays paused
    assert t.producerState == "paused"
    proto.pauseProducing()
    proto.pending[0].callback(None)  # fired while write-blocked: still paused
    assert t.producerState == "paused"
    proto.resumeProducing()
    assert t.producerState == "producing" and not proto.reading_stopped
    assert replies(t) == [b"+OK waited"] + [b"+a"] * n


@pytest.mark.parametrize(
    ("utf8", "expected"),
    [(False, "+a?[31m b? ?"), (True, "+a?[31m b? ü")],
)
def test_clean_control_bytes_and_non_ascii_shown_as_question_marks(
    utf8: bool, expected: str
) -> None:
    """A reply never carries a control byte; non-ASCII only when utf8_replies()."""
    proto, t = connect(utf8=utf8)
    proto.dataReceived("a\x1b[31m b\x00 ü\r\n".encode())
    assert t.value() == expected.encode() + b"\r\n"


def test_too_many_errors_after_max_errors_closes() -> None:
    """The error after max_errors() calls too_many_errors() once; later input is ignored."""
    proto, t = connect(errors=3)
    proto.dataReceived(b"BAD\r\n" * 3)
    assert not t.disconnecting
    proto.dataReceived(b"BAD\r\nBAD\r\na\r\n")
    assert replies(t) == [b"-ERR bad"] * 4 + [b"-ERR too many errors"]
    assert t.disconnecting and proto.closing
    proto.dataReceived(b"b\r\n")
    assert replies(t)[-1] == b"-ERR too many errors"


def test_close_connection_flushes_pending_replies_first() -> None:
    """close_connection() sends the replies of the burst, then loses the connection; the
    lines pipelined behind it are not handled."""
    proto, t = connect()
    proto.dataReceived(b"a\r\nQUIT\r\nb\r\n")
    assert t.writes == [b"+a\r\n+OK bye\r\n"]
    assert t.disconnecting


class Pushing(Recording):
    """A transport whose buffer 'fills' at the first write past `full` bytes: it pauses its
    producer there, as Twisted's FileDescriptor.write does past its bufferSize."""

    def __init__(self, full: int) -> None:
        super().__init__()
        self.full = full

    def write(self, data: bytes) -> None:
        super().write(data)
        if sum(map(len, self.writes)) > self.full and self.producer is not None:
            self.producer.pauseProducing()


def test_huge_burst_replies_sliced_so_the_transport_can_push_back() -> None:
    """A burst whose replies exceed MAX_BATCH is written in slices; once the transport says
    it is full, the rest of the burst waits (replies never pile up past one slice)."""
    proto = Echo()
    t = Pushing(full=MAX_BATCH)
    proto.makeConnection(t)
    n = 3 * MAX_BATCH // 4  # '+a\r\n' replies: 3 x MAX_BATCH bytes of them
    proto.dataReceived(b"a\r\n" * n)
    assert len(t.writes) >= 2
    assert max(map(len, t.writes)) <= MAX_BATCH + 8
    answered = sum(map(len, t.writes)) // 4
    assert proto.write_blocked and answered < n
    proto.resumeProducing()
    t.full = 1 << 30
    proto.resumeProducing()
    assert replies(t) == [b"+a"] * n


# ------------------------------------------------------------------ write_now, on a real socket


class FDSet:
    """The IReactorFDSet a tcp.Server registers with, recording instead of polling."""

    def __init__(self) -> None:
        self.writers: set[object] = set()

    def addReader(self, r: object) -> None:  # noqa: N802
        pass

    def removeReader(self, r: object) -> None:  # noqa: N802
        pass

    def addWriter(self, w: object) -> None:  # noqa: N802
        self.writers.add(w)

    def removeWriter(self, w: object) -> None:  # noqa: N802
        self.writers.discard(w)


@pytest.fixture
def tcp_pair():
    """A real loopback TCP connection: (Twisted's tcp.Server over one end, the other end,
    the recording reactor)."""
    import socket

    from twisted.internet import tcp

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # small: fills up soon
    peer.connect(lsock.getsockname())
    sock, addr = lsock.accept()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    lsock.close()
    fds = FDSet()
    server = tcp.Server(sock, Echo(), addr, None, 1, fds)  # type: ignore[arg-type]
    yield server, peer, fds
    peer.close()
    sock.close()


def recv_exactly(peer, n: int) -> bytes:
    out = b""
    peer.settimeout(5)
    while len(out) < n:
        chunk = peer.recv(n - len(out))
        assert chunk, "connection closed early"
        out += chunk
    return out


def test_write_now_sends_at_once_without_registering_for_writes(tcp_pair) -> None:
    """With nothing queued, a reply is on the wire when write_now returns: no writer
    registration, no reactor turn."""
    from appliance.lineconn import write_now

    server, peer, fds = tcp_pair
    write_now(server, b"+OK hello\r\n")
    assert fds.writers == set()
    assert recv_exactly(peer, 11) == b"+OK hello\r\n"


def test_write_now_rest_queued_in_order_once_the_socket_is_full(tcp_pair) -> None:
    """A peer that does not read: what the socket does not take is queued by Twisted, and
    every later write goes behind it, so the bytes arrive whole and in order."""
    from appliance.lineconn import write_now

    server, peer, fds = tcp_pair
    parts = [bytes([65 + i % 26]) * 300_000 for i in range(4)]
    for part in parts:
        write_now(server, part)
    assert fds.writers == {server}  # the socket was full: Twisted sends the rest
    expected = b"".join(parts)
    got = b""
    peer.settimeout(5)
    while len(got) < len(expected):
        chunk = peer.recv(1 << 20)
        assert chunk
        got += chunk
        if server in fds.writers:
            server.doWrite()  # what the reactor does once the socket is writable
    assert got == expected


def test_write_now_leaves_tls_and_closing_connections_to_twisted(tcp_pair) -> None:
    """Under TLS (the bytes must be encrypted) or once closing, the transport's own write
    (under TLS, what that queued is then sent: see the TLS tests below)."""
    from appliance.lineconn import write_now

    server, peer, fds = tcp_pair
    server.TLS = True
    written: list[bytes] = []
    server.write = written.append  # type: ignore[method-assign]
    write_now(server, b"secret\r\n")
    server.TLS = False
    server.disconnecting = True
    write_now(server, b"late\r\n")
    assert written == [b"secret\r\n", b"late\r\n"]
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)


def test_drained_fires_on_resume_and_stalled_client_is_cut_off() -> None:
    """drained(): a waiter fires when the transport asks for more; a client that reads
    nothing within the limit is aborted and the waiter fires too (nothing hangs)."""
    from twisted.internet.task import Clock

    clock = Clock()
    e = Echo()
    t = Recording()
    e.makeConnection(t)
    fired: list[int] = []
    e.pauseProducing()
    e.drained(clock, 10).addCallback(lambda _: fired.append(1))
    clock.advance(5)
    e.resumeProducing()
    assert fired == [1] and not e.closing
    e.pauseProducing()
    e.drained(clock, 10).addCallback(lambda _: fired.append(2))
    aborted: list[bool] = []
    t.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    clock.advance(10)
    assert fired == [1, 2] and aborted == [True] and e.closing
    assert clock.getDelayedCalls() == []


# ------------------------------------------------------------------ write_now under real TLS


class TLSReplier(Protocol):
    """Server side: after the handshake (write_through_tls unless told not to), answers each
    read with a: write_now, b c: writeSequence, d: write_now, and notes what Twisted still
    held right after the first write_now (its TLS aggregator, its TCP buffer)."""

    def __init__(self, through: bool) -> None:
        self.through = through
        self.held_after_write: tuple[int, int] | None = None

    def handshakeCompleted(self) -> None:  # noqa: N802 (IHandshakeListener)
        from appliance.lineconn import write_through_tls

        if self.through:
            write_through_tls(self.transport)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        from appliance.lineconn import write_now

        t = self.transport
        write_now(t, b"a")
        aggregated = sum(len(b) for b in getattr(t.protocol._aggregator, "_buffer", []))
        queued = len(t.dataBuffer) - t.offset + t._tempDataLen
        self.held_after_write = (aggregated, queued)
        t.writeSequence([b"b", b"c"])
        write_now(t, b"d\n")


class LineCollector(Protocol):
    def __init__(self) -> None:
        self.got = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.write(b"go")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.got += data
        if self.got.endswith(b"\n") and not self.done.called:
            self.done.callback(self.got)


async def tls_exchange(through: bool) -> tuple[bytes, tuple[int, int] | None]:
    """One real loopback TLS connection (Twisted's test certificate): the bytes the client
    got, and what the server's Twisted held after its first write_now."""
    from pathlib import Path

    import twisted.test
    from twisted.internet import reactor, ssl
    from twisted.internet.protocol import ClientFactory, Factory
    from zope.interface import directlyProvides

    from appliance.tls.context import make_tls_options

    pem = Path(twisted.test.__file__).parent / "server.pem"  # its key and its certificate
    server_options = make_tls_options(pem, pem)  # the appliance's own TLS options
    servers: list[TLSReplier] = []

    def build(_addr: object) -> TLSReplier:
        p = TLSReplier(through)
        directlyProvides(p, IHandshakeListener)
        servers.append(p)
        return p

    factory = Factory.forProtocol(TLSReplier)
    factory.buildProtocol = build  # type: ignore[method-assign]
    port = reactor.listenSSL(0, factory, server_options, interface="127.0.0.1")
    client = LineCollector()
    cf = ClientFactory.forProtocol(lambda: client)
    connector = reactor.connectSSL(
        "127.0.0.1", port.getHost().port, cf, ssl.CertificateOptions(verify=False)
    )
    try:
        got = await defer.Deferred.fromCoroutine(_within(client.done))
    finally:
        connector.disconnect()
        await port.stopListening()
    return got, servers[0].held_after_write


async def _within(d: defer.Deferred[bytes]) -> bytes:
    from twisted.internet import reactor

    d.addTimeout(10, reactor)
    return await d


@pytest_twisted.ensureDeferred
async def test_write_through_tls_reply_handed_to_the_socket_at_once_in_order() -> None:
    """After the handshake, write_now under TLS leaves nothing held (not in Twisted's TLS
    aggregator, which waits for the reactor's next turn, nor in its TCP buffer); writes and
    writeSequence arrive in the order made."""
    got, held = await tls_exchange(through=True)
    assert got == b"abcd\n"
    assert held == (0, 0)


@pytest_twisted.ensureDeferred
async def test_twisted_tls_holds_writes_for_a_reactor_turn_without_write_through() -> None:
    """What write_through_tls is for (and a check that Twisted still works so): without it,
    the first reply still waits in Twisted's TLS aggregator when write_now returns."""
    got, held = await tls_exchange(through=False)
    assert got == b"abcd\n"
    assert held is not None and held[0] == 1
