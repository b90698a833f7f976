"""What IMAP does to the messages of one Maildir folder: read, flag, add, copy, \\Recent.

Every change is one atomic file system step per message, so sessions in other processes and
on other nodes sharing the tree see each message before or after a change, never half:
- flags: a rename of the message to its new ':2,<letters>' name, computed from the name it
  has at that moment (two sessions changing different flags of one message both win; a
  rename that loses a race with another session is retried on the name found then; not
  fsync'd: a crash may lose a flag change, never a message, as with Dovecot);
- add (APPEND): tmp/ -> fsync -> cur/ (with its flags) -> fsync cur/; the name starts with
  the message's internal date, which is what INTERNALDATE reads;
- copy: a hard link of the same file into the target's tmp/, then published the same way
  (no byte is copied; a file system without links gets a real copy);
- \\Recent (RFC 3501 2.3.2): a folder's first UID not yet seen by a session, in an
  `appliance-recent` file beside the uid list; the session that selects the folder
  read-write claims everything from there up (only it sees those messages as recent).
Blocking: worker thread only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence

from appliance.durable import (
    FILE_MODE,
    OPEN_NEW,
    DirSync,
    atomic_replace,
    exclusive_lock,
    fill_and_sync,
    unlink_quietly,
)
from appliance.store.flags import Keywords
from appliance.store.maildir import Maildir, unique_name

RECENT_FILE = "appliance-recent"
RECENT_LOCK = "appliance-recent.lock"


def info_of(name: str) -> str:
    """The letters after ':2,' in a cur/ name ('' for none)."""
    _, sep, info = name.partition(":2,")
    return info if sep else ""


class FolderOps:
    """One folder's IMAP operations; `where` maps message keys to (subdir, name) as last seen."""

    def __init__(self, maildir: Maildir, keywords: Keywords, hostname: str, dirsync: DirSync):
        self.md = maildir
        self.keywords = keywords
        self.hostname = hostname
        self.dirsync = dirsync

    def _relocate(self, key: str) -> tuple[str, str] | None:
        return self.md.files().get(key)

    # -- reading

    def read(
        self, wanted: Iterable[tuple[str, tuple[str, str] | None]], limit: int
    ) -> dict[str, bytes | None]:
        """The bytes (at most limit + 1) of messages given as (key, where last seen); None
        for one gone meanwhile."""
        return self.md.read_many(wanted, limit, self._relocate)

    # -- flags

    def change_flags(
        self,
        changes: Sequence[tuple[str, tuple[str, str] | None]],
        flags: frozenset[str],
        mode: str,
    ) -> tuple[dict[str, frozenset[str]], dict[str, tuple[str, str]]]:
        """Set ('='), add ('+') or remove ('-') flags on messages given as (key, where last
        seen); returns each one's flags after the change (a message gone is left out) and
        where the renamed ones are now."""
        result: dict[str, frozenset[str]] = {}
        places: dict[str, tuple[str, str]] = {}
        letters = self.keywords.letters_of(flags) if mode != "-" else ""
        drop = set(self.keywords.letters_of(flags)) if mode == "-" else set()
        for key, where in changes:
            for _ in range(3):
                if where is None:
                    break
                subdir, name = where
                current = info_of(name) if subdir == "cur" else ""
                if mode == "=":
                    # keep letters we do not know as flags (another program's): none here
                    target_info = letters
                elif mode == "+":
                    target_info = "".join(sorted(set(current) | set(letters)))
                else:
                    target_info = "".join(sorted(set(current) - drop))
                target = f"{key}:2,{target_info}"
                if subdir == "cur" and name == target:
                    # nothing to rename, if the name is still the file's (it may be an old
                    # look's, and another session's change then the one to keep)
                    if os.path.exists(f"{self.md.path}/cur/{name}"):
                        result[key] = self.keywords.flags_of(target_info)
                        break
                    where = self._relocate(key)
                    continue
                try:
                    os.rename(f"{self.md.path}/{subdir}/{name}", f"{self.md.path}/cur/{target}")
                except FileNotFoundError:
                    where = self._relocate(key)  # renamed meanwhile: retry on its new name
                    continue
                result[key] = self.keywords.flags_of(target_info)
                places[key] = ("cur", target)
                break
        # no directory fsync: a flag change lost in a crash is not a message lost (Dovecot's
        # fsync_mode = optimized does not sync them either); the message itself is durable
        return result, places

    # -- adding

    def _tmp_name(self, received: float | None) -> str:
        name = unique_name(self.hostname)
        if received is not None and received > 0:
            # the name's leading seconds are the message's INTERNALDATE
            name = f"{int(received)}{name[name.index('.') :]}"
        return name

    def add(self, data: bytes, flags: frozenset[str], received: float | None) -> str:
        """Store a new message durably in cur/ with its flags; returns its key."""
        self.md.ensure()
        name = self._tmp_name(received)
        path = self.md.tmp_path(name)
        size = fill_and_sync(os.open(path, OPEN_NEW, FILE_MODE), path, [data])
        return self._publish(name, size, flags)

    def _into_cur(self, name: str, size: int, flags: frozenset[str]) -> tuple[str, str]:
        """Move a written tmp/ file into cur/ with its flags (no fsync); (key, cur/ path).
        The tmp/ file is removed if that fails."""
        key = f"{name},S={size}"
        target = f"{self.md.path}/cur/{key}:2,{self.keywords.letters_of(flags)}"
        try:
            os.rename(self.md.tmp_path(name), target)
        except BaseException:
            unlink_quietly(self.md.tmp_path(name))
            raise
        return key, target

    def _publish(self, name: str, size: int, flags: frozenset[str]) -> str:
        key, target = self._into_cur(name, size, flags)
        try:
            self.dirsync.sync(f"{self.md.path}/cur")
        except BaseException:
            unlink_quietly(target)
            raise
        return key

    def copy_in(
        self, source: Maildir, items: Sequence[tuple[str, tuple[str, str], frozenset[str]]]
    ) -> list[tuple[str, str]]:
        """Copy messages of another folder here, each as (key, where, flags): a hard link
        (a real copy where links are not possible); returns (source key, new key) pairs for
        those still there."""
        self.md.ensure()
        made: list[tuple[str, str]] = []
        for key, where, flags in items:
            secs = key.partition(".")[0]
            received = float(secs) if secs.isdigit() else None
            name = self._tmp_name(received)
            src = f"{source.path}/{where[0]}/{where[1]}"
            tmp = self.md.tmp_path(name)
            try:
                try:
                    os.link(src, tmp)
                except FileNotFoundError:
                    found = source.files().get(key)
                    if found is None:
                        continue
                    src = f"{source.path}/{found[0]}/{found[1]}"
                    os.link(src, tmp)
            except FileNotFoundError:
                continue
            except OSError:
                shutil.copyfile(src, tmp)
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            new_key, _ = self._into_cur(name, os.stat(tmp).st_size, flags)
            made.append((key, new_key))
        if made:
            self.dirsync.sync(f"{self.md.path}/cur")
        return made

    # -- \Recent

    def claim_recent(self, uidnext: int, claim: bool) -> int:
        """The folder's first UID no session has seen; with claim, moved up to uidnext."""
        path = self.md.path / RECENT_FILE
        with exclusive_lock(self.md.path / RECENT_LOCK):
            try:
                first = int(path.read_text("ascii").strip() or "1")
            except (FileNotFoundError, ValueError):
                first = 1
            if claim and uidnext > first:
                atomic_replace(path, f"{uidnext}\n".encode("ascii"), FILE_MODE)
            return first


def move_all(source: Maildir, source_keywords: Keywords, target: Maildir,
             target_keywords: Keywords) -> int:  # fmt: skip
    """RENAME INBOX (RFC 3501 6.3.5): every INBOX message moves into a new folder (renames
    within one file system); the INBOX stays, empty. Returns how many moved."""
    target.ensure()
    moved = 0
    for key, (subdir, name) in source.files().items():
        flags = source_keywords.flags_of(info_of(name)) if subdir == "cur" else frozenset()
        letters = target_keywords.letters_of(flags)
        try:
            os.rename(f"{source.path}/{subdir}/{name}", f"{target.path}/cur/{key}:2,{letters}")
        except FileNotFoundError:
            continue
        moved += 1
    return moved
