"""The relay's wire: one outgoing SMTP connection, as a sequence of awaitable steps.

Why not Twisted's `ESMTPClient`: it has no PIPELINING, sends no DSN, SIZE, BODY or SMTPUTF8
parameters, reads the message from a file object on the reactor thread, and folds the per-
recipient replies into one callback; the relay needs each of those. This client is a
`LineReceiver` whose every step (`greet`, `ehlo`, `starttls`, `auth`, `send`, `quit`) returns
a Deferred of the server's reply; `SMTPConnection` below strings them together for a next hop.

Replies are read strictly in order (RFC 2920): each command sent registers one waiter. A reply
that is too long, malformed or unexpected ends the connection with a `ProtocolError`; every
wait has a deadline (`Timeouts`) after which the connection is aborted. After STARTTLS the
line buffer is cleared, so nothing the server sent in plaintext is read as a TLS-era reply.
"""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
)
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance.lineconn import set_no_delay, write_now, write_through_tls

MAX_REPLY_LINE = 2048  # RFC 5321 says 512; be generous, but bounded
MAX_REPLY_LINES = 100


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: the code and its text lines (without the code and separator)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reply as Postfix quotes it: '550 5.1.1 <x>: Recipient address rejected'."""
        return f"{self.code} {' '.join(line.strip() for line in self.lines)}".strip()

    @property
    def ok(self) -> bool:
        """A 2xx: the only success for MAIL, RCPT, RSET and the end of a message (a 3xx
        there is a broken server, not a delivery)."""
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500


class ProtocolError(Exception):
    """The server broke the protocol (garbled or over-long reply); the connection is dropped."""


class ConnectionClosed(Exception):
    """The connection ended while a reply was awaited."""


class Timeout(Exception):
    """No reply within the deadline; the connection was aborted."""


@dataclass(frozen=True)
class Timeouts:
    connect: float = 30.0
    command: float = 300.0
    data: float = 600.0


@dataclass
class Extensions:
    """What EHLO advertised: keywords upper-case, with their parameters."""

    keywords: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, reply: Reply) -> Extensions:
        keywords = {}
        for line in reply.lines[1:]:
            word, _, rest = line.strip().partition(" ")
            if word:
                keywords[word.upper()] = rest.strip()
        return cls(keywords)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self.keywords

    @property
    def auth_mechanisms(self) -> set[str]:
        return {m.upper() for m in self.keywords.get("AUTH", "").split()}

    @property
    def max_size(self) -> int | None:
        value = self.keywords.get("SIZE", "")
        return int(value) if value.isdigit() and int(value) > 0 else None


def stuff(data: bytes, at_line_start: bool) -> tuple[bytes, bool]:
    """Dot-stuff one chunk of CRLF text (RFC 5321 4.5.2); returns it and whether the next
    chunk starts a line. Bare CR and LF are left as they are: the queue holds CRLF lines."""
    if not data:
        return data, at_line_start
    out = data.replace(b"\n.", b"\n..")
    if at_line_start and out[:1] == b".":
        out = b"." + out
    return out, data.endswith(b"\n")


@implementer(IHandshakeListener, IPushProducer)
class SMTPClientProtocol(LineReceiver):
    """The client side of one SMTP connection: commands out, replies matched to waiters."""

    delimiter = b"\r\n"
    MAX_LENGTH = MAX_REPLY_LINE

    def __init__(self, timeouts: Timeouts, clock: object) -> None:
        self.timeouts = timeouts
        self.clock = clock
        self._waiters: deque[tuple[Deferred[Reply], float]] = deque()
        self._lines: list[str] = []
        self._timer: IDelayedCall | None = None
        self._closed: Failure | None = None
        self.connected_d: Deferred[SMTPClientProtocol] = Deferred()
        self.lost: Deferred[None] = Deferred()
        self._write_paused = False
        self._drain_waiters: list[Deferred[None]] = []
        self.tls: str = ""  # "TLSv1.3 TLS_AES_256_GCM_SHA384" once encrypted
        self.tls_error: str = ""

    # -- connection events

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        # each command (and the body after 354) is written when the reply before it came in:
        # without this a write can wait for the server's delayed ACK of the previous one
        set_no_delay(self.transport)
        # the transport tells us when its send buffer is full: a big body waits for it
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.connected_d.callback(self)

    # -- IPushProducer: flow control of what we write

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted API)
        self._write_paused = True

    def resumeProducing(self) -> None:  # noqa: N802 (Twisted API)
        self._write_paused = False
        waiting, self._drain_waiters = self._drain_waiters, []
        for d in waiting:
            d.callback(None)

    def stopProducing(self) -> None:  # noqa: N802 (Twisted API)
        self.resumeProducing()  # the connection is going: nobody waits on it any more

    def drained(self) -> Deferred[None]:
        """Fires once the transport can take more (at once if it can now)."""
        if not self._write_paused or self._closed is not None:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._drain_waiters.append(d)
        return d

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self._cancel_timer()
        error = reason.value
        text = str(error) or type(error).__name__
        if self._closed is None:
            self._closed = Failure(ConnectionClosed(text))
        self.resumeProducing()
        waiters, self._waiters = self._waiters, deque()
        for d, _ in waiters:
            d.errback(self._closed)
        if not self.lost.called:
            self.lost.callback(None)

    def handshakeCompleted(self) -> None:  # noqa: N802 (IHandshakeListener)
        write_through_tls(self.transport)
        try:
            conn = self.transport.getHandle()  # type: ignore[union-attr]
            self.tls = f"{conn.get_protocol_version_name()} {conn.get_cipher_name()}"
        except Exception:
            self.tls = "TLS"

    # -- replies

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 (Twisted API)
        if self._closed is not None:
            # failed (abortConnection does not stop LineReceiver's loop over the lines
            # already read): nothing after a bad line may answer a waiter
            return
        text = line.decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
            self._fail(ProtocolError(f"malformed reply: {text[:80]!r}"))
            return
        self._lines.append(text[4:])
        if len(self._lines) > MAX_REPLY_LINES:
            self._fail(ProtocolError("reply of too many lines"))
            return
        if text[3:4] == "-":
            return
        reply = Reply(int(text[:3]), tuple(self._lines))
        self._lines = []
        if not self._waiters:
            self._fail(ProtocolError(f"unexpected reply: {reply.text[:80]!r}"))
            return
        d, _ = self._waiters.popleft()
        self._cancel_timer()
        if self._waiters:
            self._start_timer(self._waiters[0][1])
        d.callback(reply)

    def lineLengthExceeded(self, line: bytes) -> None:  # noqa: N802 (Twisted API)
        self._fail(ProtocolError("reply line too long"))

    def _fail(self, error: Exception) -> None:
        if self._closed is None:
            self._closed = Failure(error)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _start_timer(self, seconds: float) -> None:
        self._timer = self.clock.callLater(seconds, self._timed_out)  # type: ignore[attr-defined]

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(Timeout("timed out"))

    def expect(self, timeout: float | None = None) -> Deferred[Reply]:
        """A waiter for the next reply not yet claimed."""
        if self._closed is not None:
            return defer.fail(self._closed)
        d: Deferred[Reply] = Deferred()
        seconds = self.timeouts.command if timeout is None else timeout
        self._waiters.append((d, seconds))
        if len(self._waiters) == 1:
            self._start_timer(seconds)
        return d

    # -- commands

    def command(self, line: str, timeout: float | None = None) -> Deferred[Reply]:
        """Send one command line and wait for its reply."""
        d = self.expect(timeout)
        if self._closed is None:
            write_now(self.transport, line.encode("utf-8") + b"\r\n")
        return d

    def commands(
        self, lines: list[str], data: bytes = b"", last_timeout: float | None = None
    ) -> list[Deferred[Reply]]:
        """Several commands in one write (PIPELINING), then data (a BDAT chunk's bytes, which
        go with its command); one waiter each, in order, the last one's for last_timeout."""
        waiters = [
            self.expect(last_timeout if i == len(lines) - 1 else None) for i in range(len(lines))
        ]
        if self._closed is None:
            write_now(
                self.transport, b"".join(line.encode("utf-8") + b"\r\n" for line in lines) + data
            )
        return waiters

    def write_data(self, data: bytes) -> None:
        if self._closed is None:
            write_now(self.transport, data)

    def start_tls(self, creator: IOpenSSLClientConnectionCreator) -> None:
        """Switch to TLS after a 220 to STARTTLS; plaintext already buffered is dropped."""
        self.clearLineBuffer()
        self._lines = []
        self.transport.startTLS(creator)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.transport is not None:
            # unregistered first: TLS holds its close_notify (and the close) while a producer
            # is registered, and a server that waits for our close would keep the connection
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
            self.transport.loseConnection()

    def abort(self) -> None:
        self._fail(ConnectionClosed("closed by us"))

    @property
    def closed(self) -> bool:
        return self._closed is not None


def auth_plain(user: str, password: str) -> str:
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
    return f"AUTH PLAIN {token}"


def auth_login_steps(user: str, password: str) -> list[str]:
    return [base64.b64encode(v.encode()).decode("ascii") for v in (user, password)]
