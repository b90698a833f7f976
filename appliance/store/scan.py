"""What a Maildir folder holds, with stable UIDs, kept in memory between looks.

Every IMAP command and POP3 login asks "what is in this folder now"; answering it by listing
new/ and cur/ and re-reading the uid list each time would cost a 100,000-message folder
seconds per command. So each folder's last look is kept (`FolderState`: the UID-ordered
messages, where each file is, the listing the read side hands out) and a new look costs:

- nothing but three stat() calls while the folder is unchanged: its stamp (the mtimes and
  inodes of new/ and cur/ and the uid list's identity) is the same as at the last look and
  old enough to trust (a change within FRESH_NS of a mtime could hide behind it, as Dovecot
  also assumes); the very same FolderListing object is returned, so a caller can tell
  "nothing changed" by identity;
- one listing of new/ and cur/ when only names changed (flags set by this or another process,
  new/ -> cur/): the UIDs stand (the same base names, the same uid list), the messages whose
  names did not change keep their StoredMessage objects; nothing is written;
- the uid list's update (appliance.store.uidlist, under its lock) only when messages came
  or went.

Thread-safe: worker threads look at folders at once (one lock around the cache).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.interfaces import FolderListing, StoredMessage
from appliance.store.flags import Keywords
from appliance.store.folder_ops import info_of
from appliance.store.maildir import Maildir
from appliance.store.uidlist import FILE_NAME as UIDLIST_FILE
from appliance.store.uidlist import UidList

CACHED = 64  # folders whose last look is kept
FRESH_NS = 2_000_000_000  # a folder changed this recently is always listed again
PEEK_LIMIT = 5000  # peek() lists no folder bigger than this (it runs on the reactor)

Found = list[tuple[int, str, str, str, int]]  # (uid, key, subdir, name, size) in UID order


@dataclass
class FolderState:
    """One look at a folder."""

    uidvalidity: int
    uidnext: int
    found: Found
    listing: FolderListing
    where: dict[str, tuple[str, str]]  # key -> (subdir, name) as found
    uidlist_id: tuple[int, int, int] | None  # the uid list file as it was read
    stamp: tuple[int, ...] | None = None  # trusted stamp of this look (None: list again)
    # where this process has since moved files (its own flag changes): consulted before
    # `where` so the next change finds the file at once; the listing is not touched
    moved: dict[str, tuple[str, str]] = field(default_factory=dict)

    def place(self, key: str) -> tuple[str, str] | None:
        return self.moved.get(key) or self.where.get(key)


def _file_id(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def stamp_of(md: Maildir) -> tuple[int, ...] | None:
    """What changes whenever the folder's listing can: the mtimes of new/ and cur/ (any
    delivery, flag change or expunge, by any process or node) and the uid list's identity.
    None when a mtime is too recent to trust."""
    try:
        new, cur = os.stat(md.new), os.stat(md.cur)
    except FileNotFoundError:
        return None
    uidlist = _file_id(f"{md.path}/{UIDLIST_FILE}")
    if uidlist is None:
        return None
    if time.time_ns() - max(new.st_mtime_ns, cur.st_mtime_ns, uidlist[0]) < FRESH_NS:
        return None
    return (new.st_mtime_ns, new.st_ino, cur.st_mtime_ns, cur.st_ino, *uidlist)


def _received(key: str) -> float:
    secs = key.partition(".")[0]  # names start with the delivery time
    return float(secs) if secs.isdigit() else 0.0


class Scanner:
    """The last look at each recently used folder."""

    def __init__(
        self,
        allocate_for: Callable[[Maildir], Callable[[], int]],
        keywords_of: Callable[[Maildir], Keywords],
    ) -> None:
        """allocate_for(md): the UID validity allocator of md's mailbox; keywords_of(md):
        the folder's keyword letters."""
        self.allocate_for = allocate_for
        self.keywords_of = keywords_of
        self._states: OrderedDict[str, FolderState] = OrderedDict()
        self._lock = threading.Lock()

    def state(self, md: Maildir) -> FolderState:
        state = self._look(md, True)
        assert state is not None
        return state

    def peek(self, md: Maildir) -> FolderState | None:
        """As state(), but writing nothing: None when messages came or went since the last
        look (the uid list must number or drop them: call state()), and when the folder
        would have to be listed and holds more than PEEK_LIMIT messages (too long a listing
        for a caller on the reactor thread)."""
        return self._look(md, False)

    def _look(self, md: Maildir, write: bool) -> FolderState | None:
        key = str(md.path)
        stamp = stamp_of(md)
        with self._lock:
            cached = self._states.get(key)
            if cached is not None:
                self._states.move_to_end(key)
                if stamp is not None and cached.stamp == stamp:
                    return cached
        if not write:
            if cached is not None and len(cached.found) > PEEK_LIMIT:
                return None  # listing this many files is no quick call: the caller's pool
            state = self._renamed_only(md, cached)
            if state is None:
                return None
        else:
            state = self.rescan(md, cached)
        state.stamp = stamp_of(md)  # after the look: the uid list may have been rewritten
        with self._lock:
            self._states[key] = state
            self._states.move_to_end(key)
            while len(self._states) > CACHED:
                self._states.popitem(last=False)
        return state

    def last(self, md: Maildir) -> FolderState:
        """The last look at the folder, even if it may be out of date (where its files were
        is enough for a caller that finds a file gone and looks again); a look if none."""
        with self._lock:
            cached = self._states.get(str(md.path))
        return cached if cached is not None else self.state(md)

    def moved(self, md: Maildir, places: dict[str, tuple[str, str]]) -> None:
        """This process renamed these messages (key -> (subdir, name))."""
        with self._lock:
            cached = self._states.get(str(md.path))
            if cached is not None:
                cached.moved.update(places)

    def forget(self, path: str) -> None:
        """A folder deleted or renamed: nothing of it (nor of its children) stays."""
        with self._lock:
            for key in [k for k in self._states if k == path or k.startswith(path + ".")]:
                del self._states[key]

    @staticmethod
    def _same_messages(
        previous: FolderState | None,
        files: dict[str, tuple[str, str]],
        uidlist_id: tuple[int, int, int] | None,
    ) -> bool:
        """Whether the folder holds the messages of the last look (only names may differ),
        with the same uid list: their UIDs stand and nothing needs writing."""
        return (
            previous is not None
            and uidlist_id is not None
            and previous.uidlist_id == uidlist_id
            and files.keys() == previous.where.keys()
        )

    def _renamed_only(self, md: Maildir, previous: FolderState | None) -> FolderState | None:
        """A look that writes nothing: possible while the messages are those of the last
        look (only their names changed)."""
        if previous is None or not md.exists():
            return None
        files = md.files()
        if not self._same_messages(previous, files, _file_id(f"{md.path}/{UIDLIST_FILE}")):
            return None
        return self._renamed(md, previous, files)

    def rescan(self, md: Maildir, previous: FolderState | None) -> FolderState:
        """Look at the folder's files (see the module docstring for what that costs)."""
        if not md.exists():
            md.ensure()  # as Dovecot does: a mailbox that never had mail still has an INBOX
        files = md.files()
        if previous is not None and self._same_messages(
            previous, files, _file_id(f"{md.path}/{UIDLIST_FILE}")
        ):
            return self._renamed(md, previous, files)
        state = UidList(md.path, self.allocate_for(md)).update(files)
        found: Found = []
        for base, uid in sorted(state.uids.items(), key=lambda item: item[1]):
            subdir, name = files[base]
            try:
                size = md.message_size(subdir, name)
            except FileNotFoundError:
                continue  # expunged by another session since the listing
            found.append((uid, base, subdir, name, size))
        uidlist_id = _file_id(f"{md.path}/{UIDLIST_FILE}")
        return self._build(md, state.uidvalidity, state.next_uid, found, uidlist_id, previous)

    def _renamed(
        self, md: Maildir, previous: FolderState, files: dict[str, tuple[str, str]]
    ) -> FolderState:
        """The same messages, some under new names (flags): UIDs as before."""
        if all(files[k] == w for k, w in previous.where.items()):
            return previous  # nothing changed at all: the same listing object
        found = [(uid, k, *files[k], size) for uid, k, _, _, size in previous.found]
        return self._build(
            md, previous.uidvalidity, previous.uidnext, found, previous.uidlist_id, previous
        )

    def _build(
        self,
        md: Maildir,
        uidvalidity: int,
        uidnext: int,
        found: Found,
        uidlist_id: tuple[int, int, int] | None,
        previous: FolderState | None,
    ) -> FolderState:
        keywords = self.keywords_of(md)
        old_where = previous.where if previous is not None else {}
        old = {m.key: m for m in previous.listing.messages} if previous is not None else {}
        messages = []
        where: dict[str, tuple[str, str]] = {}
        for uid, key, subdir, name, size in found:
            place = (subdir, name)
            where[key] = place
            kept = old.get(key)
            if kept is not None and kept.uid == uid and old_where.get(key) == place:
                messages.append(kept)
                continue
            flags = keywords.flags_of(info_of(name)) if subdir == "cur" else frozenset()
            messages.append(StoredMessage(uid, key, size, flags, _received(key)))
        listing = FolderListing(uidvalidity, uidnext, tuple(messages))
        return FolderState(uidvalidity, uidnext, found, listing, where, uidlist_id)
