"""One relay session to a next hop: connect, greet, EHLO, STARTTLS, AUTH, then messages.

`open_session()` tries a destination's hosts in order (the next on a connection failure, a
4xx/5xx greeting or EHLO, a failed or refused STARTTLS) and returns a `Session` ready for
transactions, or fails with `HopsFailed` naming the last host's trouble in Postfix's words
("connect to mail.sina.com[127.0.1.4]:25: Connection refused").

`Session.transfer()` sends one message to some of its recipients (pipelined when the server
offers PIPELINING; a message held whole in memory to a server with CHUNKING goes as MAIL, RCPT
and BDAT LAST with its text in one write, one round trip) and gives one `RecipientResult` per recipient: 2xx SENT, 4xx DEFERRED,
5xx BOUNCED, with the server's reply quoted; it never fails. A session that lost its
connection or broke the protocol is `closed` and not reused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectError, ConnectionRefusedError, TimeoutError
from twisted.internet.protocol import Factory

from appliance.delivery.routing import Destination, NextHop
from appliance.delivery.smtp_client import (
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
from appliance.interfaces import Envelope, Outcome, QueuedMessage, RecipientResult

TLS_MODES = ("none", "may", "encrypt", "verify")
# RFC 3463 codes of failures without a reply to quote (Postfix's choices)
NO_ANSWER = "4.4.1"  # no answer from host
CONVERSATION_FAILED = "4.4.2"  # bad connection
TLS_FAILED = "4.7.5"  # cryptographic failure
AUTH_FAILED = "4.7.0"


@dataclass(frozen=True)
class SessionSettings:
    helo: str
    tls: str = "may"  # none | may | encrypt | verify
    ca_file: Path | None = None
    source_address: str | None = None
    timeouts: Timeouts = Timeouts()
    smarthost_login: tuple[str, str] | None = None  # (user, password) for smarthost AUTH


class HopsFailed(Exception):
    """No host of the destination could be reached for a transaction; str() is the reason."""

    def __init__(
        self,
        text: str,
        permanent: bool = False,
        reply: str = "",
        status: str = "",
        relay: str = "",
    ) -> None:
        super().__init__(text)
        self.text = text
        self.permanent = permanent
        self.reply = reply
        self.status = status  # RFC 3463 code, "" when the reply in text says it
        self.relay = relay  # the last host tried, if it was reached ("" if not)


class _HopError(Exception):
    def __init__(self, text: str, reply: Reply | None = None, status: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.relay = ""  # the host, once connected to it
        self.reply = reply


def client_tls(hostname: str, settings: SessionSettings) -> Any:
    """What startTLS gets: verifying options (hostname and chain) for tls = verify, else
    encryption without authentication (RFC 7435, opportunistic), TLS 1.2 at least."""
    if settings.tls == "verify":
        if settings.ca_file is not None:
            pem = settings.ca_file.read_bytes()
            certs = [
                ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
                for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
            ]
            trust: Any = ssl.trustRootFromCertificates(certs)
        else:
            trust = ssl.platformTrust()
        return ssl.optionsForClientTLS(
            hostname,
            trustRoot=trust,
            extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
        )
    return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


def _connect_error(hop: NextHop, failure: Any) -> str:
    error = failure.value
    if isinstance(error, ConnectionRefusedError):
        why = "Connection refused"
    elif isinstance(error, TimeoutError | defer.CancelledError):
        why = "Connection timed out"
    elif isinstance(error, ConnectError):
        why = error.osError or str(error) or "connection failed"
        why = str(why)
    else:
        why = str(error) or type(error).__name__
    return f"connect to {hop}: {why}"


class Session:
    """A connected, greeted session to one host; transactions run one at a time."""

    def __init__(
        self,
        protocol: SMTPClientProtocol,
        hop: NextHop,
        extensions: Extensions,
        settings: SessionSettings,
        read_chunk: Callable[[Iterator[bytes]], Deferred[bytes | None]],
    ) -> None:
        self.protocol = protocol
        self.hop = hop
        self.extensions = extensions
        self.settings = settings
        self.read_chunk = read_chunk
        self.messages = 0
        self._env: Envelope | None = None

    @property
    def closed(self) -> bool:
        return self.protocol.closed

    @property
    def tls(self) -> str:
        return self.protocol.tls

    # -- one message

    @defer.inlineCallbacks
    def transfer(
        self,
        message: QueuedMessage,
        rcpts: Sequence[str],
        head: bytes,
        rest: Iterator[bytes] | None,
    ) -> Generator[Deferred[Any], Any, list[RecipientResult]]:
        """Send message (its first chunk head, then what rest yields; None: head is all of
        it) to rcpts."""
        self.messages += 1
        env = self._env = message.envelope
        ext = self.extensions
        refused = self._refuse(message, rcpts)
        if refused is not None:
            return refused
        mail = self._mail_line(message, rcpts)
        rcpt_lines = [self._rcpt_line(env, r) for r in rcpts]
        p = self.protocol
        stage = "MAIL FROM"
        accepted: list[int] = []
        results: dict[int, RecipientResult] = {}
        waiters: list[Deferred[Reply]] = []

        # results are taken as the replies come: a server that hangs up after refusing
        # MAIL FROM or a recipient (or during RSET) has still given its answer
        def got_mail(reply: Reply) -> None:
            if not reply.ok:
                for i, r in enumerate(rcpts):
                    results[i] = self._result(r, reply, "MAIL FROM")

        def got_rcpt(i: int, reply: Reply) -> None:
            if not mail_reply.ok:
                return  # refused for want of a sender: MAIL FROM's reply says why
            if reply.ok:
                accepted.append(i)
            else:
                results[i] = self._result(rcpts[i], reply, "RCPT TO")

        try:
            data_reply: Reply | None = None
            final: Reply | None = None
            chunked = rest is None and "CHUNKING" in ext and "PIPELINING" in ext
            if "PIPELINING" in ext:
                if chunked:
                    # the whole message in memory: MAIL, RCPT and BDAT LAST with the text, all
                    # in one write (RFC 3030), one round trip instead of DATA's two
                    whole = head if head.endswith(b"\r\n") or not head else head + b"\r\n"
                    bdat = f"BDAT {len(whole)} LAST"
                    timeout = self.settings.timeouts.data
                    waiters = p.commands([mail, *rcpt_lines, bdat], whole, timeout)
                else:
                    waiters = p.commands([mail, *rcpt_lines, "DATA"])
                mail_reply = yield waiters[0]
                got_mail(mail_reply)
                stage = "RCPT TO"
                for i, w in enumerate(waiters[1:-1]):
                    got_rcpt(i, (yield w))
                stage = "end of DATA" if chunked else "DATA"
                last: Reply = yield waiters[-1]
                if chunked:
                    final = last  # the text went with it: BDAT LAST answers as the end of DATA
                else:
                    data_reply = last
            else:
                mail_reply = yield p.command(mail)
                got_mail(mail_reply)
                if mail_reply.ok:
                    stage = "RCPT TO"
                    for i, line in enumerate(rcpt_lines):
                        got_rcpt(i, (yield p.command(line)))
                    if accepted:
                        stage = "DATA"
                        data_reply = yield p.command("DATA")
            if final is None:
                if not mail_reply.ok:
                    if data_reply is not None and data_reply.code == 354:
                        yield p.command(".", self.settings.timeouts.data)  # end it empty
                    yield self._reset()
                    return [results[i] for i in range(len(rcpts))]
                if not accepted or data_reply is None or data_reply.code != 354:
                    if accepted and data_reply is not None:
                        for i in accepted:
                            results[i] = self._result(rcpts[i], data_reply, "DATA")
                    if data_reply is not None and data_reply.code == 354:
                        # a server that took DATA with no recipient: end it empty, nobody gets it
                        yield p.command(".", self.settings.timeouts.data)
                    yield self._reset()
                    return [results[i] for i in range(len(rcpts))]
                stage = "end of DATA"
                final = yield self._send_body(head, rest)
            # (accepted is empty when MAIL FROM was refused: got_rcpt takes nobody then)
            for i in accepted:
                results[i] = self._result(rcpts[i], final, "end of DATA", sent=final.ok)
            if not final.ok:
                yield self._reset()
            return [results[i] for i in range(len(rcpts))]
        except (ConnectionClosed, ProtocolError, Timeout, OSError) as e:
            for w in waiters:  # pipelined replies never read now: their failure is known
                w.addErrback(lambda _: None)
            text = self._lost_text(e, stage)
            for i in range(len(rcpts)):
                if i not in results:
                    results[i] = self._plain(rcpts[i], Outcome.DEFERRED, text)
            p.abort()
            return [results[i] for i in range(len(rcpts))]

    def _refuse(self, message: QueuedMessage, rcpts: Sequence[str]) -> list[RecipientResult] | None:
        env, ext = message.envelope, self.extensions
        limit = ext.max_size
        if limit is not None and message.size > limit:
            text = (
                f"5.3.4 message size {message.size} exceeds size limit {limit} of server {self.hop}"
            )
            return [self._plain(r, Outcome.BOUNCED, text) for r in rcpts]
        needs_utf8 = not env.mail_from.isascii() or not all(r.isascii() for r in rcpts)
        if needs_utf8 and "SMTPUTF8" not in ext:
            text = f"5.6.7 SMTPUTF8 is required, but was not offered by host {self.hop}"
            return [self._plain(r, Outcome.BOUNCED, text) for r in rcpts]
        return None

    def _mail_line(self, message: QueuedMessage, rcpts: Sequence[str]) -> str:
        env, ext = message.envelope, self.extensions
        line = f"MAIL FROM:<{env.mail_from}>"
        if "SIZE" in ext:
            line += f" SIZE={message.size}"
        if env.body == "8BITMIME" and "8BITMIME" in ext:
            line += " BODY=8BITMIME"
        # a UTF-8 address needs it even if the message came without (an alias rewrote one)
        utf8_address = not all(a.isascii() for a in (env.mail_from, *rcpts))
        if (env.smtputf8 or utf8_address) and "SMTPUTF8" in ext:
            line += " SMTPUTF8"
        if "DSN" in ext:
            if env.dsn_ret:
                line += f" RET={env.dsn_ret}"
            if env.dsn_envid:
                line += f" ENVID={env.dsn_envid}"
        return line

    def _rcpt_line(self, env: Envelope, address: str) -> str:
        line = f"RCPT TO:<{address}>"
        if "DSN" in self.extensions:
            rcpt = env.recipient_for(address)
            if rcpt is not None and rcpt.notify:
                line += f" NOTIFY={rcpt.notify}"
            if rcpt is not None and rcpt.orcpt:
                line += f" ORCPT={rcpt.orcpt}"
        return line

    @defer.inlineCallbacks
    def _send_body(
        self, head: bytes, rest: Iterator[bytes] | None
    ) -> Generator[Deferred[Any], Any, Reply]:
        """The message, dot-stuffed, then the end-of-data line: in one write when head is the
        whole message (rest None), the usual case; otherwise chunk by chunk as read."""
        p = self.protocol
        data, at_start = stuff(head, True)
        last = head[-2:]
        while rest is not None:
            chunk = yield self.read_chunk(rest)
            if chunk is None:
                break
            p.write_data(data)
            yield p.drained()  # a slow next hop: the message is not read faster than it goes
            if chunk:
                data, at_start = stuff(chunk, at_start)
                last = (last + chunk)[-2:]
            else:
                data = b""
        end = b".\r\n" if last.endswith(b"\r\n") or not last else b"\r\n.\r\n"
        p.write_data(data + end)
        reply = yield p.expect(self.settings.timeouts.data)
        return reply

    @defer.inlineCallbacks
    def _reset(self) -> Generator[Deferred[Any], Any, None]:
        if self.closed:
            return
        reply = yield self.protocol.command("RSET")
        if not reply.ok:
            self.protocol.abort()

    def _result(
        self, address: str, reply: Reply, stage: str, sent: bool = False
    ) -> RecipientResult:
        if sent:
            outcome = Outcome.SENT
            text = reply.text
        else:
            outcome = Outcome.BOUNCED if reply.permanent else Outcome.DEFERRED
            text = f"host {self.hop.host}[{self.hop.ip}] said: {reply.text} (in reply to {stage} command)"
        forwarded = sent and "DSN" in self.extensions and bool(self._notify_of(address))
        return RecipientResult(
            address,
            outcome,
            text,
            str(self.hop),
            reply=reply.text,
            tls=self.tls,
            dsn_forwarded=forwarded,
        )

    def _notify_of(self, address: str) -> str | None:
        rcpt = None if self._env is None else self._env.recipient_for(address)
        return None if rcpt is None else rcpt.notify

    def _plain(self, address: str, outcome: Outcome, text: str) -> RecipientResult:
        return RecipientResult(address, outcome, text, str(self.hop), tls=self.tls)

    def _lost_text(self, error: Exception, stage: str) -> str:
        host = f"{self.hop.host}[{self.hop.ip}]"
        if isinstance(error, Timeout):
            return f"conversation with {host} timed out while sending {stage}"
        if isinstance(error, ProtocolError):
            return f"bad reply from {host} while sending {stage}: {error}"
        return f"lost connection with {host} while sending {stage}"

    # -- the end

    @defer.inlineCallbacks
    def quit(self) -> Generator[Deferred[Any], Any, None]:
        p = self.protocol
        if not p.closed:
            try:
                yield p.command("QUIT", 10.0)
            except (ConnectionClosed, ProtocolError, Timeout):
                pass
        p.close()

    def abort(self) -> None:
        self.protocol.abort()


class _ClientFactory(Factory):
    def __init__(self, timeouts: Timeouts, clock: Any) -> None:
        self.timeouts = timeouts
        self.clock = clock

    def buildProtocol(self, addr: Any) -> SMTPClientProtocol:  # noqa: N802 (Twisted API)
        p = SMTPClientProtocol(self.timeouts, self.clock)
        p.factory = self
        return p


def _endpoint(reactor: Any, hop: NextHop, settings: SessionSettings) -> Any:
    timeout = settings.timeouts.connect
    source = (settings.source_address, 0) if settings.source_address else None
    try:
        version = ipaddress.ip_address(hop.ip).version
    except ValueError:
        return HostnameEndpoint(reactor, hop.ip.encode(), hop.port, timeout, bindAddress=source)
    if version == 6:
        if source is not None and ":" not in source[0]:
            source = None  # an IPv4 source cannot reach an IPv6 host
        return TCP6ClientEndpoint(reactor, hop.ip, hop.port, timeout, source)
    if source is not None and ":" in source[0]:
        source = None
    return TCP4ClientEndpoint(reactor, hop.ip, hop.port, timeout, source)


@defer.inlineCallbacks
def _open_one(
    reactor: Any, hop: NextHop, settings: SessionSettings, smarthost: bool
) -> Generator[Deferred[Any], Any, tuple[SMTPClientProtocol, Extensions]]:
    factory = _ClientFactory(settings.timeouts, reactor)
    try:
        p = yield _endpoint(reactor, hop, settings).connect(factory)
    except Exception as e:
        from twisted.python.failure import Failure

        raise _HopError(_connect_error(hop, Failure(e)), status=NO_ANSWER) from None
    host = f"host {hop.host}[{hop.ip}]"
    try:
        greeting = yield p.expect()
        if greeting.code != 220:
            raise _HopError(f"{host} refused to talk to me: {greeting.text}", greeting)
        ext = yield _ehlo(p, settings.helo, host)
        if settings.tls != "none" and "STARTTLS" in ext:
            reply = yield p.command("STARTTLS")
            if reply.code != 220:
                if settings.tls in ("encrypt", "verify"):
                    raise _HopError(f"{host} refused STARTTLS: {reply.text}", reply)
            else:
                try:
                    creator = client_tls(hop.host, settings)
                except (OSError, ValueError) as e:
                    why = getattr(e, "strerror", None) or str(e)
                    raise _HopError(
                        f"TLS with {host} impossible: cannot read ca_file: {why}"
                    ) from None
                p.start_tls(creator)
                try:
                    ext = yield _ehlo(p, settings.helo, host)
                except _HopError as e:
                    why = p.tls_error or str(e)
                    raise _HopError(f"TLS with {host} failed: {why}", status=TLS_FAILED) from None
        elif settings.tls in ("encrypt", "verify"):
            raise _HopError(f"TLS is required, but was not offered by {host}", status=TLS_FAILED)
        if smarthost and settings.smarthost_login is not None:
            if not p.tls and not _loopback(hop.ip):
                # Postfix's noplaintext default: the password never crosses a network in clear
                raise _HopError(
                    f"SASL authentication to {host} refused: the connection is not encrypted",
                    status=AUTH_FAILED,
                )
            yield _auth(p, ext, settings.smarthost_login, host)
    except (ConnectionClosed, ProtocolError, Timeout) as e:
        p.abort()
        tls = "TLS" in _describe(e)
        error = _HopError(
            f"{host}: {_describe(e)} during the greeting",
            status=TLS_FAILED if tls else CONVERSATION_FAILED,
        )
        error.relay = str(hop)
        raise error from None
    except _HopError as e:
        p.abort()
        e.relay = str(hop)  # reached: relay= names it, as Postfix's log does
        raise
    return p, ext


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _describe(error: Exception) -> str:
    text = str(error)
    if "VerificationError" in text or "Mismatch" in text:
        return "TLS certificate verification failed: the certificate is not for this host name"
    if "certificate verify failed" in text:
        return "TLS certificate verification failed: not issued by a trusted CA (ca_file)"
    if isinstance(error, Timeout):
        return "timed out"
    return f"lost connection ({text})" if text else "lost connection"


@defer.inlineCallbacks
def _ehlo(p: SMTPClientProtocol, helo: str, host: str) -> Generator[Deferred[Any], Any, Extensions]:
    reply = yield p.command(f"EHLO {helo}")
    if reply.code == 250:
        return Extensions.parse(reply)
    if reply.code >= 500:
        reply = yield p.command(f"HELO {helo}")
        if reply.code == 250:
            return Extensions()
    raise _HopError(f"{host} refused to talk to me: {reply.text}", reply)


@defer.inlineCallbacks
def _auth(
    p: SMTPClientProtocol, ext: Extensions, login: tuple[str, str], host: str
) -> Generator[Deferred[Any], Any, None]:
    user, password = login
    mechanisms = ext.auth_mechanisms
    if "PLAIN" in mechanisms:
        reply = yield p.command(auth_plain(user, password))
    elif "LOGIN" in mechanisms:
        reply = yield p.command("AUTH LOGIN")
        for step in auth_login_steps(user, password):
            if reply.code != 334:
                break
            reply = yield p.command(step)
    else:
        raise _HopError(
            f"SASL authentication to {host} impossible: no PLAIN or LOGIN offered",
            status=AUTH_FAILED,
        )
    if reply.code != 235:
        server = host.removeprefix("host ")  # "mail.sina.com[127.0.1.4]", as Postfix says it
        raise _HopError(
            f"SASL authentication failed; server {server} said: {reply.text}",
            reply,
            status=AUTH_FAILED,
        )


@defer.inlineCallbacks
def open_session(
    reactor: Any,
    destination: Destination,
    settings: SessionSettings,
    read_chunk: Callable[[Iterator[bytes]], Deferred[bytes | None]],
) -> Generator[Deferred[Any], Any, Session]:
    """A session with the first host of destination that takes one; HopsFailed if none."""
    last, status, relay = "no host to try", NO_ANSWER, ""
    for hop in destination.hops:
        try:
            p, ext = yield _open_one(reactor, hop, settings, destination.smarthost)
        except _HopError as e:
            last, status, relay = str(e), e.status, e.relay
            continue
        session = Session(p, hop, ext, settings, read_chunk)
        return session
    raise HopsFailed(last, status=status, relay=relay)
