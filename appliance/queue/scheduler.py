"""The deferred queue: what waits in queue/deferred/ for the relay, tried until done.

Every message there has only remote recipients left. The scheduler hands each due message
to the relay `DeliveryTarget` (at most `max_active` at once), then settles the results:

- SENT: the recipient is done (a "relayed" notice if it asked NOTIFY=SUCCESS and the next hop
  did not take the request along);
- BOUNCED, or DEFERRED past `max_queue_lifetime`: a failure notice to the sender (appliance.
  queue.notices), queued durably *before* the recipient is recorded as done;
- DEFERRED: tried again after the next wait of `retry_schedule` (the last wait repeats), with
  an optional delay notice once the message is `delay_warning` old.

`at_once()` is the cut-through of a message not yet spooled: one remote recipient, relayed
while its sender waits for our reply (`cut_through_wait` bounds the wait for a connection).
Sent, it is logged as queued, sent and removed, and no file of it ever existed here; any other
outcome and the caller spools it, after which it is tried as usual (a refusal is met again
then, and bounced).

The state of each recipient is appended to deferred/<qid>.state (appliance.queue.state) and
fsync'd before a retry relies on it; the files go only once every recipient is done. A crash
at any moment means at worst a recipient tried (or notified) twice, never one forgotten.

Also the running side of `mailappliance queue`: flush, delete, hold, release (QueueAdmin).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance.interfaces import DeliveryTarget, Outcome, Recipient, RecipientResult
from appliance.log import mail_logger
from appliance.queue.dsn import status_code
from appliance.queue.envelope import QueueEntry
from appliance.queue.notices import DELAYED, FAILED, RELAYED, Notices, wants
from appliance.queue.state import (
    DeliveryState,
    result_record,
    schedule_record,
    warned_record,
)

if TYPE_CHECKING:
    from appliance.queue.queue import Queue

DEFAULT_SCHEDULE = (60.0, 300.0, 900.0, 1800.0, 3600.0)
REMOVE_BATCH_WAIT = 0.01  # seconds finished messages wait to have their files removed together


@dataclass
class _Pending:
    entry: QueueEntry
    state: DeliveryState = field(default_factory=DeliveryState)
    held: bool = False
    deleted: bool = False
    data: bytes | None = None  # the message's bytes until its first attempt, if it was small

    @property
    def qid(self) -> str:
        return self.entry.queue_id

    def todo(self) -> list[str]:
        done = self.state.done
        out: list[str] = []
        for r in self.entry.envelope.recipients:
            for address in r.forward_to or (r.address,):
                if address not in done and address not in out:
                    out.append(address)
        return out


class RelayScheduler:
    """interfaces.QueueAdmin; owns queue/deferred/ while the appliance runs."""

    log = Logger()

    def __init__(
        self,
        queue: Queue,
        target: DeliveryTarget,
        notices: Notices,
        *,
        schedule: tuple[float, ...] = DEFAULT_SCHEDULE,
        max_lifetime: float = 5 * 86400.0,
        delay_warning: float = 0.0,
        max_active: int = 1000,
        cut_through_wait: float = 0.0,
        events: Logger | None = None,
    ) -> None:
        self.queue = queue
        self.files = queue.files
        self.pool = queue.pool
        self.reactor: Any = queue.reactor
        self.target = target
        self.notices = notices
        self.schedule = schedule or DEFAULT_SCHEDULE
        self.max_lifetime = max_lifetime
        self.delay_warning = delay_warning
        self.max_active = max_active
        self.cut_through_wait = cut_through_wait  # 0: every message is spooled first
        self.events = events or mail_logger("smtp")  # Postfix's smtp(8) tells relay results
        self.entries: dict[str, _Pending] = {}
        self._due: list[tuple[float, float, str]] = []  # (next_try, arrival, qid), a heap
        self._to_remove: list[str] = []  # finished: files to remove in the next batch
        self._remove_call: IDelayedCall | None = None
        self._batch_done: Deferred[None] | None = None
        self.active: set[str] = set()
        self._timer: IDelayedCall | None = None
        self._running = False

    # -- lifecycle

    @defer.inlineCallbacks
    def start(self) -> Generator[Deferred[Any], Any, int]:
        """Load what deferred/ holds (after the queue's crash recovery) and start trying."""
        self._running = True
        ids = yield self.pool.run(self.files.scan_deferred)
        loaded = 0
        for qid in ids:
            if qid in self.entries:
                continue
            item = yield self.pool.run(self.files.load_deferred, qid)
            if item is None:
                continue
            entry, state, held = item
            self.entries[qid] = pending = _Pending(entry, state, held)
            self._schedule(pending)
            loaded += 1
        self._wake(0)
        return loaded

    def stop(self) -> None:
        self._running = False
        self.flush_removals()
        self.target.stop()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def add(self, entry: QueueEntry, data: bytes | None = None) -> None:
        """A message just committed into deferred/ (or moved there after local delivery);
        data: its bytes, if still in memory (the first attempt then reads no file)."""
        if entry.queue_id not in self.entries:
            self.entries[entry.queue_id] = pending = _Pending(entry, data=data)
            self._schedule(pending)
        self._wake(0)

    def at_once(self, entry: QueueEntry, data: bytes) -> Deferred[bool] | None:
        """Relay entry (data: its bytes, nothing on disk) while its sender waits: None if it
        cannot go so (cut-through off, stopping, not exactly one final recipient, a success
        notice asked for: that needs the spooled text); else True once sent and logged
        (queued, sent, removed), False if the caller must spool it (nothing logged but a
        line in the appliance's log)."""
        if self.cut_through_wait <= 0 or not self._running:
            return None
        todo = _Pending(entry).todo()
        if len(todo) != 1 or wants(entry.envelope.recipient_for(todo[0]), RELAYED):
            return None
        delivery = self.target.start_at_once(entry, self.cut_through_wait)
        if delivery is None:
            return None
        delivery.add_recipient(todo[0])
        delivery.body(self.files.deferred_body(entry, data))

        def settle(results: list[RecipientResult]) -> bool:
            if not results or any(r.outcome is not Outcome.SENT for r in results):
                self.log.info(
                    "{queue_id}: not relayed at once ({reason}), queued",
                    queue_id=entry.queue_id,
                    reason="; ".join(r.text for r in results if r.outcome is not Outcome.SENT),
                )
                return False
            queue = self.queue
            queue.log_queued(entry.queue_id, entry.envelope, entry.size)
            for result in results:
                queue.log_result(entry.queue_id, entry.envelope, entry.arrival, result, self.events)
            queue.log_removed(entry.queue_id)
            return True

        return delivery.commit().addCallback(settle)

    # -- scheduling

    def _wake(self, delay: float) -> None:
        if not self._running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self.reactor.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self.reactor.callLater(max(0.0, delay), self._tick)

    def _schedule(self, p: _Pending) -> None:
        """(Re)file p under its next_try; entries filed earlier under another time are stale
        and skipped when they come up (a heap: a busy queue costs log n per message)."""
        heapq.heappush(self._due, (p.state.next_try, p.entry.arrival, p.qid))

    def _tick(self) -> None:
        self._timer = None
        if not self._running:
            return
        now = time.time()
        due = self._due
        while due and len(self.active) < self.max_active:
            next_try, _arrival, qid = due[0]
            if next_try > now:
                break
            heapq.heappop(due)
            p = self.entries.get(qid)
            if (
                p is None
                or p.state.next_try != next_try
                or qid in self.active
                or p.held
                or p.deleted
            ):
                continue  # stale: gone, re-filed, busy or held (release files it again)
            self._attempt(p)
        if due and len(self.active) < self.max_active:
            self._wake(max(0.0, due[0][0] - now))

    def _attempt(self, p: _Pending) -> None:
        qid = p.qid
        self.active.add(qid)
        todo = p.todo()
        if todo:
            delivery = self.target.start(p.entry)
            for address in todo:
                delivery.add_recipient(address)
            delivery.body(self.files.deferred_body(p.entry, p.data))
            p.data = None  # later attempts read the file: a backlog holds no bytes
            d: Deferred[list[RecipientResult]] = delivery.commit()
        else:
            d = defer.succeed([])
        d.addCallback(lambda results: self._settle(p, results))

        def broken(failure: Failure) -> None:
            self.log.failure("{queue_id}: relay attempt failed", failure, queue_id=qid)
            p.state.next_try = time.time() + self.schedule[0]
            self._schedule(p)

        def finished(_: object) -> Deferred[None] | None:
            self.active.discard(qid)
            if p.deleted:
                self.entries.pop(qid, None)
                # Deleted while the attempt ran (its settling may have written a .state since):
                # the files go only now, when nothing of the attempt can write them any more.
                gone = self.pool.run(self.files.remove_deferred, qid)
                return gone.addErrback(cannot_remove).addBoth(lambda _: self._wake(0))
            self._wake(0)
            return None

        def cannot_remove(failure: Failure) -> None:
            self.log.warn(
                "{queue_id}: cannot remove the deleted message: {reason}",
                queue_id=qid,
                reason=failure.getErrorMessage(),
            )

        self.queue.track(d.addErrback(broken).addBoth(finished))

    @defer.inlineCallbacks
    def _settle(
        self, p: _Pending, results: list[RecipientResult]
    ) -> Generator[Deferred[Any], Any, None]:
        """Notices first (durable), then the state records, then the files if all done."""
        entry, state = p.entry, p.state
        if p.deleted:
            return  # the files go when the attempt has finished
        now = time.time()
        expired = now - entry.arrival >= self.max_lifetime
        failed: list[tuple[Recipient | None, RecipientResult]] = []
        relayed: list[tuple[Recipient | None, RecipientResult]] = []
        waiting: list[tuple[Recipient | None, RecipientResult]] = []
        final: list[RecipientResult] = []
        for result in results:
            rcpt = entry.envelope.recipient_for(result.address)
            if result.outcome is Outcome.DEFERRED and expired:
                result = RecipientResult(
                    result.address,
                    Outcome.BOUNCED,
                    f"message expired after {_age(now - entry.arrival)} in the queue; "
                    f"last error: {result.text}",
                    result.relay,
                    reply=result.reply,
                    tls=result.tls,
                    # the last deferral's code, as Postfix reports it; else "delivery time
                    # expired" (RFC 3463)
                    status=result.status
                    or status_code(result.reply or result.text, False, "4.4.7"),
                )
            final.append(result)
            if result.outcome is Outcome.BOUNCED:
                failed.append((rcpt, result))
            elif result.outcome is Outcome.SENT:
                if not result.dsn_forwarded and wants(rcpt, RELAYED):
                    relayed.append((rcpt, result))
            else:
                waiting.append((rcpt, result))
        # A failure notice must be durable before the recipient counts as done: if it cannot
        # be queued (disk full), those recipients stay deferred and are tried again.
        to_notify = [(r, res) for r, res in failed if wants(r, FAILED)]
        if to_notify:
            try:
                yield self.notices.send(entry, self.files.deferred_body(entry), FAILED, to_notify)
            except Exception as e:
                self.log.warn(
                    "{queue_id}: cannot queue the non-delivery notice: {reason}",
                    queue_id=p.qid,
                    reason=str(e),
                )
                keep = {res.address for _, res in to_notify}
                final = [
                    RecipientResult(r.address, Outcome.DEFERRED, r.text, r.relay, reply=r.reply)
                    if r.address in keep
                    else r
                    for r in final
                ]
                waiting += [(r, res) for r, res in to_notify]
        if relayed:
            try:
                yield self.notices.send(entry, self.files.deferred_body(entry), RELAYED, relayed)
            except Exception as e:  # a success notice is best effort, like Postfix's
                self.log.warn(
                    "{queue_id}: cannot queue the success notice: {reason}",
                    queue_id=p.qid,
                    reason=str(e),
                )
        records: list[dict[str, object]] = [
            result_record(r.address, _status_word(r.outcome), r.text, r.relay, now) for r in final
        ]
        remaining = bool(waiting) or any(a not in {r.address for r in final} for a in p.todo())
        warn = (
            remaining
            and self.delay_warning > 0
            and not state.warned
            and now - entry.arrival >= self.delay_warning
        )
        if warn:
            late = [(r, res) for r, res in waiting if wants(r, DELAYED)]
            if late:
                try:
                    yield self.notices.send(
                        entry,
                        self.files.deferred_body(entry),
                        DELAYED,
                        late,
                        retry_until=entry.arrival + self.max_lifetime,
                    )
                except Exception as e:
                    self.log.warn(
                        "{queue_id}: cannot queue the delay notice: {reason}",
                        queue_id=p.qid,
                        reason=str(e),
                    )
            records.append(warned_record(now))
        for record in records:
            state.apply(record)
        for result in final:
            self.queue.log_result(p.qid, entry.envelope, entry.arrival, result, self.events)
        if not p.todo():
            self.entries.pop(p.qid, None)
            self._remove_soon(p.qid)
            self.queue.log_removed(p.qid)
            return
        attempts = state.attempts + 1
        wait = self.schedule[min(attempts - 1, len(self.schedule) - 1)]
        # Not past the expiry point (the bounce then goes out on time); once past it (an
        # expired recipient whose notice could not be queued) the full wait, not a busy loop.
        deadline = entry.arrival + self.max_lifetime
        next_try = now + wait if deadline <= now else min(now + wait, deadline)
        records.append(schedule_record(next_try, attempts, now))
        state.apply(records[-1])
        self._schedule(p)
        yield self.pool.run(self.files.record, p.qid, records, True)

    def _remove_soon(self, qid: str) -> None:
        """Remove a finished message's files, together with those of others finishing about
        now (one thread job for many). A crash first only means the message is sent again.
        The queue's idle() waits for the batch from the moment it is started."""
        self._to_remove.append(qid)
        if self._batch_done is None:
            self._batch_done = Deferred()
            self.queue.track(self._batch_done)
        if not self._running:
            self._remove_batch()  # stopping: the pool is waited for, a timer would not be
        elif self._remove_call is None:
            self._remove_call = self.reactor.callLater(REMOVE_BATCH_WAIT, self._remove_batch)

    def _remove_batch(self) -> None:
        if self._remove_call is not None and self._remove_call.active():
            self._remove_call.cancel()
        self._remove_call = None
        batch, self._to_remove = self._to_remove, []
        done, self._batch_done = self._batch_done, None

        def failed(failure: Failure) -> None:
            self.log.warn(
                "cannot remove {count} finished queue file(s): {reason}",
                count=len(batch),
                reason=failure.getErrorMessage(),
            )

        d = self.pool.run(self.files.remove_all_deferred, batch).addErrback(failed)
        if done is not None:
            d.chainDeferred(done)

    def flush_removals(self) -> None:
        """Remove the finished messages' files now (stopping)."""
        if self._remove_call is not None and self._remove_call.active():
            self._remove_call.cancel()
        if self._to_remove:
            self._remove_batch()
        self._remove_call = None

    # -- QueueAdmin

    def _select(self, queue_id: str | None) -> list[_Pending]:
        if queue_id is None:
            return [p for p in self.entries.values() if not p.deleted]
        p = self.entries.get(queue_id)
        return [p] if p is not None and not p.deleted else []

    def flush(self, queue_id: str | None = None) -> Deferred[int]:
        chosen = [p for p in self._select(queue_id) if not p.held]
        for p in chosen:
            p.state.next_try = 0.0
            self._schedule(p)
        self._wake(0)
        return defer.succeed(len(chosen))

    @defer.inlineCallbacks
    def delete(self, queue_id: str | None) -> Generator[Deferred[Any], Any, int]:
        chosen = self._select(queue_id)
        for p in chosen:
            p.deleted = True
            if p.qid not in self.active:
                yield self.pool.run(self.files.remove_deferred, p.qid)
                self.entries.pop(p.qid, None)
            self.log.info("{queue_id}: deleted by the admin", queue_id=p.qid)
            self.queue.log_removed(p.qid)
        return len(chosen)

    @defer.inlineCallbacks
    def hold(self, queue_id: str | None) -> Generator[Deferred[Any], Any, int]:
        count = 0
        for p in self._select(queue_id):
            if (yield self.pool.run(self.files.set_hold, p.qid, True)):
                p.held = True
                count += 1
        return count

    @defer.inlineCallbacks
    def release(self, queue_id: str | None) -> Generator[Deferred[Any], Any, int]:
        count = 0
        for p in self._select(queue_id):
            if p.held and (yield self.pool.run(self.files.set_hold, p.qid, False)):
                p.held = False
                p.state.next_try = 0.0
                self._schedule(p)
                count += 1
        self._wake(0)
        return count


def _status_word(outcome: Outcome) -> str:
    return outcome.value


def _age(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds:.0f} seconds"
