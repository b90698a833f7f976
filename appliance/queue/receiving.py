"""Messages being received: the queue's two `IncomingMessage`s, direct and spooled.

- `DirectMessage`, the fast path: every recipient is the same single local mailbox. The bytes
  stream into a `StreamingDelivery` of the local target; commit makes the message durable in
  the mailbox itself. No queue files at all.
- `SpooledMessage`: anything else. queue/tmp/<qid> while receiving; commit fsyncs data and
  envelope and renames both into incoming/ (deferred/ when nothing is local), and the queue
  then hands the entry to its targets in the background. One exception: a message for a
  single remote recipient, still whole in memory, whose sender waits (commit(rest) with rest
  as bytes) is first relayed at once (cut-through, RelayScheduler.at_once); only if the next
  hop does not take it is it spooled as above.

Both share one state machine: open -> committing -> committed, or open -> failed/aborted. Once
committing, abort() is ignored: the message may already be durable, and deleting it then
could lose a message the sender will consider delivered if the 250 still reaches it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from appliance.durable import close_quietly, is_disk_full, unlink_quietly, write_all, write_chunks
from appliance.interfaces import DiskFull, Envelope, RecipientResult, StreamingDelivery
from appliance.queue.envelope import QueueEntry

if TYPE_CHECKING:
    from appliance.queue.queue import Queue

WRITE_BUFFER = 64 * 1024  # bytes kept in memory before write(); a 1 KB message costs one write


class _Message:
    """Shared write()/abort()/commit() state machine; subclasses say where the bytes go."""

    def __init__(self, queue: Queue, queue_id: str, envelope: Envelope) -> None:
        self.queue = queue
        self.queue_id = queue_id
        self.envelope = envelope
        self.arrival = envelope.received_at or time.time()
        self.size = 0  # message bytes, without the per-copy prefix
        self.state = "open"
        self._disk_full = False

    def write(self, data: bytes) -> None:
        if self.state != "open":
            if self._disk_full:
                raise DiskFull(f"{self.queue_id}: no space left")
            if self.state == "aborted":
                return  # the caller stopped caring; the bytes have nowhere to go
            raise RuntimeError(f"{self.queue_id}: write() in state {self.state}")
        self.size += len(data)
        try:
            self._write(data)
        except (OSError, DiskFull) as e:
            self.state = "failed"
            self._discard()
            self.queue.forget(self.queue_id)
            if isinstance(e, DiskFull) or is_disk_full(e):
                self._disk_full = True
                raise DiskFull(str(e)) from e
            raise

    def abort(self) -> None:
        if self.state == "open":
            self._discard()
            self.queue.forget(self.queue_id)
            self.state = "aborted"
        elif self.state == "failed":
            self.state = "aborted"  # its files went when it failed

    def commit(self, rest: Iterable[bytes] | bytes = ()) -> Deferred[str]:
        if self.state != "open":
            if self._disk_full:
                return defer.fail(DiskFull(f"{self.queue_id}: no space left"))
            return defer.fail(RuntimeError(f"{self.queue_id}: commit() in state {self.state}"))
        self.state = "committing"
        if isinstance(rest, bytes):  # in memory, and the sender waits (interfaces)
            self.size += len(rest)
            d = self._commit(iter((rest,) if rest else ()), rest)
        else:
            d = self._commit(self._counted(rest), None)
        return d.addCallbacks(self._committed, self._commit_failed)

    def _counted(self, rest: Iterable[bytes]) -> Iterator[bytes]:
        # iterated in the commit's thread; size is read again only once commit has fired
        for chunk in rest:
            self.size += len(chunk)
            yield chunk

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _commit(self, rest: Iterator[bytes], held: bytes | None) -> Deferred[Any]:
        """Make it durable, the buffered bytes and rest (to iterate in the worker thread;
        held: the same bytes when they are in memory and the sender waits); on failure
        every file is gone before the Deferred fails."""
        raise NotImplementedError

    def _committed(self, result: Any) -> str:
        raise NotImplementedError

    def _discard(self) -> None:
        raise NotImplementedError

    def _commit_failed(self, failure: Failure) -> Failure:
        # The files are gone already; the reason goes to the log, the SMTP layer only tells
        # the client 452/451.
        self.state = "failed"
        error = failure.value
        self._disk_full = isinstance(error, DiskFull) or (
            isinstance(error, BaseException) and is_disk_full(error)
        )
        self.queue.forget(self.queue_id)
        self.queue.log.warn(
            "{queue_id}: commit failed: {reason}", queue_id=self.queue_id, reason=str(failure.value)
        )
        if self._disk_full:
            return Failure(DiskFull(str(failure.value)))
        return failure


class DirectMessage(_Message):
    """The fast path: one local mailbox, streamed into the local target."""

    def __init__(
        self, queue: Queue, queue_id: str, envelope: Envelope, stream: StreamingDelivery
    ) -> None:
        super().__init__(queue, queue_id, envelope)
        self.stream = stream

    def _write(self, data: bytes) -> None:
        self.stream.write(data)

    def _discard(self) -> None:
        self.stream.abort()

    def _commit(self, rest: Iterator[bytes], held: bytes | None) -> Deferred[RecipientResult]:
        return self.queue.track(self.stream.commit(rest))

    def _committed(self, result: RecipientResult) -> str:
        self.state = "committed"
        queue = self.queue
        queue.forget(self.queue_id)
        queue.log_queued(self.queue_id, self.envelope, self.size)
        queue.log_result(self.queue_id, self.envelope, self.arrival, result)
        queue.log_removed(self.queue_id)
        return self.queue_id


class SpooledMessage(_Message):
    """The spool path: queue/tmp/<qid> while receiving, incoming/<qid> once committed.

    A message with no local mailbox at all has nothing to deliver here: it is committed
    straight into deferred/ for the relay, saving the move and envelope rewrite after delivery.
    """

    def __init__(self, queue: Queue, queue_id: str, envelope: Envelope) -> None:
        super().__init__(queue, queue_id, envelope)
        files = queue.files
        local = any(r.mailboxes for r in envelope.recipients)
        self.target_dir = files.incoming if local else files.deferred
        self._buffer = bytearray()
        self._fd: int | None = None
        self._claimed = False
        self._whole: bytes | None = None
        self._relayed = False  # sent at once (cut-through): no file of it exists

    def _write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= WRITE_BUFFER:
            write_all(self._fd if self._fd is not None else self._open(), self._buffer)
            del self._buffer[:]

    def _open(self) -> int:
        """Create tmp/<qid> and return its fd; draw a new id if the queue holds this one."""
        queue = self.queue
        while True:
            fd = queue.files.create_tmp(self.queue_id)
            if fd is not None:
                self._fd = fd
                self._claimed = True
                return fd
            old = self.queue_id
            self.queue_id = queue.new_id()
            queue.forget(old)
            queue.log.info(
                "queue id {old} is taken on disk, using {queue_id}", old=old, queue_id=self.queue_id
            )

    def _files(self) -> Iterable[str]:
        if not self._claimed:
            return []  # the file of this id (if any) belongs to someone else
        return self.queue.files.paths(self.queue_id, self.target_dir)

    def _discard(self) -> None:
        fd, self._fd = self._fd, None
        close_quietly(fd)
        self._buffer = bytearray()
        for path in self._files():
            try:
                unlink_quietly(path)
            except OSError as e:
                self.queue.log.warn(
                    "{queue_id}: cannot remove {path}: {reason}",
                    queue_id=self.queue_id,
                    path=path,
                    reason=str(e),
                )

    def _commit(self, rest: Iterator[bytes], held: bytes | None) -> Deferred[QueueEntry]:
        data = bytes(self._buffer)
        self._buffer = bytearray()
        queue = self.queue
        if held is not None and self._fd is None and self.target_dir == queue.files.deferred:
            whole = data + held if held else data
            entry = QueueEntry(self.queue_id, self.envelope, self.arrival, len(whole))
            d = queue.relay_at_once(entry, whole)
            if d is not None:

                def spool() -> Deferred[QueueEntry]:
                    return queue.pool.run(self._commit_in_thread, whole, iter(()))

                def relayed(sent: bool) -> QueueEntry | Deferred[QueueEntry]:
                    if sent:
                        self._relayed = True
                        return entry
                    return spool()

                def broken(failure: Failure) -> Deferred[QueueEntry]:
                    queue.log.failure(
                        "{queue_id}: relaying at once failed, queued",
                        failure,
                        queue_id=self.queue_id,
                    )
                    return spool()

                return d.addCallbacks(relayed, broken)
        return queue.pool.run(self._commit_in_thread, data, rest)

    def _commit_in_thread(self, data: bytes, rest: Iterator[bytes]) -> QueueEntry:
        try:
            untouched = self._fd is None  # nothing written yet
            fd = self._fd if self._fd is not None else self._open()
            held = [data]  # the tail, kept to write with the envelope's commit
            held_size = len(data)
            for chunk in rest:
                held.append(chunk)
                held_size += len(chunk)
                if held_size >= WRITE_BUFFER:
                    write_chunks(fd, held)
                    held, held_size, untouched = [], 0, False
            tail = b"".join(held)
            # a message that never left memory is handed to the relay with its bytes
            self._whole = tail if untouched else None
            entry = QueueEntry(self.queue_id, self.envelope, self.arrival, self.size)
            self._fd = None  # files.commit closes it, whatever happens
            self.queue.files.commit(fd, tail, entry, self.target_dir)
        except BaseException:
            self._discard()
            raise
        return entry

    def _committed(self, entry: QueueEntry) -> str:
        self.state = "committed"
        queue = self.queue
        if self._relayed:  # at the next hop already, and logged so
            queue.forget(self.queue_id)
            return self.queue_id
        queue.log_queued(self.queue_id, self.envelope, self.size)
        if self.target_dir == queue.files.deferred:
            queue.forget(self.queue_id)
            queue.hand_to_relay(entry, self._whole)
            self._whole = None
        else:
            # The caller's 250 goes out in this same reactor turn; copies follow in a thread.
            queue.deliver(entry, done=frozenset())
        return self.queue_id
