"""The queue: the `MessageSink` SMTP writes into, and the scheduler that hands mail to targets.

A 250 after DATA means the message is on disk and fsync'd: either already in its one local
mailbox (the fast path, through the local target's streaming delivery), at the next hop that
took it with a 2xx while the client waited (cut-through: one remote recipient,
RelayScheduler.at_once), or in the queue's files (appliance.queue.files). Queued entries are
handed to the local `DeliveryTarget` in the background; copies that fail stay queued and are
retried every `retry_interval`; what is left for remote recipients waits in queue/deferred
for the relay. After a start (or a crash)
`recover()` removes what was never acknowledged and delivers what incoming/ holds.

Every fsync runs in the shared WorkerPool: concurrent commits fsync in parallel, so the file
system's journal commits them together, and DirSync shares one directory fsync between them.
The reactor thread makes as few system calls as it can: each one lets the busy pool threads
take the GIL, and getting it back can cost milliseconds.

Queue ids are 10 upper-case hex digits (40 random bits, Postfix's look), unique among the
messages in flight in this process (checked in memory) and among the queue files on disk
(checked when tmp/<qid> is created with O_EXCL; on a clash a new id is drawn).

What happens to mail is told on the mail event stream (appliance.log): queued, status (one
per recipient: sent or deferred, with relay and delay), removed.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance.durable import DirSync
from appliance.interfaces import (
    DeliveryTarget,
    Envelope,
    IncomingMessage,
    Outcome,
    RecipientResult,
)
from appliance.log import mail_logger, printable
from appliance.queue.dsn import status_code
from appliance.queue.envelope import QueueEntry
from appliance.queue.files import QueueFiles
from appliance.queue.notices import DELIVERED, Notices, wants
from appliance.queue.receiving import DirectMessage, SpooledMessage
from appliance.workers import WorkerPool

if TYPE_CHECKING:
    from appliance.queue.scheduler import RelayScheduler


def status_format(orig: bool, tls: bool) -> str:
    """The maillog line of a recipient's status, in Postfix's words (literal pieces only)."""
    return (
        "{queue_id}: to=<{rcpt}>, "
        + ("orig_to=<{orig_rcpt}>, " if orig else "")
        + "relay={relay}, delay={delay:.2f}, "
        + ("tls={tls}, " if tls else "")
        + "dsn={dsn}, status={status} ({reason})"
    )


STATUS_FORMATS = {(o, t): status_format(o, t) for o in (False, True) for t in (False, True)}

# Seeded once from the kernel: os.urandom per message costs a GIL round trip on the reactor.
_rng = random.Random(os.urandom(32))


class Queue(Service):
    """interfaces.MessageSink; a Service: start/stop with the tree, recover() before serving."""

    log = Logger()

    def __init__(
        self,
        queue_dir: str | Path,
        *,
        local: DeliveryTarget,
        pool: WorkerPool,
        reactor: IReactorTime,
        dirsync: DirSync | None = None,
        events: Logger | None = None,
        retry_interval: float = 60.0,
        min_free_space: int = 0,
    ) -> None:
        self.local = local
        self.pool = pool
        self.reactor = reactor
        self.events = events or mail_logger("local")
        self.retry_interval = retry_interval
        self.min_free_space = min_free_space
        self.files = QueueFiles(queue_dir, dirsync or DirSync())
        self.queue_dir = self.files.queue_dir
        self.tmp_dir = self.files.tmp_dir
        self.incoming_dir = self.files.incoming_dir
        self.deferred_dir = self.files.deferred_dir
        self.corrupt_dir = self.files.corrupt_dir
        self._retry_call = LoopingCall(self._retry_tick)
        self._retry_call.clock = reactor
        self._active: set[str] = set()  # queue ids from begin() until delivery ends
        self.relay: RelayScheduler | None = None  # what deferred/ is handed to (service.py)
        self.notices: Notices | None = None  # DSNs (service.py)
        self._stopping = False
        self._free = 0
        self._free_checked_at = float("-inf")

    # -- lifecycle

    def start(self) -> None:
        """Start the worker threads and the retry timer for failed local deliveries."""
        self._stopping = False
        self.pool.start()
        if not self._retry_call.running:
            self._retry_call.start(self.retry_interval, now=False)

    def stop(self) -> Deferred[None]:
        """Stop retrying; fire once in-flight commits and deliveries are done and threads joined."""
        self._stopping = True
        if self._retry_call.running:
            self._retry_call.stop()
        if self.relay is not None:
            self.relay.stop()
        return self.pool.stop()

    def relay_at_once(self, entry: QueueEntry, data: bytes) -> Deferred[bool] | None:
        """Cut-through (RelayScheduler.at_once) of a message not yet spooled, or None if it
        cannot go so; the queue's stop() waits for it."""
        if self.relay is None or self._stopping:
            return None
        d = self.relay.at_once(entry, data)
        return None if d is None else self.track(d)

    def hand_to_relay(self, entry: QueueEntry, data: bytes | None = None) -> None:
        """An entry now in deferred/ with remote recipients only: the relay's to try (data:
        its bytes, when still in memory, for the first attempt)."""
        if self.relay is not None and not self._stopping:
            self.relay.add(entry, data)

    def idle(self) -> Deferred[None]:
        """Fire once no commit, delivery or scan is in flight (work started meanwhile included)."""
        return self.pool.idle()

    def startService(self) -> None:
        """As a child of the service tree: start, then recover what a crash left behind."""
        super().startService()
        self.start()
        self.recover().addCallbacks(self._recovered, self._recovery_failed)

    def _recovered(self, ids: list[str]) -> None:
        if ids:
            self.log.info("recovered {count} queued message(s)", count=len(ids))

    def _recovery_failed(self, failure: Failure) -> None:
        self.log.failure("queue recovery failed; retried in a minute", failure)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stop()

    def track(self, d: Deferred[Any]) -> Deferred[Any]:
        return self.pool.track(d)

    def forget(self, queue_id: str) -> None:
        self._active.discard(queue_id)

    def new_id(self) -> str:
        # set.add/discard are atomic under the GIL: pool threads may draw ids too.
        while True:
            qid = f"{_rng.getrandbits(40):010X}"
            if qid not in self._active:
                self._active.add(qid)
                return qid

    # -- MessageSink

    def has_room(self, size: int) -> bool:
        """Room for a message of size bytes: free space >= min_free_space + 2 x size (a
        queued message may be copied once more); statvfs at most once a second."""
        now = self.reactor.seconds()
        if now - self._free_checked_at >= 1.0:
            self._free_checked_at = now
            try:
                st = os.statvfs(self.queue_dir)
                self._free = st.f_bavail * st.f_frsize
            except OSError:
                self._free = 1 << 62  # unknown: let the write itself find out (452 on ENOSPC)
        return self._free >= self.min_free_space + 2 * size

    def begin(self, envelope: Envelope) -> IncomingMessage:
        """Start receiving a message; the fast path is taken when there is one local mailbox.

        No file is created here for a small message: that happens in commit()'s thread.
        """
        if self._stopping or not self.pool.started:
            raise RuntimeError("the queue is not running (start() it first)")
        mailboxes = envelope.mailboxes
        for mailbox in mailboxes:
            self.local.check_address(mailbox.address)  # refuse an unsafe path now, not later
        qid = self.new_id()
        success_notice = any(wants(r, DELIVERED) for r in envelope.recipients)
        if len(mailboxes) == 1 and not envelope.remote_recipients and not success_notice:
            message = QueueEntry(qid, envelope, envelope.received_at or time.time(), 0)
            stream = self.local.start_streaming(message, mailboxes[0].address)
            if stream is not None:
                return DirectMessage(self, qid, envelope, stream)
        return SpooledMessage(self, qid, envelope)

    # -- mail events

    def log_queued(self, qid: str, env: Envelope, size: int) -> None:
        self.events.info(
            "{queue_id}: from=<{mail_from}>, size={size}, nrcpt={nrcpt} (queue active)",
            event="queued",
            queue_id=qid,
            mail_from=printable(env.mail_from),
            size=size,
            nrcpt=len(env.recipients),
        )

    def log_result(
        self,
        qid: str,
        env: Envelope,
        arrival: float,
        result: RecipientResult,
        events: Logger | None = None,
    ) -> None:
        # Postfix style: to= is the final address, orig_to= the one the client gave when an
        # alias or virtual mapping changed it.
        final = result.address
        given = [
            r.address
            for r in env.recipients
            if final in r.forward_to or any(m.address == final for m in r.mailboxes)
        ]
        orig = "" if not given or any(a.lower() == final for a in given) else given[0]
        sent = result.outcome is Outcome.SENT
        fields = {
            "event": "status",
            "queue_id": qid,
            "rcpt": printable(final),
            "orig_rcpt": printable(orig),
            "relay": result.relay,
            "delay": max(0.0, time.time() - arrival),
            "tls": result.tls,
            "dsn": "2.0.0"
            if sent
            else result.status
            or status_code(result.reply or result.text, result.outcome is Outcome.BOUNCED),
            "status": result.outcome.value,
            "reason": printable(result.text),
        }
        if not sent:
            self.log.warn(
                "{queue_id}: delivery to {rcpt} {status}: {reason}",
                queue_id=qid,
                rcpt=final,
                reason=result.text,
                delay=fields["delay"],
                status=result.outcome.value,
            )
        (events or self.events).info(STATUS_FORMATS[bool(orig), bool(result.tls)], **fields)

    def log_removed(self, qid: str) -> None:
        self.events.info("{queue_id}: removed", event="removed", queue_id=qid)

    # -- handing entries to the local target

    def deliver(self, entry: QueueEntry, done: frozenset[str]) -> Deferred[bool]:
        """Deliver the copies not yet in done; True once the message has left incoming/."""
        qid = entry.queue_id
        self._active.add(qid)
        todo = [m.address for m in entry.mailboxes if m.address not in done]
        if todo:
            delivery = self.local.start(entry)
            for address in todo:
                delivery.add_recipient(address)
            delivery.body(self.files.body(entry))
            d = self.track(delivery.commit())
        else:
            d = defer.succeed([])

        @defer.inlineCallbacks
        def settle(results: list[RecipientResult]) -> Generator[Deferred[Any], Any, str | None]:
            for result in results:
                self.log_result(qid, entry.envelope, entry.arrival, result)
            sent = [r.address for r in results if r.outcome is Outcome.SENT]
            yield self._success_notice(entry, results)
            complete = len(sent) == len(todo)
            outcome = yield self.pool.run(self.files.settle, entry, sent, complete)
            return outcome

        def report(outcome: str | None) -> bool:
            if outcome is None:
                return False  # stays in incoming/; the retry timer tries again
            if outcome == "removed":
                self.log_removed(qid)
            else:
                self.log.info(
                    "{queue_id}: local copies done, {count} remote recipient(s) for the relay",
                    queue_id=qid,
                    count=len(entry.remote_recipients),
                )
                self.hand_to_relay(entry.only_remote())
            return True

        def broken(failure: Failure) -> bool:
            if failure.check(OSError):
                self.log.warn(
                    "{queue_id}: cannot finish queue file: {reason}",
                    queue_id=qid,
                    reason=str(failure.value),
                )
            else:
                self.log.failure("{queue_id}: delivery failed", failure, queue_id=qid)
            return False

        def forget(result: bool) -> bool:
            self._active.discard(qid)
            return result

        return d.addCallback(settle).addCallback(report).addErrback(broken).addCallback(forget)

    def _success_notice(self, entry: QueueEntry, results: list[RecipientResult]) -> Deferred[Any]:
        """A "delivered" DSN for local copies whose recipient asked NOTIFY=SUCCESS."""
        if self.notices is None:
            return defer.succeed(None)
        items = []
        for result in results:
            if result.outcome is not Outcome.SENT:
                continue
            for r in entry.envelope.recipients:
                if any(m.address == result.address for m in r.mailboxes) and wants(r, DELIVERED):
                    items.append((r, result))
                    break
        if not items:
            return defer.succeed(None)

        def failed(failure: Failure) -> None:
            self.log.warn(
                "{queue_id}: cannot queue the success notice: {reason}",
                queue_id=entry.queue_id,
                reason=failure.getErrorMessage(),
            )

        d = self.notices.send(entry, self.files.body(entry), DELIVERED, items)
        return d.addErrback(failed)

    # -- retry and recovery

    @defer.inlineCallbacks
    def retry(self) -> Generator[Deferred[Any], Any, list[str]]:
        """Deliver every complete message in incoming/ that nothing is working on; returns ids."""
        if self._stopping:
            return []
        ids = yield self.pool.run(self.files.scan_incoming)
        handled: list[str] = []
        work = []
        for qid in ids:
            if qid in self._active:
                continue
            self._active.add(qid)  # claimed: a concurrent retry skips it
            try:
                loaded = yield self.pool.run(self.files.load, qid)
            except BaseException:
                self._active.discard(qid)
                raise
            if loaded is None:
                self._active.discard(qid)
                continue
            entry, done = loaded
            handled.append(qid)
            work.append(self.deliver(entry, done))
        yield defer.DeferredList(work)
        return handled

    def _retry_tick(self) -> Deferred[Any]:
        def failed(failure: Failure) -> None:
            self.log.failure("queue retry failed", failure)

        return self.retry().addErrback(failed)

    def _clean_after_crash(self) -> None:
        """Thread: the queue's unacknowledged files, then the store's stale temporary ones."""
        self.files.clean_after_crash(self._active)
        self.local.clean_stale()

    @defer.inlineCallbacks
    def recover(self) -> Generator[Deferred[Any], Any, list[str]]:
        """After a start (or a crash): clean tmp/, deliver what incoming/ holds; returns the ids.

        Call it before accepting mail; it starts the threads if start() has not.
        """
        self.pool.start()
        yield self.pool.run(self._clean_after_crash)
        if self.relay is not None:
            yield self.relay.start()
        handled = yield self.retry()
        return handled
