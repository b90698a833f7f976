"""The byte side of an SMTP session: line framing, replies, and holding input while waiting.

Why our own framing (not twisted.mail.smtp.ESMTP): Twisted's ESMTP executes commands pipelined
before STARTTLS inside TLS, leaves DATA on an over-long line (so the rest of the body runs as
commands), keeps an unbounded line buffer and lacks SIZE/8BITMIME/PIPELINING/
ENHANCEDSTATUSCODES/DSN/SMTPUTF8. Here:
- command lines end in CRLF and are bounded (line_limit()); longer ones are answered 500 and
  skipped up to the next CRLF, the buffer never grows past the limit;
- while DATA is being read the bytes go to feed_data() instead (appliance.smtp.data);
- while an asynchronous step runs (policy lookup, login check, commit) input is held, and a
  client pipelining far past what PIPELINING needs is paused;
- back-pressure: the connection is its transport's producer, so when a client has not read
  more than the transport's buffer of replies (64 KiB) we stop answering until it drains,
  and once MAX_PIPELINED more bytes wait unanswered we stop reading from it too (not at
  once: a TLS layer pauses its producer while its handshake runs, and must go on reading
  to finish it): memory per connection stays bounded whatever the client does;
- replies made while one burst of input is handled go out in one write; a reply never
  carries a control byte (whatever of the client's text a reply quotes is made printable);
- the time limits are appliance.limits.Deadlines' (idle, whole request, greeting, DATA rate),
  on one timer; a client past one gets 421 4.4.2 (and is cut off if it is not reading);
- after max_errors 5xx/421 replies the connection is closed with 421.
The session (appliance.smtp.session) supplies line_received() and the DATA hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from appliance.limits import Deadlines
from appliance.log import printable
from appliance.smtp.address import ReplyError

if TYPE_CHECKING:
    from OpenSSL import SSL
    from twisted.internet.interfaces import IOpenSSLContextFactory, ITransport

    from appliance.smtp.factory import SMTPFactory

CRLF = b"\r\n"
MAX_PIPELINED = 256 * 1024  # bytes buffered while busy before we stop reading


class Transport(Protocol):
    """What a session uses of its transport: ITransport's write/loseConnection/getPeer,
    IPushProducer's pause/resume, ITLSTransport's startTLS and, under TLS, getHandle()
    (no single Twisted interface has them all)."""

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...  # noqa: N802 (Twisted's API)

    def abortConnection(self) -> None: ...  # noqa: N802

    def registerProducer(self, producer: object, streaming: bool) -> None: ...  # noqa: N802

    def getPeer(self) -> object: ...  # noqa: N802

    def pauseProducing(self) -> None: ...  # noqa: N802

    def resumeProducing(self) -> None: ...  # noqa: N802

    def startTLS(self, context_factory: IOpenSSLContextFactory) -> None: ...  # noqa: N802

    def getHandle(self) -> SSL.Connection: ...  # noqa: N802


@implementer(IPushProducer)
class SMTPConnection(protocol.Protocol):
    """CRLF framing with bounded lines, batched replies, waiting on Deferreds, deadlines."""

    log = Logger()

    def __init__(self, factory: SMTPFactory) -> None:
        self.factory = factory
        self.buffer = b""
        self.skipping = False  # discarding an over-long command line up to its CRLF
        self.busy = False  # an asynchronous step is running: hold further commands
        self.paused = False  # reading stopped: too much pipelined while busy
        self.write_blocked = False  # the client is not reading its replies
        self.reading_stopped = False
        self.deadlines: Deadlines | None = None  # set by the session once connected
        self.out: list[bytes] | None = None  # replies held back while process() runs
        self.closing = False
        self.errors = 0
        self.peer_ip = "unknown"  # the client's address, once connected
        self.link: Transport | None = None  # the transport, once connected

    def makeConnection(self, transport: ITransport) -> None:  # noqa: N802 (Twisted's API)
        # self.transport, typed as what we use of it; kept once rather than cast on each use
        self.link = cast(Transport, transport)
        self.link.registerProducer(self, True)
        super().makeConnection(transport)

    # ------------------------------------------------------------------ IPushProducer

    def pauseProducing(self) -> None:  # noqa: N802 (Twisted's API)
        """The transport holds a full buffer of replies the client has not read."""
        self.write_blocked = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.write_blocked = False
        if self.paused and not self.busy:
            self.paused = False
            self._update_reading()
        if not self.closing and self.link is not None:
            self.process()

    def stopProducing(self) -> None:  # noqa: N802
        pass  # the connection is going away: connectionLost cleans up

    def _update_reading(self) -> None:
        link = self.link
        stop = self.paused
        if link is None or stop == self.reading_stopped:
            return
        self.reading_stopped = stop
        if stop:
            link.pauseProducing()
        else:
            link.resumeProducing()

    # ------------------------------------------------------------------ hooks for the session

    def line_received(self, raw: bytes) -> None:
        """One command line, without its CRLF (may contain a bare CR or LF)."""
        raise NotImplementedError

    def in_data(self) -> bool:
        """Whether the message text of DATA is being read (feed_data() takes the bytes)."""
        return False

    def feed_data(self) -> bool:
        """Consume DATA bytes from self.buffer; True once the end marker was seen."""
        raise NotImplementedError

    def line_limit(self) -> int:
        """The longest command line accepted, CRLF included."""
        return self.factory.settings.max_command_line

    # ------------------------------------------------------------------ output

    def utf8_replies(self) -> bool:
        """Whether replies may carry UTF-8 (the transaction asked for SMTPUTF8)."""
        return False

    def send_line(self, line: str) -> None:
        if not line.isascii() or not line.isprintable():
            line = self.clean(line)
        link = self.link
        if link is not None and not self.closing:
            if self.out is not None:  # inside process(): one write for all its replies
                self.out.append(line.encode("utf-8") + CRLF)
            else:
                link.write(line.encode("utf-8") + CRLF)

    def clean(self, line: str) -> str:
        """A reply quoting client text made safe: control bytes (and, without SMTPUTF8,
        anything outside ASCII) shown as '?'."""
        if self.utf8_replies():
            return printable(line, len(line))
        return "".join(c if " " <= c <= "~" else "?" for c in line)

    def flush(self) -> None:
        """Send the replies gathered in process(): one write, one wake-up of the socket."""
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            link = self.link
            if link is not None:
                link.write(data)

    def close_connection(self) -> None:
        self.flush()  # the last reply before the FIN
        self.closing = True
        link = self.link
        if link is not None:
            link.loseConnection()

    def reply(self, code: int, enhanced: str, text: str, close: bool = False) -> None:
        self.send_line(f"{code} {enhanced} {text}")
        if code >= 500 or code in (421,):
            self.count_error(code)
        if close:
            self.close_connection()

    def reply_error(self, e: ReplyError) -> None:
        self.reply(e.code, e.enhanced, e.text)

    def count_error(self, code: int) -> None:
        self.errors += 1
        if self.errors > self.factory.settings.max_errors and not self.closing:
            self.send_line(f"421 4.7.0 {self.factory.settings.hostname} Error: too many errors")
            self.close_connection()

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
        MAIL/RCPT/DATA burst costs one write); a nested call leaves that to the outer one.
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
                    self.reply(500, "5.5.6", "Error: line too long")
                    self.skipping = True
                    self.buffer = self.buffer[-1:]
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            if deadlines is not None:
                deadlines.request()
            if end + 2 > limit:
                self.reply(500, "5.5.6", "Error: line too long")
                continue
            self.line_received(line)
        if len(self.buffer) > MAX_PIPELINED and (self.busy or self.write_blocked):
            # a client pipelining far past what PIPELINING needs while we wait (for a lookup,
            # or for it to read its replies): stop reading
            if not self.paused:
                self.paused = True
                self._update_reading()

    def wait(self, d: defer.Deferred[Any], what: str) -> None:
        """Hold input until d (which sends its own reply) has fired."""
        self.busy = True
        deadlines = self.deadlines
        if deadlines is not None:
            deadlines.hold()

        def resume(result: object) -> None:
            self.busy = False
            if deadlines is not None:
                deadlines.release()
            if self.link is not None and not self.closing:
                if self.paused and not self.write_blocked:
                    self.paused = False
                    self._update_reading()
                self.process()

        def unexpected(failure: Failure) -> None:
            self.log.failure("{what} for {peer} failed", failure, what=what, peer=self.peer_ip)
            self.reply(451, "4.3.0", "Error: local error in processing")

        d.addErrback(unexpected).addBoth(resume)
