"""The relay's SMTP client on the wire: replies, deadlines, dot-stuffing.

Most tests talk to a scripted server on a real loopback socket (`ScriptedFactory` below, which
test_session.py and test_relay.py use too): it answers what its `Script` says and records every
byte it got, so what the client sent is checked independently of the client's own code.
Deadlines run on a `task.Clock` handed to the protocol while the socket stays real.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from appliance.delivery.smtp_client import (
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    ConnectionClosed,
    Extensions,
    ProtocolError,
    Reply,
    SMTPClientProtocol,
    Timeout,
    Timeouts,
    auth_login_steps,
    auth_plain,
    stuff,
)

DEFAULTS = Timeouts()
WAIT = 10.0  # upper bound for any one event a test waits for (a hang fails, it does not block)

# ---------------------------------------------------------------------------- the harness


def within(d: Deferred[Any], seconds: float = WAIT) -> Deferred[Any]:
    """d, failing with TimeoutError if it has not fired in time (no test hangs on a bug)."""
    return d.addTimeout(seconds, reactor)


Reply_ = str | bytes | Deferred | None  # what a script gives: text, raw bytes, later, or nothing


class Script:
    """What a scripted server answers. Replies are text ("\\n" separates the lines of a
    multi-line reply), raw bytes sent as they are, a Deferred of either (answered when it
    fires, later replies queue behind it), or None (never answered)."""

    def __init__(self, **kw: Any) -> None:
        self.greeting: Reply_ | Callable[[ScriptedServer], Reply_] = "220 mx.dest.test ESMTP"
        self.extensions: list[str] = [
            "PIPELINING",
            "SIZE 10485760",
            "8BITMIME",
            "DSN",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
        self.ehlo: Reply_ = ""  # "" answers with the extensions; anything else instead
        self.helo: Reply_ = "250 mx.dest.test"
        self.mail: Reply_ = "250 2.1.0 Ok"
        self.rcpt: dict[str, Reply_] = {}  # by address; others get 250 2.1.5 Ok
        self.data: Reply_ = ""  # "": 354 if a recipient was accepted, else 554 5.5.1
        self.final: Reply_ | Callable[[ScriptedServer], Reply_] = "250 2.0.0 Ok: queued as Q{n}"
        self.rset: Reply_ = "250 2.0.0 Ok"
        self.auth: Reply_ = "235 2.7.0 Authentication successful"
        self.tls: Any = None  # server TLS options: offer STARTTLS and do it
        self.starttls: Reply_ = "220 2.0.0 Ready to start TLS"
        self.after_starttls: bytes = b""  # plaintext sent behind the 220, in the same write
        self.extensions_tls: list[str] | None = None  # EHLO keywords once encrypted
        self.close_after: set[str] = set()  # verbs after whose reply the server hangs up
        for key, value in kw.items():
            if not hasattr(self, key):
                raise TypeError(key)
            setattr(self, key, value)


class ScriptedServer(Protocol):
    """One connection to the scripted server: answers the script, records what came in."""

    factory: ScriptedFactory

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        f = self.factory
        self.peer = self.transport.getPeer().host  # type: ignore[union-attr]
        self.segments: list[bytes] = []  # each dataReceived, as it came
        self.commands: list[str] = []  # command lines (not message text)
        self.segment_of: list[int] = []  # for each command, the segment it came in
        self.answered_before: list[int] = []  # for each command, replies sent when it came
        self.replies_at_arrival = 0
        self.messages: list[bytes] = []  # message text as on the wire (stuffed, no final dot)
        self.replies_sent = 0
        self.buffer = b""
        self.in_data = False
        self.chunk_left, self.chunk_last, self.chunk_text = 0, False, b""  # BDAT being read
        self.bdat: list[str] = []  # BDAT arguments, in order
        self.in_auth = False
        self.tls = False
        self.accepted = 0
        self.mail_ok = False
        self.closed: Deferred[None] = Deferred()
        self._tail: Deferred[Any] = defer.succeed(None)
        f.connections.append(self)
        f.current += 1
        f.peak = max(f.peak, f.current)
        greeting = f.script.greeting
        if callable(greeting):
            greeting = greeting(self)
        self.answer(greeting, close=isinstance(greeting, str) and greeting[:1] in "45")
        f.changed()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 (Twisted API)
        self.factory.current -= 1
        self.closed.callback(None)
        self.factory.changed()

    # -- replies, in order even when some come later

    def send(self, reply: str | bytes) -> None:
        data = reply if isinstance(reply, bytes) else reply.replace("\n", "\r\n").encode() + b"\r\n"
        self.replies_sent += 1
        self.transport.write(data)  # type: ignore[union-attr]

    def answer(self, reply: Reply_, close: bool = False, then: Callable[[], None] | None = None):
        def write(value: Any) -> None:
            if value is None or not self.transport.connected:  # type: ignore[union-attr]
                return
            self.send(value)
            if then is not None:
                then()
            if close:
                self.transport.loseConnection()  # type: ignore[union-attr]

        if reply is None:
            reply = Deferred()  # never answered: hold everything behind it too
        self._tail.addCallback(lambda _: reply).addCallback(write)

    # -- input

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        self.segments.append(data)
        self.replies_at_arrival = self.replies_sent
        self.buffer += data
        while self.buffer:
            if self.chunk_left:
                part = self.buffer[: self.chunk_left]
                self.buffer = self.buffer[len(part) :]
                self.chunk_text += part
                self.chunk_left -= len(part)
                if not self.chunk_left:
                    self.end_of_chunk()
                continue
            if self.in_data:
                framed = b"\r\n" + self.buffer
                end = framed.find(b"\r\n.\r\n")
                if end < 0:
                    break
                self.buffer = framed[end + 5 :]
                self.in_data = False
                self.end_of_message(framed[2 : end + 2])
                continue
            line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                break
            self.buffer = rest
            self.line_received(line.decode("utf-8", "replace"))
            if self.transport.disconnecting:  # type: ignore[union-attr]
                break

    def end_of_message(self, text: bytes) -> None:
        self.messages.append(text)
        self.accepted, self.mail_ok = 0, False
        final = self.factory.script.final
        if callable(final):
            final = final(self)
        if isinstance(final, str):
            final = final.format(n=sum(len(c.messages) for c in self.factory.connections))
        self.answer(final, close="." in self.factory.script.close_after)
        self.factory.changed()

    def end_of_chunk(self) -> None:
        if not self.chunk_last:
            self.answer(f"250 2.0.0 Ok: {len(self.chunk_text)} octets received")
        elif not self.mail_ok:
            self.answer("503 5.5.1 Error: need MAIL command")
        elif not self.accepted:
            self.answer("554 5.5.1 Error: no valid recipients")
        else:
            text, self.chunk_text = self.chunk_text, b""
            self.end_of_message(text)

    def line_received(self, line: str) -> None:
        s = self.factory.script
        self.commands.append(line)
        self.segment_of.append(len(self.segments) - 1)
        self.answered_before.append(self.replies_at_arrival)
        self.factory.changed()
        if self.in_auth:  # an AUTH LOGIN step: the user name, then the password
            self.login_steps += 1
            self.in_auth = self.login_steps < 2
            self.answer("334 UGFzc3dvcmQ6" if self.in_auth else s.auth)
            return
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        close = verb in s.close_after
        if verb == "EHLO":
            if s.ehlo:
                self.answer(s.ehlo, close)
                return
            words = s.extensions_tls if self.tls and s.extensions_tls is not None else s.extensions
            words = list(words)
            if s.tls is not None and not self.tls:
                words.append("STARTTLS")
            lines = ["mx.dest.test", *words]
            text = "\n".join(
                f"250{'-' if i < len(lines) - 1 else ' '}{w}" for i, w in enumerate(lines)
            )
            self.answer(text, close)
        elif verb == "HELO":
            self.answer(s.helo, close)
        elif verb == "STARTTLS":
            self.buffer = b""  # RFC 3207: nothing pipelined behind STARTTLS is read
            reply = s.starttls
            if isinstance(reply, str) and reply.startswith("220"):
                data = reply.encode() + b"\r\n" + s.after_starttls
                self.answer(data, close, then=self.start_tls)
            else:
                self.answer(reply, close)
        elif verb == "AUTH":
            if arg.upper() == "LOGIN":
                self.in_auth, self.login_steps = True, 0
                self.answer("334 VXNlcm5hbWU6")
            else:
                self.answer(s.auth, close)
        elif verb == "MAIL":
            self.accepted = 0
            refused = isinstance(s.mail, bytes) or (isinstance(s.mail, str) and s.mail[:1] in "45")
            self.mail_ok = not refused
            self.answer(s.mail, close)
        elif verb == "RCPT":
            address = arg.partition("<")[2].partition(">")[0]
            reply = s.rcpt.get(address, "250 2.1.5 Ok")
            if not self.mail_ok:
                reply = "503 5.5.1 Error: need MAIL command"
            if isinstance(reply, str) and reply.startswith("2"):
                self.accepted += 1
            self.answer(reply, close)
        elif verb == "DATA":
            reply = s.data
            if reply == "":
                reply = (
                    "354 End data with <CR><LF>.<CR><LF>"
                    if self.accepted
                    else "554 5.5.1 Error: no valid recipients"
                )
            if isinstance(reply, str) and reply.startswith("354"):
                self.in_data = True
            self.answer(reply, close)
        elif verb == "BDAT":
            size, _, last = arg.partition(" ")
            self.bdat.append(arg)
            self.chunk_left, self.chunk_last = int(size), last.upper() == "LAST"
            if not self.chunk_left:
                self.end_of_chunk()
        elif verb == "RSET":
            self.accepted, self.mail_ok = 0, False
            self.answer(s.rset, close)
        elif verb == "QUIT":
            self.answer("221 2.0.0 Bye", close=True)
        elif verb == "NOOP":
            self.answer("250 2.0.0 Ok", close)
        else:
            self.answer("502 5.5.2 Error: command not recognized", close)

    def start_tls(self) -> None:
        self.tls = True
        self.transport.startTLS(self.factory.script.tls)  # type: ignore[union-attr]

    # -- what the tests look at

    def verbs(self) -> list[str]:
        return [c.partition(" ")[0].upper() for c in self.commands]

    def line(self, verb: str) -> str:
        """The first command line with that verb."""
        return next(c for c in self.commands if c.upper().startswith(verb))


class ScriptedFactory(Factory):
    protocol = ScriptedServer

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[ScriptedServer] = []
        self.current = 0  # connections open now
        self.peak = 0  # most connections open at once
        self.port = 0
        self.listener: Any = None
        self._waits: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def changed(self) -> None:
        for entry in list(self._waits):
            predicate, d = entry
            if entry in self._waits and predicate():
                self._waits.remove(entry)
                d.callback(None)

    def when(self, predicate: Callable[[], bool]) -> Deferred[None]:
        """Fires once predicate() holds (checked on every connection, line and message)."""
        if predicate():
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waits.append((predicate, d))
        return within(d)

    @property
    def messages(self) -> list[bytes]:
        return [m for c in self.connections for m in c.messages]


class Servers:
    """Scripted servers on loopback for one test; all closed at its end."""

    def __init__(self) -> None:
        self.factories: list[ScriptedFactory] = []

    def listen(self, script: Script | None = None, interface: str = "127.0.0.1") -> ScriptedFactory:
        f = ScriptedFactory(script or Script())
        f.listener = reactor.listenTCP(0, f, interface=interface)
        f.port = f.listener.getHost().port
        self.factories.append(f)
        return f

    async def close(self) -> None:
        for f in self.factories:
            await f.listener.stopListening()
            for c in f.connections:
                if c.transport.connected:
                    c.transport.abortConnection()
            await within(defer.gatherResults([c.closed for c in f.connections]))


@pytest_twisted.async_yield_fixture(name="servers")
async def servers_fixture():
    made = Servers()
    yield made
    await made.close()


class ClockedReactor:
    """The real reactor for sockets and threads, with every timer the code sets on a Clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._waits: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def callLater(self, *args: Any, **kw: Any) -> Any:  # noqa: N802 (Twisted API)
        call = self.clock.callLater(*args, **kw)
        for entry in list(self._waits):
            if entry[0]():
                self._waits.remove(entry)
                reactor.callLater(0, entry[1].callback, None)  # off the code's own stack
        return call

    def when(self, predicate: Callable[[], bool]) -> Deferred[None]:
        """Fires once predicate() holds, checked whenever the code sets a timer."""
        if predicate():
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waits.append((predicate, d))
        return within(d)

    def seconds(self) -> float:
        return self.clock.seconds()

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


async def connect(f: ScriptedFactory, clock: Clock, timeouts: Timeouts = DEFAULTS):
    """An SMTPClientProtocol with its deadlines on clock, connected to f over loopback."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", f.port)
    p = await within(connectProtocol(endpoint, SMTPClientProtocol(timeouts, clock)))
    return p


async def failure_of(d: Deferred[Any]) -> BaseException:
    """The exception d fails with (the test fails if it succeeds instead)."""
    try:
        result = await within(d)
    except Exception as e:
        return e
    raise AssertionError(f"expected a failure, got {result!r}")


async def dropped(p: SMTPClientProtocol, server: ScriptedServer) -> None:
    """Both ends saw the connection end."""
    await within(p.lost)
    await within(server.closed)
    assert p.closed


# ---------------------------------------------------------------------------- replies


@pytest_twisted.ensureDeferred
async def test_reply_multiline_collected_in_order(servers: Servers) -> None:
    """A multi-line reply is one Reply: the code and every line's text, in order."""
    f = servers.listen(Script(greeting="220-mx.dest.test first\n220-second line\n220 third"))
    p = await connect(f, Clock())
    greeting = await within(p.expect())
    assert greeting == Reply(220, ("mx.dest.test first", "second line", "third"))
    assert greeting.text == "220 mx.dest.test first second line third"
    reply = await within(p.command("EHLO client.test"))
    assert reply.code == 250
    assert Extensions.parse(reply).keywords["SIZE"] == "10485760"
    assert "PIPELINING" in Extensions.parse(reply)
    p.close()
    await within(p.lost)


@pytest_twisted.ensureDeferred
async def test_reply_pipelined_replies_matched_in_order(servers: Servers) -> None:
    """Commands written at once get their replies in order, one waiter each."""
    f = servers.listen(Script(mail="250 2.1.0 sender ok", rcpt={"b@x.test": "550 5.1.1 no b"}))
    p = await connect(f, Clock())
    await within(p.expect())
    waiters = p.commands(["MAIL FROM:<a@x.test>", "RCPT TO:<a@x.test>", "RCPT TO:<b@x.test>"])
    replies = [await within(w) for w in waiters]
    assert [r.text for r in replies] == ["250 2.1.0 sender ok", "250 2.1.5 Ok", "550 5.1.1 no b"]
    server = f.connections[0]
    assert server.segment_of[0] == server.segment_of[1] == server.segment_of[2]
    p.close()
    await within(p.lost)


@pytest.mark.parametrize(
    "line",
    [b"hello there", b"25", b"2500 four digits", b"25O letter", b"250_under", b"", b" 250 x"],
    ids=["words", "short", "four-digits", "letter", "separator", "empty", "leading-space"],
)
@pytest_twisted.ensureDeferred
async def test_reply_malformed_protocol_error_connection_dropped(
    servers: Servers, line: bytes
) -> None:
    """A reply line that is not <3 digits>[ -]text fails the waiter with ProtocolError and
    the connection is dropped."""
    f = servers.listen(Script(greeting=line + b"\r\n"))
    p = await connect(f, Clock())
    error = await failure_of(p.expect())
    assert isinstance(error, ProtocolError)
    assert "malformed reply" in str(error)
    await dropped(p, f.connections[0])
    assert isinstance(await failure_of(p.command("NOOP")), ProtocolError)


@pytest_twisted.ensureDeferred
async def test_reply_malformed_then_good_line_in_same_segment_not_taken(servers: Servers) -> None:
    """A good-looking line right behind a malformed one (same segment) is not read as the
    reply: the waiter fails with ProtocolError, never succeeds."""
    f = servers.listen(Script(ehlo=b"garbage\r\n250 mx.dest.test\r\n"))
    p = await connect(f, Clock())
    await within(p.expect())
    error = await failure_of(p.command("EHLO client.test"))
    assert isinstance(error, ProtocolError)
    await dropped(p, f.connections[0])


@pytest_twisted.ensureDeferred
async def test_reply_line_too_long_protocol_error(servers: Servers) -> None:
    """A reply line longer than MAX_REPLY_LINE is a ProtocolError; the connection drops."""
    f = servers.listen(Script(greeting="220 " + "x" * MAX_REPLY_LINE))
    p = await connect(f, Clock())
    error = await failure_of(p.expect())
    assert isinstance(error, ProtocolError) and "too long" in str(error)
    await dropped(p, f.connections[0])


@pytest_twisted.ensureDeferred
async def test_reply_endless_line_without_crlf_protocol_error(servers: Servers) -> None:
    """Bytes without a line end past MAX_REPLY_LINE are a ProtocolError too (not buffered on)."""
    f = servers.listen(Script(greeting=b"220 " + b"y" * (3 * MAX_REPLY_LINE)))
    p = await connect(f, Clock())
    error = await failure_of(p.expect())
    assert isinstance(error, ProtocolError) and "too long" in str(error)
    await dropped(p, f.connections[0])


@pytest_twisted.ensureDeferred
async def test_reply_too_many_lines_protocol_error(servers: Servers) -> None:
    """A reply of more than MAX_REPLY_LINES lines is a ProtocolError, even if it ends well."""
    lines = "\n".join(["250-x"] * (MAX_REPLY_LINES + 5) + ["250 end"])
    f = servers.listen(Script(greeting=lines))
    p = await connect(f, Clock())
    error = await failure_of(p.expect())
    assert isinstance(error, ProtocolError) and "too many lines" in str(error)
    await dropped(p, f.connections[0])


@pytest_twisted.ensureDeferred
async def test_reply_unexpected_protocol_error_connection_dropped(servers: Servers) -> None:
    """A reply nobody waits for (the server speaks out of turn) ends the connection with a
    ProtocolError; later commands fail with it at once."""
    f = servers.listen()
    p = await connect(f, Clock())
    await within(p.expect())
    f.connections[0].send("250 2.0.0 surprise")
    await dropped(p, f.connections[0])
    error = await failure_of(p.command("NOOP"))
    assert isinstance(error, ProtocolError) and "unexpected reply" in str(error)


# ---------------------------------------------------------------------------- deadlines, loss


@pytest_twisted.ensureDeferred
async def test_timeout_no_greeting_aborts_after_command_timeout(servers: Servers) -> None:
    """No greeting: nothing happens until the command timeout, then Timeout and the
    connection is aborted."""
    f = servers.listen(Script(greeting=None))
    clock = Clock()
    p = await connect(f, clock, Timeouts(command=300))
    d = p.expect()
    clock.advance(299.9)
    assert not d.called and not p.closed
    clock.advance(0.1)
    assert isinstance(await failure_of(d), Timeout)
    await dropped(p, f.connections[0])


@pytest_twisted.ensureDeferred
async def test_timeout_per_command_deadline(servers: Servers) -> None:
    """A command's own deadline replaces the default one."""
    f = servers.listen(Script(helo=None))
    clock = Clock()
    p = await connect(f, clock)
    await within(p.expect())
    d = p.command("HELO client.test", 5.0)
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.1)
    assert isinstance(await failure_of(d), Timeout)
    await dropped(p, f.connections[0])


@pytest_twisted.ensureDeferred
async def test_timeout_restarts_for_each_pipelined_reply(servers: Servers) -> None:
    """Pipelined waiters each get a full deadline, counted from the previous reply."""
    held: Deferred[str] = Deferred()
    f = servers.listen(Script(mail=held, rcpt={"b@x.test": None}))
    clock = Clock()
    p = await connect(f, clock, Timeouts(command=300))
    await within(p.expect())
    mail, rcpt = p.commands(["MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>"])
    await f.when(lambda: len(f.connections[0].commands) == 2)
    clock.advance(200)
    held.callback("250 2.1.0 Ok")
    assert (await within(mail)).code == 250
    clock.advance(299)
    assert not rcpt.called
    clock.advance(1)
    assert isinstance(await failure_of(rcpt), Timeout)
    await dropped(p, f.connections[0])


@pytest_twisted.ensureDeferred
async def test_timeout_cancelled_by_reply(servers: Servers) -> None:
    """Once the reply came, its deadline is gone: advancing the clock aborts nothing."""
    f = servers.listen()
    clock = Clock()
    p = await connect(f, clock)
    await within(p.expect())
    assert (await within(p.command("NOOP"))).code == 250
    assert clock.getDelayedCalls() == []
    clock.advance(10_000)
    assert not p.closed
    p.close()
    await within(p.lost)


@pytest_twisted.ensureDeferred
async def test_connection_lost_while_waiting_fails_every_waiter(servers: Servers) -> None:
    """The server hanging up fails each waiting command with ConnectionClosed."""
    f = servers.listen(Script(mail=None))
    p = await connect(f, Clock())
    await within(p.expect())
    waiters = p.commands(["MAIL FROM:<a@x.test>", "RCPT TO:<b@x.test>", "DATA"])
    await f.when(lambda: len(f.connections[0].commands) == 3)
    f.connections[0].transport.loseConnection()
    for w in waiters:
        assert isinstance(await failure_of(w), ConnectionClosed)
    await within(p.lost)
    assert p.closed
    assert isinstance(await failure_of(p.expect()), ConnectionClosed)


@pytest_twisted.ensureDeferred
async def test_abort_by_us_fails_waiters(servers: Servers) -> None:
    """abort() ends the connection at once; waiters fail with ConnectionClosed."""
    f = servers.listen(Script(helo=None))
    p = await connect(f, Clock())
    await within(p.expect())
    d = p.command("HELO client.test")
    p.abort()
    error = await failure_of(d)
    assert isinstance(error, ConnectionClosed) and "closed by us" in str(error)
    await dropped(p, f.connections[0])


# ---------------------------------------------------------------------------- dot-stuffing


def stuff_chunks(chunks: list[bytes]) -> bytes:
    out, at_start = [], True
    for chunk in chunks:
        data, at_start = stuff(chunk, at_start)
        out.append(data)
    return b"".join(out)


def test_stuff_line_starting_with_dot_doubled() -> None:
    """Every line that starts with '.' gets one more (RFC 5321 4.5.2); others are untouched."""
    assert stuff(b".first\r\nmid.dle\r\n.\r\n..two\r\n", True) == (
        b"..first\r\nmid.dle\r\n..\r\n...two\r\n",
        True,
    )


def test_stuff_chunk_not_at_line_start_keeps_leading_dot() -> None:
    """A chunk that continues a line does not get its leading '.' doubled."""
    assert stuff(b".x\r\n", False) == (b".x\r\n", True)
    assert stuff(b"abc", True) == (b"abc", False)


def test_stuff_dot_line_split_after_lf() -> None:
    """A chunk ending in LF makes the next chunk's leading '.' a line start."""
    assert stuff_chunks([b"a\r\n", b".b\r\n"]) == b"a\r\n..b\r\n"


def test_stuff_chunk_ending_in_cr() -> None:
    """CR at a chunk's end, LF and '.' at the next one's start: still stuffed once."""
    first, at_start = stuff(b"a\r", True)
    assert (first, at_start) == (b"a\r", False)
    assert stuff(b"\n.b\r\n", at_start) == (b"\n..b\r\n", True)


def test_stuff_bare_cr_before_dot_not_a_line_start() -> None:
    """A dot after a bare CR is not at a line start (the queue holds CRLF lines)."""
    assert stuff_chunks([b"a\r", b".b"]) == b"a\r.b"


def test_stuff_empty_chunk_keeps_state() -> None:
    """An empty chunk changes nothing, not even whether a line starts next."""
    assert stuff(b"", True) == (b"", True)
    assert stuff(b"", False) == (b"", False)
    assert stuff_chunks([b"a\r\n", b"", b".b"]) == b"a\r\n..b"


def test_stuff_every_split_same_as_whole() -> None:
    """However a body is cut into chunks (every one and two cut points), stuffing the chunks
    gives the bytes of stuffing it whole; and no line of the result is a lone '.'."""
    body = b".a\r\n..\r\n.\r\nx.y\r\n\r\n.\r\n.end"
    whole = stuff(body, True)[0]
    assert whole == b"..a\r\n...\r\n..\r\nx.y\r\n\r\n..\r\n..end"
    for i, j in itertools.combinations(range(len(body) + 1), 2):
        assert stuff_chunks([body[:i], body[i:j], body[j:]]) == whole, (i, j)
    assert b"\r\n.\r\n" not in b"\r\n" + whole


# ---------------------------------------------------------------------------- small parts


def test_reply_ok_only_2xx_permanent_5xx() -> None:
    """ok is a 2xx (what MAIL, RCPT, RSET and the end of a message must get: a 3xx there
    is no success), permanent a 5xx."""
    assert Reply(250, ("Ok",)).ok and Reply(251, ("forwarded",)).ok
    assert not Reply(354, ("go",)).ok
    assert not Reply(450, ("later",)).ok and not Reply(450, ("later",)).permanent
    assert Reply(550, ("no",)).permanent


def test_extensions_parse_keywords_size_auth() -> None:
    """EHLO keywords upper-cased with their parameters; SIZE and AUTH read from them."""
    ext = Extensions.parse(
        Reply(250, ("mx.dest.test greets you", "size 1000", "auth plain Login", "8bitmime"))
    )
    assert "SIZE" in ext and "8BITMIME" in ext and "PIPELINING" not in ext
    assert ext.max_size == 1000
    assert ext.auth_mechanisms == {"PLAIN", "LOGIN"}
    assert Extensions.parse(Reply(250, ("mx", "SIZE"))).max_size is None
    assert Extensions.parse(Reply(250, ("mx", "SIZE 0"))).max_size is None
    assert Extensions.parse(Reply(250, ("mx only",))).keywords == {}


def test_auth_encodings() -> None:
    """AUTH PLAIN is base64 of NUL user NUL password; LOGIN sends user then password."""
    assert auth_plain("user1@example.test", "secret") == (
        "AUTH PLAIN AHVzZXIxQGV4YW1wbGUudGVzdABzZWNyZXQ="
    )
    assert auth_login_steps("user1@example.test", "secret") == [
        "dXNlcjFAZXhhbXBsZS50ZXN0",
        "c2VjcmV0",
    ]


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
