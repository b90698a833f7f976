"""The mail store: mailboxes as Maildir++ folders under one root, implementing `MailStore`.

    <mail_root>/<domain>/<localpart>/Maildir/               INBOX
    <mail_root>/<domain>/<localpart>/Maildir/.Sent/         folder "Sent"
    <mail_root>/<domain>/<localpart>/Maildir/.Archive.2026/ folder "Archive/2026"

The write side delivers durably (appliance.store.maildir); the read side lists messages with
stable UIDs (appliance.store.uidlist), reads them, changes their flags (the Maildir ":2,"
suffix) and expunges them. For POP3 it takes the per-mailbox session lock
(appliance.store.lock, a dovecot-pop3-session.lock file in the INBOX) and opens maildrop
snapshots (appliance.store.maildrop). Nothing here is kept only in memory: another node sharing
the tree sees the same UIDs, flags and locks. Every method but announce/watch blocks (worker
thread).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from twisted.logger import Logger

from appliance.durable import DirSync, close_quietly, unlink_quietly, write_all, write_chunks
from appliance.interfaces import FolderListing, Mailbox
from appliance.store import folders
from appliance.store.flags import Keywords
from appliance.store.folder_ops import FolderOps, move_all
from appliance.store.lock import STALE_AFTER, SessionLock
from appliance.store.maildir import Maildir
from appliance.store.maildrop import MaildirMaildrop
from appliance.store.scan import Scanner

INBOX = "INBOX"
FOLDER_OPS_CACHE = 64  # folders whose FolderOps (keyword letters) are kept
Scan = tuple[int, int, list[tuple[int, str, str, str, int]]]  # uidvalidity, uidnext, found


def _safe_component(value: str, what: str) -> str:
    # Domains and local parts come from policy, but a '/' or '..' must never reach a path.
    if not value or value in (".", "..") or "/" in value or "\0" in value:
        raise ValueError(f"unsafe mailbox {what}: {value!r}")
    return value


def base_of(name: str) -> str:
    """A message's key: its file name without the ':2,<flags>' suffix."""
    return name.split(":", 1)[0]


class MaildirNewMessage:
    """interfaces.NewMessage: a tmp/ file in one Maildir, published into new/."""

    def __init__(
        self,
        maildir: Maildir,
        hostname: str,
        dirsync: DirSync,
        folder_of: Callable[[str], Maildir | None] = lambda folder: None,
    ) -> None:
        self.maildir = maildir
        self.folder_of = folder_of  # another folder of the mailbox, if it exists
        self.hostname = hostname
        self.dirsync = dirsync
        self.size = 0
        self._fd: int | None = None
        self._name: str | None = None

    def open_now(self) -> bool:
        if self._fd is not None:
            return True
        try:
            self._fd, self._name = self.maildir.create_tmp(self.hostname, create_folder=False)
        except FileNotFoundError:
            # First mail to this mailbox: its folder is made, fsyncs and all, by write_rest()
            # in the commit; until then the caller keeps the bytes.
            return False
        return True

    def write(self, data: bytes | bytearray) -> None:
        assert self._fd is not None, "open_now() first"
        write_all(self._fd, data)
        self.size += len(data)

    def write_rest(self, chunks: Iterable[bytes]) -> None:
        try:
            if self._fd is None:
                self._fd, self._name = self.maildir.create_tmp(self.hostname)
            self.size += write_chunks(self._fd, chunks)
            os.fsync(self._fd)
            fd, self._fd = self._fd, None
            os.close(fd)
        except BaseException:
            self.discard()
            raise

    def publish(self, folder: str = INBOX) -> str:
        name, self._name = self._name, None  # publish() cleans up after itself
        assert name is not None and self._fd is None, "write_rest() first"
        into = self.folder_of(folder) if folder.upper() != INBOX else None
        return self.maildir.publish(name, self.size, self.dirsync, into)

    def discard(self) -> None:
        fd, self._fd = self._fd, None
        close_quietly(fd)
        if self._name is not None:
            name, self._name = self._name, None
            unlink_quietly(self.maildir.tmp_path(name))


class MaildirStore:
    """interfaces.MailStore over Maildir++ folders under mail_root."""

    log = Logger()

    def __init__(
        self,
        mail_root: str | Path,
        hostname: str | None = None,
        *,
        dirsync: DirSync | None = None,
        cache_size: int = 4096,
        stale_after: float = STALE_AFTER,
    ) -> None:
        self.mail_root = Path(mail_root)
        self.hostname = hostname or socket.gethostname()
        self.dirsync = dirsync or DirSync()
        self._cache: dict[Mailbox, Maildir] = {}
        self._cache_size = cache_size
        self._watchers: list[Callable[[Mailbox], None]] = []
        # POP3 session locks not refreshed for this long are taken over (seconds)
        self.stale_after = stale_after
        # the last scan of recently used folders, valid while their stamp is unchanged
        self._folder_ops: dict[str, FolderOps] = {}
        self.scanner = Scanner(
            lambda md: folders.UidValidity(self._root_of(md)).allocate,
            lambda md: self._ops(md).keywords,
        )

    # -- locating

    def maildir(self, mailbox: Mailbox) -> Maildir:
        """The mailbox's INBOX Maildir (not created); ValueError for a name that would escape
        mail_root."""
        md = self._cache.get(mailbox)
        if md is None:
            domain = _safe_component(mailbox.domain, "domain")
            localpart = _safe_component(mailbox.localpart, "local part")
            md = Maildir(self.mail_root / domain / localpart / "Maildir")
            if len(self._cache) >= self._cache_size:
                self._cache.clear()  # crude, but a cache miss only costs a few path joins
            self._cache[mailbox] = md
        return md

    def folder(self, mailbox: Mailbox, folder: str) -> Maildir:
        """The Maildir of one folder ('INBOX' or a Maildir++ '.Name.Sub' folder)."""
        inbox = self.maildir(mailbox)
        if folder.upper() == INBOX:
            return inbox
        return Maildir(folders.folder_dir(inbox.path, folder))

    # -- write side

    def check(self, mailbox: Mailbox) -> None:
        self.maildir(mailbox)

    def new_message(self, mailbox: Mailbox) -> MaildirNewMessage:
        return MaildirNewMessage(
            self.maildir(mailbox),
            self.hostname,
            self.dirsync,
            lambda folder: self._folder_if_there(mailbox, folder),
        )

    def deliver(self, mailbox: Mailbox, chunks: Iterator[bytes], folder: str = INBOX) -> str:
        into = self._folder_if_there(mailbox, folder) if folder.upper() != INBOX else None
        return self.maildir(mailbox).deliver_chunks(chunks, self.hostname, self.dirsync, into)

    def _folder_if_there(self, mailbox: Mailbox, folder: str) -> Maildir | None:
        """A folder to deliver into, if it exists (else the INBOX takes the message); a
        special-use folder (Junk) is made first for a user who never had them."""
        try:
            md = self.folder(mailbox, folder)
        except ValueError:
            return None
        if not md.exists() and folder in folders.SPECIAL_USE:
            self.special_use(mailbox)
        return md if md.exists() else None

    def clean_stale(self) -> int:
        # Maildir tmp/ files of deliveries cut short: the Maildir rule is to remove them after
        # 36 hours (a younger one may belong to another node sharing the store)
        total = 0
        for tmp in self.mail_root.glob("*/*/Maildir/tmp"):
            removed = Maildir(tmp.parent).clean_tmp()
            if removed:
                self.log.info(
                    "removed {count} stale file(s) from {path}", count=removed, path=str(tmp)
                )
            total += removed
        return total

    def announce(self, mailbox: Mailbox) -> None:
        for callback in list(self._watchers):
            try:
                callback(mailbox)
            except Exception:
                self.log.failure("new-mail watcher failed for {rcpt}", rcpt=mailbox.address)

    def watch(self, callback: Callable[[Mailbox], None]) -> Callable[[], None]:
        self._watchers.append(callback)

        def stop() -> None:
            if callback in self._watchers:
                self._watchers.remove(callback)

        return stop

    # -- folders

    def _root(self, mailbox: Mailbox) -> Path:
        return self.maildir(mailbox).path

    def folders(self, mailbox: Mailbox) -> list[str]:
        return [INBOX, *folders.list_folders(self._root(mailbox))]

    def create_folder(self, mailbox: Mailbox, folder: str) -> None:
        md = self.folder(mailbox, folder)
        if md.exists():
            raise FileExistsError(folder)
        inbox = self.maildir(mailbox)
        if not inbox.exists():
            inbox.ensure()
        md.ensure()

    def delete_folder(self, mailbox: Mailbox, folder: str) -> None:
        folders.delete_folder(self._root(mailbox), folder)
        self._forget(self.folder(mailbox, folder))

    def rename_folder(self, mailbox: Mailbox, old: str, new: str) -> None:
        root = self._root(mailbox)
        if old.upper() == INBOX:
            target = self.folder(mailbox, new)
            if target.exists():
                raise FileExistsError(new)
            inbox = self.maildir(mailbox)
            move_all(inbox, self._ops(inbox).keywords, target, self._ops(target).keywords)
            for path in (inbox.cur, inbox.new, target.cur):
                self.dirsync.sync(str(path))
            return
        if new.upper() == INBOX:
            raise FileExistsError(new)
        folders.rename_folder(root, old, new)
        self._forget(self.folder(mailbox, old))

    def subscriptions(self, mailbox: Mailbox) -> list[str]:
        return folders.subscriptions(self._root(mailbox))

    def set_subscribed(self, mailbox: Mailbox, folder: str, subscribed: bool) -> None:
        folders.set_subscribed(self._root(mailbox), folder, subscribed)

    def special_use(self, mailbox: Mailbox) -> dict[str, str]:
        root = self._root(mailbox)
        if not folders.special_made(root):
            inbox = self.maildir(mailbox)
            if not inbox.exists():
                inbox.ensure()
            for name in folders.SPECIAL_USE:
                md = self.folder(mailbox, name)
                if not md.exists():
                    md.ensure()
                folders.set_subscribed(root, name, True)
            folders.mark_special_made(root)
        return dict(folders.SPECIAL_USE)

    # -- messages

    def _ops(self, md: Maildir) -> FolderOps:
        key = str(md.path)
        ops = self._folder_ops.get(key)
        if ops is None:
            if len(self._folder_ops) >= FOLDER_OPS_CACHE:
                self._folder_ops.pop(next(iter(self._folder_ops)))
            ops = self._folder_ops[key] = FolderOps(
                md, Keywords(md.path), self.hostname, self.dirsync
            )
        return ops

    def _forget(self, md: Maildir) -> None:
        """A folder deleted or renamed: nothing of it stays cached (nor of its children)."""
        prefix = str(md.path)
        self.scanner.forget(prefix)
        for key in [k for k in self._folder_ops if k == prefix or k.startswith(prefix + ".")]:
            del self._folder_ops[key]

    def _existing(self, mailbox: Mailbox, folder: str) -> Maildir:
        md = self.folder(mailbox, folder)
        if folder.upper() != INBOX and not md.exists():
            raise FileNotFoundError(f"no folder {folder}")
        return md

    def _files(self, md: Maildir) -> dict[str, tuple[str, str]]:
        """base name -> (subdir, file name) for every message in new/ and cur/."""
        return md.files()

    def _scan(self, md: Maildir) -> Scan:
        """(uidvalidity, uidnext, [(uid, key, subdir, name, size)] in UID order) of a folder,
        numbering new messages now (appliance.store.scan: from memory while unchanged)."""
        state = self.scanner.state(md)
        return state.uidvalidity, state.uidnext, state.found

    @staticmethod
    def _root_of(md: Maildir) -> Path:
        """The INBOX Maildir a folder belongs to (a '.Name' folder sits inside it)."""
        return md.path.parent if md.path.name.startswith(".") else md.path

    def _listing(self, md: Maildir) -> tuple[FolderListing, dict[str, tuple[str, str]]]:
        """The folder's listing and where each message was found."""
        state = self.scanner.state(md)
        return state.listing, state.where

    def list_messages(self, mailbox: Mailbox, folder: str = INBOX) -> FolderListing:
        return self._listing(self._existing(mailbox, folder))[0]

    def peek_messages(self, mailbox: Mailbox, folder: str = INBOX) -> FolderListing | None:
        state = self.scanner.peek(self._existing(mailbox, folder))
        return state.listing if state is not None else None

    def keywords(self, mailbox: Mailbox, folder: str) -> list[str]:
        return self._ops(self._existing(mailbox, folder)).keywords.known()

    def _where(self, md: Maildir, keys: Sequence[str]) -> list[tuple[str, tuple[str, str] | None]]:
        # where the last look found them: a file renamed since is looked up again by
        # FolderOps (a rename or open that fails), so no listing is needed here
        state = self.scanner.last(md)
        return [(key, state.place(key)) for key in keys]

    def _locate(self, md: Maildir, key: str) -> tuple[str, str]:
        if "/" in key or ":" in key or key in ("", ".", ".."):
            raise ValueError(f"not a message key: {key!r}")
        found = self._files(md).get(key)
        if found is None:
            raise FileNotFoundError(f"no message {key} in {md.path}")
        return found

    def open_message(self, mailbox: Mailbox, folder: str, key: str) -> BinaryIO:
        md = self.folder(mailbox, folder)
        subdir, name = self._locate(md, key)
        return md.open_message(subdir, name)

    def read_messages(
        self, mailbox: Mailbox, folder: str, keys: Sequence[str], limit: int
    ) -> dict[str, bytes | None]:
        md = self._existing(mailbox, folder)
        return self._ops(md).read(self._where(md, keys), limit)

    def set_flags(self, mailbox: Mailbox, folder: str, key: str, flags: frozenset[str]) -> str:
        md = self.folder(mailbox, folder)
        _, places = self._ops(md).change_flags([(key, self._locate(md, key))], flags, "=")
        self.scanner.moved(md, places)
        return key

    def change_flags(
        self, mailbox: Mailbox, folder: str, keys: Sequence[str], flags: frozenset[str], mode: str
    ) -> dict[str, frozenset[str]]:
        if mode not in ("=", "+", "-"):
            raise ValueError(f"flag change mode must be =, + or -, not {mode!r}")
        md = self._existing(mailbox, folder)
        changed, places = self._ops(md).change_flags(self._where(md, keys), flags, mode)
        self.scanner.moved(md, places)
        return changed

    def _uid_of(self, md: Maildir, keys: Sequence[str]) -> tuple[int, dict[str, int]]:
        listing = self._listing(md)[0]
        wanted = set(keys)
        return listing.uidvalidity, {m.key: m.uid for m in listing.messages if m.key in wanted}

    def add_message(
        self,
        mailbox: Mailbox,
        folder: str,
        data: bytes,
        flags: frozenset[str],
        received: float | None = None,
    ) -> tuple[int, int]:
        md = self._existing(mailbox, folder)
        key = self._ops(md).add(data, flags, received)
        uidvalidity, uids = self._uid_of(md, [key])
        return uidvalidity, uids.get(key, 0)

    def copy_messages(
        self, mailbox: Mailbox, folder: str, keys: Sequence[str], target: str
    ) -> tuple[int, list[tuple[str, int]]]:
        md = self._existing(mailbox, folder)
        dest = self._existing(mailbox, target)
        listing, where = self._listing(md)
        flags = {m.key: m.flags for m in listing.messages}
        items = [(k, where[k], flags[k]) for k in keys if k in where]
        made = self._ops(dest).copy_in(md, items)
        uidvalidity, uids = self._uid_of(dest, [new for _, new in made])
        return uidvalidity, [(old, uids[new]) for old, new in made if new in uids]

    def expunge(self, mailbox: Mailbox, folder: str, keys: Sequence[str]) -> None:
        md = self.folder(mailbox, folder)
        files = self._files(md)
        touched = set()
        for key in keys:
            found = files.get(key)
            if found is None:
                continue
            try:
                md.remove(*found)
                touched.add(found[0])
            except FileNotFoundError:
                pass
        for subdir in sorted(touched):
            self.dirsync.sync(str(md.path / subdir))

    def claim_recent(self, mailbox: Mailbox, folder: str, claim: bool) -> int:
        md = self._existing(mailbox, folder)
        uidnext = self._listing(md)[0].uidnext
        return self._ops(md).claim_recent(uidnext, claim)

    # -- POP3

    def lock_mailbox(self, mailbox: Mailbox, owner: str) -> SessionLock | None:
        md = self.maildir(mailbox)
        if not md.exists():
            md.ensure()
        return SessionLock.acquire(md.path, owner, self.hostname, self.stale_after)

    def open_maildrop(self, mailbox: Mailbox) -> MaildirMaildrop:
        md = self.maildir(mailbox)
        uidvalidity, _, found = self._scan(md)
        return MaildirMaildrop(md, uidvalidity, found, self.dirsync)
