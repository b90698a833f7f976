"""The IMAP session (RFC 3501, 7888, 4959, 2177): one client connection's framing and states.

NOT AUTHENTICATED (CAPABILITY, NOOP, LOGOUT, STARTTLS, LOGIN, AUTHENTICATE, ID) ->
AUTHENTICATED (the mailbox commands, appliance.imap.mailboxes) -> SELECTED (the message
commands, appliance.imap.messages) -> LOGOUT. Here:
- framing: a command is a line, and when a line ends in a literal announcement `{n}` (or
  `{n+}`, LITERAL+) the n octets after it and the next line belong to it too; a synchronizing
  literal is asked for with `+ OK`, one too large is refused before the client sends it (a
  non-synchronizing one is read and thrown away), and the whole command then goes to
  appliance.imap.parser at once;
- dispatch by state, `BAD` for what does not parse or is not allowed now, `NO` for what
  cannot be done, and never a traceback: an unexpected failure is logged and answered
  `NO [SERVERBUG]`; every BAD counts toward max_errors;
- the login (LOGIN, AUTHENTICATE PLAIN/LOGIN with SASL-IR), checked by appliance.login's
  LoginCheck with the shared throttle; LOGINDISABLED and no plaintext mechanism before TLS
  except from [auth] plaintext_networks; STARTTLS drops whatever was pipelined behind it;
- untagged updates of the selected folder (appliance.imap.selected) before a command's
  tagged answer, and pushed while the client IDLEs (the store's watch() for deliveries made
  here, a poll for changes made by other processes or nodes).
Framing, reply batching, back-pressure and deadlines are appliance.lineconn's; every store
call runs in the worker pool.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from appliance.imap.events import IMAPEvents
from appliance.imap.fetch import flags_update
from appliance.imap.parser import BadCommand, Command, literal_at_end, parse_command
from appliance.imap.selected import Selected, Updates, flags_lines
from appliance.imap.tokens import ParseError
from appliance.interfaces import Mailbox, SaslCredentials
from appliance.limits import Deadlines
from appliance.lineconn import LineConnection
from appliance.log import printable
from appliance.login import LoginCheck
from appliance.sasl import (
    MAX_LINE,
    Challenge,
    SaslError,
    SaslExchange,
    offered_mechanisms,
    plaintext_allowed,
)

if TYPE_CHECKING:
    from appliance.imap.factory import IMAPFactory

NOT_AUTH = "not authenticated"
AUTH = "authenticated"
SELECTED = "selected"
LOGOUT = "logout"
ANY = (NOT_AUTH, AUTH, SELECTED)
SASL_LINE_LIMIT = MAX_LINE + 2
SYNC_INTERVAL = 1.0  # seconds: commands that need no look at the folder take one this often
CAPABILITIES = (
    "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT UIDPLUS MOVE CHILDREN"
    " SPECIAL-USE LIST-EXTENDED LIST-STATUS ESEARCH SORT SORT=DISPLAY THREAD=REFERENCES"
    " THREAD=ORDEREDSUBJECT MULTIAPPEND"
)

Handler = Callable[["IMAPSession", Command, bool], None]


class IMAPSession(LineConnection):
    """One IMAP client connection, built by IMAPFactory.buildProtocol."""

    events: IMAPEvents  # set when connected
    login_check: LoginCheck  # set when connected

    def __init__(self, factory: IMAPFactory) -> None:
        super().__init__()
        self.factory = factory
        self.session_id = secrets.token_hex(4)
        self.state = NOT_AUTH
        self.login: str | None = None
        self.mailbox: Mailbox | None = None
        self.selected: Selected | None = None
        self.special: dict[str, str] = {}
        self.enabled: set[str] = set()
        # framing of the command being read
        self.parts: list[bytes] = []
        self.command_size = 0
        self.literal_left = 0
        self.discarding = False  # reading a refused non-synchronizing literal's octets
        self.refused_tag = ""
        # AUTHENTICATE under way: its tag, mechanism and exchange
        self.sasl: SaslExchange | None = None
        self.sasl_tag = ""
        self.sasl_mechanism = ""
        # IDLE
        self.idle_tag: str | None = None
        self.idle_poll: IDelayedCall | None = None
        self.stop_watch: Callable[[], None] | None = None
        self.lost = False
        self.logout_reason = "Connection closed"
        self.logged_out = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_poll = 0.0  # reactor time of the last look at the selected folder

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:  # noqa: N802 (Twisted's API)
        f = self.factory
        s = f.settings
        peer, local = self.addresses()
        self.events = IMAPEvents(f.events, self.session_id, peer, local)
        self.events.connect()
        self.login_check = LoginCheck(
            authenticator=f.authenticator,
            throttle=f.throttle,
            reactor=f.reactor,
            peer_ip=self.peer_ip,
            events=self.events,
            answers=self,
        )
        if f.implicit_tls:
            self.tls_info = "TLS"
        if not self.admit_to(f.slots):
            self.events.reject("too many connections")
            self.send_line("* BYE [UNAVAILABLE] Too many connections, try again later")
            self.close_connection()
            return
        slots = f.slots
        self.deadlines = Deadlines(
            f.reactor, s.limits, self.timed_out, stressed=lambda: slots.stressed
        )
        banner = s.banner or f"{s.hostname} mailappliance ready"
        self.send_line(f"* OK [CAPABILITY {self.capabilities()}] {banner}")

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self.lost = True
        self.sasl = None
        self.end_idle()
        if self.deadlines is not None:
            self.deadlines.stop()
        self.release_slot()
        self.release_drain_waiters()
        self.log_logout()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's API)
        self.bytes_in += len(data)
        super().dataReceived(data)

    def send_bytes(self, data: bytes) -> None:
        self.bytes_out += len(data)
        super().send_bytes(data)

    def timed_out(self, which: str) -> None:
        self.logout_reason = "Disconnected for inactivity"
        if self.login is None:
            self.events.timeout(f"{which} timeout")
        self.send_line("* BYE Disconnected for inactivity.")
        self.close_connection()
        self.abort_if_stuck()

    def log_logout(self) -> None:
        if self.login is None or self.logged_out:
            return
        self.logged_out = True
        self.events.logout(
            self.login, self.logout_reason, bytes_in=self.bytes_in, bytes_out=self.bytes_out
        )

    def tls_established(self, tls: str) -> None:
        self.events.tls(tls)

    # ------------------------------------------------------------------ Slot (appliance.limits)

    def idle_since(self) -> float | None:
        if self.login is not None or self.busy or self.closing or self.sasl is not None:
            return None
        deadlines = self.deadlines
        return deadlines.request_start if deadlines is not None else None

    def evict(self) -> None:
        self.events.reject("closing idle session")
        self.send_line("* BYE [UNAVAILABLE] Closing idle session")
        self.close_connection()
        self.abort_if_stuck()

    # ------------------------------------------------------------------ replies

    def untagged(self, text: str) -> None:
        self.send_line(f"* {text}")

    def tagged(self, tag: str, status: str, text: str) -> None:
        self.send_line(f"{tag} {status} {text}")
        if status == "BAD":
            self.note_error()

    def capabilities(self) -> str:
        f = self.factory
        caps = [CAPABILITIES]
        if self.state == NOT_AUTH:
            if self.tls_info is None and f.tls is not None and not f.implicit_tls:
                caps.append("STARTTLS")
            if not self.plaintext_ok():
                caps.append("LOGINDISABLED")
            caps += [f"AUTH={m}" for m in self.mechanisms()]
        return " ".join(caps)

    # ------------------------------------------------------------------ LineConnection's hooks

    def line_limit(self) -> int:
        if self.sasl is not None:
            return SASL_LINE_LIMIT
        return self.factory.settings.max_command_line

    def line_too_long(self) -> None:
        self.sasl = None
        tag = self._tag_of(self.parts[0] if self.parts else self.overlong)
        self.parts = []
        self.command_size = 0
        self.tagged(tag or "*", "BAD", "Command line too long")

    def max_errors(self) -> int:
        return self.factory.settings.max_errors

    def too_many_errors(self) -> None:
        self.logout_reason = "Too many invalid commands"
        self.send_line("* BYE Too many invalid IMAP commands.")
        self.close_connection()

    def local_error(self, what: str) -> None:
        self.send_line(f"* NO [SERVERBUG] Internal error in {what}")

    def in_data(self) -> bool:
        return self.literal_left > 0

    def feed_data(self) -> bool:
        n = min(self.literal_left, len(self.buffer))
        if not self.discarding:
            self.parts.append(self.buffer[:n])
        self.buffer = self.buffer[n:]
        self.literal_left -= n
        return self.literal_left == 0

    @staticmethod
    def _tag_of(line: bytes) -> str:
        tag = line.split(b" ", 1)[0]
        if tag and len(tag) <= 64 and tag.isascii() and tag.decode().isprintable():
            return tag.decode()
        return "*"

    def line_received(self, raw: bytes) -> None:
        if self.idle_tag is not None:
            self.idle_line(raw)
            return
        if self.sasl is not None:
            self.sasl_line(raw)
            return
        if self.discarding:  # the rest of a command whose literal was refused
            self.discarding = False
            if literal_at_end(raw) is None:
                self.tagged(self.refused_tag, "BAD", "Literal too large")
                return
        self.command_size += len(raw) + 2
        try:
            literal = literal_at_end(raw)
        except ParseError as exc:
            self.parts = []
            self.command_size = 0
            self.tagged(self._tag_of(raw), "BAD", str(exc))
            return
        if literal is None:
            parts, self.parts = self.parts, []
            parts.append(raw)
            self.command_size = 0
            self.execute(b"".join(parts))
            return
        size, nonsync = literal
        self.parts.append(raw + b"\r\n")
        if self.command_size + size > self.factory.settings.max_literal + 65536:
            tag = self._tag_of(self.parts[0])
            self.parts = []
            self.command_size = 0
            if nonsync:  # the client sends it anyway: read and forget it
                self.discarding = True
                self.refused_tag = tag
                self.literal_left = size
            else:
                self.tagged(tag, "BAD", "Literal too large")
            return
        self.command_size += size
        self.literal_left = size
        if not nonsync:
            self.send_line("+ OK")
        if size == 0:
            self.literal_left = 0

    # ------------------------------------------------------------------ dispatch

    def execute(self, data: bytes) -> None:
        try:
            cmd = parse_command(data)
        except BadCommand as exc:
            self.tagged(exc.tag or "*", "BAD", f"Error in IMAP command: {exc}")
            return
        except ParseError as exc:
            self.tagged(self._tag_of(data), "BAD", f"Error in IMAP command: {exc}")
            return
        name, args, uid = cmd.name, cmd.args, False
        if name == "UID":
            if not args or not isinstance(args[0], str):
                self.tagged(cmd.tag, "BAD", "UID needs a command")
                return
            name, uid = str(args[0]).upper(), True
            cmd = Command(cmd.tag, name, args[1:])
            if name not in UID_COMMANDS:
                self.tagged(cmd.tag, "BAD", f"Unknown UID command {printable(name, 20)}")
                return
        entry = COMMANDS.get(name)
        if entry is None:
            self.tagged(cmd.tag, "BAD", f"Unknown command {printable(name, 20)}")
            return
        handler, states = entry
        if self.state not in states:
            why = "Not authenticated" if self.state == NOT_AUTH else "No mailbox selected"
            if self.state != NOT_AUTH and NOT_AUTH in states and SELECTED not in states:
                why = "Already authenticated"
            self.tagged(cmd.tag, "BAD", f"{name} not allowed now: {why}")
            return
        try:
            handler(self, cmd, uid)
        except ParseError as exc:
            self.tagged(cmd.tag, "BAD", f"Error in IMAP command {name}: {exc}")
        except Exception:
            self.log.failure("IMAP {name} from {peer} failed", name=name, peer=self.peer_ip)
            self.tagged(cmd.tag, "NO", "[SERVERBUG] Internal error")

    def run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """A blocking store call in the worker pool; the replies its result leads to are
        gathered into one write (LineConnection.gather), sent when the command's wait ends."""
        return self.factory.pool.run(fn, *args).addBoth(self._gathered)

    def run_quick(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """A store call that writes nothing and is usually cheap: on the reactor while it
        stays cheap (appliance.workers.QuickCalls), else in the pool."""
        return self.factory.quick.run(fn, *args).addBoth(self._gathered)

    def _gathered(self, result: Any) -> Any:
        self.gather()
        return result

    def hold(self, d: defer.Deferred[Any], tag: str, what: str) -> None:
        """Hold input until d (which answers the command) fires; an unexpected failure is
        logged and answered NO [SERVERBUG] under the command's tag."""

        def failed(failure: Failure) -> None:
            self.log.failure("IMAP {what} for {peer} failed", failure, what=what, peer=self.peer_ip)
            if not self.lost:
                self.tagged(tag, "NO", "[SERVERBUG] Internal error")

        self.wait(d.addErrback(failed), what)

    # ------------------------------------------------------------------ the selected folder

    def poll(self, expunges: bool = True, uid_command: bool = False) -> defer.Deferred[None]:
        """Look at the selected folder again and send what changed (before a tagged answer)."""
        sel = self.selected
        mailbox = self.mailbox
        if sel is None or mailbox is None:
            return defer.succeed(None)
        store = self.factory.store

        def look() -> tuple[Any, int]:
            listing = store.list_messages(mailbox, sel.folder)
            first = sel.first_recent
            if listing.uidnext > sel.uidnext and not sel.readonly:
                first = store.claim_recent(mailbox, sel.folder, True)
                first = max(first, sel.uidnext)
            elif listing.uidnext > sel.uidnext:
                first = store.claim_recent(mailbox, sel.folder, False)
            return listing, first

        def looked(result: tuple[Any, int]) -> None:
            listing, first = result
            if self.selected is not sel or self.lost:
                return
            self.send_updates(sel.refresh(listing, expunges, first), uid_command)

        def gone(failure: Failure) -> None:
            failure.trap(FileNotFoundError)
            if self.selected is sel and not self.lost:
                # the folder was deleted or renamed by another session
                self.send_line("* BYE Selected mailbox was removed.")
                self.close_connection()

        def peeked(listing: Any) -> defer.Deferred[None] | None:
            if listing is None or listing.uidnext > sel.uidnext:
                # messages came or went: the uid list (and \Recent) need the worker pool
                return self.run(look).addCallbacks(looked, gone)
            looked((listing, sel.first_recent))
            return None

        d = self.run_quick(store.peek_messages, mailbox, sel.folder)
        return d.addCallbacks(peeked, gone)

    def send_updates(self, updates: Updates, uid_command: bool = False) -> None:
        sel = self.selected
        if sel is None or not updates:
            return
        for seq in updates.expunged:
            self.untagged(f"{seq} EXPUNGE")
        if updates.keywords:
            for line in flags_lines(sel.keywords, sel.readonly):
                self.untagged(line)
        if updates.exists is not None:
            self.untagged(f"{updates.exists} EXISTS")
            self.untagged(f"{updates.recent or 0} RECENT")
        for seq in updates.flags:
            if seq <= sel.exists:
                uid = sel.uids[seq - 1] if uid_command else None
                self.send_bytes(flags_update(seq, uid, sel.flags_of(seq)))

    def finish(
        self,
        tag: str,
        text: str,
        *,
        expunges: bool = True,
        uid_command: bool = False,
        sync: bool = True,
    ) -> defer.Deferred[None]:
        """Send the folder's updates, then `tag OK text`. sync: look at the folder now (NOOP,
        CHECK, IDLE and the commands that change what is in it); otherwise only if the last
        look is older than SYNC_INTERVAL (RFC 3501 5.2: a client cannot rely on updates
        other than after NOOP; a FETCH or STORE need not list the folder each time)."""
        now = self.factory.reactor.seconds()
        if self.selected is None or (not sync and now - self.last_poll < SYNC_INTERVAL):
            self.tagged(tag, "OK", text)
            return defer.succeed(None)
        self.last_poll = now
        d = self.poll(expunges, uid_command)
        d.addCallback(lambda _: None if self.lost else self.tagged(tag, "OK", text))
        return d

    def unselect(self) -> None:
        self.selected = None
        if self.state == SELECTED:
            self.state = AUTH

    # ------------------------------------------------------------------ IDLE (RFC 2177)

    def start_idle(self, tag: str) -> None:
        self.idle_tag = tag
        self.send_line("+ idling")
        store = self.factory.store
        mailbox = self.mailbox

        def delivered(to: Mailbox) -> None:
            if to == mailbox and self.idle_tag is not None:
                self.idle_check()

        self.stop_watch = store.watch(delivered)
        self._schedule_idle_poll()

    def _schedule_idle_poll(self) -> None:
        if self.idle_tag is None or self.lost:
            return
        self.idle_poll = self.factory.reactor.callLater(
            self.factory.settings.idle_poll, self._idle_polled
        )

    def _idle_polled(self) -> None:
        self.idle_poll = None
        self.idle_check().addBoth(lambda _: self._schedule_idle_poll())

    def idle_check(self) -> defer.Deferred[None]:
        if self.selected is None:
            return defer.succeed(None)

        def failed(failure: Failure) -> None:
            self.log.failure("IDLE check for {peer} failed", failure, peer=self.peer_ip)

        def sent(_: object) -> None:
            self.end_gather()  # (no wait() is running to send what the poll gathered)

        return self.poll(True).addErrback(failed).addBoth(sent)

    def end_idle(self) -> None:
        call, self.idle_poll = self.idle_poll, None
        if call is not None and call.active():
            call.cancel()
        stop, self.stop_watch = self.stop_watch, None
        if stop is not None:
            stop()

    def idle_line(self, raw: bytes) -> None:
        tag, self.idle_tag = self.idle_tag or "*", None
        self.end_idle()
        if raw.strip().upper() != b"DONE":
            self.tagged(tag, "BAD", "Expected DONE")
            return
        self.hold(self.finish(tag, "Idle completed."), tag, "IDLE")

    # ------------------------------------------------------------------ logging in

    def plaintext_ok(self) -> bool:
        s = self.factory.settings
        return plaintext_allowed(self.tls_info, self.peer_ip, s.plaintext_networks)

    def mechanisms(self) -> list[str]:
        f = self.factory
        if f.authenticator is None:
            return []
        cram = f.authenticator.cram_md5_available()
        return offered_mechanisms(f.settings.mechanisms, self.plaintext_ok(), cram)

    def check_login(
        self, tag: str, credentials: SaslCredentials | None, username: str, method: str
    ) -> None:
        self.login_tag = tag
        d = self.login_check.check(
            credentials, username, method, lambda login: self.logged_in(tag, login, method)
        )
        self.hold(d, tag, "authentication")

    def logged_in(self, tag: str, login: str, method: str) -> defer.Deferred[None]:
        mailbox = Mailbox.of(login)
        store = self.factory.store

        def ready(special: dict[str, str]) -> None:
            if self.lost:
                return
            self.special = special
            self.login = login
            self.mailbox = mailbox
            self.state = AUTH
            if self.deadlines is not None:
                self.deadlines.greeted()
            self.events.login(login, method, self.tls_info is not None)
            self.tagged(tag, "OK", f"[CAPABILITY {self.capabilities()}] Logged in")

        return self.run(store.special_use, mailbox).addCallback(ready)

    # LoginAnswers (appliance.login)
    login_tag = "*"

    def blocked(self) -> None:
        self.tagged(self.login_tag, "NO", "[UNAVAILABLE] Too many failed logins")
        self.send_line("* BYE Too many failed logins")
        self.close_connection()

    def user_blocked(self) -> None:
        self.tagged(self.login_tag, "NO", "[UNAVAILABLE] Too many failed logins, try again later")

    def failed(self) -> None:
        self.tagged(self.login_tag, "NO", "[AUTHENTICATIONFAILED] Authentication failed.")

    def unavailable(self) -> None:
        self.tagged(self.login_tag, "NO", "[UNAVAILABLE] Temporary authentication failure.")

    def start_sasl(self, tag: str, mechanism: str, initial: str | None) -> None:
        self.login_tag = tag
        if self.login_check.refuse_blocked("", mechanism):
            return
        self.sasl_tag = tag
        self.sasl_mechanism = mechanism
        self.sasl = SaslExchange(
            mechanism,
            self.factory.settings.hostname,
            initial,
            mechanisms=self.factory.settings.mechanisms,
        )
        self.sasl_step(None)

    def sasl_line(self, raw: bytes) -> None:
        if raw.strip() == b"*":
            self.sasl = None
            self.tagged(self.sasl_tag, "BAD", "Authentication aborted by client.")
            return
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            self.sasl = None
            self.tagged(self.sasl_tag, "BAD", "Invalid base64 data")
            return
        self.sasl_step(line)

    def sasl_step(self, line: str | None) -> None:
        exchange = self.sasl
        if exchange is None:
            return
        step = exchange.step(line)
        if isinstance(step, Challenge):
            self.send_line(f"+ {step.text}")
            return
        self.sasl = None
        tag, method = self.sasl_tag, self.sasl_mechanism
        if isinstance(step, SaslError):
            if step.code == 535:
                self.check_login(tag, None, step.text, method)
                return
            self.tagged(tag, "BAD", step.text)
            return
        self.check_login(tag, step.credentials, printable(step.username, 100), method)

    def password_login(self, tag: str, user: bytes, password: bytes) -> None:
        self.check_login(tag, UsernamePassword(user, password), printable(user, 100), "LOGIN")


# the command table, filled by the modules that implement the commands
COMMANDS: dict[str, tuple[Handler, tuple[str, ...]]] = {}
UID_COMMANDS = {"FETCH", "STORE", "COPY", "MOVE", "SEARCH", "SORT", "THREAD", "EXPUNGE"}


def command(name: str, *states: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = (handler, states or ANY)
        return handler

    return register


# the command modules register themselves on import
from appliance.imap import commands_any, mailboxes, messages  # noqa: E402,F401
