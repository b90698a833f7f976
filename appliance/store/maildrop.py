"""A POP3 maildrop (RFC 1939): the INBOX as one session saw it at login, and its UPDATE state.

Numbers are 1..n in UID order, fixed for the session; messages delivered after the snapshot
belong to the next one. UIDL answers are Dovecot's default `pop3_uidl_format = %08Xu%08Xv`
(the dovecot-uidlist UID, then the UID validity, each as 8 upper-case hex digits): the UIDs
are the ones Dovecot gave this Maildir, so a "leave on server" client moving from the
tutorial's Dovecot to the appliance downloads nothing twice.

Sizes are the file's octets: delivery stores the SMTP bytes (CRLF line ends, our
Return-Path/Delivered-To in front) unchanged, so the LIST size is exactly what open() gives;
the POP3 server only dot-stuffs on the way out, which RFC 1939 does not count.

UPDATE (`apply_deletions`) unlinks each deleted message (atomic: present whole or gone) and
fsyncs new/ and cur/ before anything else; then, as Dovecot does, the snapshot's other
messages still in new/ move to cur/ (a client has seen them, so they are no longer \\Recent
for IMAP), and those retrieved with RETR get the S (\\Seen) flag in their ':2,' suffix.
Blocking: worker thread only.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Iterable
from typing import BinaryIO

from twisted.logger import Logger

from appliance.durable import DirSync, fsync_dir
from appliance.interfaces import MaildropMessage
from appliance.store.maildir import Maildir


def uidl_of(uid: int, uidvalidity: int) -> str:
    """The UIDL of a message: Dovecot's %08Xu%08Xv."""
    return f"{uid:08X}{uidvalidity:08X}"


def _with_seen(key: str, name: str) -> str:
    """The cur/ name of a message with S added to the flags its name carries."""
    _, sep, info = name.partition(":2,")
    letters = set(info) if sep else set()
    return f"{key}:2,{''.join(sorted(letters | {'S'}))}"


class MaildirMaildrop:
    """interfaces.Maildrop over one INBOX Maildir."""

    log = Logger()

    def __init__(
        self,
        maildir: Maildir,
        uidvalidity: int,
        found: Iterable[tuple[int, str, str, str, int]],
        dirsync: DirSync | None = None,
    ) -> None:
        """found: (uid, key, subdir, file name, size) in UID order, as the store scanned it."""
        self.maildir = maildir
        self.uidvalidity = uidvalidity
        self.dirsync = dirsync
        messages = []
        self._where: list[tuple[str, str]] = []  # current (subdir, name) of message n at n-1
        for number, (uid, key, subdir, name, size) in enumerate(found, 1):
            messages.append(MaildropMessage(number, uid, uidl_of(uid, uidvalidity), key, size))
            self._where.append((subdir, name))
        self.messages: tuple[MaildropMessage, ...] = tuple(messages)
        self._total = sum(m.size for m in messages)

    def __repr__(self) -> str:
        return f"MaildirMaildrop({str(self.maildir.path)!r}, {len(self.messages)} messages)"

    @property
    def total_size(self) -> int:
        return self._total

    def _index(self, number: int) -> int:
        if not isinstance(number, int) or not 1 <= number <= len(self.messages):
            raise ValueError(f"no message {number!r} in this maildrop")
        return number - 1

    def _relocate(
        self, i: int, files: Callable[[], dict[str, tuple[str, str]]] | None = None
    ) -> tuple[str, str] | None:
        """Where message i is now (an IMAP session may have moved it or changed its flags),
        or None if it is gone; files: the folder's listing (default: list it now)."""
        found = (files or self.maildir.files)().get(self.messages[i].key)
        if found is not None:
            self._where[i] = found
        return found

    def _path(self, where: tuple[str, str]) -> str:
        return f"{self.maildir.path}/{where[0]}/{where[1]}"

    def open(self, number: int) -> BinaryIO:
        i = self._index(number)
        try:
            return open(self._path(self._where[i]), "rb")
        except FileNotFoundError:
            where = self._relocate(i)
            if where is None:
                raise
            return open(self._path(where), "rb")

    def read(self, numbers: Iterable[int], limit: int) -> dict[int, bytes | None]:
        wanted = [(number, self._where[self._index(number)]) for number in numbers]
        files = functools.cache(self.maildir.files)  # one listing however many were moved
        return self.maildir.read_many(wanted, limit, lambda n: self._relocate(n - 1, files))

    def _unlink(self, i: int) -> str | None:
        """Remove message i; the subdir it was removed from, None if it was gone already."""
        where: tuple[str, str] | None = self._where[i]
        for _ in range(3):
            if where is None:
                return None
            try:
                os.unlink(self._path(where))
                return where[0]
            except FileNotFoundError:
                where = self._relocate(i)
        return None

    def _settle(self, i: int, seen: bool) -> str | None:
        """Move message i to cur/ (with S if seen); the subdir it left, None if unchanged."""
        key = self.messages[i].key
        where: tuple[str, str] | None = self._where[i]
        for _ in range(3):
            if where is None:
                return None
            subdir, name = where
            if seen:
                target = _with_seen(key, name)
            elif subdir == "new":
                target = f"{key}:2,"
            else:
                return None  # in cur/ already, flags as they are
            if subdir == "cur" and name == target:
                return None
            try:
                os.rename(self._path(where), f"{self.maildir.cur}/{target}")
            except FileNotFoundError:
                where = self._relocate(i)
                continue
            self._where[i] = ("cur", target)
            return subdir
        return None

    def _sync(self, subdirs: set[str]) -> None:
        for subdir in sorted(subdirs):
            path = str(self.maildir.path / subdir)
            if self.dirsync is not None:
                self.dirsync.sync(path)
            else:
                fsync_dir(path)

    def apply_deletions(self, numbers: Iterable[int], retrieved: Iterable[int] = ()) -> int:
        doomed = {self._index(n) for n in numbers}
        seen = {self._index(n) for n in retrieved} - doomed
        removed = 0
        failures: list[tuple[str, OSError]] = []
        touched: set[str] = set()
        for i in sorted(doomed):
            try:
                subdir = self._unlink(i)
            except OSError as exc:
                failures.append((self.messages[i].key, exc))
                continue
            if subdir is not None:
                removed += 1
                touched.add(subdir)
        if touched:
            self._sync(touched)  # the deletions are durable before anything else changes
        moved: set[str] = set()
        for i in range(len(self.messages)):
            if i in doomed:
                continue
            try:
                left = self._settle(i, i in seen)
            except OSError as exc:
                # only a flag lost: the deletions stand, and the client is not told otherwise
                self.log.warn(
                    "cannot mark {key} seen in {path}: {reason}",
                    key=self.messages[i].key,
                    path=str(self.maildir.path),
                    reason=str(exc),
                )
                continue
            if left is not None:
                moved.update((left, "cur"))
        if moved:
            try:
                self._sync(moved)
            except OSError as exc:
                self.log.warn(
                    "cannot sync {path} after marking messages seen: {reason}",
                    path=str(self.maildir.path),
                    reason=str(exc),
                )
        if failures:
            key, first = failures[0]
            raise OSError(
                first.errno or errno.EIO,
                f"{len(failures)} message(s) not removed from {self.maildir.path}, "
                f"first {key}: {first.strerror or first}",
            ) from first
        return removed
