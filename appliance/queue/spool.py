"""The durable spool: a message is on disk and fsync'd before the SMTP layer answers 250.

Layout under state_dir:

    mail/<domain>/<localpart>/Maildir/...   local mailboxes (appliance.store.maildir)
    queue/tmp/<qid>, <qid>.env              being received; never acknowledged (recover deletes)
    queue/incoming/<qid>, <qid>.env         acknowledged, local delivery pending
    queue/incoming/<qid>.done               mailboxes already delivered (one JSON string a line)
    queue/deferred/<qid>, <qid>.env         local part done; only remote recipients are left
    queue/corrupt/                          queue files whose envelope cannot be read

A message in incoming/ or deferred/ is complete only when both <qid> and <qid>.env exist.

Two paths (chosen in begin()):
- fast: every recipient is the same single local mailbox -> the bytes go straight to that
  Maildir's tmp/; commit = fsync file, rename into new/, fsync new/. No queue files at all.
- spool: anything else -> queue/tmp, commit = fsync data, write+fsync envelope, rename both into
  incoming/, fsync incoming/; then copies are delivered in the background and the queue files
  removed (or moved to deferred/ for the relay when remote recipients remain).

Every fsync runs in our ThreadPool: concurrent commits fsync in parallel, so the file system's
journal commits them together, and DirSync shares one directory fsync between them. Bytes are
written on the reactor thread (page cache only), buffered so a small message reaches the disk in
its commit thread alone. The reactor thread makes as few system calls as it can: each one lets
the busy pool threads take the GIL, and getting it back can cost milliseconds.

Queue ids are 10 upper-case hex digits (40 random bits, Postfix's look). An id is unique among
the messages in flight in this process (checked in memory) and among the queue files on disk
(checked when tmp/<qid> is created with O_EXCL; on a clash a new id is drawn).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from appliance.interfaces import DiskFull, Envelope, Mailbox, Recipient
from appliance.log import printable
from appliance.store.maildir import (
    DIR_MODE,
    FILE_MODE,
    DirSync,
    Maildir,
    MaildirStore,
    fill_and_sync,
    fsync_dir,
    is_disk_full,
    unlink_quietly,
    write_all,
)

WRITE_BUFFER = 64 * 1024  # bytes kept in memory before write(); a 1 KB message costs one write
# Seeded once from the kernel: os.urandom per message costs a GIL round trip on the reactor.
_rng = random.Random(os.urandom(32))
QUEUE_FORMAT = 1
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


# -- envelope files ---------------------------------------------------------------------------


def envelope_to_json(env: Envelope) -> dict[str, Any]:
    return {
        "mail_from": env.mail_from,
        "recipients": [
            {
                "address": r.address,
                "mailboxes": [[m.domain, m.localpart] for m in r.mailboxes],
                "remote": r.remote,
                "forward_to": list(r.forward_to),
                "notify": r.notify,
                "orcpt": r.orcpt,
            }
            for r in env.recipients
        ],
        "client_ip": env.client_ip,
        "helo": env.helo,
        "client_name": env.client_name,
        "auth_user": env.auth_user,
        "tls": env.tls,
        "protocol": env.protocol,
        "body": env.body,
        "smtputf8": env.smtputf8,
        "dsn_ret": env.dsn_ret,
        "dsn_envid": env.dsn_envid,
        "received_at": env.received_at,
        "session_id": env.session_id,
    }


def envelope_from_json(data: dict[str, Any]) -> Envelope:
    fields = dict(data)
    fields["recipients"] = tuple(
        Recipient(
            address=r["address"],
            mailboxes=tuple(Mailbox(d, lp) for d, lp in r.get("mailboxes", ())),
            remote=bool(r.get("remote", False)),
            forward_to=tuple(r.get("forward_to", ())),
            notify=r.get("notify"),
            orcpt=r.get("orcpt"),
        )
        for r in data["recipients"]
    )
    return Envelope(**fields)


@dataclass(frozen=True)
class QueueEntry:
    """What a queue file's .env says: the envelope plus queue bookkeeping."""

    queue_id: str
    envelope: Envelope
    arrival: float  # time.time() the message arrived (delays are measured from it)
    size: int  # message bytes as received (our Received header included)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": QUEUE_FORMAT,
                "queue_id": self.queue_id,
                "arrival": self.arrival,
                "size": self.size,
                "envelope": envelope_to_json(self.envelope),
            },
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> QueueEntry:
        d = json.loads(data)
        return cls(d["queue_id"], envelope_from_json(d["envelope"]), d["arrival"], d["size"])

    @property
    def mailboxes(self) -> list[Mailbox]:
        """Local targets, each once (two aliases of one user get one copy)."""
        return list(dict.fromkeys(m for r in self.envelope.recipients for m in r.mailboxes))

    @property
    def remote_recipients(self) -> tuple[Recipient, ...]:
        return tuple(r for r in self.envelope.recipients if r.remote)

    def only_remote(self) -> QueueEntry:
        """The entry as left for the relay: remote recipients only, local targets done."""
        rcpts = tuple(replace(r, mailboxes=(), remote=True) for r in self.remote_recipients)
        return replace(self, envelope=replace(self.envelope, recipients=rcpts))


def read_queue_entry(env_path: str | Path) -> QueueEntry:
    """Load a queue/<dir>/<qid>.env file (for the relay and the admin command too)."""
    with open(env_path, "rb") as f:
        return QueueEntry.from_bytes(f.read())


def _header_value(value: str) -> str:
    # A header must stay one line whatever the address holds.
    return value.replace("\r", "").replace("\n", "")


def delivery_prefix(mail_from: str, mailbox: Mailbox) -> bytes:
    """The headers put in front of each local copy."""
    return (
        f"Return-Path: <{_header_value(mail_from)}>\r\n"
        f"Delivered-To: {_header_value(mailbox.address)}\r\n"
    ).encode()


def _write_file(path: str | Path, data: bytes) -> None:
    """Create path (it must not exist), write data and fsync it; nothing is left on failure."""
    fill_and_sync(os.open(path, _OPEN_NEW, FILE_MODE), path, [data])


# -- messages being received ------------------------------------------------------------------


class _Message:
    """Shared write()/abort() state machine; subclasses say where the bytes go and how to commit.

    States: open -> committing -> committed, or open -> failed/aborted. Once committing, abort()
    is ignored: the message may already be durable, and deleting it then could lose a message
    the sender will consider delivered if the 250 still reaches it.
    """

    def __init__(self, spool: Spool, queue_id: str, envelope: Envelope) -> None:
        self.spool = spool
        self.queue_id = queue_id
        self.envelope = envelope
        self.arrival = envelope.received_at or time.time()
        self.size = 0  # message bytes, without the per-copy prefix
        self.state = "open"
        self._buffer = bytearray()
        self._fd: int | None = None
        self._disk_full = False

    def write(self, data: bytes) -> None:
        if self.state != "open":
            if self._disk_full:
                raise DiskFull(f"{self.queue_id}: no space left")
            if self.state == "aborted":
                return  # the caller stopped caring; the bytes have nowhere to go
            raise RuntimeError(f"{self.queue_id}: write() in state {self.state}")
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= WRITE_BUFFER:
            try:
                if self._fd is None:
                    self._open()
                if self._fd is not None:
                    write_all(self._fd, self._buffer)
                    del self._buffer[:]
            except OSError as e:
                self.state = "failed"
                self._discard()
                self.spool._forget(self.queue_id)
                if is_disk_full(e):
                    self._disk_full = True
                    raise DiskFull(str(e)) from e
                raise

    def abort(self) -> None:
        if self.state == "open":
            self._discard()
            self.spool._forget(self.queue_id)
            self.state = "aborted"
        elif self.state == "failed":
            self.state = "aborted"  # its files went when it failed

    def commit(self) -> Deferred[str]:
        if self.state != "open":
            if self._disk_full:
                return defer.fail(DiskFull(f"{self.queue_id}: no space left"))
            return defer.fail(RuntimeError(f"{self.queue_id}: commit() in state {self.state}"))
        self.state = "committing"
        data = bytes(self._buffer)
        self._buffer = bytearray()
        d = self.spool._in_thread(self._commit_in_thread, data)
        return d.addCallbacks(self._committed, self._commit_failed)

    def _open(self) -> None:
        """Create the file: for a large message on the reactor thread, for a small one in
        commit's thread. On the reactor it may leave _fd None: the bytes then stay buffered."""
        raise NotImplementedError

    def _files(self) -> Iterable[str]:
        """Every file this message may have created (for cleanup)."""
        raise NotImplementedError

    def _commit_in_thread(self, data: bytes) -> Any:
        """Thread: write the rest, make it durable; on failure remove every file first."""
        raise NotImplementedError

    def _committed(self, result: Any) -> str:
        raise NotImplementedError

    def _discard(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass
        self._buffer = bytearray()
        for path in self._files():
            try:
                unlink_quietly(path)
            except OSError as e:
                self.spool.log.warn(
                    "{queue_id}: cannot remove {path}: {reason}",
                    queue_id=self.queue_id,
                    path=path,
                    reason=str(e),
                )

    def _commit_failed(self, failure: Failure) -> Failure:
        # The thread already removed the files; the reason goes to the log, the SMTP layer
        # only tells the client 452/451.
        self.state = "failed"
        self._disk_full = is_disk_full(failure.value)
        self.spool._forget(self.queue_id)
        self.spool.log.warn(
            "{queue_id}: commit failed: {reason}",
            queue_id=self.queue_id,
            reason=str(failure.value),
        )
        if self._disk_full:
            return Failure(DiskFull(str(failure.value)))
        return failure


class _DirectMessage(_Message):
    """Fast path: one local mailbox, no queue files; the Maildir tmp/ file is the spool."""

    def __init__(self, spool: Spool, queue_id: str, envelope: Envelope, mailbox: Mailbox) -> None:
        super().__init__(spool, queue_id, envelope)
        self.mailbox = mailbox
        self.maildir: Maildir = spool.store.maildir(mailbox)
        self.prefix = delivery_prefix(envelope.mail_from, mailbox)
        self._buffer += self.prefix
        self._tmp_name: str | None = None
        self._no_folder = False

    def _open(self) -> None:
        if self._no_folder:
            return
        try:
            self._fd, self._tmp_name = self.maildir.create_tmp(
                self.spool.hostname, create_folder=False
            )
        except FileNotFoundError:
            # First mail to this mailbox: creating the folder durably takes fsyncs, which
            # belong in commit's thread; until then the message stays in memory.
            self._no_folder = True

    def _open_in_thread(self) -> None:
        self._fd, self._tmp_name = self.maildir.create_tmp(self.spool.hostname)

    def _files(self) -> Iterable[str]:
        return [self.maildir.tmp_path(self._tmp_name)] if self._tmp_name else []

    def _commit_in_thread(self, data: bytes) -> str:
        try:
            if self._fd is None:
                self._open_in_thread()
            assert self._fd is not None
            write_all(self._fd, data)
            os.fsync(self._fd)
            fd, self._fd = self._fd, None
            os.close(fd)
        except BaseException:
            self._discard()
            raise
        name = self._tmp_name
        assert name is not None
        self._tmp_name = None  # publish() cleans up after itself from here on
        return self.maildir.publish(name, len(self.prefix) + self.size, self.spool._dirsync)

    def _committed(self, name: str) -> str:
        self.state = "committed"
        spool = self.spool
        spool._forget(self.queue_id)
        spool._log_queued(self.queue_id, self.envelope, self.size)
        spool._log_delivered(self.queue_id, self.envelope, self.mailbox, self.arrival)
        spool._log_removed(self.queue_id)
        return self.queue_id


class _SpoolMessage(_Message):
    """Spool path: queue/tmp/<qid> while receiving, queue/incoming/<qid> once committed.

    A message with no local mailbox at all has nothing to deliver here: it is committed straight
    into queue/deferred/ for the relay, saving the move and envelope rewrite after delivery.
    """

    def __init__(self, spool: Spool, queue_id: str, envelope: Envelope) -> None:
        super().__init__(spool, queue_id, envelope)
        local = any(r.mailboxes for r in envelope.recipients)
        self.target_dir = spool._incoming if local else spool._deferred
        self._claimed = False

    def _open(self) -> None:
        """Create tmp/<qid> with O_EXCL; draw a new id if the queue already holds this one."""
        spool = self.spool
        while True:
            path = f"{spool._tmp}/{self.queue_id}"
            try:
                fd = os.open(path, _OPEN_NEW, FILE_MODE)
            except FileExistsError:
                pass
            else:
                if not (
                    os.path.lexists(f"{spool._incoming}/{self.queue_id}")
                    or os.path.lexists(f"{spool._deferred}/{self.queue_id}")
                ):
                    self._fd = fd
                    self._claimed = True
                    return
                os.close(fd)
                os.unlink(path)
            # Left by an earlier run: the rename in commit would replace that message.
            old = self.queue_id
            self.queue_id = spool._new_id()
            spool._forget(old)
            spool.log.info(
                "queue id {old} is taken on disk, using {queue_id}", old=old, queue_id=self.queue_id
            )

    def _files(self) -> Iterable[str]:
        if not self._claimed:
            return []  # the file of this id (if any) belongs to someone else
        s, q, t = self.spool, self.queue_id, self.target_dir
        return [f"{s._tmp}/{q}", f"{s._tmp}/{q}.env", f"{t}/{q}", f"{t}/{q}.env"]

    def _commit_in_thread(self, data: bytes) -> QueueEntry:
        spool = self.spool
        try:
            if self._fd is None:
                self._open()
            assert self._fd is not None
            write_all(self._fd, data)
            os.fsync(self._fd)
            fd, self._fd = self._fd, None
            os.close(fd)
            qid, target = self.queue_id, self.target_dir
            entry = QueueEntry(qid, self.envelope, self.arrival, self.size)
            _write_file(f"{spool._tmp}/{qid}.env", entry.to_bytes())
            # Data first: an .env beside its data is a complete message (recover relies on it).
            os.rename(f"{spool._tmp}/{qid}", f"{target}/{qid}")
            os.rename(f"{spool._tmp}/{qid}.env", f"{target}/{qid}.env")
            spool._dirsync.sync(target)
        except BaseException:
            self._discard()
            raise
        return entry

    def _committed(self, entry: QueueEntry) -> str:
        self.state = "committed"
        spool = self.spool
        spool._log_queued(self.queue_id, self.envelope, self.size)
        if self.target_dir == spool._deferred:
            spool._forget(self.queue_id)
        else:
            # The caller's 250 goes out in this same reactor turn; copies follow in a thread.
            spool._deliver(entry, done=frozenset())
        return self.queue_id


# -- the spool --------------------------------------------------------------------------------


class Spool(Service):
    """MessageSink writing every accepted message durably, then delivering local copies.

    Also a Service (start/stop with the service tree); call recover() before accepting mail.
    """

    log = Logger()

    def __init__(
        self,
        state_dir: str | Path,
        *,
        hostname: str,
        reactor: Any,
        maillog: Callable[[str], None] = lambda line: None,
        fsync_threads: int = 8,
        retry_interval: float = 60.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.hostname = hostname
        self.reactor = reactor
        self.maillog = maillog
        self.retry_interval = retry_interval
        self.mail_root = self.state_dir / "mail"
        self.queue_dir = self.state_dir / "queue"
        self.tmp_dir = self.queue_dir / "tmp"
        self.incoming_dir = self.queue_dir / "incoming"
        self.deferred_dir = self.queue_dir / "deferred"
        self.corrupt_dir = self.queue_dir / "corrupt"
        self._tmp = str(self.tmp_dir)
        self._incoming = str(self.incoming_dir)
        self._deferred = str(self.deferred_dir)
        self.store = MaildirStore(self.mail_root)
        self._dirsync = DirSync()
        self._pool = ThreadPool(minthreads=0, maxthreads=fsync_threads, name="spool")
        self._retry_call = LoopingCall(self._retry_tick)
        self._retry_call.clock = reactor
        self._active: set[str] = set()  # queue ids from begin() until delivery ends
        self._pending: set[Deferred[Any]] = set()  # thread work stop() waits for
        self._stopping = False
        self._make_dirs()

    def _make_dirs(self) -> None:
        # Runs once before the reactor serves anyone, so blocking here is fine.
        for d in (
            self.state_dir,
            self.mail_root,
            self.queue_dir,
            self.tmp_dir,
            self.incoming_dir,
            self.deferred_dir,
            self.corrupt_dir,
        ):
            if not d.is_dir():
                d.mkdir(DIR_MODE, parents=True, exist_ok=True)
                fsync_dir(d.parent)

    # -- lifecycle ----------------------------------------------------------------------------

    def _start_pool(self) -> None:
        if not self._pool.started:
            self._pool.start()

    def start(self) -> None:
        """Start the fsync threads and the retry timer for failed local deliveries."""
        self._stopping = False
        self._start_pool()
        if not self._retry_call.running:
            self._retry_call.start(self.retry_interval, now=False)

    def stop(self) -> Deferred[None]:
        """Stop retrying; fire once in-flight commits and deliveries are done and threads joined."""
        self._stopping = True
        if self._retry_call.running:
            self._retry_call.stop()

        def drained(_: None) -> None:
            if self._pool.started:
                self._pool.stop()  # joins idle threads only: all work has finished

        return self.idle().addCallback(drained)

    def idle(self) -> Deferred[None]:
        """Fire once no commit, delivery or scan is in flight (work started meanwhile included)."""
        if not self._pending:
            return defer.succeed(None)
        return defer.DeferredList(list(self._pending)).addCallback(lambda _: self.idle())

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stop()

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run f in the pool; stop() waits for it and for the callbacks it runs on return."""
        d = deferToThreadPool(self.reactor, self._pool, f, *args)
        self._pending.add(d)

        def done(result: Any) -> Any:
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    def _forget(self, queue_id: str) -> None:
        self._active.discard(queue_id)

    def _new_id(self) -> str:
        # set.add/discard are atomic under the GIL: pool threads may draw ids too.
        while True:
            qid = f"{_rng.getrandbits(40):010X}"
            if qid not in self._active:
                self._active.add(qid)
                return qid

    # -- receiving ----------------------------------------------------------------------------

    def begin(self, envelope: Envelope) -> _Message:
        """Start receiving a message; the fast path is taken when there is one local mailbox.

        No file is created here for a small message: that happens in commit()'s thread.
        """
        if self._stopping or not self._pool.started:
            raise RuntimeError("the spool is not running (start() it first)")
        mailboxes = list(dict.fromkeys(m for r in envelope.recipients for m in r.mailboxes))
        for mailbox in mailboxes:
            self.store.maildir(mailbox)  # refuse an unsafe path now, not in every retry
        qid = self._new_id()
        if len(mailboxes) == 1 and not any(r.remote for r in envelope.recipients):
            return _DirectMessage(self, qid, envelope, mailboxes[0])
        return _SpoolMessage(self, qid, envelope)

    # -- maillog ------------------------------------------------------------------------------

    def _log_queued(self, qid: str, env: Envelope, size: int) -> None:
        self.maillog(
            f"{qid}: from=<{printable(env.mail_from)}>, size={size}, "
            f"nrcpt={len(env.recipients)} (queue active)"
        )

    @staticmethod
    def _to_fields(env: Envelope, mailbox: Mailbox) -> str:
        # Postfix style: to= is the final mailbox, orig_to= the address the client gave when an
        # alias or virtual mapping changed it.
        rcpts = [r.address for r in env.recipients if mailbox in r.mailboxes]
        if not rcpts or any(a.lower() == mailbox.address for a in rcpts):
            return f"to=<{printable(mailbox.address)}>"
        return f"to=<{printable(mailbox.address)}>, orig_to=<{printable(rcpts[0])}>"

    def _log_delivered(self, qid: str, env: Envelope, mailbox: Mailbox, arrival: float) -> None:
        delay = max(0.0, time.time() - arrival)
        self.maillog(
            f"{qid}: {self._to_fields(env, mailbox)}, relay=local, delay={delay:.2f}, "
            f"status=sent (delivered to maildir)"
        )

    def _log_deferred(
        self, qid: str, env: Envelope, mailbox: Mailbox, arrival: float, reason: str
    ) -> None:
        delay = max(0.0, time.time() - arrival)
        self.maillog(
            f"{qid}: {self._to_fields(env, mailbox)}, relay=local, delay={delay:.2f}, "
            f"status=deferred (cannot write to maildir: {printable(reason)})"
        )
        self.log.warn(
            "{queue_id}: delivery to {rcpt} deferred: {reason}",
            queue_id=qid,
            rcpt=mailbox.address,
            reason=reason,
            delay=delay,
            status="deferred",
        )

    def _log_removed(self, qid: str) -> None:
        self.maillog(f"{qid}: removed")

    # -- local delivery -----------------------------------------------------------------------

    def _deliver(self, entry: QueueEntry, done: frozenset[str]) -> Deferred[bool]:
        """Deliver the copies not yet in done; True once the message has left incoming/."""
        qid = entry.queue_id
        self._active.add(qid)
        todo = [m for m in entry.mailboxes if m.address not in done]

        def report(
            result: tuple[list[tuple[Mailbox, str | Failure]], str | Failure | None],
        ) -> bool:
            copies, outcome = result
            for mailbox, copy in copies:
                if not isinstance(copy, Failure):
                    self._log_delivered(qid, entry.envelope, mailbox, entry.arrival)
                elif isinstance(copy.value, OSError):
                    reason = copy.value.strerror or str(copy.value)
                    self._log_deferred(qid, entry.envelope, mailbox, entry.arrival, reason)
                else:
                    self.log.failure(
                        "{queue_id}: delivery to {rcpt} failed",
                        copy,
                        queue_id=qid,
                        rcpt=mailbox.address,
                    )
            if outcome is None:
                return False  # stays in incoming/; the retry timer tries again
            if isinstance(outcome, Failure):
                self.log.warn(
                    "{queue_id}: cannot finish queue file: {reason}",
                    queue_id=qid,
                    reason=str(outcome.value),
                )
                return False
            if outcome == "removed":
                self._log_removed(qid)
            else:
                self.log.info(
                    "{queue_id}: local copies done, {count} remote recipient(s) deferred",
                    queue_id=qid,
                    count=len(entry.remote_recipients),
                )
            return True

        def broken(failure: Failure) -> bool:
            self.log.failure("{queue_id}: delivery failed", failure, queue_id=qid)
            return False

        def forget(result: bool) -> bool:
            self._active.discard(qid)
            return result

        d = self._in_thread(self._deliver_in_thread, entry, todo)
        return d.addCallback(report).addErrback(broken).addCallback(forget)

    def _deliver_in_thread(
        self, entry: QueueEntry, todo: list[Mailbox]
    ) -> tuple[list[tuple[Mailbox, str | Failure]], str | Failure | None]:
        """Thread: one durable copy per mailbox, each noted in <qid>.done; then finish.

        One thread job per message, not per copy: the copies of many messages still fsync in
        parallel, and every job costs the reactor a wake-up and some Python.
        """
        qid = entry.queue_id
        source = f"{self._incoming}/{qid}"
        copies: list[tuple[Mailbox, str | Failure]] = []
        progress: int | None = None
        try:
            for mailbox in todo:
                try:
                    name = self.store.maildir(mailbox).deliver_copy(
                        delivery_prefix(entry.envelope.mail_from, mailbox),
                        source,
                        self.hostname,
                        self._dirsync,
                    )
                except Exception:
                    copies.append((mailbox, Failure()))
                    continue
                copies.append((mailbox, name))
                # Not fsync'd: the copy itself already is; losing this line in a crash only
                # means a duplicate copy after recovery, never a lost one.
                try:
                    if progress is None:
                        progress = os.open(
                            f"{self._incoming}/{qid}.done",
                            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                            FILE_MODE,
                        )
                    os.write(progress, json.dumps(mailbox.address).encode() + b"\n")
                except OSError:
                    pass
        finally:
            if progress is not None:
                os.close(progress)
        if any(isinstance(c, Failure) for _, c in copies):
            return copies, None
        try:
            return copies, self._finish(entry)
        except Exception:
            return copies, Failure()

    def _finish(self, entry: QueueEntry) -> str:
        """Thread: all local copies are durable; remove the queue files or hand them to the relay."""
        qid = entry.queue_id
        inc, dfr = self._incoming, self._deferred
        if entry.remote_recipients:
            tmp_env = f"{self._tmp}/{qid}.env"
            unlink_quietly(tmp_env)
            _write_file(tmp_env, entry.only_remote().to_bytes())
            # .env first: a crash in between leaves incoming/ complete (delivered again, then
            # moved again), never a deferred/ data file without its envelope.
            os.rename(tmp_env, f"{dfr}/{qid}.env")
            os.rename(f"{inc}/{qid}", f"{dfr}/{qid}")
            self._dirsync.sync(dfr)
            outcome = "deferred"
        else:
            outcome = "removed"
            unlink_quietly(f"{inc}/{qid}")
        # Data goes first, so a crash leaves an orphan .env that recover() deletes.
        unlink_quietly(f"{inc}/{qid}.env")
        unlink_quietly(f"{inc}/{qid}.done")
        return outcome

    # -- retry and recovery -------------------------------------------------------------------

    def _scan_incoming(self) -> list[str]:
        """Thread: queue ids with both files in incoming/, oldest first."""
        names = set(os.listdir(self._incoming))
        ids = [n for n in names if "." not in n and f"{n}.env" in names]
        ids.sort(key=lambda q: _mtime(f"{self._incoming}/{q}"))
        return ids

    def _load(self, qid: str) -> tuple[QueueEntry, frozenset[str]] | None:
        """Thread: read an incoming entry and its progress; move an unreadable one aside."""
        try:
            entry = read_queue_entry(f"{self._incoming}/{qid}.env")
        except FileNotFoundError:
            return None  # delivered and removed since the scan
        except (ValueError, KeyError, TypeError) as e:
            self.log.error(
                "{queue_id}: unreadable envelope, moved to queue/corrupt: {reason}",
                queue_id=qid,
                reason=str(e),
            )
            for suffix in ("", ".env", ".done"):
                try:
                    os.rename(
                        f"{self._incoming}/{qid}{suffix}", self.corrupt_dir / f"{qid}{suffix}"
                    )
                except FileNotFoundError:
                    pass
            return None
        done: set[str] = set()
        try:
            with open(f"{self._incoming}/{qid}.done", "rb") as f:
                for line in f.read().split(b"\n")[:-1]:  # a torn last line is ignored
                    try:
                        done.add(json.loads(line))
                    except ValueError:
                        pass
        except FileNotFoundError:
            pass
        return entry, frozenset(done)

    @defer.inlineCallbacks
    def retry(self) -> Any:
        """Deliver every complete message in incoming/ that nothing is working on; returns ids."""
        if self._stopping:
            return []
        ids = yield self._in_thread(self._scan_incoming)
        handled: list[str] = []
        work = []
        for qid in ids:
            if qid in self._active:
                continue
            self._active.add(qid)  # claimed: a concurrent retry skips it
            try:
                loaded = yield self._in_thread(self._load, qid)
            except BaseException:
                self._active.discard(qid)
                raise
            if loaded is None:
                self._active.discard(qid)
                continue
            entry, done = loaded
            handled.append(qid)
            work.append(self._deliver(entry, done))
        yield defer.DeferredList(work)
        return handled

    def _retry_tick(self) -> Deferred[Any]:
        def failed(failure: Failure) -> None:
            self.log.failure("queue retry failed", failure)

        return self.retry().addErrback(failed)

    def _clean_after_crash(self) -> None:
        """Thread: drop what was never acknowledged: all of tmp/, and incomplete pairs in
        incoming/ (a commit cut between its renames, or a removal cut half way)."""
        # Membership tests on _active are safe from a thread; they keep a recover() called
        # while serving from touching messages in flight.
        for name in os.listdir(self._tmp):
            if name.split(".", 1)[0] in self._active:
                continue
            unlink_quietly(f"{self._tmp}/{name}")
            self.log.info("removed unacknowledged queue/tmp/{name}", name=name)
        names = set(os.listdir(self._incoming))
        for name in names:
            qid = name.split(".", 1)[0]
            if qid in self._active:
                continue
            if qid not in names or f"{qid}.env" not in names:
                unlink_quietly(f"{self._incoming}/{name}")
                self.log.info("removed incomplete queue/incoming/{name}", name=name)
        # Maildir tmp/ files of deliveries cut short: the Maildir rule is to remove them after
        # 36 hours (a younger one may belong to another node sharing the store)
        for tmp in self.mail_root.glob("*/*/Maildir/tmp"):
            removed = Maildir(tmp.parent).clean_tmp()
            if removed:
                self.log.info(
                    "removed {count} stale file(s) from {path}", count=removed, path=str(tmp)
                )

    @defer.inlineCallbacks
    def recover(self) -> Any:
        """After a start (or a crash): clean tmp/, deliver what incoming/ holds; returns the ids.

        Call it before accepting mail; it starts the threads if start() has not.
        """
        self._start_pool()
        yield self._in_thread(self._clean_after_crash)
        handled = yield self.retry()
        return handled


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0
