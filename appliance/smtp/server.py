"""ESMTP server: the session state machine on its own framing (not twisted.mail.smtp.ESMTP).

Why our own framing: Twisted's ESMTP executes commands pipelined before STARTTLS inside TLS,
leaves DATA on an over-long line (so the rest of the body runs as commands), keeps an
unbounded line buffer and lacks SIZE/8BITMIME/PIPELINING/ENHANCEDSTATUSCODES/DSN/SMTPUTF8.
Here:
- command lines end in CRLF and are bounded (max_command_line); longer ones are answered 500
  and skipped up to the next CRLF, the buffer never grows past the limit;
- DATA ends only at CRLF.CRLF; bare LF or bare CR anywhere in the body, an over-long text line,
  or too many bytes make the whole message refused at its end, never a fall back to command
  mode (so `<LF>.<LF>` smuggling finds nothing to smuggle into);
- STARTTLS discards whatever was pipelined behind it and resets the session;
- every reply carries an enhanced status code (RFC 3463), bad input gets 500/501/5xx and the
  session goes on; nothing a client sends reaches a traceback (failures are logged, 451 sent).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from appliance.auth.sasl import MAX_LINE as SASL_MAX_LINE
from appliance.config import Network
from appliance.errors import ApplianceError
from appliance.interfaces import DiskFull, Envelope, MessageSink, Recipient, Verdict
from appliance.ip import in_networks
from appliance.log import printable
from appliance.smtp.address import ReplyError, check_address, is_xtext, parse_path

CRLF = b"\r\n"


@dataclass(frozen=True)
class SMTPSettings:
    hostname: str
    banner: str = ""
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_command_line: int = 2048
    max_text_line: int = 1000  # octets including CRLF (RFC 5321 4.5.3.1.6)
    idle_timeout: float = 300
    max_connections: int = 200
    max_connections_per_ip: int = 20
    max_errors: int = 20
    plaintext_networks: tuple[Network, ...] = ()
    min_free_space: int = 64 * 1024 * 1024  # refuse MAIL (452 4.3.1) when the spool is this full
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")  # CRAM-MD5 added when the backend can
    spool_dir: str = "."


@dataclass(frozen=True)
class ListenerMode:
    """What kind of port this is: MTA (25), implicit TLS (465) or submission (587)."""

    name: str  # "smtp", "smtps", "submission"
    implicit_tls: bool = False
    auth_required: bool = False  # submission: MAIL needs AUTH first


MTA = ListenerMode("smtp")
SMTPS = ListenerMode("smtps", implicit_tls=True, auth_required=True)
SUBMISSION = ListenerMode("submission", auth_required=True)


class SMTPFactory(protocol.ServerFactory):
    """Shared state of one listener: settings, collaborators, connection counts."""

    def __init__(
        self,
        settings: SMTPSettings,
        mode: ListenerMode,
        *,
        sink: MessageSink,
        policy: Any,
        checker: Any | None,
        tls: Any | None,
        throttle: Any | None,
        maillog: Callable[[str], None],
        reactor: Any,
        sasl_factory: Callable[..., Any] | None = None,
        cram_supported: Callable[[], bool] = lambda: False,
        rdns: Any | None = None,
    ) -> None:
        self.settings = settings
        self.mode = mode
        self.sink = sink
        self.policy = policy
        self.checker = checker
        self.tls = tls  # a context factory with getContext(), or None
        self.throttle = throttle
        self.maillog = maillog
        self.reactor = reactor
        self.sasl_factory = sasl_factory
        self.cram_supported = cram_supported
        self.rdns = rdns  # ReverseLookup, or None: clients stay 'unknown'
        self.connections: dict[str, int] = {}
        self.total = 0
        self._free = 0
        self._free_checked_at = float("-inf")

    def free_space(self) -> int:
        """Bytes free where the spool lives; statvfs at most once a second."""
        now = self.reactor.seconds()
        if now - self._free_checked_at >= 1.0:
            self._free_checked_at = now
            try:
                st = os.statvfs(self.settings.spool_dir)
                self._free = st.f_bavail * st.f_frsize
            except OSError:
                self._free = 1 << 62  # unknown: let the write itself find out (452 on ENOSPC)
        return self._free

    def buildProtocol(self, addr: Any) -> SMTPSession:  # noqa: N802 (Twisted's API)
        p = SMTPSession()
        p.factory = self
        p.callLater = self.reactor.callLater
        return p


@dataclass
class Transaction:
    mail_from: str
    params: dict[str, str | None]
    recipients: list[Recipient] = field(default_factory=list)
    discard: bool = False
    received_at: float = 0.0


@implementer(IHandshakeListener)
class SMTPSession(protocol.Protocol, TimeoutMixin):
    log = Logger()
    factory: SMTPFactory

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:
        f = self.factory
        s = f.settings
        peer = self.transport.getPeer()
        self.peer_ip: str = getattr(peer, "host", "unknown")
        self.peer_name: str | None = None
        self.session_id = secrets.token_hex(4)
        self.buffer = b""
        self.skipping = False  # discarding an over-long command line up to its CRLF
        self.busy = False  # an asynchronous step is running: hold further commands
        self.paused = False
        self.out: list[bytes] | None = None  # replies held back while process() runs
        self.closing = False
        self.helo: str | None = None
        self.esmtp = False
        self.tls_info: str | None = None
        self.auth_user: str | None = None
        self.auth_mech: str | None = None
        self.sasl: Any = None
        self.txn: Transaction | None = None
        self.data_state: _DataState | None = None
        self.errors = 0
        self.counts: dict[str, int] = {}
        self.rejected_at_connect: Verdict | None = None
        self.connect_verdict = Verdict()
        f.total += 1
        f.connections[self.peer_ip] = f.connections.get(self.peer_ip, 0) + 1
        self.counted = True
        self.setTimeout(s.idle_timeout)
        if f.mode.implicit_tls:
            self.tls_info = "TLS"  # refined once the handshake completes
        if f.total > s.max_connections or f.connections[self.peer_ip] > s.max_connections_per_ip:
            f.maillog(f"connect from {self.client_label()}")
            self.reply(421, "4.7.0", f"{s.hostname} Error: too many connections", close=True)
            return
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
        s = f.settings
        f.maillog(f"connect from {self.client_label()}")
        verdict = self.connect_verdict = f.policy.check_connect(self.peer_ip, self.peer_name)
        if not verdict.ok and not verdict.discard:
            self.rejected_at_connect = verdict
            f.maillog(
                f"NOQUEUE: reject: CONNECT from {self.client_label()}: {verdict.code} {verdict.text}"
            )
            self.send_line(f"{verdict.code} {verdict.text}")
            return
        banner = s.banner or f"{s.hostname} ESMTP mailappliance"
        self.send_line(f"220 {banner}")

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        if self.data_state is not None and self.data_state.message is not None:
            self.data_state.message.abort()
        if self.counted:
            f = self.factory
            f.total -= 1
            left = f.connections.get(self.peer_ip, 1) - 1
            if left:
                f.connections[self.peer_ip] = left
            else:
                f.connections.pop(self.peer_ip, None)
            self.counted = False
            stats = " ".join(f"{k}={v}" for k, v in self.counts.items())
            f.maillog(f"disconnect from {self.client_label()} {stats}".rstrip())

    def timeoutConnection(self) -> None:
        self.reply(
            421, "4.4.2", f"{self.factory.settings.hostname} Error: timeout exceeded", close=True
        )

    def client_label(self) -> str:
        return f"{self.peer_name or 'unknown'}[{self.peer_ip}]"

    # ------------------------------------------------------------------ output

    def send_line(self, line: str) -> None:
        if self.transport is not None and not self.closing:
            if self.out is not None:  # inside process(): one write for all its replies
                self.out.append(line.encode("utf-8") + CRLF)
            else:
                self.transport.write(line.encode("utf-8") + CRLF)

    def flush(self) -> None:
        """Send the replies gathered in process(): one write, one wake-up of the socket."""
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            if self.transport is not None:
                self.transport.write(data)

    def close_connection(self) -> None:
        self.flush()  # the last reply before the FIN
        self.closing = True
        self.transport.loseConnection()

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

    # ------------------------------------------------------------------ input framing

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.resetTimeout()
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
        while not self.busy and not self.closing and self.buffer:
            if self.data_state is not None:
                if not self.feed_data():
                    return
                continue
            limit = (
                SASL_MAX_LINE if self.sasl is not None else self.factory.settings.max_command_line
            )
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
            if end + 2 > limit:
                self.reply(500, "5.5.6", "Error: line too long")
                continue
            self.line_received(line)
        if len(self.buffer) > 1024 * 1024 and self.busy and not self.paused:
            # a client pipelining far past what PIPELINING needs while we wait: stop reading
            self.paused = True
            self.transport.pauseProducing()

    def line_received(self, raw: bytes) -> None:
        if b"\n" in raw or b"\r" in raw:
            self.reply(500, "5.5.2", "Error: bare <CR> or <LF> in command")
            return
        if self.sasl is not None:
            self.sasl_line(raw)
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

    # ------------------------------------------------------------------ commands

    def do_helo(self, arg: str, esmtp: bool = False) -> None:
        if not arg:
            raise ReplyError(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
        self.helo = printable(arg.split()[0], 255)
        self.esmtp = esmtp
        self.txn = None
        s = self.factory.settings
        if not esmtp:
            self.send_line(f"250 {s.hostname}")
            return
        lines = [s.hostname, "PIPELINING", f"SIZE {s.max_message_size}"]
        if (
            self.tls_info is None
            and self.factory.tls is not None
            and not self.factory.mode.implicit_tls
        ):
            lines.append("STARTTLS")
        mechs = self.offered_mechanisms()
        if mechs and self.auth_user is None and self.factory.checker is not None:
            lines.append("AUTH " + " ".join(mechs))
        lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "HELP"]
        for i, text in enumerate(lines):
            self.send_line(f"250{'-' if i < len(lines) - 1 else ' '}{text}")

    def do_ehlo(self, arg: str) -> None:
        self.do_helo(arg, esmtp=True)

    def plaintext_allowed(self) -> bool:
        if self.tls_info is not None:
            return True
        return in_networks(self.peer_ip, self.factory.settings.plaintext_networks)

    def offered_mechanisms(self) -> list[str]:
        s = self.factory.settings
        mechs = [m for m in s.mechanisms if m != "CRAM-MD5"]
        if not self.plaintext_allowed():
            mechs = []
        if "CRAM-MD5" in s.mechanisms and self.factory.cram_supported():
            mechs.append("CRAM-MD5")
        return mechs

    def do_starttls(self, arg: str) -> None:
        if arg:
            raise ReplyError(501, "5.5.4", "Syntax: STARTTLS")
        if self.factory.tls is None or self.factory.mode.implicit_tls:
            raise ReplyError(502, "5.5.1", "Error: command not implemented")
        if self.tls_info is not None:
            raise ReplyError(503, "5.5.1", "Error: TLS already active")
        # RFC 3207 / CVE-2011-0411: nothing pipelined before the handshake may be executed
        self.buffer = b""
        self.send_line("220 2.0.0 Ready to start TLS")
        self.flush()  # the 220 goes out in plaintext, everything after it inside TLS
        self.transport.startTLS(self.factory.tls)
        self.tls_info = "TLS"
        self.helo = None
        self.esmtp = False
        self.txn = None
        self.auth_user = None

    def handshakeCompleted(self) -> None:  # noqa: N802 (IHandshakeListener)
        """Record the negotiated protocol and cipher for the Received header."""
        try:
            conn = self.transport.getHandle()
            self.tls_info = f"{conn.get_protocol_version_name()} {conn.get_cipher_name()}"
        except Exception:
            self.tls_info = "TLS"

    def do_auth(self, arg: str) -> None:
        f = self.factory
        if f.checker is None or f.sasl_factory is None:
            raise ReplyError(502, "5.5.1", "Error: authentication not enabled")
        if self.helo is None or not self.esmtp:
            raise ReplyError(503, "5.5.1", "Error: send EHLO first")
        if self.auth_user is not None:
            raise ReplyError(503, "5.5.1", "Error: already authenticated")
        if self.txn is not None:
            raise ReplyError(503, "5.5.1", "Error: MAIL transaction in progress")
        if not arg:
            raise ReplyError(501, "5.5.4", "Syntax: AUTH mechanism")
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        if mech not in f.settings.mechanisms or (mech == "CRAM-MD5" and not f.cram_supported()):
            raise ReplyError(504, "5.5.4", "Unrecognized authentication type")
        if mech != "CRAM-MD5" and not self.plaintext_allowed():
            raise ReplyError(
                538, "5.7.11", "Encryption required for requested authentication mechanism"
            )
        if f.throttle is not None and f.throttle.blocked(self.peer_ip):
            self.reply(
                421, "4.7.0", f"{f.settings.hostname} Error: too many failed logins", close=True
            )
            return
        self.auth_mech = mech
        self.sasl = f.sasl_factory(
            mech, f.settings.hostname, initial.strip() or None, mechanisms=f.settings.mechanisms
        )
        self.sasl_advance(None)

    def sasl_line(self, raw: bytes) -> None:
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            self.sasl = None
            self.reply(501, "5.5.2", "Malformed authentication response")
            return
        self.sasl_advance(line)

    def sasl_advance(self, line: str | None) -> None:
        from appliance.auth.sasl import Challenge, Credentials, SaslError

        step = self.sasl.step(line)
        if isinstance(step, Challenge):
            self.send_line(f"334 {step.text}")
            return
        self.sasl = None
        if isinstance(step, SaslError):
            if step.code == 535:  # a PLAIN authzid that is not the user: a failed login
                self.login_failed(step.text)
                return
            self.reply(step.code, step.enhanced, step.text)
            return
        assert isinstance(step, Credentials)
        self.check_credentials(step)

    def check_credentials(self, creds: Any) -> None:
        f = self.factory
        username = printable(creds.username, 100)
        d = defer.maybeDeferred(f.checker.requestAvatarId, creds.credentials)

        def ok(avatar: Any) -> None:
            self.auth_user = avatar.decode() if isinstance(avatar, bytes) else str(avatar)
            if f.throttle is not None:
                f.throttle.record_success(self.peer_ip)
            f.maillog(
                f"{self.client_label()}: sasl_method={self.auth_mech}, sasl_username={self.auth_user}"
            )
            self.reply(235, "2.7.0", "Authentication successful")

        def bad(failure: Any) -> Any:
            if failure.check(UnauthorizedLogin):
                return self.login_failed(username)
            # the backend could not answer (directory down, unreadable file): try again later
            if failure.check(ApplianceError):
                self.log.warn(
                    "authentication backend unavailable: {reason}", reason=failure.getErrorMessage()
                )
            else:
                self.log.failure("authentication backend failed", failure)
            self.reply(454, "4.7.0", "Temporary authentication failure")
            return None

        self.wait(d.addCallbacks(ok, bad), "authentication")

    def login_failed(self, username: str) -> defer.Deferred | None:
        """535 after a per-IP growing delay; one fail2ban-friendly maillog line."""
        f = self.factory
        delay = 0.0
        if f.throttle is not None:
            delay = f.throttle.record_failure(self.peer_ip)
        f.maillog(
            f"warning: {self.client_label()}: SASL {self.auth_mech} authentication failed: "
            f"user={printable(username, 100)}"
        )
        answer: defer.Deferred = defer.Deferred()
        if delay <= 0:
            answer.callback(None)
        else:
            self.callLater(delay, answer.callback, None)
        answer.addCallback(lambda _: self.reply(535, "5.7.8", "Error: authentication failed"))
        if not self.busy:
            self.wait(answer, "authentication delay")
        return answer

    def do_mail(self, arg: str) -> None:
        f = self.factory
        s = f.settings
        if self.helo is None:
            raise ReplyError(503, "5.5.1", "Error: send HELO/EHLO first")
        if self.txn is not None:
            raise ReplyError(503, "5.5.1", "Error: nested MAIL command")
        if f.mode.auth_required and self.auth_user is None:
            raise ReplyError(530, "5.7.0", "Authentication required")
        path = parse_path(arg, "FROM", allow_null=True)
        params = path.params
        if not self.esmtp and params:
            raise ReplyError(555, "5.5.4", "Error: parameters need EHLO")
        smtputf8 = "SMTPUTF8" in params
        if smtputf8 and params["SMTPUTF8"] is not None:
            raise ReplyError(501, "5.5.4", "Error: SMTPUTF8 takes no value")
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit():
                    raise ReplyError(501, "5.5.4", "Error: bad SIZE parameter")
                if int(value) > s.max_message_size:
                    raise ReplyError(
                        552, "5.3.4", "Message size exceeds fixed maximum message size"
                    )
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    raise ReplyError(501, "5.5.4", "Error: BODY must be 7BIT or 8BITMIME")
            elif key == "RET":
                if value is None or value.upper() not in ("FULL", "HDRS"):
                    raise ReplyError(501, "5.5.4", "Error: RET must be FULL or HDRS")
            elif key == "ENVID":
                if value is None or len(value) > 100 or not is_xtext(value):
                    raise ReplyError(501, "5.5.4", "Error: bad ENVID parameter")
            elif key in ("SMTPUTF8", "AUTH"):
                pass  # AUTH=<> (RFC 4954 5) is accepted and ignored
            else:
                raise ReplyError(555, "5.5.4", f"Error: unsupported parameter {key}")
        if path.address:
            check_address(path.address, smtputf8, "FROM")
        if not self.enough_space(int(params.get("SIZE") or 0)):
            raise ReplyError(452, "4.3.1", "Insufficient system storage")
        d = defer.maybeDeferred(
            f.policy.check_sender, path.address, self.peer_ip, self.peer_name, self.auth_user
        )

        def decided(verdict: Verdict) -> None:
            if not verdict.ok and not verdict.discard:
                self.log_reject("MAIL", verdict, path.address, None)
                self.reply(verdict.code, *_split_text(verdict.text))
                return
            self.txn = Transaction(
                path.address, params, discard=verdict.discard, received_at=time.time()
            )
            self.reply(250, "2.1.0", "Ok")

        self.wait(d.addCallback(decided), "sender check")

    def enough_space(self, size: int) -> bool:
        return self.factory.free_space() >= self.factory.settings.min_free_space + 2 * size

    def do_rcpt(self, arg: str) -> None:
        f = self.factory
        if self.txn is None:
            raise ReplyError(503, "5.5.1", "Error: need MAIL command")
        if len(self.txn.recipients) >= f.settings.max_recipients:
            raise ReplyError(452, "4.5.3", "Error: too many recipients")
        path = parse_path(arg, "TO", allow_null=False)
        address = path.address
        if address.lower() == "postmaster":
            address = f"postmaster@{f.settings.hostname.partition('.')[2] or f.settings.hostname}"
        smtputf8 = "SMTPUTF8" in self.txn.params
        notify = orcpt = None
        for key, value in path.params.items():
            if key == "NOTIFY":
                words = (value or "").upper().split(",")
                if (
                    not value
                    or not set(words) <= {"NEVER", "SUCCESS", "FAILURE", "DELAY"}
                    or ("NEVER" in words and len(words) > 1)
                ):
                    raise ReplyError(501, "5.5.4", "Error: bad NOTIFY parameter")
                notify = ",".join(words)
            elif key == "ORCPT":
                if (
                    not value
                    or ";" not in value
                    or len(value) > 500
                    or not is_xtext(value.partition(";")[2])
                ):
                    raise ReplyError(501, "5.5.4", "Error: bad ORCPT parameter")
                orcpt = value
            else:
                raise ReplyError(555, "5.5.4", f"Error: unsupported parameter {key}")
        check_address(address, smtputf8, "TO")
        relay = self.client_may_relay()
        d = defer.maybeDeferred(
            f.policy.resolve_recipient,
            address,
            self.peer_ip,
            self.peer_name,
            self.auth_user,
            relay,
        )

        def decided(resolution: Any) -> None:
            verdict = resolution.verdict
            if self.txn is None:
                return
            if not verdict.ok and not verdict.discard:
                self.log_reject("RCPT", verdict, self.txn.mail_from, address)
                self.reply(verdict.code, *_split_text(verdict.text))
                return
            if verdict.discard:
                self.txn.discard = True
            self.txn.recipients.append(
                Recipient(
                    address,
                    tuple(resolution.mailboxes),
                    remote=resolution.remote,
                    forward_to=tuple(getattr(resolution, "forward_to", ())),
                    notify=notify,
                    orcpt=orcpt,
                )
            )
            self.reply(250, "2.1.5", "Ok")

        self.wait(d.addCallback(decided), "recipient check")

    def client_may_relay(self) -> bool:
        return self.connect_verdict.relay

    def do_data(self, arg: str) -> None:
        if arg:
            raise ReplyError(501, "5.5.4", "Syntax: DATA")
        if self.txn is None:
            raise ReplyError(503, "5.5.1", "Error: need MAIL command")
        if not self.txn.recipients:
            raise ReplyError(554, "5.5.1", "Error: no valid recipients")
        txn = self.txn
        envelope = self.envelope(txn)
        message = None
        if not txn.discard:
            try:
                message = self.factory.sink.begin(envelope)
            except DiskFull:
                self.txn = None
                raise ReplyError(452, "4.3.1", "Insufficient system storage") from None
        self.data_state = _DataState(
            message=message,
            envelope=envelope,
            max_size=self.factory.settings.max_message_size,
            max_line=self.factory.settings.max_text_line,
        )
        if message is not None:
            sasl = ""
            if self.auth_user is not None:
                sasl = f", sasl_method={self.auth_mech}, sasl_username={self.auth_user}"
            self.factory.maillog(f"{message.queue_id}: client={self.client_label()}{sasl}")
            try:
                message.write(self.received_header(envelope, message.queue_id))
            except DiskFull:
                self.data_state.disk_full = True
        self.send_line("354 End data with <CR><LF>.<CR><LF>")

    def envelope(self, txn: Transaction) -> Envelope:
        p = txn.params
        proto = "ESMTP" if self.esmtp else "SMTP"
        if self.tls_info is not None:
            proto += "S"
        if self.auth_user is not None:
            proto += "A"
        if proto == "SMTPA" or proto == "SMTPSA":  # RFC 3848 has no such keywords
            proto = "E" + proto
        return Envelope(
            mail_from=txn.mail_from,
            recipients=tuple(txn.recipients),
            client_ip=self.peer_ip,
            helo=self.helo or "",
            client_name=self.peer_name,
            auth_user=self.auth_user,
            tls=self.tls_info,
            protocol=proto,
            body=(p.get("BODY") or "7BIT").upper(),
            smtputf8="SMTPUTF8" in p,
            dsn_ret=(p.get("RET") or None) and p["RET"].upper(),
            dsn_envid=p.get("ENVID"),
            received_at=txn.received_at,
            session_id=self.session_id,
        )

    def received_header(self, env: Envelope, queue_id: str) -> bytes:
        s = self.factory.settings
        lines = [
            f"Received: from {env.helo} ({env.client_name or 'unknown'} [{env.client_ip}])",
            f"\tby {s.hostname} (mailappliance) with {env.protocol} id {queue_id}",
        ]
        if env.tls and " " in env.tls:
            version, cipher = env.tls.split(" ", 1)
            lines.append(f"\t(using {version} with cipher {cipher})")
        if env.auth_user:
            lines.append(f"\t(Authenticated sender: {env.auth_user})")
        if len(env.recipients) == 1:
            lines.append(f"\tfor <{env.recipients[0].address}>; {formatdate(localtime=False)}")
        else:
            lines[-1] += f"; {formatdate(localtime=False)}"
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def feed_data(self) -> bool:
        """Consume DATA bytes; True when the end marker was seen (then commands resume)."""
        st = self.data_state
        done, self.buffer = st.feed(self.buffer)
        if st.message is not None:
            if st.failed:
                st.message.abort()  # the message will be refused: stop using disk for it now
            elif st.pending_write:
                try:
                    st.message.write(st.pending_write)
                except DiskFull:
                    st.disk_full = True
                    st.message.abort()
        st.pending_write = b""
        if not done:
            return False
        self.data_state = None
        self.end_of_data(st)
        return True

    def end_of_data(self, st: _DataState) -> None:
        txn, self.txn = self.txn, None
        problem = st.problem()
        if problem is not None:
            if st.message is not None:
                st.message.abort()
            code, enhanced, text = problem
            self.log_reject(
                "END-OF-MESSAGE", Verdict(code, f"{enhanced} {text}"), txn.mail_from, None
            )
            self.reply(code, enhanced, text)
            return
        if st.message is None:  # DISCARD: say yes, keep nothing
            self.factory.maillog(f"NOQUEUE: discard: from=<{printable(txn.mail_from)}>")
            self.reply(250, "2.0.0", "Ok: discarded")
            return
        message = st.message
        d = defer.maybeDeferred(message.commit)

        def committed(queue_id: str) -> None:
            self.reply(250, "2.0.0", f"Ok: queued as {queue_id}")

        def failed(failure: Any) -> None:
            message.abort()
            if failure.check(DiskFull):
                self.reply(452, "4.3.1", "Insufficient system storage")
                return
            self.log.failure("commit of {queue_id} failed", failure, queue_id=message.queue_id)
            self.reply(451, "4.3.0", "Error: local error in processing")

        self.wait(d.addCallbacks(committed, failed), "commit")

    def wait(self, d: defer.Deferred, what: str) -> None:
        """Hold input until d (which sends its own reply) has fired."""
        self.busy = True

        def resume(result: Any) -> None:
            self.busy = False
            if self.transport is not None and not self.closing:
                if self.paused:
                    self.paused = False
                    self.transport.resumeProducing()
                self.process()

        def unexpected(failure: Any) -> None:
            self.log.failure("{what} for {peer} failed", failure, what=what, peer=self.peer_ip)
            self.reply(451, "4.3.0", "Error: local error in processing")

        d.addErrback(unexpected).addBoth(resume)

    def log_reject(
        self, stage: str, verdict: Verdict, mail_from: str | None, rcpt: str | None
    ) -> None:
        parts = [
            f"NOQUEUE: reject: {stage} from {self.client_label()}: {verdict.code} {verdict.text};"
        ]
        if mail_from is not None:
            parts.append(f"from=<{printable(mail_from)}>")
        if rcpt is not None:
            parts.append(f"to=<{printable(rcpt)}>")
        parts.append(f"proto={'ESMTP' if self.esmtp else 'SMTP'} helo=<{self.helo or ''}>")
        self.factory.maillog(" ".join(parts))

    def do_rset(self, arg: str) -> None:
        self.txn = None
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
        self.send_line("214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY")
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
    "MAIL": SMTPSession.do_mail,
    "RCPT": SMTPSession.do_rcpt,
    "DATA": SMTPSession.do_data,
    "RSET": SMTPSession.do_rset,
    "NOOP": SMTPSession.do_noop,
    "VRFY": SMTPSession.do_vrfy,
    "EXPN": SMTPSession.do_expn,
    "HELP": SMTPSession.do_help,
    "QUIT": SMTPSession.do_quit,
}


def _split_text(text: str) -> tuple[str, str]:
    """'5.7.1 Relaying denied' -> ('5.7.1', 'Relaying denied')."""
    head, _, rest = text.partition(" ")
    if head.count(".") == 2 and head.replace(".", "").isdigit():
        return head, rest
    return "5.0.0", text


class _DataState:
    """DATA in bulk: finds CRLF.CRLF, un-stuffs dots, and checks every line on the way.

    Only complete lines are consumed; an unfinished line stays in the caller's buffer unless
    it is already longer than the limit, in which case it is dropped and remembered as a
    problem (the message will be refused at its end, we never leave DATA early).
    """

    def __init__(self, *, message: Any, envelope: Envelope, max_size: int, max_line: int) -> None:
        self.message = message
        self.envelope = envelope
        self.max_size = max_size
        self.max_line = max_line
        self.size = 0
        self.at_line_start = True
        self.bare_newline = False
        self.line_too_long = False
        self.too_big = False
        self.disk_full = False
        self.pending_write = b""

    @property
    def failed(self) -> bool:
        return self.bare_newline or self.line_too_long or self.too_big or self.disk_full

    def problem(self) -> tuple[int, str, str] | None:
        if self.disk_full:
            return 452, "4.3.1", "Insufficient system storage"
        if self.too_big:
            return 552, "5.3.4", "Message size exceeds fixed maximum message size"
        if self.bare_newline:
            return 550, "5.5.2", "Message contains bare <CR> or <LF>, refused"
        if self.line_too_long:
            return 500, "5.5.6", f"Message line longer than {self.max_line} octets, refused"
        return None

    def feed(self, buf: bytes) -> tuple[bool, bytes]:
        """Take what can be taken from buf; return (end seen, leftover bytes)."""
        if not self.at_line_start:
            # in the middle of an over-long line: drop up to its CRLF
            end = buf.find(CRLF)
            if end < 0:
                return False, buf[-1:] if buf.endswith(b"\r") else b""
            buf = buf[end + 2 :]
            self.at_line_start = True
        probe = CRLF + buf  # the data starts at a line start: make ".\r\n" findable there
        marker = probe.find(b"\r\n.\r\n")
        if marker >= 0:
            chunk = buf[:marker]  # complete lines, CRLF of the last one included
            rest = buf[marker + 3 :]
            self.take(chunk)
            return True, rest
        last = buf.rfind(CRLF)
        if last < 0:
            if len(buf) > self.max_line:
                self.line_too_long = True
                self.at_line_start = False
                return False, b""
            return False, buf
        chunk, rest = buf[: last + 2], buf[last + 2 :]
        self.take(chunk)
        if len(rest) > self.max_line:
            self.line_too_long = True
            self.at_line_start = False
            rest = b"\r" if rest.endswith(b"\r") else b""
        return False, rest

    def take(self, chunk: bytes) -> None:
        """Check and un-stuff complete lines (chunk ends in CRLF or is empty)."""
        if not chunk:
            return
        crlf = chunk.count(CRLF)
        if chunk.count(b"\n") != crlf or chunk.count(b"\r") != crlf:
            self.bare_newline = True
        if len(chunk) > self.max_line and not self.line_too_long:
            if max(map(len, chunk.split(CRLF))) + 2 > self.max_line:
                self.line_too_long = True
        if b"\r\n." in chunk or chunk.startswith(b"."):
            chunk = (CRLF + chunk).replace(b"\r\n.", b"\r\n")[2:]
        self.size += len(chunk)
        if self.size > self.max_size:
            self.too_big = True
        if not self.failed:
            self.pending_write += chunk
