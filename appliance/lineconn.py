"""The byte side of a line protocol (SMTP, POP3, IMAP): framing, replies, waiting, back-pressure.

`LineConnection` is a Twisted protocol that knows nothing of any mail protocol; a subclass
(appliance.smtp.connection, later POP3 and IMAP) supplies what it says through hooks. Here:
- request lines end in CRLF and are bounded (line_limit()); a longer one is reported once to
  line_too_long() and skipped up to the next CRLF, and the buffer never grows past the limit;
- while in_data() says a body is being read (SMTP's DATA, an IMAP literal) the bytes go to
  feed_data() instead;
- while an asynchronous step runs (wait(d): a policy lookup, a login check, a commit) input
  is held, and a client pipelining far past what a protocol needs is paused;
- back-pressure: the connection is its transport's producer, so when a client has not read
  more than the transport's buffer of replies (64 KiB) we stop answering until it drains,
  and once MAX_PIPELINED more bytes wait unanswered we stop reading from it too (not at
  once: a TLS layer pauses its producer while its handshake runs, and must go on reading
  to finish it): memory per connection stays bounded whatever the client does;
- replies made while one burst of input is handled go out in one write, and straight to the
  socket when nothing is queued before them (write_now()); a reply never
  carries a control byte (whatever of the client's text a reply quotes is made printable,
  clean());
- the time limits are appliance.limits.Deadlines' (idle, whole request, greeting, body rate),
  on one timer, which the subclass creates once connected (it says what a timeout answers);
- errors the subclass counts (note_error()) past max_errors() end the connection through
  too_many_errors(); an unexpected failure while waiting is logged and answered by
  local_error().
"""

from __future__ import annotations

from types import MethodType
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet import defer, protocol, tcp
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance.limits import ConnectionSlots, Deadlines
from appliance.log import printable

if TYPE_CHECKING:
    from OpenSSL import SSL
    from twisted.internet.interfaces import IOpenSSLContextFactory, ITransport

CRLF = b"\r\n"
MAX_BATCH = 64 * 1024  # reply bytes gathered in one process() before they are written
MAX_PIPELINED = 256 * 1024  # bytes buffered while busy before we stop reading
OVERLONG_KEPT = 128  # the start of an over-long line kept for line_too_long() (an IMAP tag)


class Transport(Protocol):
    """What a connection uses of its transport: ITransport's write/loseConnection/getPeer,
    IPushProducer's pause/resume, ITLSTransport's startTLS and, under TLS, getHandle()
    (no single Twisted interface has them all)."""

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...  # noqa: N802 (Twisted's API)

    def abortConnection(self) -> None: ...  # noqa: N802

    def registerProducer(self, producer: object, streaming: bool) -> None: ...  # noqa: N802

    def unregisterProducer(self) -> None: ...  # noqa: N802

    def getPeer(self) -> object: ...  # noqa: N802

    def pauseProducing(self) -> None: ...  # noqa: N802

    def resumeProducing(self) -> None: ...  # noqa: N802

    def startTLS(self, context_factory: IOpenSSLContextFactory) -> None: ...  # noqa: N802

    def getHandle(self) -> SSL.Connection: ...  # noqa: N802


_TCP = (tcp.Server, tcp.Client)


def write_now(transport: object, data: bytes) -> None:
    """transport.write(data), but sent at once when the transport is a TCP connection with
    nothing queued: Twisted's write only queues, registers the socket for writability and
    sends on the reactor's next turn (two epoll_ctl calls and the rest of a loop iteration
    per reply, which for a request-reply protocol is most of a small reply's cost, and on a
    busy reactor milliseconds of latency). In plaintext the socket is sent to directly; what
    it does not take at once (or any error, which Twisted then finds and reports as usual)
    goes to transport.write, after which everything is queued there in order. Under TLS
    the bytes go through Twisted's TLS layer as usual and what it queued for the socket is
    sent at once (send_queued): with write_through_tls() done, that is this write's
    ciphertext."""
    t: Any = transport
    if isinstance(t, TLSMemoryBIOProtocol):  # implicit TLS (465): the TLS layer is ours
        t.write(data)  # encrypted behind whatever is queued already
        send_queued(t.transport)
        return
    if type(t) in _TCP:
        if getattr(t, "TLS", False):  # after STARTTLS: the layer sits inside the connection
            t.write(data)
            send_queued(t)
            return
        try:
            idle = (
                t.connected
                and not t.disconnecting
                and not t._writeDisconnected
                and not t._tempDataBuffer
                and t.offset == len(t.dataBuffer)
            )
        except AttributeError:  # another Twisted's internals: its own way, always
            idle = False
        if idle:
            try:
                sent = t.socket.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
    cast(Transport, t).write(data)


def send_queued(t: Any) -> None:
    """Send what Twisted has queued on the TCP connection t now, as the reactor would once the
    socket is writable: FileDescriptor.doWrite, called only when it can do nothing else (not
    closing, no paused producer to resume). An error is left for the reactor, whose next
    doWrite meets it again and closes the connection as usual."""
    try:
        ready = (
            t.connected
            and not t.disconnecting
            and not t._writeDisconnecting
            and (t._tempDataBuffer or t.offset < len(t.dataBuffer))
            and (t.producer is None or (t.streamingProducer and not t.producerPaused))
        )
    except AttributeError:
        return
    if ready:
        t.doWrite()


def write_through_tls(transport: object) -> None:
    """Once a TLS handshake is done: let writes reach the TLS layer at once.

    Twisted's TLS transport (BufferingTLSTransport) holds every write for a callLater(0) and
    encrypts what gathered on the reactor's next turn, meant for protocols that write many
    small pieces. Ours write one piece a batch of replies, so the hold only adds a loop
    iteration (on a busy reactor, milliseconds) to every reply. What it holds is passed on
    first, then write and writeSequence go straight to TLSMemoryBIOProtocol's, in order.
    Anything else (no TLS, another Twisted's internals) is left as it is."""
    # implicit TLS: the transport is the TLS layer; after STARTTLS it is the connection's
    tls = (
        transport
        if isinstance(transport, TLSMemoryBIOProtocol)
        else getattr(transport, "protocol", None)
    )
    if not isinstance(tls, BufferingTLSTransport) or "write" not in vars(tls):
        return
    aggregator = getattr(tls, "_aggregator", None)
    flush = getattr(aggregator, "flush", None)
    if flush is None:
        return
    flush()
    del tls.write  # the class's: TLSMemoryBIOProtocol.write
    tls.writeSequence = MethodType(TLSMemoryBIOProtocol.writeSequence, tls)  # type: ignore[method-assign]


def set_no_delay(transport: object) -> None:
    """TCP_NODELAY on transport: each write goes out at once. A request-reply protocol whose
    second small write (a reply or command written a reactor turn after the first: after a
    lookup or a worker job) would otherwise wait for the ACK of the first, which the peer
    delays (40 ms on Linux) while it waits for that second write. Through
    TLSMemoryBIOProtocol the call reaches the TCP transport; anything else (a UNIX socket,
    a test transport) is left as it is."""
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        try:
            setter(True)
        except OSError:
            pass  # not a TCP socket


@implementer(IPushProducer, IHandshakeListener)
class LineConnection(protocol.Protocol):
    """CRLF framing with bounded lines, batched replies, waiting on Deferreds, deadlines.

    A subclass supplies line_received() and line_limit(), and says what the protocol answers
    in line_too_long(), too_many_errors() and local_error(); in_data()/feed_data(),
    utf8_replies() and max_errors() have defaults.
    """

    log = Logger()

    def __init__(self) -> None:
        self.buffer = b""
        self.skipping = False  # discarding an over-long request line up to its CRLF
        self.overlong = b""  # the start of the last over-long line, for line_too_long()
        self.busy = False  # an asynchronous step is running: hold further requests
        self.paused = False  # reading stopped: too much pipelined while busy or write-blocked
        self.write_blocked = False  # the client is not reading its replies
        self.deadlines: Deadlines | None = None  # set by the subclass once connected
        self.out: list[bytes] | None = None  # replies held back while process() runs
        self.gathering = False  # gather() started self.out: the end of wait() sends it
        self.out_bytes = 0  # their size
        self.closing = False
        self.errors = 0
        self.peer_ip = "unknown"  # the client's address, once connected
        self.link: Transport | None = None  # the transport, once connected
        self.producing = False  # registered as the transport's producer
        self.tls_info: str | None = None  # "TLSv1.3 TLS_AES_256_GCM_SHA384" once encrypted
        self.drain_waiters: list[defer.Deferred[None]] = []  # drained() callers
        self.stall_call: IDelayedCall | None = None  # cuts off a client that stopped reading
        self.slots: ConnectionSlots | None = None  # the slots this connection holds one of

    @property
    def reading_stopped(self) -> bool:
        """Whether the transport has been asked to stop reading (the same as paused)."""
        return self.paused

    def makeConnection(self, transport: ITransport) -> None:  # noqa: N802 (Twisted's API)
        # self.transport, typed as what we use of it; kept once rather than cast on each use
        self.link = cast(Transport, transport)
        # a request-reply protocol: a reply written a reactor turn after the one before it
        # (after a lookup, a commit, a worker's read) must not wait for the client's ACK
        set_no_delay(transport)
        self.link.registerProducer(self, True)
        self.producing = True  # registered on the transport (until close_connection)
        super().makeConnection(transport)

    def handshakeCompleted(self) -> None:  # noqa: N802 (IHandshakeListener)
        """Record the negotiated protocol and cipher (Received headers, login lines)."""
        self.tls_info = "TLS"
        link = self.link
        if link is None:
            return
        write_through_tls(link)
        try:
            conn = link.getHandle()
            self.tls_info = f"{conn.get_protocol_version_name()} {conn.get_cipher_name()}"
        except Exception:
            self.tls_info = "TLS"
        self.tls_established(self.tls_info)

    def tls_established(self, tls: str) -> None:
        """A TLS handshake completed (tls: "TLSv1.3 TLS_AES_256_GCM_SHA384"): a subclass logs
        it (the maillog line, the metrics)."""

    def addresses(self) -> tuple[str, str]:
        """(the client's IP, ours) of the connection ("unknown" / "" when not TCP); sets
        peer_ip. For connectionMade."""
        transport = self.transport
        host = getattr(transport.getPeer() if transport else None, "host", None)
        self.peer_ip = host if isinstance(host, str) else "unknown"
        get_host = getattr(transport, "getHost", None)
        local = getattr(get_host(), "host", None) if get_host is not None else None
        return self.peer_ip, local if isinstance(local, str) else ""

    # ------------------------------------------------------------------ IPushProducer

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's API)
        """The transport holds a full buffer of replies the client has not read."""
        self.write_blocked = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.write_blocked = False
        self.release_drain_waiters()
        if self.paused and not self.busy:
            self._resume_reading()
        if not self.closing and self.link is not None:
            self.process()

    def stopProducing(self) -> None:  # noqa: N802
        pass  # the connection is going away: connectionLost cleans up

    # ------------------------------------------------------------------ streaming a long reply

    def drained(self, reactor: IReactorTime, limit: float) -> defer.Deferred[None]:
        """For a protocol streaming a long reply (a POP3 RETR, an IMAP FETCH): fires once
        the transport has written what the client had not read (resumeProducing), or the
        connection is gone; a client that reads nothing for limit seconds gets stalled()."""
        d: defer.Deferred[None] = defer.Deferred()
        self.drain_waiters.append(d)
        if self.stall_call is None:
            self.stall_call = reactor.callLater(limit, self._stalled)
        return d

    def _stalled(self) -> None:
        self.stall_call = None
        self.stalled()
        self.release_drain_waiters()

    def stalled(self) -> None:
        """A client stopped reading a long reply: cut it off (a subclass may say why first)."""
        self.closing = True
        if self.link is not None:
            self.link.abortConnection()

    def release_drain_waiters(self) -> None:
        """Fire every drained() waiter and stop the stall timer (drained, or connection lost)."""
        call, self.stall_call = self.stall_call, None
        if call is not None and call.active():
            call.cancel()
        waiters, self.drain_waiters = self.drain_waiters, []
        for d in waiters:
            d.callback(None)

    def _pause_reading(self) -> None:
        self.paused = True
        if self.link is not None:
            self.link.pauseProducing()

    def _resume_reading(self) -> None:
        self.paused = False
        if self.link is not None:
            self.link.resumeProducing()

    # ------------------------------------------------------------------ hooks for the protocol

    def line_received(self, raw: bytes) -> None:
        """One request line, without its CRLF (may contain a bare CR or LF)."""
        raise NotImplementedError

    def line_limit(self) -> int:
        """The longest request line accepted, CRLF included."""
        raise NotImplementedError

    def in_data(self) -> bool:
        """Whether a body (SMTP's DATA, a literal) is being read: feed_data() takes the bytes."""
        return False

    def feed_data(self) -> bool:
        """Consume body bytes from self.buffer; True once the body has ended (line framing
        resumes), False while more is needed (leave an unfinished part in self.buffer)."""
        raise NotImplementedError

    def line_too_long(self) -> None:
        """Answer a request line longer than line_limit() (once per line; it is skipped;
        self.overlong holds its start). Counting it as an error (note_error()) is the
        hook's to do."""
        raise NotImplementedError

    def max_errors(self) -> int:
        """How many errors note_error() takes before too_many_errors()."""
        return 20

    def too_many_errors(self) -> None:
        """Past max_errors(): say so and close_connection()."""
        self.close_connection()

    def local_error(self, what: str) -> None:
        """Answer the request whose asynchronous step (what) failed unexpectedly; the failure
        itself has been logged."""
        raise NotImplementedError

    def utf8_replies(self) -> bool:
        """Whether replies may carry UTF-8 (otherwise clean() keeps them ASCII)."""
        return False

    # ------------------------------------------------------------------ output

    def send_line(self, line: str) -> None:
        if not line.isascii() or not line.isprintable():
            line = self.clean(line)
        self.send_bytes(line.encode("utf-8") + CRLF)

    def send_bytes(self, data: bytes) -> None:
        """Reply bytes as they are (a line made by send_line, or a protocol's own data, such
        as a POP3 message): gathered while process() runs, otherwise written at once."""
        link = self.link
        if link is not None and not self.closing:
            if self.out is not None:  # inside process(): one write for all its replies
                self.out.append(data)
                self.out_bytes += len(data)
                if self.out_bytes >= MAX_BATCH:
                    # a burst of pipelined commands: its replies go out in slices, so the
                    # transport can push back (write_blocked) before they pile up
                    self.flush()
            else:
                write_now(link, data)

    def clean(self, line: str) -> str:
        """A reply quoting client text made safe: control bytes (and, unless utf8_replies(),
        anything outside ASCII) shown as '?'."""
        if self.utf8_replies():
            return printable(line, len(line))
        return "".join(c if " " <= c <= "~" else "?" for c in line)

    def flush(self) -> None:
        """Send the replies gathered in process(): one write, one wake-up of the socket."""
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            self.out_bytes = 0
            link = self.link
            if link is not None:
                write_now(link, data)

    def gather(self) -> None:
        """From here on, replies are gathered (as inside process()) and go out in one write
        when the current wait() ends, or at end_gather(): for a reply made by the callbacks
        of a Deferred (a worker thread's result), whose lines would otherwise each be a
        write of their own."""
        if self.out is None:
            self.out = []
            self.gathering = True

    def end_gather(self) -> None:
        if self.gathering:
            self.gathering = False
            self.flush()
            self.out = None

    def admit_to(self, slots: ConnectionSlots) -> bool:
        """Take one of slots for this client (False: none for it). The slot is given back
        when the close begins, not when it ends: a client that got its last reply may
        connect again before this side's close is done, and under load hundreds of such
        closes would otherwise count against it (500 clients were refused at 505 slots)."""
        if not slots.admit(self.peer_ip, self):
            return False
        self.slots = slots
        return True

    def release_slot(self) -> None:
        """Give the slot back (again, or none held: nothing)."""
        slots, self.slots = self.slots, None
        if slots is not None:
            slots.release(self)

    # a Slot (appliance.limits) for admit_to; sessions that may be evicted say when they idle
    def idle_since(self) -> float | None:
        return None

    def evict(self) -> None:
        self.close_connection()

    def close_connection(self) -> None:
        self.flush()  # the last reply before the FIN
        self.closing = True
        self.release_slot()
        link = self.link
        if link is not None:
            # a producer still registered on a TLS transport holds its close_notify (and so
            # the close) until it is unregistered: after STARTTLS, with a peer that waits for
            # us to close, the connection would stay open until a timeout
            if self.producing:
                self.producing = False
                link.unregisterProducer()
            link.loseConnection()

    def abort_if_stuck(self) -> None:
        """After a final reply: a client that does not read would keep the connection (and
        its buffers) for ever, since a close waits for the replies to drain."""
        if self.write_blocked and self.link is not None:
            self.link.abortConnection()

    def stress_changed(self) -> None:
        """A Slot's hook (appliance.limits): the service's stress mode began or ended."""
        if self.deadlines is not None:
            self.deadlines.stress_changed()

    def note_error(self) -> None:
        """Count one error reply; past max_errors() (and not closing yet) too_many_errors()."""
        self.errors += 1
        if self.errors > self.max_errors() and not self.closing:
            self.too_many_errors()

    # ------------------------------------------------------------------ input

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's API)
        if self.closing:
            return
        deadlines = self.deadlines
        if deadlines is not None:
            deadlines.input()
            if deadlines.data_end is not None:
                deadlines.data_received(len(data))
        self.buffer += data
        self.process()

    def process(self) -> None:
        """Handle whatever complete input is buffered, until something asynchronous starts.

        Replies made meanwhile are sent together at the end (a pipelining client's whole
        burst costs one write); a nested call leaves that to the outer one.
        """
        if self.out is not None:
            self._process()
            return
        self.out = []
        try:
            self._process()
        finally:
            self.flush()
            self.out = None

    def _process(self) -> None:
        deadlines = self.deadlines
        while not self.busy and not self.closing and not self.write_blocked and self.buffer:
            if self.in_data():
                if not self.feed_data():
                    return
                if deadlines is not None:
                    deadlines.request()
                continue
            limit = self.line_limit()
            end = self.buffer.find(CRLF)
            if self.skipping:
                if end < 0:
                    self.buffer = self.buffer[-1:]  # keep a CR that may start the CRLF
                    return
                self.buffer = self.buffer[end + 2 :]
                self.skipping = False
                continue
            if end < 0:
                if len(self.buffer) > limit:
                    self.overlong = self.buffer[:OVERLONG_KEPT]
                    self.line_too_long()
                    self.skipping = True
                    self.buffer = self.buffer[-1:]
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            if deadlines is not None:
                deadlines.request()
            if end + 2 > limit:
                self.overlong = line[:OVERLONG_KEPT]
                self.line_too_long()
                continue
            self.line_received(line)
        if len(self.buffer) > MAX_PIPELINED and (self.busy or self.write_blocked):
            # a client pipelining far past what the protocol needs while we wait (for a
            # lookup, or for it to read its replies): stop reading
            if not self.paused:
                self._pause_reading()

    def wait(self, d: defer.Deferred[Any], what: str) -> None:
        """Hold input until d (which sends its own reply) has fired; a failure of d is logged
        and answered by local_error(what)."""
        if d.called and not d.paused and self.out is not None and not self.gathering:
            # answered at once (a map, a memo) inside process(), whose loop goes on
            d.addErrback(self._unexpected, what)
            return
        self.busy = True
        deadlines = self.deadlines
        if deadlines is not None:
            deadlines.hold()

        def resume(result: object) -> None:
            self.end_gather()
            self.busy = False
            if deadlines is not None:
                deadlines.release()
            if self.link is not None and not self.closing:
                if self.paused and not self.write_blocked:
                    self._resume_reading()
                self.process()

        d.addErrback(self._unexpected, what).addBoth(resume)

    def _unexpected(self, failure: Failure, what: str) -> None:
        self.log.failure("{what} for {peer} failed", failure, what=what, peer=self.peer_ip)
        self.local_error(what)
