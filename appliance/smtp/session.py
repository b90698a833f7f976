"""The ESMTP session: the state of one client connection and its command table.

Here: the connect (a connection slot, reverse DNS, the connect policy, the greeting), the
command dispatch, EHLO/HELO, STARTTLS, AUTH's preconditions and the simple commands. The mail
transaction (MAIL, RCPT, DATA, BDAT) is appliance.smtp.transaction's, the SASL dialogue
appliance.smtp.auth's, framing, reply batching and waiting appliance.smtp.connection's.
Out-of-order commands get 503 5.5.1, every reply carries an enhanced status code (RFC 3463),
and nothing a client sends reaches a traceback: a failure is logged and answered 451.
STARTTLS discards whatever was pipelined behind it and resets the session.

A session holds one of the SMTP service's ConnectionSlots (shared by all its ports) and is a
Slot to it: while it waits for a command without having logged in it may be closed to make
room for a new client when every slot is taken, and when the slots are mostly used its
deadlines shrink (appliance.limits).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.python.failure import Failure

from appliance.deferreds import decision
from appliance.interfaces import FilterVerdict, SessionFacts, Verdict
from appliance.limits import Deadlines
from appliance.log import printable
from appliance.smtp import transaction
from appliance.smtp.address import ReplyError
from appliance.smtp.auth import SASL_LINE_LIMIT, SessionAuth
from appliance.smtp.connection import SMTPConnection
from appliance.smtp.envelope import Transaction
from appliance.smtp.events import SessionEvents

if TYPE_CHECKING:
    from appliance.smtp.factory import SMTPFactory


class SMTPSession(SMTPConnection):
    """One SMTP client connection, built by SMTPFactory.buildProtocol."""

    factory: SMTPFactory
    events: SessionEvents  # set when connected

    def __init__(self, factory: SMTPFactory) -> None:
        super().__init__(factory)
        self.peer_name: str | None = None  # verified reverse DNS name
        self.session_id = secrets.token_hex(4)
        self.helo: str | None = None
        self.esmtp = False
        self.auth = SessionAuth(self)
        self.txn: Transaction | None = None
        self.incoming: transaction.Incoming | None = None
        self.chunk: transaction.Chunk | None = None  # a BDAT chunk's bytes are being read
        self.counts: dict[str, int] = {}  # commands by verb, for the disconnect line
        self.rejected_at_connect: Verdict | None = None
        self.connect_verdict = Verdict()
        self.counted = False  # admitted, its disconnect not logged yet
        self.last_verb = "CONNECT"  # for the timeout line

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:  # noqa: N802 (Twisted's API)
        f = self.factory
        s = f.settings
        link = self.link
        host = getattr(link.getPeer() if link is not None else None, "host", None)
        self.peer_ip = host if isinstance(host, str) else "unknown"
        self.events = SessionEvents(f.events, self.session_id, self.peer_ip)
        if f.mode.implicit_tls:
            self.tls_info = "TLS"  # refined once the handshake completes
        if not self.admit_to(f.slots):
            self.events.connect(self.client_label(), code=421, reason="too many connections")
            self.reply(421, "4.7.0", f"{s.hostname} Error: too many connections", close=True)
            return
        self.counted = True
        slots = f.slots
        self.deadlines = Deadlines(
            f.reactor, s.limits, self.timed_out, stressed=lambda: slots.stressed
        )
        if f.rdns is None:
            self.greet()
            return
        # hold input (and the greeting) until we know who the client is, as Postfix does
        self.busy = True

        def named(name: str | None) -> None:
            self.peer_name = name
            self.busy = False
            if self.transport is not None and not self.closing:
                self.greet()
                self.process()

        f.rdns.lookup(self.peer_ip).addCallback(named)

    def greet(self) -> None:
        f = self.factory
        self.events.connect(self.client_label())
        verdict = self.connect_verdict = f.policy.check_connect(self.peer_ip, self.peer_name)
        if not verdict.ok and not verdict.discard:
            self.refuse_connect(verdict)
            return
        if f.filters is None:
            self.send_banner()
            return

        def checked(result: FilterVerdict) -> None:
            if not result.ok:
                self.refuse_connect(Verdict(result.code, result.text))
            else:
                self.send_banner()

        self.wait(decision(f.filters.connect, self.facts()).addCallback(checked), "connect")

    def send_banner(self) -> None:
        s = self.factory.settings
        banner = s.banner or f"{s.hostname} ESMTP mailappliance"
        self.send_line(f"220 {banner}")

    def refuse_connect(self, verdict: Verdict) -> None:
        """Turned away at the greeting: every command but QUIT gets 503 from here on."""
        self.rejected_at_connect = verdict
        self.events.reject_connect(self.client_label(), verdict)
        self.send_line(f"{verdict.code} {verdict.text}")

    def facts(self) -> SessionFacts:
        """What the filters are told of this client."""
        return SessionFacts(
            session_id=self.session_id,
            client_ip=self.peer_ip,
            client_name=self.peer_name,
            helo=self.helo or "",
            tls=self.tls_info,
            auth_user=self.auth.user,
            trusted=self.connect_verdict.relay,
        )

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        if self.deadlines is not None:
            self.deadlines.stop()
        if self.incoming is not None:
            self.incoming.abort()
        self.release_slot()
        if self.counted:
            self.counted = False
            self.events.disconnect(self.client_label(), self.counts)

    def timed_out(self, which: str) -> None:
        """A deadline passed (appliance.limits): 421 4.4.2, and cut off a client not reading."""
        stage = "DATA" if self.incoming is not None else self.last_verb
        self.events.timeout(self.client_label(), stage)
        self.reply(
            421, "4.4.2", f"{self.factory.settings.hostname} Error: timeout exceeded", close=True
        )
        self.abort_if_stuck()

    # ------------------------------------------------------------------ Slot (appliance.limits)

    def idle_since(self) -> float | None:
        if self.auth.user is not None or self.busy or self.incoming is not None or self.closing:
            return None
        deadlines = self.deadlines
        return deadlines.request_start if deadlines is not None else None

    def evict(self) -> None:
        self.counted = False  # its slot is the newcomer's; the disconnect is logged here
        self.events.timeout(self.client_label(), self.last_verb)
        self.events.disconnect(self.client_label(), self.counts)
        self.reply(
            421,
            "4.7.0",
            f"{self.factory.settings.hostname} Error: too many connections, closing idle session",
            close=True,
        )
        self.abort_if_stuck()

    def utf8_replies(self) -> bool:
        txn = self.txn
        return txn is not None and txn.params.smtputf8

    def tls_established(self, tls: str) -> None:
        self.events.tls(self.client_label(), tls)

    def client_label(self) -> str:
        return f"{self.peer_name or 'unknown'}[{self.peer_ip}]"

    # ------------------------------------------------------------------ input

    def line_limit(self) -> int:
        if self.auth.exchange is not None:
            return SASL_LINE_LIMIT
        return self.factory.settings.max_command_line

    def in_data(self) -> bool:
        if self.chunk is not None:
            return True
        incoming = self.incoming
        return incoming is not None and not incoming.chunked

    def feed_data(self) -> bool:
        if self.chunk is not None:
            return transaction.feed_chunk(self, self.chunk)
        if self.incoming is None:
            return True
        return transaction.feed_data(self, self.incoming)

    def reset_transaction(self) -> None:
        """Forget the mail transaction, and a message that BDAT has begun (RSET, EHLO, TLS)."""
        self.txn = None
        incoming, self.incoming = self.incoming, None
        if incoming is not None:
            incoming.abort()

    def line_received(self, raw: bytes) -> None:
        if b"\n" in raw or b"\r" in raw:
            self.reply(500, "5.5.2", "Error: bare <CR> or <LF> in command")
            return
        if self.auth.exchange is not None:
            self.auth.line_received(raw)
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.reply(500, "5.5.2", "Error: command contains invalid characters")
            return
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if not verb.isascii() or not verb.isalpha():
            self.reply(500, "5.5.2", "Error: command not recognized")
            return
        self.counts[verb.lower()] = self.counts.get(verb.lower(), 0) + 1
        if self.rejected_at_connect is not None and verb != "QUIT":
            self.reply(503, "5.5.1", "Error: connection rejected, send QUIT")
            return
        handler = self.COMMANDS.get(verb)
        if handler is None:
            self.reply(500, "5.5.2", "Error: command not recognized")
            return
        self.last_verb = verb
        if not line.isascii() and verb not in ("MAIL", "RCPT"):
            self.reply(500, "5.5.2", "Error: non-ASCII characters in command")
            return
        try:
            handler(self, arg.strip())
        except ReplyError as e:
            self.reply_error(e)
        except Exception:
            self.log.failure("SMTP command {verb} from {peer} failed", verb=verb, peer=self.peer_ip)
            self.reply(451, "4.3.0", "Error: local error in processing")

    # ------------------------------------------------------------------ session commands

    def do_helo(self, arg: str, esmtp: bool = False) -> None:
        if not arg:
            raise ReplyError(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
        self.helo = printable(arg.split()[0], 255)
        self.esmtp = esmtp
        if self.deadlines is not None:
            self.deadlines.greeted()
        self.reset_transaction()
        f = self.factory
        s = f.settings
        if not esmtp:
            self.send_line(f"250 {s.hostname}")
            return
        lines = [s.hostname, "PIPELINING", f"SIZE {s.max_message_size}"]
        if self.tls_info is None and f.tls is not None and not f.mode.implicit_tls:
            lines.append("STARTTLS")
        mechs = self.auth.offered_mechanisms()
        if mechs and self.auth.user is None and f.authenticator is not None:
            lines.append("AUTH " + " ".join(mechs))
        lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING", "HELP"]
        for i, text in enumerate(lines):
            self.send_line(f"250{'-' if i < len(lines) - 1 else ' '}{text}")

    def do_ehlo(self, arg: str) -> None:
        self.do_helo(arg, esmtp=True)

    def do_starttls(self, arg: str) -> None:
        f = self.factory
        if arg:
            raise ReplyError(501, "5.5.4", "Syntax: STARTTLS")
        if f.tls is None or f.mode.implicit_tls:
            raise ReplyError(502, "5.5.1", "Error: command not implemented")
        if self.tls_info is not None:
            raise ReplyError(503, "5.5.1", "Error: TLS already active")
        # RFC 3207 / CVE-2011-0411: nothing pipelined before the handshake may be executed
        self.buffer = b""
        self.send_line("220 2.0.0 Ready to start TLS")
        self.flush()  # the 220 goes out in plaintext, everything after it inside TLS
        link = self.link
        if link is not None:
            link.startTLS(f.tls)
        self.tls_info = "TLS"
        self.helo = None
        self.esmtp = False
        self.reset_transaction()
        self.auth.user = None

    def do_auth(self, arg: str) -> None:
        if self.factory.authenticator is None:
            raise ReplyError(502, "5.5.1", "Error: authentication not enabled")
        if self.helo is None or not self.esmtp:
            raise ReplyError(503, "5.5.1", "Error: send EHLO first")
        if self.auth.user is not None:
            raise ReplyError(503, "5.5.1", "Error: already authenticated")
        if self.txn is not None:
            raise ReplyError(503, "5.5.1", "Error: MAIL transaction in progress")
        self.auth.start(arg)

    def do_rset(self, arg: str) -> None:
        self.reset_transaction()
        self.reply(250, "2.0.0", "Ok")

    def do_noop(self, arg: str) -> None:
        self.reply(250, "2.0.0", "Ok")

    def do_vrfy(self, arg: str) -> None:
        if not arg:
            raise ReplyError(501, "5.5.4", "Syntax: VRFY address")
        self.reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")

    def do_expn(self, arg: str) -> None:
        raise ReplyError(502, "5.5.1", "Error: command not implemented")

    def do_help(self, arg: str) -> None:
        self.send_line("214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY")
        self.send_line("214 2.0.0 HELP STARTTLS AUTH; see RFC 5321")

    def do_quit(self, arg: str) -> None:
        self.send_line(f"221 2.0.0 {self.factory.settings.hostname} Bye")
        self.close_connection()

    COMMANDS: dict[str, Callable[[SMTPSession, str], None]] = {}


SMTPSession.COMMANDS = {
    "HELO": SMTPSession.do_helo,
    "EHLO": SMTPSession.do_ehlo,
    "STARTTLS": SMTPSession.do_starttls,
    "AUTH": SMTPSession.do_auth,
    "MAIL": transaction.do_mail,
    "RCPT": transaction.do_rcpt,
    "DATA": transaction.do_data,
    "BDAT": transaction.do_bdat,
    "RSET": SMTPSession.do_rset,
    "NOOP": SMTPSession.do_noop,
    "VRFY": SMTPSession.do_vrfy,
    "EXPN": SMTPSession.do_expn,
    "HELP": SMTPSession.do_help,
    "QUIT": SMTPSession.do_quit,
}
