"""Relay sessions to a next hop over real loopback sockets: the replies to MAIL, RCPT, DATA
and the end of the message, pipelined or not, and the per-recipient results they make.

The next hop is either the scripted server of test_smtp_client.py (to provoke each reply and
check the bytes that arrived) or our own SMTP server (SMTPFactory with the in-memory sink of
tests/smtp), for what a real peer must accept: STARTTLS with a certificate from our CA, AUTH
against the authenticator, the message as stored. The helpers and the `ours` fixture here are
shared with test_session_message.py, test_session_open.py and test_relay.py.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from appliance.delivery.routing import Destination, NextHop
from appliance.delivery.session import HopsFailed, Session, SessionSettings, open_session
from appliance.delivery.smtp_client import Timeouts
from appliance.interfaces import (
    Envelope,
    Outcome,
    QueuedMessage,
    Recipient,
    RecipientResult,
)
from appliance.log import mail_logger
from appliance.smtp.factory import SMTPFactory
from appliance.smtp.settings import MTA, SMTPSettings
from tests.delivery.test_smtp_client import (
    ClockedReactor,
    Script,
    ScriptedFactory,
    Servers,
    servers_fixture,  # noqa: F401 (the servers fixture)
    within,
)
from tests.smtp.conftest import LabPolicy, MemoryAuthenticator, MemorySink

HOST = "mx.dest.test"
BODY = b"Subject: test\r\nFrom: <sender@origin.test>\r\n\r\nHello.\r\n.dotted line\r\nBye.\r\n"

# ---------------------------------------------------------------------------- helpers


def hop(server: ScriptedFactory | int, host: str = HOST, ip: str = "127.0.0.1") -> NextHop:
    port = server if isinstance(server, int) else server.port
    return NextHop(host, ip, port, 10)


def dest(*hops: NextHop, smarthost: bool = False) -> Destination:
    return Destination(HOST, hops, smarthost)


def settings(**kw: Any) -> SessionSettings:
    kw.setdefault("helo", "relay.origin.test")
    return SessionSettings(**kw)


def message(
    *rcpts: str | Recipient,
    mail_from: str = "sender@origin.test",
    size: int | None = None,
    text: bytes = BODY,
    **env: Any,
) -> QueuedMessage:
    recipients = tuple(r if isinstance(r, Recipient) else Recipient(r, remote=True) for r in rcpts)
    envelope = Envelope(mail_from, recipients, "192.0.2.1", "client.origin.test", **env)
    return QueuedMessage("4F2A1B3C", envelope, 0.0, len(text) if size is None else size)


def read_chunk(chunks: Iterator[bytes]) -> defer.Deferred[bytes | None]:
    return defer.succeed(next(chunks, None))


async def open_(destination: Destination, s: SessionSettings | None = None, r: Any = reactor):
    session = await within(open_session(r, destination, s or settings(), read_chunk))
    assert isinstance(session, Session)
    return session


async def hops_failed(destination: Destination, s: SessionSettings | None = None) -> HopsFailed:
    try:
        session = await within(open_session(reactor, destination, s or settings(), read_chunk))
    except HopsFailed as e:
        return e
    session.abort()
    raise AssertionError(f"expected HopsFailed, got a session with {session.hop}")


async def transfer(
    session: Session,
    msg: QueuedMessage,
    rcpts: list[str] | None = None,
    chunks: list[bytes] | None = None,
) -> list[RecipientResult]:
    if rcpts is None:
        rcpts = [r.address for r in msg.envelope.recipients]
    parts = chunks if chunks is not None else [BODY]
    head, rest = (parts[0], iter(parts[1:])) if parts else (b"", iter(()))
    return await within(session.transfer(msg, rcpts, head, rest))


async def quit_(session: Session, server: ScriptedFactory | None = None) -> None:
    await within(session.quit())
    if server is not None:
        await within(server.connections[-1].closed)


def said(reply: str, stage: str) -> str:
    """Postfix's text for a refusal (it names the host and address, not the port)."""
    return f"host {HOST}[127.0.0.1] said: {reply} (in reply to {stage} command)"


def relay_of(server: ScriptedFactory) -> str:
    return f"{HOST}[127.0.0.1]:{server.port}"


NO_PIPELINING = ["SIZE 10485760", "8BITMIME", "DSN", "SMTPUTF8", "ENHANCEDSTATUSCODES"]


# ---------------------------------------------------------------------------- our own server


class OurServer:
    def __init__(self, factory: SMTPFactory, sink: MemorySink, port: int) -> None:
        self.factory, self.sink, self.port = factory, sink, port
        self.sessions: list[Any] = []
        self.policy: LabPolicy = LabPolicy()


@pytest_twisted.async_yield_fixture(name="ours")
async def ours_fixture():
    """start(mode=MTA, tls=None, **SMTPSettings) -> OurServer listening on 127.0.0.1."""
    started: list[tuple[OurServer, Any]] = []

    def start(mode: Any = MTA, tls: Any = None, **kw: Any) -> OurServer:
        sink = MemorySink()
        policy = LabPolicy()
        factory = SMTPFactory(
            SMTPSettings(hostname="mail.example.test", **kw),
            mode,
            sink=sink,
            policy=policy,
            authenticator=MemoryAuthenticator(),
            tls=tls,
            throttle=None,
            events=mail_logger("smtpd", lambda e: None),
            reactor=reactor,
        )
        server = OurServer(factory, sink, 0)
        server.policy = policy
        build = factory.buildProtocol

        def recording(addr: Any) -> Any:
            p = build(addr)
            server.sessions.append(p)
            return p

        factory.buildProtocol = recording  # type: ignore[method-assign]
        listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
        server.port = listener.getHost().port
        started.append((server, listener))
        return server

    yield start
    for server, listener in started:
        await listener.stopListening()
        for p in server.sessions:
            transport = getattr(p, "transport", None)
            if transport is not None and transport.connected:
                transport.abortConnection()


# ---------------------------------------------------------------------------- pipelining


@pytest_twisted.ensureDeferred
async def test_transfer_pipelining_offered_mail_rcpts_data_in_one_write(servers: Servers) -> None:
    """With PIPELINING, MAIL, every RCPT and DATA reach the server in one segment, before it
    answered any of them; the message follows the 354."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    results = await transfer(session, message("a@dest.test", "b@dest.test"))
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    server = f.connections[0]
    start = server.verbs().index("MAIL")
    assert server.verbs()[start : start + 4] == ["MAIL", "RCPT", "RCPT", "DATA"]
    batch = range(start, start + 4)
    assert len({server.segment_of[i] for i in batch}) == 1
    assert len({server.answered_before[i] for i in batch}) == 1
    assert server.messages == [BODY.replace(b"\r\n.dotted", b"\r\n..dotted")]
    await quit_(session, f)
    assert server.verbs()[-1] == "QUIT"


@pytest_twisted.ensureDeferred
async def test_transfer_no_pipelining_waits_for_each_reply(servers: Servers) -> None:
    """Without PIPELINING each command goes out only after the previous one's reply."""
    f = servers.listen(Script(extensions=NO_PIPELINING))
    session = await open_(dest(hop(f)))
    results = await transfer(session, message("a@dest.test", "b@dest.test"))
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    server = f.connections[0]
    start = server.verbs().index("MAIL")
    assert server.verbs()[start:] == ["MAIL", "RCPT", "RCPT", "DATA"]
    answered = server.answered_before[start:]
    assert answered == list(range(answered[0], answered[0] + 4))
    assert len(set(server.segment_of[start:])) == 4
    await quit_(session, f)


# ---------------------------------------------------------------------------- per-recipient


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
@pytest_twisted.ensureDeferred
async def test_transfer_per_recipient_results_postfix_text(
    servers: Servers, pipelining: bool
) -> None:
    """2xx is SENT with the final reply, 4xx DEFERRED, 5xx BOUNCED, each quoted the way
    Postfix does, with reply= verbatim and relay= host[ip]:port."""
    rcpt = {
        "later@dest.test": "450 4.2.1 <later@dest.test>: Recipient address rejected: try later",
        "gone@dest.test": "550 5.1.1 <gone@dest.test>: Recipient address rejected: User unknown",
    }
    extensions = Script().extensions if pipelining else NO_PIPELINING
    f = servers.listen(Script(rcpt=rcpt, extensions=extensions, final="250 2.0.0 Ok: queued as 7"))
    session = await open_(dest(hop(f)))
    msg = message("ok@dest.test", "later@dest.test", "gone@dest.test")
    ok, later, gone = await transfer(session, msg)
    assert ok == RecipientResult(
        "ok@dest.test",
        Outcome.SENT,
        "250 2.0.0 Ok: queued as 7",
        relay_of(f),
        reply="250 2.0.0 Ok: queued as 7",
    )
    assert later.outcome is Outcome.DEFERRED
    assert later.text == said(rcpt["later@dest.test"], "RCPT TO")
    assert later.reply == rcpt["later@dest.test"]
    assert gone.outcome is Outcome.BOUNCED
    assert gone.text == (
        f"host {HOST}[127.0.0.1] said: 550 5.1.1 <gone@dest.test>: Recipient address rejected:"
        " User unknown (in reply to RCPT TO command)"
    )
    assert gone.reply == rcpt["gone@dest.test"] and gone.relay == relay_of(f)
    assert len(f.messages) == 1
    await quit_(session, f)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
@pytest_twisted.ensureDeferred
async def test_transfer_all_refused_no_message_then_rset(
    servers: Servers, pipelining: bool
) -> None:
    """Every RCPT refused: no message text is sent (DATA only in the pipelined batch, and
    refused), RSET follows, and the session carries the next message."""
    rcpt = {"x@dest.test": "550 5.1.1 no x", "y@dest.test": "451 4.3.0 no y now"}
    extensions = Script().extensions if pipelining else NO_PIPELINING
    f = servers.listen(Script(rcpt=rcpt, extensions=extensions))
    session = await open_(dest(hop(f)))
    x, y = await transfer(session, message("x@dest.test", "y@dest.test"))
    assert (x.outcome, y.outcome) == (Outcome.BOUNCED, Outcome.DEFERRED)
    assert x.text == said("550 5.1.1 no x", "RCPT TO")
    server = f.connections[0]
    tail = server.verbs()[server.verbs().index("MAIL") :]
    assert tail == (
        ["MAIL", "RCPT", "RCPT", "DATA", "RSET"] if pipelining else ["MAIL", "RCPT", "RCPT", "RSET"]
    )
    assert server.messages == []
    assert not session.closed
    (again,) = await transfer(session, message("ok@dest.test"))
    assert again.outcome is Outcome.SENT and len(server.messages) == 1
    await quit_(session, f)


@pytest.mark.parametrize(
    "reply, outcome",
    [
        ("451 4.3.0 try again later", Outcome.DEFERRED),
        ("553 5.7.1 sender refused", Outcome.BOUNCED),
    ],
)
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
@pytest_twisted.ensureDeferred
async def test_transfer_mail_refused_every_recipient(
    servers: Servers, pipelining: bool, reply: str, outcome: Outcome
) -> None:
    """A 4xx/5xx to MAIL FROM is every recipient's result; no message, RSET, session reusable."""
    extensions = Script().extensions if pipelining else NO_PIPELINING
    f = servers.listen(Script(mail=reply, extensions=extensions))
    session = await open_(dest(hop(f)))
    results = await transfer(session, message("a@dest.test", "b@dest.test"))
    assert [(r.outcome, r.text, r.reply) for r in results] == [
        (outcome, said(reply, "MAIL FROM"), reply)
    ] * 2
    server = f.connections[0]
    assert server.verbs()[-1] == "RSET" and server.messages == []
    if not pipelining:
        assert "RCPT" not in server.verbs()
    assert not session.closed
    await quit_(session, f)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
@pytest_twisted.ensureDeferred
async def test_transfer_mail_refused_then_hangup_keeps_the_reply(
    servers: Servers, pipelining: bool
) -> None:
    """A server that refuses MAIL FROM with 5xx and hangs up: the 5xx is still the result
    (BOUNCED with its text), not a lost connection."""
    extensions = Script().extensions if pipelining else NO_PIPELINING
    reply = "554 5.7.1 you are blocked"
    f = servers.listen(Script(mail=reply, close_after={"MAIL"}, extensions=extensions))
    session = await open_(dest(hop(f)))
    results = await transfer(session, message("a@dest.test"))
    assert [(r.outcome, r.text) for r in results] == [(Outcome.BOUNCED, said(reply, "MAIL FROM"))]
    await within(session.protocol.lost)
    assert session.closed
    gc.collect()  # a waiter failed and forgotten would log "Unhandled error in Deferred"


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
@pytest_twisted.ensureDeferred
async def test_transfer_rcpt_refused_then_hangup_keeps_the_reply(
    servers: Servers, pipelining: bool
) -> None:
    """A recipient refused just before the server hangs up keeps its 5xx (BOUNCED); the
    next one, never answered, is deferred as lost while sending RCPT TO."""
    extensions = Script().extensions if pipelining else NO_PIPELINING
    f = servers.listen(
        Script(rcpt={"x@dest.test": "550 5.1.1 no x"}, close_after={"RCPT"}, extensions=extensions)
    )
    session = await open_(dest(hop(f)))
    x, y = await transfer(session, message("x@dest.test", "y@dest.test"))
    assert (x.outcome, x.text) == (Outcome.BOUNCED, said("550 5.1.1 no x", "RCPT TO"))
    assert (y.outcome, y.text) == (
        Outcome.DEFERRED,
        f"lost connection with {HOST}[127.0.0.1] while sending RCPT TO",
    )
    gc.collect()


@pytest_twisted.ensureDeferred
async def test_transfer_mail_refused_but_354_to_data_ended_empty(servers: Servers) -> None:
    """A (broken) server refusing MAIL FROM yet answering the pipelined DATA with 354: the
    message is ended empty before RSET, never sent as text, and the session goes on."""
    f = servers.listen(Script(mail="550 5.7.1 no", data="354 go ahead anyway"))
    session = await open_(dest(hop(f)))
    (r,) = await transfer(session, message("a@dest.test"))
    assert (r.outcome, r.text) == (Outcome.BOUNCED, said("550 5.7.1 no", "MAIL FROM"))
    server = f.connections[0]
    assert server.messages == [b""]
    assert server.verbs()[-1] == "RSET"
    f.script.mail, f.script.data = "250 2.1.0 Ok", ""
    (again,) = await transfer(session, message("a@dest.test"))
    assert again.outcome is Outcome.SENT and server.messages[1] == BODY.replace(b"\r\n.", b"\r\n..")
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_transfer_data_refused_accepted_recipients_get_it(servers: Servers) -> None:
    """DATA refused: the accepted recipients get that reply (in reply to DATA command); the
    refused ones keep their own."""
    f = servers.listen(
        Script(data="451 4.3.0 cannot take data now", rcpt={"b@dest.test": "550 no"})
    )
    session = await open_(dest(hop(f)))
    a, b = await transfer(session, message("a@dest.test", "b@dest.test"))
    assert (a.outcome, a.text) == (
        Outcome.DEFERRED,
        said("451 4.3.0 cannot take data now", "DATA"),
    )
    assert (b.outcome, b.text) == (Outcome.BOUNCED, said("550 no", "RCPT TO"))
    assert f.connections[0].verbs()[-1] == "RSET"
    await quit_(session, f)


@pytest.mark.parametrize(
    "reply, outcome",
    [
        ("554 5.7.1 message content rejected", Outcome.BOUNCED),
        ("452 4.3.1 out of space", Outcome.DEFERRED),
    ],
)
@pytest_twisted.ensureDeferred
async def test_transfer_after_data_reply_decides(
    servers: Servers, reply: str, outcome: Outcome
) -> None:
    """5xx after the message is BOUNCED, 4xx DEFERRED, in reply to end of DATA command; RSET."""
    f = servers.listen(Script(final=reply))
    session = await open_(dest(hop(f)))
    results = await transfer(session, message("a@dest.test", "b@dest.test"))
    assert [(r.outcome, r.text, r.reply) for r in results] == [
        (outcome, said(reply, "end of DATA"), reply)
    ] * 2
    assert f.connections[0].verbs()[-1] == "RSET"
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_transfer_3xx_after_data_is_not_sent(servers: Servers) -> None:
    """Only a 2xx after the message means delivered: a (broken) 3xx there is not SENT."""
    f = servers.listen(Script(final="354 say that again"))
    session = await open_(dest(hop(f)))
    (result,) = await transfer(session, message("a@dest.test"))
    assert result.outcome is Outcome.DEFERRED
    assert result.text == said("354 say that again", "end of DATA")
    session.abort()


@pytest_twisted.ensureDeferred
async def test_transfer_3xx_to_rcpt_is_not_accepted(servers: Servers) -> None:
    """A 3xx to RCPT TO is no acceptance: that recipient is deferred and gets no message."""
    f = servers.listen(Script(rcpt={"odd@dest.test": "354 what?"}))
    session = await open_(dest(hop(f)))
    odd, ok = await transfer(session, message("odd@dest.test", "ok@dest.test"))
    assert (odd.outcome, odd.text) == (Outcome.DEFERRED, said("354 what?", "RCPT TO"))
    assert ok.outcome is Outcome.SENT
    await quit_(session, f)


@pytest.mark.parametrize(
    "close_after, stage", [("MAIL", "MAIL FROM"), ("RCPT", "RCPT TO"), ("DATA", "DATA")]
)
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
@pytest_twisted.ensureDeferred
async def test_transfer_connection_lost_deferred_with_stage(
    servers: Servers, pipelining: bool, close_after: str, stage: str
) -> None:
    """The server hanging up without a reply defers every recipient, naming the command
    that was waiting (Postfix's 'lost connection with H[IP] while sending RCPT TO')."""
    extensions = Script().extensions if pipelining else NO_PIPELINING
    script = Script(extensions=extensions)
    if close_after == "MAIL":
        script.mail = b""  # no reply at all, then the hang-up
    elif close_after == "RCPT":
        script.rcpt = {"a@dest.test": b""}
    else:
        script.data = b""
    script.close_after = {close_after}
    f = servers.listen(script)
    session = await open_(dest(hop(f)))
    results = await transfer(session, message("a@dest.test"))
    assert [(r.outcome, r.text) for r in results] == [
        (Outcome.DEFERRED, f"lost connection with {HOST}[127.0.0.1] while sending {stage}")
    ]
    assert session.closed
    gc.collect()  # waiters that failed unseen would log "Unhandled error in Deferred"


@pytest_twisted.ensureDeferred
async def test_transfer_timeout_end_of_data_deferred(servers: Servers) -> None:
    """No reply to the end of the message within the data timeout: deferred, 'timed out
    while sending end of DATA', connection aborted (deadlines on a Clock)."""
    f = servers.listen(Script(final=None))
    clock = Clock()
    timeouts = Timeouts(command=300, data=600)
    session = await open_(dest(hop(f)), settings(timeouts=timeouts), ClockedReactor(clock))
    d = session.transfer(message("a@dest.test"), ["a@dest.test"], BODY, iter(()))
    await f.when(lambda: len(f.messages) == 1)
    clock.advance(599)
    assert not d.called
    clock.advance(1)
    (result,) = await within(d)
    assert (result.outcome, result.text) == (
        Outcome.DEFERRED,
        f"conversation with {HOST}[127.0.0.1] timed out while sending end of DATA",
    )
    await within(f.connections[0].closed)
