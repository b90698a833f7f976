"""The mail store seam (MailStore and what it hands out), part of appliance.interfaces.

Kept in its own file for size; import it from appliance.interfaces like every other seam.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from appliance.interfaces import Mailbox


@dataclass(frozen=True)
class StoredMessage:
    """One message in a mailbox folder, as the read side lists it."""

    uid: int  # stable across sessions and restarts while uidvalidity stays the same
    key: str  # the store's own name for it (its Maildir base name)
    size: int  # octets, exactly what reading it gives
    flags: frozenset[str]  # IMAP system flags: \\Seen \\Answered \\Flagged \\Deleted \\Draft
    received: float  # delivery time, seconds since the epoch


@dataclass(frozen=True)
class FolderListing:
    """A folder's messages in UID order, with the folder's UID validity and next UID."""

    uidvalidity: int
    uidnext: int
    messages: tuple[StoredMessage, ...]


class NewMessage(Protocol):
    """A message being written into one mailbox (blocking methods: worker thread).

    open_now() (blocking, a worker thread) creates the file only if that needs no fsync (the
    mailbox folder is known to exist), else returns False and the file is made by
    write_rest(). write() (which may be called on the reactor thread once the file exists)
    and write_rest() append bytes; publish() makes it durable and visible and returns its
    key; discard() removes whatever was written.
    """

    def open_now(self) -> bool: ...

    def write(self, data: bytes | bytearray) -> None: ...

    def write_rest(self, chunks: Iterable[bytes]) -> None:
        """Blocking: create the file if needed, append the chunks, fsync it."""
        ...

    def publish(self, folder: str = "INBOX") -> str:
        """Blocking: move it into the mailbox durably (into folder, such as "Junk", if the
        mailbox has it; else the INBOX); returns the message key."""
        ...

    def discard(self) -> None: ...


@dataclass(frozen=True)
class MaildropMessage:
    """One message of a POP3 maildrop snapshot (RFC 1939)."""

    number: int  # the POP3 message number: 1..n in UID order, fixed for the session
    uid: int  # the folder's stable UID (dovecot-uidlist)
    uidl: str  # the UIDL answer: Dovecot's default %08Xu%08Xv (uid, then uidvalidity, hex)
    key: str  # the store's name for it (its Maildir base name)
    size: int  # octets of the message, exactly what open() gives (LIST, STAT; before dot-stuffing)


class Maildrop(Protocol):
    """The INBOX as one POP3 session sees it: the messages present when it was opened.

    Messages delivered later are not in it (the next session sees them); one expunged by
    someone else meanwhile stays listed, and open() then raises FileNotFoundError.
    """

    uidvalidity: int
    messages: tuple[MaildropMessage, ...]  # in number order: messages[n - 1] is number n

    @property
    def total_size(self) -> int:
        """The octets of all messages (STAT)."""
        ...

    def open(self, number: int) -> BinaryIO:
        """Blocking: message number's bytes in binary mode, exactly `size` octets, CRLF line
        ends as delivered (the POP3 server dot-stuffs them on the way out). ValueError for a
        number not in the snapshot, FileNotFoundError if it was expunged meanwhile."""
        ...

    def read(self, numbers: Iterable[int], limit: int) -> dict[int, bytes | None]:
        """Blocking: the bytes of several (small) messages at once, by number: each message
        whole if it has at most `limit` octets (otherwise its first limit + 1), None for one
        expunged meanwhile. ValueError for a number not in the snapshot."""
        ...

    def apply_deletions(self, numbers: Iterable[int], retrieved: Iterable[int] = ()) -> int:
        """Blocking, the UPDATE state: remove these messages durably; returns how many were
        removed here (one someone else removed already is not an error, and not counted).

        Each unlink is atomic and the folders are fsync'd before it returns, so a crash at
        any point leaves each message deleted or intact, never half. Then the snapshot's
        other messages still in new/ move to cur/ (a POP3 client has seen them, as Dovecot
        does), and those in `retrieved` (RETR, not TOP) get the Seen flag. ValueError (and
        nothing done) for a number not in the snapshot; OSError if some message could not be
        removed (the others were, durably): answer -ERR "some deleted messages not removed".
        """
        ...


class MailboxLock(Protocol):
    """An exclusive POP3 session lock on one mailbox, held in a file in the Maildir (so other
    processes and nodes sharing the tree respect it). Blocking methods: worker thread."""

    refresh_interval: float  # seconds: call refresh() at least this often while held

    def refresh(self) -> bool:
        """Blocking: show the lock is alive (touch it); False if it is no longer ours (it was
        taken over as stale): the session should end without applying deletions."""
        ...

    def release(self) -> None:
        """Blocking: give the lock up; a lock file someone else has taken over is left alone.
        Calling it twice is harmless."""
        ...


class MailStore(Protocol):
    """The mailboxes: durable delivery (write side) and what POP3/IMAP read (read side).

    Folder names are IMAP names: "INBOX", "Sent", "Archive/2026" ('/' separates levels).
    Nothing here assumes it is the only process using the store: another node may deliver
    into the same mailboxes over shared storage.
    """

    # -- write side

    def check(self, mailbox: Mailbox) -> None:
        """ValueError for a mailbox whose name could not be stored safely."""
        ...

    def new_message(self, mailbox: Mailbox) -> NewMessage:
        """A message to be written into the mailbox's INBOX (nothing is created yet)."""
        ...

    def deliver(self, mailbox: Mailbox, chunks: Iterator[bytes], folder: str = "INBOX") -> str:
        """Blocking: one durable copy of the bytes in the INBOX (or in folder, if the mailbox
        has it); returns the message key."""
        ...

    def clean_stale(self) -> int:
        """Blocking: remove files left half-written by a crash long ago; returns the count."""
        ...

    def announce(self, mailbox: Mailbox) -> None:
        """Tell watchers that new mail was delivered into mailbox (reactor thread)."""
        ...

    def watch(self, callback: Callable[[Mailbox], None]) -> Callable[[], None]:
        """Call callback(mailbox) after each announce(); returns a function that stops it."""
        ...

    # -- folders (all blocking)

    def folders(self, mailbox: Mailbox) -> list[str]:
        """The mailbox's folders, INBOX first."""
        ...

    def create_folder(self, mailbox: Mailbox, folder: str) -> None:
        """Make a folder (and missing parents); FileExistsError if it exists, ValueError for
        a name that cannot be stored."""
        ...

    def delete_folder(self, mailbox: Mailbox, folder: str) -> None:
        """Remove a folder with its messages; FileNotFoundError if there is none, ValueError
        for INBOX. Its children stay (RFC 3501 6.3.4: its name lives on as \\Noselect)."""
        ...

    def rename_folder(self, mailbox: Mailbox, old: str, new: str) -> None:
        """Rename a folder with its children (INBOX: its messages move to the new folder and
        INBOX stays, RFC 3501 6.3.5); FileNotFoundError, FileExistsError, ValueError."""
        ...

    def subscriptions(self, mailbox: Mailbox) -> list[str]: ...

    def set_subscribed(self, mailbox: Mailbox, folder: str, subscribed: bool) -> None: ...

    def special_use(self, mailbox: Mailbox) -> dict[str, str]:
        """folder -> RFC 6154 attribute (\\Sent ...); the folders are made (and subscribed)
        the first time a mailbox is asked, so every new user has them."""
        ...

    # -- messages (all blocking)

    def list_messages(self, mailbox: Mailbox, folder: str = "INBOX") -> FolderListing:
        """The folder's messages with stable UIDs (new ones are numbered now) and flags
        (system flags and keywords); FileNotFoundError for a folder that does not exist
        (INBOX always does)."""
        ...

    def peek_messages(self, mailbox: Mailbox, folder: str = "INBOX") -> FolderListing | None:
        """As list_messages, but never writing or fsyncing anything (cheap enough for
        QuickCalls): None when messages came or went since the last look, which only
        list_messages may number or drop, or when the look would take a long listing (a big
        folder that changed): call list_messages in a worker thread then."""
        ...

    def keywords(self, mailbox: Mailbox, folder: str) -> list[str]:
        """The keywords defined in the folder (FLAGS / PERMANENTFLAGS answers)."""
        ...

    def open_message(self, mailbox: Mailbox, folder: str, key: str) -> BinaryIO:
        """The message's bytes, opened for reading in binary mode; FileNotFoundError if it
        was expunged meanwhile."""
        ...

    def read_messages(
        self, mailbox: Mailbox, folder: str, keys: Sequence[str], limit: int
    ) -> dict[str, bytes | None]:
        """The bytes of several messages at once: each whole if it has at most limit octets
        (otherwise its first limit + 1), None for one expunged meanwhile."""
        ...

    def set_flags(self, mailbox: Mailbox, folder: str, key: str, flags: frozenset[str]) -> str:
        """Replace the message's flags; returns its (possibly changed) key."""
        ...

    def change_flags(
        self, mailbox: Mailbox, folder: str, keys: Sequence[str], flags: frozenset[str], mode: str
    ) -> dict[str, frozenset[str]]:
        """STORE: set ('='), add ('+') or remove ('-') flags of messages, each against the
        flags it has at that moment (two sessions changing different flags both win);
        returns the flags each has now (one expunged meanwhile is left out). KeywordsFull
        (a ValueError) when the folder cannot take another keyword."""
        ...

    def add_message(
        self,
        mailbox: Mailbox,
        folder: str,
        data: bytes,
        flags: frozenset[str],
        received: float | None = None,
    ) -> tuple[int, int]:
        """APPEND: store a message durably (fsync'd) with flags and internal date; returns
        (uidvalidity, uid). FileNotFoundError if the folder does not exist."""
        ...

    def copy_messages(
        self, mailbox: Mailbox, folder: str, keys: Sequence[str], target: str
    ) -> tuple[int, list[tuple[str, int]]]:
        """COPY: the messages into target, with their flags (durably); returns the target's
        uidvalidity and (source key, new uid) for each copied (one gone meanwhile is not)."""
        ...

    def expunge(self, mailbox: Mailbox, folder: str, keys: Sequence[str]) -> None:
        """Remove messages for good; a key already gone is not an error."""
        ...

    def claim_recent(self, mailbox: Mailbox, folder: str, claim: bool) -> int:
        """RFC 3501 \\Recent: the folder's first UID no session has claimed yet; with claim
        (a read-write SELECT) everything up to the current uidnext becomes this caller's."""
        ...

    # -- POP3 (all blocking)

    def lock_mailbox(self, mailbox: Mailbox, owner: str) -> MailboxLock | None:
        """Take the mailbox's POP3 session lock; None if another session (in any process, on
        any node sharing the store) holds it and it is not stale: answer -ERR [IN-USE].
        owner describes the session for an admin reading the lock file (one line)."""
        ...

    def open_maildrop(self, mailbox: Mailbox) -> Maildrop:
        """The INBOX's messages present now (new/ and cur/), numbered 1..n in UID order; new
        ones get their UIDs now. Take lock_mailbox() first: the snapshot assumes no other
        POP3 session deletes from it."""
        ...
