"""The POP3 session (RFC 1939, 2449, 2595, 5034, 3206): one client connection's state machine.

AUTHORIZATION (CAPA, STLS, USER/PASS, AUTH, QUIT) -> TRANSACTION (STAT, LIST, RETR, TOP, UIDL,
DELE, RSET, NOOP, QUIT) -> UPDATE (the deletions, applied durably through the worker pool,
after QUIT only: a dropped connection deletes nothing). The login dialogue is
appliance.pop3.auth's; framing, reply batching, waiting, back-pressure and deadlines are
appliance.lineconn's. After a good login the mailbox's session lock is taken (a second
session gets `-ERR [IN-USE]`), refreshed while the session lasts and released at its end,
every store call in the pool. RETR and TOP of a small message (up to 64 KiB, most mail) are
answered from what appliance.pop3.readahead read ahead of them in the pool, without leaving
the reactor; a bigger one is streamed in 64 KiB chunks read in the pool, each only once the
client has read the previous ones; both are dot-stuffed on the way (appliance.pop3.stream).
STLS discards whatever was pipelined behind it. Every -ERR counts
toward max_errors; nothing a client sends reaches a traceback.

A session holds one of the POP3 service's ConnectionSlots and is a Slot to it: while it waits
for a command before logging in it may be closed to make room for a new client.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from appliance.interfaces import Mailbox, MailboxLock, Maildrop, MaildropMessage
from appliance.limits import Deadlines
from appliance.lineconn import LineConnection, write_now
from appliance.pop3.auth import SASL_LINE_LIMIT, POP3Auth
from appliance.pop3.events import POP3Events
from appliance.pop3.readahead import QUICK_MESSAGES, ReadAhead
from appliance.pop3.stream import CHUNK, DotStuffer, TopCut, stuffed

if TYPE_CHECKING:
    from appliance.pop3.factory import POP3Factory

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"


@dataclass
class Counts:
    """What the session did, for the logout line."""

    top: int = 0
    top_bytes: int = 0
    retr: int = 0
    retr_bytes: int = 0
    deleted: int = 0


class POP3Session(LineConnection):
    """One POP3 client connection, built by POP3Factory.buildProtocol."""

    events: POP3Events  # set when connected

    def __init__(self, factory: POP3Factory) -> None:
        super().__init__()
        self.factory = factory
        self.session_id = secrets.token_hex(4)
        self.state = AUTHORIZATION
        self.auth = POP3Auth(self)
        self.login: str | None = None
        self.method = ""
        self.lock: MailboxLock | None = None
        self.maildrop: Maildrop | None = None
        self.readahead: ReadAhead | None = None  # once logged in
        self.deleted: set[int] = set()
        self.retrieved: set[int] = set()
        self.counts = Counts()
        self.lost = False
        self.updating = False  # UPDATE runs: its end releases the lock
        self.logout_reason = "Connection closed"
        self.logged_out = False
        self.refresh_call: IDelayedCall | None = None

    # ------------------------------------------------------------------ connection

    def connectionMade(self) -> None:  # noqa: N802 (Twisted's API)
        f = self.factory
        s = f.settings
        peer, local = self.addresses()
        self.events = POP3Events(f.events, self.session_id, peer, local)
        self.events.connect()
        if f.implicit_tls:
            self.tls_info = "TLS"  # refined once the handshake completes
        if not self.admit_to(f.slots):
            self.events.reject("too many connections")
            self.send_line("-ERR [SYS/TEMP] Too many connections, try again later")
            self.close_connection()
            return
        slots = f.slots
        self.deadlines = Deadlines(
            f.reactor, s.limits, self.timed_out, stressed=lambda: slots.stressed
        )
        self.send_line(f"+OK {s.banner or s.hostname + ' mailappliance ready'}")

    def connectionLost(self, reason: Failure | None = None) -> None:  # noqa: N802
        self.lost = True
        self.auth.exchange = None
        if self.deadlines is not None:
            self.deadlines.stop()
        self.release_slot()
        self.release_drain_waiters()
        if self.readahead is not None:
            self.readahead.clear()
        if not self.updating:
            self.release_lock()
        self.log_logout()

    def timed_out(self, which: str) -> None:
        """A deadline passed (appliance.limits): -ERR [SYS/TEMP] and close."""
        self.logout_reason = "Disconnected for inactivity"
        if self.login is None:
            self.events.timeout(f"{which} timeout")
        self.send_line(f"-ERR [SYS/TEMP] Disconnected for inactivity, {which} timeout")
        self.close_connection()
        self.abort_if_stuck()

    def tls_established(self, tls: str) -> None:
        self.events.tls(tls)

    # ------------------------------------------------------------------ Slot (appliance.limits)

    def idle_since(self) -> float | None:
        if self.login is not None or self.busy or self.closing or self.auth.exchange is not None:
            return None
        deadlines = self.deadlines
        return deadlines.request_start if deadlines is not None else None

    def evict(self) -> None:
        self.events.reject("closing idle session")
        self.send_line("-ERR [SYS/TEMP] closing idle session")
        self.close_connection()
        self.abort_if_stuck()

    # ------------------------------------------------------------------ replies

    def ok(self, text: str) -> None:
        self.send_line(f"+OK {text}" if text else "+OK")

    def err(self, text: str, close: bool = False) -> None:
        self.send_line(f"-ERR {text}")
        if close:
            self.close_connection()
        else:
            self.note_error()

    def write_raw(self, data: bytes) -> None:
        """Message bytes, after any replies still gathered."""
        link = self.link
        if link is None or self.closing or not data:
            return
        if self.out:  # the +OK (and any reply) gathered before: one write, one TLS record
            data = b"".join(self.out) + data
            self.out.clear()
            self.out_bytes = 0
        write_now(link, data)

    # ------------------------------------------------------------------ LineConnection's hooks

    def line_limit(self) -> int:
        if self.auth.exchange is not None:
            return SASL_LINE_LIMIT
        return self.factory.settings.max_command_line

    def line_too_long(self) -> None:
        if self.auth.exchange is not None:
            self.auth.exchange = None
        self.err("line too long")

    def max_errors(self) -> int:
        return self.factory.settings.max_errors

    def too_many_errors(self) -> None:
        self.logout_reason = "Too many errors"
        self.send_line("-ERR Too many errors, closing connection")
        self.close_connection()

    def local_error(self, what: str) -> None:
        self.err("[SYS/TEMP] internal error")

    def line_received(self, raw: bytes) -> None:
        if b"\n" in raw or b"\r" in raw:
            self.auth.exchange = None
            self.err("bare CR or LF in command")
            return
        if self.auth.exchange is not None:
            self.auth.line_received(raw)
            return
        verb_b, _, arg_b = raw.partition(b" ")
        verb = verb_b.decode("ascii", "replace").upper()
        command = COMMANDS.get(verb) if verb.isascii() and verb.isalpha() else None
        if command is None:
            self.err("unknown command")
            return
        if self.state not in command.states:
            self.err(f"{verb} not allowed in the {self.state} state")
            return
        try:
            if command.raw:
                command.handler(self, arg_b)
                return
            try:
                arg = arg_b.decode("ascii").strip()
            except UnicodeDecodeError:
                self.err("invalid characters in command")
                return
            command.handler(self, arg)
        except Exception:
            self.log.failure("POP3 command {verb} from {peer} failed", verb=verb, peer=self.peer_ip)
            self.err("[SYS/TEMP] internal error")

    # ------------------------------------------------------------------ AUTHORIZATION

    def do_capa(self, arg: str) -> None:
        f = self.factory
        lines = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state == AUTHORIZATION:
            if self.auth.user_offered():
                lines.append("USER")
            mechs = self.auth.offered_mechanisms()
            if mechs:
                lines.append("SASL " + " ".join(mechs))
            if self.tls_info is None and f.tls is not None and not f.implicit_tls:
                lines.append("STLS")
        lines.append("IMPLEMENTATION mailappliance")
        self.ok("Capability list follows")
        for line in lines:
            self.send_line(line)
        self.send_line(".")

    def do_stls(self, arg: str) -> None:
        f = self.factory
        if f.tls is None or f.implicit_tls:
            self.err("STLS not available")
            return
        if self.tls_info is not None:
            self.err("TLS already active")
            return
        # RFC 2595 section 4 / CVE-2011-0411: nothing pipelined behind STLS may be executed
        self.buffer = b""
        self.ok("Begin TLS negotiation now")
        self.flush()  # the +OK goes out in plaintext, everything after it inside TLS
        link = self.link
        if link is not None:
            link.startTLS(f.tls)
        self.tls_info = "TLS"
        self.auth.user = None

    def do_user(self, arg: bytes) -> None:
        self.auth.do_user(arg.strip())

    def do_pass(self, arg: bytes) -> None:
        self.auth.do_pass(arg)

    def do_auth(self, arg: str) -> None:
        self.auth.user = None
        self.auth.do_auth(arg)

    def logged_in(self, login: str, method: str) -> defer.Deferred[None]:
        """Good credentials: lock the mailbox, open its maildrop, enter TRANSACTION."""
        f = self.factory
        pool = f.pool
        mailbox = Mailbox.of(login)
        owner = f"pop3 session {self.session_id} of {login} from {self.peer_ip}"

        def locked(lock: MailboxLock | None) -> defer.Deferred[None] | None:
            if lock is None:
                self.events.in_use(login)
                self.err("[IN-USE] Mailbox is locked by another POP3 session")
                return None
            if self.lost:
                self._release(lock)
                return None
            self.lock = lock
            return pool.run(f.store.open_maildrop, mailbox).addCallbacks(opened, not_opened)

        def opened(maildrop: Maildrop) -> None:
            if self.lost:
                self.release_lock()
                return
            self.maildrop = maildrop
            small = len(maildrop.messages) <= QUICK_MESSAGES
            self.readahead = ReadAhead(self.factory.quick.run if small else pool.run, maildrop)
            self.login = login
            self.method = method
            self.state = TRANSACTION
            if self.deadlines is not None:
                self.deadlines.greeted()
            self.events.login(login, method, self.tls_info is not None)
            self._schedule_refresh()
            self.ok(f"Logged in, {len(maildrop.messages)} messages")

        def not_opened(failure: Failure) -> None:
            self.log.failure("opening the maildrop of {user} failed", failure, user=login)
            self.release_lock()
            self.err("[SYS/TEMP] Cannot open the mailbox")

        return pool.run(f.store.lock_mailbox, mailbox, owner).addCallback(locked)

    # ------------------------------------------------------------------ the lock

    def _schedule_refresh(self) -> None:
        lock = self.lock
        if lock is None or self.lost:
            return
        self.refresh_call = self.factory.reactor.callLater(
            lock.refresh_interval, self._refresh_lock
        )

    def _refresh_lock(self) -> None:
        self.refresh_call = None
        lock = self.lock
        if lock is None or self.lost:
            return

        def refreshed(ours: bool) -> None:
            if self.lock is not lock or self.lost or self.updating:
                return  # (UPDATE releases the lock when its deletions are done)
            if ours:
                self._schedule_refresh()
                return
            # taken over as stale: end without applying deletions
            self.log.warn("POP3 lock of {user} was taken over", user=self.login)
            self.lock = None
            self.logout_reason = "Mailbox lock lost"
            self.send_line("-ERR [SYS/TEMP] Mailbox lock lost, closing")
            self.close_connection()
            self.abort_if_stuck()

        def failed(failure: Failure) -> None:
            self.log.failure("refreshing the POP3 lock of {user} failed", failure, user=self.login)
            if self.lock is lock and not self.lost:
                self._schedule_refresh()

        self.factory.pool.run(lock.refresh).addCallbacks(refreshed, failed)

    def release_lock(self) -> defer.Deferred[None]:
        call, self.refresh_call = self.refresh_call, None
        if call is not None and call.active():
            call.cancel()
        lock, self.lock = self.lock, None
        if lock is None:
            return defer.succeed(None)
        return self._release(lock)

    def _release(self, lock: MailboxLock) -> defer.Deferred[None]:
        def failed(failure: Failure) -> None:
            self.log.failure("releasing the POP3 lock failed", failure)

        return self.factory.pool.run(lock.release).addErrback(failed)

    def log_logout(self) -> None:
        if self.login is None or self.logged_out:
            return
        self.logged_out = True
        c = self.counts
        maildrop = self.maildrop
        self.events.logout(
            self.login,
            self.logout_reason,
            top=c.top,
            top_bytes=c.top_bytes,
            retr=c.retr,
            retr_bytes=c.retr_bytes,
            deleted=c.deleted,
            messages=len(maildrop.messages) if maildrop is not None else 0,
            size=maildrop.total_size if maildrop is not None else 0,
        )

    # ------------------------------------------------------------------ TRANSACTION

    def _message(self, arg: str) -> MaildropMessage | None:
        """The message a number argument names, or None after answering why not."""
        maildrop = self.maildrop
        assert maildrop is not None
        if not arg:
            self.err("message number required")
            return None
        if not arg.isdigit() or not arg.isascii() or len(arg) > 10:
            self.err("no such message")
            return None
        number = int(arg)
        if not 1 <= number <= len(maildrop.messages):
            self.err("no such message")
            return None
        if number in self.deleted:
            self.err(f"message {number} already deleted")
            return None
        return maildrop.messages[number - 1]

    def _live(self) -> list[MaildropMessage]:
        assert self.maildrop is not None
        return [m for m in self.maildrop.messages if m.number not in self.deleted]

    def do_stat(self, arg: str) -> None:
        live = self._live()
        self.ok(f"{len(live)} {sum(m.size for m in live)}")

    def do_list(self, arg: str) -> None:
        if arg:
            msg = self._message(arg)
            if msg is not None:
                self.ok(f"{msg.number} {msg.size}")
            return
        live = self._live()
        self.ok(f"{len(live)} messages ({sum(m.size for m in live)} octets)")
        for m in live:
            self.send_line(f"{m.number} {m.size}")
        self.send_line(".")

    def do_uidl(self, arg: str) -> None:
        if arg:
            msg = self._message(arg)
            if msg is not None:
                self.ok(f"{msg.number} {msg.uidl}")
            return
        self.ok("")
        for m in self._live():
            self.send_line(f"{m.number} {m.uidl}")
        self.send_line(".")

    def do_dele(self, arg: str) -> None:
        msg = self._message(arg)
        if msg is None:
            return
        self.deleted.add(msg.number)
        self.ok(f"message {msg.number} deleted")

    def do_rset(self, arg: str) -> None:
        self.deleted.clear()
        live = self._live()
        self.ok(f"maildrop has {len(live)} messages ({sum(m.size for m in live)} octets)")

    def do_noop(self, arg: str) -> None:
        self.ok("")

    def do_retr(self, arg: str) -> None:
        msg = self._message(arg)
        if msg is not None:
            self._send_message(msg, None)

    def do_top(self, arg: str) -> None:
        number, _, lines = arg.partition(" ")
        lines = lines.strip()
        if not lines:
            self.err("TOP needs a message number and a line count")
            return
        if not lines.isdigit() or not lines.isascii() or len(lines) > 10:
            self.err("invalid line count")
            return
        msg = self._message(number)
        if msg is not None:
            self._send_message(msg, int(lines))

    def _send_message(self, msg: MaildropMessage, lines: int | None) -> None:
        """RETR (lines None) or TOP: a small message read ahead is answered at once; one not
        read yet is read (with the window after it) first; a big one is streamed."""
        what = "RETR" if lines is None else "TOP"
        ra = self.readahead
        assert ra is not None
        if not ra.small(msg.number):
            if ra.pending is not None:  # one reader of the maildrop at a time
                d = ra.settled().addCallback(lambda _: self._stream_it(msg, lines))
                self.wait(d, what)
                return
            self.wait(self._stream_it(msg, lines), what)
            return
        if self._answer_held(msg, lines):
            return

        def read(_: None) -> defer.Deferred[None] | None:
            if self.closing or self.lost or self._answer_held(msg, lines):
                return None
            return self._stream_it(msg, lines)  # not held (unreadable?): try the long way

        self.wait(ra.fetch(msg.number, self.deleted).addCallback(read), what)

    def _answer_held(self, msg: MaildropMessage, lines: int | None) -> bool:
        """Answer from what was read ahead; False if the message is not held."""
        ra = self.readahead
        assert ra is not None
        number = msg.number
        if number in ra.gone:
            self.err(f"[SYS/TEMP] message {number} was removed meanwhile")
            return True
        data = ra.take(number) if lines is None else ra.peek(number)
        if data is None:
            return False
        counts = self.counts
        if lines is None:
            body, end = stuffed(data)
            counts.retr += 1
            counts.retr_bytes += len(body)
            self.retrieved.add(number)
            reply = b"+OK %d octets\r\n" % msg.size
        else:
            body, end = stuffed(TopCut(lines).feed(data))
            counts.top += 1
            counts.top_bytes += len(body)
            reply = b"+OK\r\n"
        self.send_bytes(reply + body + end)  # one write
        ra.used(number, self.deleted)
        return True

    def _stream_it(self, msg: MaildropMessage, lines: int | None) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stream(msg, lines))

    async def _stream(self, msg: MaildropMessage, lines: int | None) -> None:
        """RETR (lines None) or TOP of a big message (or one not read ahead): the message in
        chunks, as fast as the client reads. A message that fits one chunk costs one worker
        job: open, read, close."""
        pool = self.factory.pool
        maildrop = self.maildrop
        assert maildrop is not None
        try:
            first: tuple[bytes | None, BinaryIO | None] = await pool.run(
                _open_first, maildrop, msg.number
            )
        except FileNotFoundError:
            self.err(f"[SYS/TEMP] message {msg.number} was removed meanwhile")
            return
        chunk, fh = first
        gathering = self.out is None  # outside process(): hold the +OK for the first write
        if gathering:
            self.out = []
        try:
            self.ok(f"{msg.size} octets" if lines is None else "")
            stuffer = DotStuffer()
            cut = TopCut(lines) if lines is not None else None
            sent = 0
            while not self.closing and not self.lost:
                if self.write_blocked:
                    lim = self.factory.settings.limits
                    limit = lim.under(lim.command_timeout, self.factory.slots.stressed)
                    await self.drained(self.factory.reactor, limit)
                    continue
                if chunk is None:
                    if fh is None:
                        break
                    chunk = await pool.run(fh.read, CHUNK)
                    if not chunk:
                        break
                if cut is not None:
                    chunk = cut.feed(chunk)
                data = stuffer.feed(chunk)
                chunk = None
                sent += len(data)
                self.write_raw(data)
                if cut is not None and cut.done:
                    break
            if self.closing or self.lost:
                return
            self.write_raw(stuffer.end())
            if lines is None:
                self.counts.retr += 1
                self.counts.retr_bytes += sent
                self.retrieved.add(msg.number)
            else:
                self.counts.top += 1
                self.counts.top_bytes += sent
        except Exception:
            # the +OK is out: the client cannot be told in-band any more
            self.log.failure(
                "sending message {number} to {peer} failed", number=msg.number, peer=self.peer_ip
            )
            self.close_connection()
        finally:
            if gathering:
                self.flush()  # whatever is still held (the +OK of a message cut short)
                self.out = None
            if fh is not None:
                pool.run(fh.close).addErrback(lambda f: self.log.failure("closing failed", f))

    # ------------------------------------------------------------------ back-pressure

    def stalled(self) -> None:
        self.logout_reason = "Disconnected: client not reading"
        super().stalled()

    # ------------------------------------------------------------------ QUIT and UPDATE

    def do_quit(self, arg: str) -> None:
        hostname = self.factory.settings.hostname
        if self.state == AUTHORIZATION:
            self.ok(f"{hostname} signing off")
            self.close_connection()
            return
        maildrop = self.maildrop
        assert maildrop is not None
        self.state = UPDATE
        self.updating = True
        deleted = sorted(self.deleted)
        retrieved = sorted(self.retrieved - self.deleted)
        d = self.factory.pool.run(maildrop.apply_deletions, deleted, retrieved)

        def applied(removed: int) -> defer.Deferred[None]:
            self.counts.deleted = removed
            left = len(maildrop.messages) - len(deleted)
            return self.release_lock().addCallback(
                lambda _: self._sign_off(f"+OK {hostname} signing off ({left} messages left)")
            )

        def failed(failure: Failure) -> defer.Deferred[None]:
            if not failure.check(OSError):
                self.log.failure("UPDATE for {user} failed", failure, user=self.login)
            else:
                self.log.warn(
                    "UPDATE for {user}: {reason}", user=self.login, reason=str(failure.value)
                )
            return self.release_lock().addCallback(
                lambda _: self._sign_off("-ERR [SYS/TEMP] some deleted messages not removed")
            )

        self.wait(d.addCallbacks(applied, failed), "UPDATE")

    def _sign_off(self, line: str) -> None:
        self.logout_reason = "Logged out"
        self.log_logout()
        self.send_line(line)
        self.close_connection()


@dataclass(frozen=True)
class Command:
    handler: Callable[[POP3Session, Any], None]
    states: frozenset[str]
    raw: bool = False  # the argument as bytes, unstripped (PASS: a password may hold spaces)


_AUTH = frozenset({AUTHORIZATION})
_TRANS = frozenset({TRANSACTION})
_BOTH = frozenset({AUTHORIZATION, TRANSACTION})

COMMANDS: dict[str, Command] = {
    "CAPA": Command(POP3Session.do_capa, _BOTH),
    "STLS": Command(POP3Session.do_stls, _AUTH),
    "USER": Command(POP3Session.do_user, _AUTH, raw=True),
    "PASS": Command(POP3Session.do_pass, _AUTH, raw=True),
    "AUTH": Command(POP3Session.do_auth, _AUTH),
    "QUIT": Command(POP3Session.do_quit, _BOTH),
    "STAT": Command(POP3Session.do_stat, _TRANS),
    "LIST": Command(POP3Session.do_list, _TRANS),
    "RETR": Command(POP3Session.do_retr, _TRANS),
    "TOP": Command(POP3Session.do_top, _TRANS),
    "UIDL": Command(POP3Session.do_uidl, _TRANS),
    "DELE": Command(POP3Session.do_dele, _TRANS),
    "RSET": Command(POP3Session.do_rset, _TRANS),
    "NOOP": Command(POP3Session.do_noop, _TRANS),
}


def _open_first(maildrop: Maildrop, number: int) -> tuple[bytes, BinaryIO | None]:
    """Worker thread: the message's first chunk, and the open file if more may follow
    (None: it was all of it, and the file is closed already)."""
    fh = maildrop.open(number)
    try:
        first = fh.read(CHUNK)
        if len(first) < CHUNK:  # a short read of a file: its end
            fh.close()
            return first, None
    except BaseException:
        fh.close()
        raise
    return first, fh
