"""Relay sessions to a next hop over real loopback sockets.

The next hop is either the scripted server of test_smtp_client.py (to provoke each reply and
check the bytes that arrived) or our own SMTP server (SMTPFactory with the in-memory sink of
tests/smtp), for what a real peer must accept: STARTTLS with a certificate from our CA, AUTH
against the authenticator, the message as stored.
"""

from __future__ import annotations

import gc
import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock, deferLater
from twisted.protocols.basic import LineReceiver

from appliance.delivery.routing import Destination, NextHop
from appliance.delivery.session import HopsFailed, Session, SessionSettings, open_session
from appliance.delivery.smtp_client import Timeouts, auth_plain
from appliance.interfaces import (
    Envelope,
    Outcome,
    QueuedMessage,
    Recipient,
    RecipientResult,
    Verdict,
)
from appliance.log import mail_logger
from appliance.smtp.factory import SMTPFactory
from appliance.smtp.settings import MTA, SUBMISSION, SMTPSettings
from appliance.tls.ca import CertificateAuthority
from appliance.tls.context import make_tls_options
from tests.conftest import free_port
from tests.delivery.test_smtp_client import (
    ClockedReactor,
    Script,
    ScriptedFactory,
    Servers,
    chunks_of,
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


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Our CA, a certificate for mx.dest.test signed by it, and another CA's certificate."""
    base = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(base / "ca")
    ca.init("Relay Test CA", progress=quiet)
    key, cert = ca.issue(HOST, [], progress=quiet)
    other = CertificateAuthority(base / "other")
    other.init("Somebody Else's CA", progress=quiet)
    return {"ca": ca.certificate_path, "key": key, "cert": cert, "other_ca": other.certificate_path}


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


# ---------------------------------------------------------------------------- parameters


@pytest_twisted.ensureDeferred
async def test_mail_rcpt_parameters_sent_when_advertised(servers: Servers) -> None:
    """SIZE, BODY=8BITMIME, SMTPUTF8, RET, ENVID, NOTIFY and ORCPT go out when the server
    advertises them; dsn_forwarded for a SENT recipient that had NOTIFY."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    msg = message(
        Recipient("a@dest.test", remote=True, notify="SUCCESS,FAILURE", orcpt="rfc822;a@dest.test"),
        Recipient("b@dest.test", remote=True),
        body="8BITMIME",
        smtputf8=True,
        dsn_ret="HDRS",
        dsn_envid="QQ+2B1",
    )
    a, b = await transfer(session, msg)
    server = f.connections[0]
    assert server.line("MAIL") == (
        f"MAIL FROM:<sender@origin.test> SIZE={len(BODY)} BODY=8BITMIME SMTPUTF8 RET=HDRS"
        " ENVID=QQ+2B1"
    )
    rcpts = [c for c in server.commands if c.startswith("RCPT")]
    assert rcpts == [
        "RCPT TO:<a@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@dest.test",
        "RCPT TO:<b@dest.test>",
    ]
    assert a.outcome is b.outcome is Outcome.SENT
    assert a.dsn_forwarded and not b.dsn_forwarded
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_mail_rcpt_parameters_not_sent_when_not_advertised(servers: Servers) -> None:
    """A server offering none of SIZE, 8BITMIME, SMTPUTF8, DSN gets bare MAIL and RCPT
    lines; without DSN nothing is dsn_forwarded (we owe the success notice)."""
    f = servers.listen(Script(extensions=["PIPELINING"]))
    session = await open_(dest(hop(f)))
    msg = message(
        Recipient("a@dest.test", remote=True, notify="SUCCESS", orcpt="rfc822;a@dest.test"),
        body="8BITMIME",
        dsn_ret="FULL",
        dsn_envid="E1",
    )
    (a,) = await transfer(session, msg)
    server = f.connections[0]
    assert server.line("MAIL") == "MAIL FROM:<sender@origin.test>"
    assert server.line("RCPT") == "RCPT TO:<a@dest.test>"
    assert a.outcome is Outcome.SENT and not a.dsn_forwarded
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_null_sender_and_forwarded_address_get_their_dsn_parameters(servers: Servers) -> None:
    """MAIL FROM:<> for the null sender; an alias's forward_to address carries the NOTIFY
    and ORCPT of the RCPT it came from."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    original = Recipient(
        "alias@origin.test",
        forward_to=("far@dest.test",),
        remote=True,
        notify="FAILURE",
        orcpt="rfc822;alias@origin.test",
    )
    (far,) = await transfer(session, message(original, mail_from=""), ["far@dest.test"])
    server = f.connections[0]
    assert server.line("MAIL").startswith("MAIL FROM:<> SIZE=")
    assert (
        server.line("RCPT")
        == "RCPT TO:<far@dest.test> NOTIFY=FAILURE ORCPT=rfc822;alias@origin.test"
    )
    assert far.outcome is Outcome.SENT and far.dsn_forwarded
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_message_bigger_than_server_size_bounced_unsent(servers: Servers) -> None:
    """A message over the server's SIZE bounces 5.3.4 without a MAIL FROM."""
    f = servers.listen(Script(extensions=["PIPELINING", "SIZE 1000"]))
    session = await open_(dest(hop(f)))
    results = await transfer(session, message("a@dest.test", "b@dest.test", size=5000))
    assert [(r.outcome, r.text, r.relay) for r in results] == [
        (
            Outcome.BOUNCED,
            f"5.3.4 message size 5000 exceeds size limit 1000 of server {relay_of(f)}",
            relay_of(f),
        )
    ] * 2
    assert "MAIL" not in f.connections[0].verbs()
    (ok,) = await transfer(session, message("a@dest.test", size=1000))
    assert ok.outcome is Outcome.SENT
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_utf8_address_to_server_without_smtputf8_bounced_unsent(servers: Servers) -> None:
    """A non-ASCII address to a server that does not offer SMTPUTF8 bounces 5.6.7, unsent."""
    f = servers.listen(Script(extensions=["PIPELINING", "8BITMIME"]))
    session = await open_(dest(hop(f)))
    results = await transfer(session, message("jörg@dest.test", "ascii@dest.test", smtputf8=True))
    assert [(r.outcome, r.text) for r in results] == [
        (Outcome.BOUNCED, f"5.6.7 SMTPUTF8 is required, but was not offered by host {relay_of(f)}")
    ] * 2
    (sender,) = await transfer(session, message("ascii@dest.test", mail_from="andré@origin.test"))
    assert sender.outcome is Outcome.BOUNCED and sender.text.startswith("5.6.7 ")
    assert "MAIL" not in f.connections[0].verbs()
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_utf8_address_to_server_with_smtputf8_sent_as_utf8(servers: Servers) -> None:
    """With SMTPUTF8 offered, a non-ASCII address goes out as UTF-8 with the SMTPUTF8 flag."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    (r,) = await transfer(session, message("jörg@dest.test", smtputf8=True))
    assert r.outcome is Outcome.SENT
    server = f.connections[0]
    assert "SMTPUTF8" in server.line("MAIL").split()
    assert "RCPT TO:<jörg@dest.test>".encode() in b"".join(server.segments)
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_utf8_recipient_of_ascii_message_gets_smtputf8(ours: Any) -> None:
    """A message that arrived without SMTPUTF8 but goes to a non-ASCII address (an alias
    rewrote it) still needs SMTPUTF8 in MAIL FROM: our server refuses the RCPT otherwise."""
    server = ours()
    server.policy.connect = Verdict(relay=True)
    session = await open_(dest(hop(server.port)))
    alias = Recipient("alias@origin.test", forward_to=("jörg@far.test",), remote=True)
    (r,) = await transfer(session, message(alias, smtputf8=False), ["jörg@far.test"])
    assert r.outcome is Outcome.SENT, r
    (stored,) = server.sink.committed
    assert stored.envelope.smtputf8 and stored.envelope.recipients[0].address == "jörg@far.test"
    await within(session.quit())


# ---------------------------------------------------------------------------- message text


@pytest_twisted.ensureDeferred
async def test_body_dot_stuffed_across_chunk_boundaries(servers: Servers) -> None:
    """Dots at line starts are doubled however the text is chunked (a chunk ending in LF,
    another in CR); the server reads back exactly the original."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    text = b"Subject: dots\r\n\r\n.one\r\n..two\r\nx\r\n.\r\nthree.\r\n.four\r\n"
    cuts = [
        b"Subject: dots\r\n\r\n",
        b".one\r",
        b"\n..two\r\nx\r\n",
        b".\r\nthree.\r",
        b"\n",
        b".four\r\n",
    ]
    assert b"".join(cuts) == text
    (r,) = await transfer(session, message("a@dest.test", size=len(text)), chunks=cuts)
    assert r.outcome is Outcome.SENT
    wire = f.messages[0]
    assert wire == b"Subject: dots\r\n\r\n..one\r\n...two\r\nx\r\n..\r\nthree.\r\n..four\r\n"
    unstuffed = b"\r\n".join(
        line[1:] if line.startswith(b".") else line for line in wire.split(b"\r\n")
    )
    assert unstuffed == text
    await quit_(session, f)


@pytest.mark.parametrize(
    "chunks, wire",
    [
        ([b"Subject: x\r\n\r\nno line end"], b"Subject: x\r\n\r\nno line end\r\n"),
        ([b"Subject: x\r\n\r\nend\r", b"\n"], b"Subject: x\r\n\r\nend\r\n"),
        ([b"Subject: x\r\n\r\n", b"e", b"n", b"d"], b"Subject: x\r\n\r\nend\r\n"),
        ([b"Subject: x\r\n\r\nends.", b""], b"Subject: x\r\n\r\nends.\r\n"),
    ],
    ids=["no-crlf", "crlf-split", "one-byte-chunks", "empty-last-chunk"],
)
@pytest_twisted.ensureDeferred
async def test_body_final_crlf_added_only_when_missing(
    servers: Servers, chunks: list[bytes], wire: bytes
) -> None:
    """Text not ending in CRLF gets one before the final dot, and text ending in it (even
    split as CR | LF across chunks) gets none."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    size = sum(map(len, chunks))
    (r,) = await transfer(session, message("a@dest.test", size=size), chunks=chunks)
    assert r.outcome is Outcome.SENT
    assert f.messages == [wire]
    raw = b"".join(f.connections[0].segments)
    assert raw.count(b"\r\n.\r\n") == 1
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_body_many_chunks_arrive_whole(servers: Servers) -> None:
    """A message read in many small chunks arrives byte for byte (dot-stuffed)."""
    f = servers.listen()
    session = await open_(dest(hop(f)))
    text = b"Subject: big\r\n\r\n" + b"".join(b".%d line of text\r\n" % i for i in range(2000))
    chunks = list(chunks_of(text, 37))
    (r,) = await transfer(session, message("a@dest.test", size=len(text)), chunks=chunks)
    assert r.outcome is Outcome.SENT
    assert f.messages == [text.replace(b"\r\n.", b"\r\n..")]
    await quit_(session, f)


# ---------------------------------------------------------------------------- hosts in order


@pytest_twisted.ensureDeferred
async def test_open_next_host_on_connection_refused(servers: Servers) -> None:
    """A refused connection moves on to the next host."""
    f = servers.listen()
    session = await open_(dest(hop(free_port(), "mx1.dest.test"), hop(f, "mx2.dest.test")))
    assert session.hop == hop(f, "mx2.dest.test")
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_open_next_host_on_4xx_greeting(servers: Servers) -> None:
    """A 421 greeting moves on to the next host."""
    busy = servers.listen(Script(greeting="421 4.3.2 too busy"))
    f = servers.listen()
    session = await open_(dest(hop(busy, "mx1.dest.test"), hop(f, "mx2.dest.test")))
    assert session.hop.host == "mx2.dest.test"
    assert len(busy.connections) == 1
    await quit_(session, f)


@pytest.mark.parametrize("ehlo", ["421 4.7.0 not now", "554 5.7.1 go away"])
@pytest_twisted.ensureDeferred
async def test_open_next_host_on_ehlo_failure(servers: Servers, ehlo: str) -> None:
    """EHLO refused (4xx, or 5xx and then HELO refused too) moves on to the next host."""
    bad = servers.listen(Script(ehlo=ehlo, helo="554 5.7.1 not you either"))
    f = servers.listen()
    session = await open_(dest(hop(bad, "mx1.dest.test"), hop(f, "mx2.dest.test")))
    assert session.hop.host == "mx2.dest.test"
    assert bad.connections[0].verbs() == (["EHLO"] if ehlo.startswith("4") else ["EHLO", "HELO"])
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_open_helo_fallback_after_ehlo_5xx(servers: Servers) -> None:
    """EHLO unknown (502): HELO, and then no extensions (no pipelining, bare MAIL)."""
    f = servers.listen(Script(ehlo="502 5.5.2 what is EHLO"))
    session = await open_(dest(hop(f)))
    assert session.extensions.keywords == {}
    (r,) = await transfer(session, message("a@dest.test"))
    assert r.outcome is Outcome.SENT
    server = f.connections[0]
    assert server.verbs()[:5] == ["EHLO", "HELO", "MAIL", "RCPT", "DATA"]
    assert server.line("MAIL") == "MAIL FROM:<sender@origin.test>"
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_open_all_hosts_fail_last_reason(servers: Servers) -> None:
    """No host takes the session: HopsFailed with the last host's trouble, in Postfix words."""
    busy = servers.listen(Script(greeting="421 4.3.2 too busy"))
    closed = free_port()
    error = await hops_failed(dest(hop(busy, "mx1.dest.test"), hop(closed, "mx2.dest.test")))
    assert str(error) == f"connect to mx2.dest.test[127.0.0.1]:{closed}: Connection refused"
    error = await hops_failed(dest(hop(closed, "mx1.dest.test"), hop(busy, "mx2.dest.test")))
    assert str(error) == "host mx2.dest.test[127.0.0.1] refused to talk to me: 421 4.3.2 too busy"
    assert not error.permanent
    error = await hops_failed(dest())
    assert str(error) == "no host to try"


@pytest_twisted.ensureDeferred
async def test_open_greeting_timeout_next_host(servers: Servers) -> None:
    """A host that never greets is given up after the command timeout (Clock), then the
    next one is tried."""
    silent = servers.listen(Script(greeting=None))
    f = servers.listen()
    clock = Clock()
    clocked = ClockedReactor(clock)
    d = open_session(
        clocked,
        dest(hop(silent, "mx1.dest.test"), hop(f, "mx2.dest.test")),
        settings(timeouts=Timeouts(command=300)),
        read_chunk,
    )
    await clocked.when(lambda: len(clock.getDelayedCalls()) == 1)  # waiting for the greeting
    clock.advance(299)
    assert not d.called
    clock.advance(1)
    session = await within(d)
    assert session.hop.host == "mx2.dest.test"
    await within(silent.connections[0].closed)
    session.abort()


@pytest_twisted.ensureDeferred
async def test_source_address_bound(servers: Servers) -> None:
    """source_address: the connection comes from that address."""
    f = servers.listen()
    session = await open_(dest(hop(f)), settings(source_address="127.0.1.1"))
    assert f.connections[0].peer == "127.0.1.1"
    await quit_(session, f)
    session = await open_(dest(hop(f)))
    assert f.connections[1].peer == "127.0.0.1"
    await quit_(session, f)


# ---------------------------------------------------------------------------- STARTTLS


TLS_TEXT = re.compile(r"^TLSv1\.[23] [A-Z0-9_-]+$")


@pytest_twisted.ensureDeferred
async def test_tls_may_uses_starttls_when_offered(ours: Any, pki: dict[str, Path]) -> None:
    """tls = may with our server offering STARTTLS: encrypted, and the results say how; the
    server's Received data (envelope.tls) agrees."""
    server = ours(tls=make_tls_options(pki["cert"], pki["key"]))
    session = await open_(dest(hop(server.port)), settings(tls="may"))
    assert TLS_TEXT.match(session.tls), session.tls
    assert "STARTTLS" not in session.extensions  # the EHLO after TLS
    (r,) = await transfer(session, message("user1@example.test"))
    assert r.outcome is Outcome.SENT and r.tls == session.tls
    (stored,) = server.sink.committed
    assert stored.envelope.tls == session.tls
    assert stored.envelope.recipients[0].address == "user1@example.test"
    assert bytes(stored.data).endswith(BODY)  # unstuffed again, behind our Received
    await within(session.quit())


@pytest_twisted.ensureDeferred
async def test_tls_may_without_starttls_plaintext(servers: Servers) -> None:
    """tls = may with a server not offering STARTTLS: plaintext, tls empty."""
    f = servers.listen()
    session = await open_(dest(hop(f)), settings(tls="may"))
    (r,) = await transfer(session, message("a@dest.test"))
    assert r.outcome is Outcome.SENT and r.tls == "" and session.tls == ""
    assert "STARTTLS" not in f.connections[0].verbs()
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_tls_may_starttls_refused_goes_on_plaintext(
    servers: Servers, pki: dict[str, Path]
) -> None:
    """tls = may and STARTTLS answered 454: the session goes on in plaintext."""
    tls = make_tls_options(pki["cert"], pki["key"])
    f = servers.listen(Script(tls=tls, starttls="454 4.7.0 TLS not available now"))
    session = await open_(dest(hop(f)), settings(tls="may"))
    (r,) = await transfer(session, message("a@dest.test"))
    assert r.outcome is Outcome.SENT and r.tls == ""
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_tls_none_never_starttls(servers: Servers, pki: dict[str, Path]) -> None:
    """tls = none: no STARTTLS even when offered."""
    f = servers.listen(Script(tls=make_tls_options(pki["cert"], pki["key"])))
    session = await open_(dest(hop(f)), settings(tls="none"))
    (r,) = await transfer(session, message("a@dest.test"))
    assert r.outcome is Outcome.SENT and r.tls == ""
    assert "STARTTLS" not in f.connections[0].verbs()
    await quit_(session, f)


@pytest.mark.parametrize("mode", ["encrypt", "verify"])
@pytest_twisted.ensureDeferred
async def test_tls_required_not_offered_hops_failed(
    servers: Servers, pki: dict[str, Path], mode: str
) -> None:
    """tls = encrypt/verify with a server not offering STARTTLS: HopsFailed, nothing sent."""
    f = servers.listen()
    error = await hops_failed(dest(hop(f)), settings(tls=mode, ca_file=pki["ca"]))
    assert str(error) == f"TLS is required, but was not offered by host {HOST}[127.0.0.1]"
    assert "MAIL" not in f.connections[0].verbs()
    await within(f.connections[0].closed)


@pytest_twisted.ensureDeferred
async def test_tls_encrypt_starttls_refused_hops_failed(
    servers: Servers, pki: dict[str, Path]
) -> None:
    """tls = encrypt and STARTTLS refused: HopsFailed quoting the refusal."""
    tls = make_tls_options(pki["cert"], pki["key"])
    f = servers.listen(Script(tls=tls, starttls="454 4.7.0 TLS not available now"))
    error = await hops_failed(dest(hop(f)), settings(tls="encrypt"))
    assert str(error) == f"host {HOST}[127.0.0.1] refused STARTTLS: 454 4.7.0 TLS not available now"


@pytest_twisted.ensureDeferred
async def test_tls_encrypt_any_certificate_accepted(ours: Any, pki: dict[str, Path]) -> None:
    """tls = encrypt encrypts without checking who answers (a name the certificate lacks)."""
    server = ours(tls=make_tls_options(pki["cert"], pki["key"]))
    session = await open_(dest(hop(server.port, "not-the-name.test")), settings(tls="encrypt"))
    assert TLS_TEXT.match(session.tls)
    await within(session.quit())


@pytest_twisted.ensureDeferred
async def test_tls_verify_right_ca_and_name_ok(ours: Any, pki: dict[str, Path]) -> None:
    """tls = verify with our CA as ca_file and the certificate's name: delivered, tls told."""
    server = ours(tls=make_tls_options(pki["cert"], pki["key"]))
    session = await open_(dest(hop(server.port)), settings(tls="verify", ca_file=pki["ca"]))
    assert TLS_TEXT.match(session.tls), session.tls
    (r,) = await transfer(session, message("user1@example.test"))
    assert r.outcome is Outcome.SENT and TLS_TEXT.match(r.tls)
    assert server.sink.committed[0].envelope.tls == r.tls
    await within(session.quit())


@pytest_twisted.ensureDeferred
async def test_tls_verify_wrong_ca_hops_failed(ours: Any, pki: dict[str, Path]) -> None:
    """tls = verify with another CA: HopsFailed naming the certificate failure; no mail."""
    server = ours(tls=make_tls_options(pki["cert"], pki["key"]))
    error = await hops_failed(
        dest(hop(server.port)), settings(tls="verify", ca_file=pki["other_ca"])
    )
    text = str(error)
    assert text.startswith(f"host {HOST}[127.0.0.1]: TLS certificate verification failed"), text
    assert "not issued by a trusted CA" in text, text
    assert server.sink.begun == []


@pytest_twisted.ensureDeferred
async def test_tls_verify_wrong_name_hops_failed(ours: Any, pki: dict[str, Path]) -> None:
    """tls = verify and a host name the certificate does not carry: HopsFailed naming it."""
    server = ours(tls=make_tls_options(pki["cert"], pki["key"]))
    other = dest(hop(server.port, "other.dest.test"))
    error = await hops_failed(other, settings(tls="verify", ca_file=pki["ca"]))
    text = str(error)
    assert text.startswith("host other.dest.test[127.0.0.1]: TLS certificate verification failed")
    assert "the certificate is not for this host name" in text, text
    assert server.sink.begun == []


@pytest_twisted.ensureDeferred
async def test_tls_verify_unreadable_ca_file_hops_failed(
    servers: Servers, pki: dict[str, Path], tmp_path: Path
) -> None:
    """tls = verify with a ca_file that cannot be read: HopsFailed saying so."""
    f = servers.listen(Script(tls=make_tls_options(pki["cert"], pki["key"])))
    error = await hops_failed(
        dest(hop(f)), settings(tls="verify", ca_file=tmp_path / "missing.pem")
    )
    assert str(error) == (
        f"TLS with host {HOST}[127.0.0.1] impossible: cannot read ca_file: No such file or directory"
    )


@pytest_twisted.ensureDeferred
async def test_starttls_plaintext_behind_220_dropped(
    servers: Servers, pki: dict[str, Path]
) -> None:
    """Plaintext the server pipelines behind its 220 to STARTTLS is not read as a reply
    (CVE-2011-0411's client side): the EHLO reply is the one inside TLS."""
    f = servers.listen(
        Script(
            tls=make_tls_options(pki["cert"], pki["key"]),
            after_starttls=b"250-injected\r\n250 AUTH PLAIN\r\n",
            extensions_tls=["PIPELINING", "X-INSIDE-TLS"],
        )
    )
    session = await open_(dest(hop(f)), settings(tls="verify", ca_file=pki["ca"]))
    assert "X-INSIDE-TLS" in session.extensions and "AUTH" not in session.extensions
    assert TLS_TEXT.match(session.tls)
    (r,) = await transfer(session, message("a@dest.test"))
    assert r.outcome is Outcome.SENT
    assert f.connections[0].verbs() == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "DATA"]
    await quit_(session, f)


# ---------------------------------------------------------------------------- AUTH


@pytest.mark.parametrize("mechanisms", [("PLAIN", "LOGIN"), ("LOGIN",)], ids=["plain", "login"])
@pytest_twisted.ensureDeferred
async def test_smarthost_auth_our_server(ours: Any, mechanisms: tuple[str, ...]) -> None:
    """To a smarthost, smarthost_login logs in (PLAIN when offered, else LOGIN); our
    submission server records the login on the message it took."""
    server = ours(
        SUBMISSION,
        mechanisms=mechanisms,
        plaintext_networks=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    s = settings(smarthost_login=("user1@example.test", "secret"))
    session = await open_(dest(hop(server.port), smarthost=True), s)
    msg = message("someone@far.test", mail_from="user1@example.test")
    (r,) = await transfer(session, msg)
    assert r.outcome is Outcome.SENT, r
    (stored,) = server.sink.committed
    assert stored.envelope.auth_user == "user1@example.test"
    await within(session.quit())


@pytest_twisted.ensureDeferred
async def test_smarthost_auth_wrong_password_hops_failed(ours: Any) -> None:
    """Refused credentials: HopsFailed quoting the server, no mail."""
    server = ours(SUBMISSION, plaintext_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    s = settings(smarthost_login=("user1@example.test", "wrong"))
    error = await hops_failed(dest(hop(server.port), smarthost=True), s)
    assert str(error).startswith(
        f"SASL authentication failed; server {HOST}[127.0.0.1] said: 535 "
    ), str(error)
    assert server.sink.begun == []


@pytest_twisted.ensureDeferred
async def test_smarthost_auth_wire_bytes(servers: Servers) -> None:
    """The AUTH lines on the wire: PLAIN in one line, LOGIN as user then password."""
    plain = servers.listen(Script(extensions=["PIPELINING", "AUTH LOGIN PLAIN"]))
    login = servers.listen(Script(extensions=["PIPELINING", "AUTH LOGIN"]))
    s = settings(smarthost_login=("user1@example.test", "secret"))
    for f in (plain, login):
        session = await open_(dest(hop(f), smarthost=True), s)
        await quit_(session, f)
    assert plain.connections[0].commands[1] == auth_plain("user1@example.test", "secret")
    assert login.connections[0].commands[1:4] == [
        "AUTH LOGIN",
        "dXNlcjFAZXhhbXBsZS50ZXN0",
        "c2VjcmV0",
    ]


@pytest_twisted.ensureDeferred
async def test_no_auth_to_a_destination_that_is_not_the_smarthost(servers: Servers) -> None:
    """smarthost_login is for the smarthost only: an MX that offers AUTH gets none."""
    f = servers.listen(Script(extensions=["PIPELINING", "AUTH PLAIN LOGIN"]))
    s = settings(smarthost_login=("user1@example.test", "secret"))
    session = await open_(dest(hop(f), smarthost=False), s)
    (r,) = await transfer(session, message("a@dest.test"))
    assert r.outcome is Outcome.SENT
    assert "AUTH" not in f.connections[0].verbs()
    await quit_(session, f)


@pytest_twisted.ensureDeferred
async def test_smarthost_without_plain_or_login_hops_failed(servers: Servers) -> None:
    """A smarthost offering neither PLAIN nor LOGIN: HopsFailed, no password sent."""
    f = servers.listen(Script(extensions=["PIPELINING", "AUTH CRAM-MD5"]))
    s = settings(smarthost_login=("user1@example.test", "secret"))
    error = await hops_failed(dest(hop(f), smarthost=True), s)
    assert str(error) == (
        f"SASL authentication to host {HOST}[127.0.0.1] impossible: no PLAIN or LOGIN offered"
    )
    assert "AUTH" not in f.connections[0].verbs()


# ---------------------------------------------------------------------------- flow control


class _StallingServer(LineReceiver):
    """Says yes to everything, then stops reading the message after 354 until told."""

    MAX_LENGTH = 1 << 20  # the test's message lines are 256 KiB

    def connectionMade(self) -> None:  # noqa: N802
        self.data = False
        self.received = 0
        self.sendLine(b"220 stall.test ESMTP")

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        if self.data:
            self.received += len(line) + 2
            if line == b".":
                self.data = False
                self.sendLine(b"250 2.0.0 Ok: queued")
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-stall.test\r\n250 PIPELINING")
        elif verb == b"DATA":
            self.data = True
            self.sendLine(b"354 go ahead")
            self.transport.pauseProducing()  # a next hop that does not read
            self.factory.stalled.callback(self)
        else:
            self.sendLine(b"250 2.0.0 Ok")


@pytest_twisted.ensureDeferred
async def test_body_of_slow_next_hop_not_read_ahead() -> None:
    """A next hop that stops reading mid-message: the relay stops reading the queue file
    (a 16 MiB body is not all buffered in memory), then sends the rest once it reads."""
    factory = Factory.forProtocol(_StallingServer)
    factory.stalled = defer.Deferred()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    chunk, count = b"x" * (256 * 1024 - 2) + b"\r\n", 64
    consumed = 0

    def body() -> Iterator[bytes]:
        nonlocal consumed
        for _ in range(count):
            consumed += 1
            yield chunk

    async def read_later(chunks: Iterator[bytes]) -> bytes | None:
        return next(chunks, None)

    try:
        session = await within(
            open_session(
                reactor,
                dest(hop(port.getHost().port)),
                settings(),
                lambda it: defer.ensureDeferred(read_later(it)),
            )
        )
        msg = message("user@dest.test", size=len(chunk) * (count + 1))
        sending = defer.ensureDeferred(session.transfer(msg, ["user@dest.test"], chunk, body()))
        server = await within(factory.stalled)
        for _ in range(50):  # let the relay write as far as the buffers take it
            await deferLater(reactor, 0.01, lambda: None)
        assert consumed < count / 2, f"read {consumed} of {count} chunks ahead of a stalled peer"
        server.transport.resumeProducing()
        (result,) = await within(sending)
        assert result.outcome is Outcome.SENT, result
        assert consumed == count
        assert server.received >= len(chunk) * (count + 1)
        await within(session.quit())
    finally:
        await port.stopListening()
