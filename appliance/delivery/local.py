"""Local delivery: the `DeliveryTarget` that puts copies into local mailboxes (the MailStore).

Each copy gets the headers local delivery adds (`Return-Path:` from the envelope sender,
`Delivered-To:` the final mailbox, as Postfix's local(8) does), then the message bytes. Two
ways in, both durable before they report SENT:

- `start()`: a queued message (its bytes in a queue file) copied into each recipient's
  mailbox, all copies in one worker-thread job; one result per address.
- `start_streaming()`: the fast path for a message with a single local mailbox. The bytes go
  into the mailbox's temporary file as SMTP receives them (buffered so a small message costs
  one write, in commit's thread), and commit publishes it, so the 250 needs no queue file.
  What the caller already holds whole (the filters' buffer) it hands to commit instead,
  which writes it in its thread: the reactor then creates and writes no file at all.

Watchers of the store hear of each new message (announce) once it is durable.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from appliance.durable import is_disk_full
from appliance.interfaces import (
    DiskFull,
    Mailbox,
    MailStore,
    MessageBody,
    NewMessage,
    Outcome,
    QueuedMessage,
    RecipientResult,
)
from appliance.workers import WorkerPool

RELAY = "local"
SENT_TEXT = "delivered to maildir"
# bytes kept in memory before write(); a 1 KB message costs one write, in commit's thread
WRITE_BUFFER = 64 * 1024


def _header_value(value: str) -> str:
    # A header must stay one line whatever the address holds.
    return value.replace("\r", "").replace("\n", "")


def delivery_prefix(mail_from: str, mailbox: Mailbox) -> bytes:
    """The headers put in front of each local copy."""
    return (
        f"Return-Path: <{_header_value(mail_from)}>\r\n"
        f"Delivered-To: {_header_value(mailbox.address)}\r\n"
    ).encode()


JUNK = "Junk"  # the RFC 6154 \\Junk folder every IMAP user has
HEAD = 64 * 1024  # how much of a message is looked at for the marks below
# what our filters write at the top of a message that belongs in Junk: DMARC's quarantine
# disposition (appliance.filters.dmarc) and SpamAssassin's verdict (X-Spam-Flag: YES)
JUNK_MARKS = (b"\nx-dmarc-quarantine:", b"\nx-spam-flag: yes")


def folder_for(head: bytes) -> str:
    """Where a message goes, from its first octets: Junk when its header carries a mark of
    ours that says so (a sender who forges one only sends his own mail to Junk), else the
    INBOX. A mailbox without a Junk folder gets it in the INBOX (the store decides)."""
    end = head.find(b"\r\n\r\n")
    block = b"\n" + (head if end < 0 else head[:end]).lower()
    return JUNK if any(mark in block for mark in JUNK_MARKS) else "INBOX"


def _deferred_text(error: OSError) -> str:
    return f"cannot write to maildir: {error.strerror or error}"


class LocalDelivery:
    """interfaces.DeliveryTarget for the local mailboxes of one MailStore."""

    name = RELAY
    log = Logger()

    def __init__(self, store: MailStore, pool: WorkerPool) -> None:
        self.store = store
        self.pool = pool

    def check_address(self, address: str) -> None:
        self.store.check(Mailbox.of(address))

    def clean_stale(self) -> None:
        self.store.clean_stale()

    def stop(self) -> None:
        pass  # copies in flight are short and finish on their own

    def start(self, message: QueuedMessage) -> LocalCopies:
        return LocalCopies(self, message)

    def start_at_once(self, message: QueuedMessage, wait: float) -> None:
        return None  # a local delivery is the queue's own: streamed (start_streaming) or spooled

    def start_streaming(self, message: QueuedMessage, address: str) -> LocalStream:
        return LocalStream(self, message, Mailbox.of(address))


class LocalCopies:
    """interfaces.Delivery: one copy per recipient mailbox, from a queued message's bytes."""

    def __init__(self, target: LocalDelivery, message: QueuedMessage) -> None:
        self.target = target
        self.message = message
        self.mailboxes: list[Mailbox] = []
        self._body: MessageBody | None = None
        self._aborted = False

    def add_recipient(self, address: str) -> None:
        mailbox = Mailbox.of(address)
        if mailbox not in self.mailboxes:
            self.mailboxes.append(mailbox)

    def body(self, body: MessageBody) -> None:
        self._body = body

    def abort(self) -> None:
        self._aborted = True  # nothing is written before commit()

    def commit(self) -> Deferred[list[RecipientResult]]:
        assert self._body is not None, "body() first"
        d = self.target.pool.run(self._copy_all, self._body)
        return d.addCallback(self._results)

    def _copy_all(self, body: MessageBody) -> list[tuple[Mailbox, str | Failure]]:
        """Thread: one durable copy per mailbox; a failed copy does not stop the others.

        One thread job per message, not per copy: the copies of many messages still fsync in
        parallel, and every job costs the reactor a wake-up and some Python.
        """
        store, mail_from = self.target.store, self.message.envelope.mail_from
        copies: list[tuple[Mailbox, str | Failure]] = []
        for mailbox in self.mailboxes:
            if self._aborted:
                break
            rest = body.chunks()
            head: list[bytes] = []
            for chunk in rest:  # enough of the start to see the header's marks
                head.append(chunk)
                if sum(map(len, head)) >= HEAD or b"\r\n\r\n" in chunk:
                    break
            chunks: Iterator[bytes] = itertools.chain(
                [delivery_prefix(mail_from, mailbox)], head, rest
            )
            folder = folder_for(b"".join(head)[:HEAD])
            try:
                copies.append((mailbox, store.deliver(mailbox, chunks, folder)))
            except Exception:
                copies.append((mailbox, Failure()))
        return copies

    def _results(self, copies: list[tuple[Mailbox, str | Failure]]) -> list[RecipientResult]:
        results = []
        for mailbox, copy in copies:
            if not isinstance(copy, Failure):
                self.target.store.announce(mailbox)
                results.append(RecipientResult(mailbox.address, Outcome.SENT, SENT_TEXT, RELAY))
                continue
            if isinstance(copy.value, OSError):
                text = _deferred_text(copy.value)
            else:
                self.target.log.failure(
                    "{queue_id}: delivery to {rcpt} failed",
                    copy,
                    queue_id=self.message.queue_id,
                    rcpt=mailbox.address,
                )
                text = "local error in delivery"
            results.append(RecipientResult(mailbox.address, Outcome.DEFERRED, text, RELAY))
        return results


class LocalStream:
    """interfaces.StreamingDelivery into one mailbox: the fast path before the 250."""

    def __init__(self, target: LocalDelivery, message: QueuedMessage, mailbox: Mailbox) -> None:
        self.target = target
        self.mailbox = mailbox
        self.new: NewMessage = target.store.new_message(mailbox)
        self._buffer = bytearray(delivery_prefix(message.envelope.mail_from, mailbox))
        self._head = bytearray()  # the message's first HEAD octets: where it goes
        self._opening: Deferred[None] | None = None  # the file, being made in a worker thread
        self._open = False  # made: the bytes go to it as they come
        self._aborted = False

    def write(self, data: bytes) -> None:
        if len(self._head) < HEAD:
            self._head += data[: HEAD - len(self._head)]
        self._buffer += data
        if len(self._buffer) < WRITE_BUFFER:
            return
        if self._open:
            try:
                self.new.write(self._buffer)
            except OSError as e:
                self.abort()
                if is_disk_full(e):
                    raise DiskFull(str(e)) from e
                raise
            del self._buffer[:]
        elif self._opening is None:
            # A large message goes to disk as it comes. Its file is made in a worker thread
            # (on ext4 a new inode is a search past the ones freed lately; a new mailbox's
            # folder, fsyncs and all, is left to commit's thread), the bytes wait until then.
            # A file that cannot be made now is tried again, and its error told, by commit.
            opening = self.target.pool.run(self.new.open_now)
            self._opening = opening.addCallbacks(self._made, lambda failure: None)

    def _made(self, made: bool) -> None:
        self._open = made and not self._aborted

    def commit(self, rest: Iterable[bytes] = ()) -> Deferred[RecipientResult]:
        data = bytes(self._buffer)
        self._buffer = bytearray()

        opening = self._opening or defer.succeed(None)  # a file being made: after it
        d = opening.addCallback(
            lambda _: self.target.pool.run(self._finish, data, self._head, rest)
        )
        return d.addCallback(self._sent)

    def _finish(self, data: bytes, head: bytearray, rest: Iterable[bytes]) -> str:
        """Thread: the buffered bytes and the rest, fsync, then into the mailbox durably
        (the folder that the message's first HEAD octets call for)."""

        def chunks() -> Iterator[bytes]:
            yield data
            for chunk in rest:
                if len(head) < HEAD:
                    head.extend(chunk[: HEAD - len(head)])
                yield chunk

        self.new.write_rest(chunks())
        return self.new.publish(folder_for(bytes(head)))

    def _sent(self, key: str) -> RecipientResult:
        self.target.store.announce(self.mailbox)
        return RecipientResult(self.mailbox.address, Outcome.SENT, SENT_TEXT, RELAY)

    def abort(self) -> None:
        self._aborted = True
        self._buffer = bytearray()
        opening = self._opening
        if opening is not None and not opening.called:
            opening.addCallback(lambda _: self.new.discard())  # once the thread is done
        else:
            self.new.discard()
