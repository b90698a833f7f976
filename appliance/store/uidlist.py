"""Stable IMAP/POP3 UIDs over a Maildir folder, kept in a `dovecot-uidlist` file.

Maildir names change when flags change, so UIDs are kept beside the messages, the way
Dovecot does it (src/lib-storage/index/maildir/maildir-uidlist.c), in its version 3 format:

    3 V1764590000 N4
    1 :1764590001.M12P3Q1.mail.163.com,S=812
    3 :1764590007.M40P3Q2.mail.163.com,S=1200

The header holds the UID validity (V, fixed when the file is made) and the next UID (N); each
line a UID and the message's base name (without ':2,<flags>'). UIDs only grow: a new message
gets N, which then increases, so a UID is never reused while the validity stays the same.
`update()` holds an exclusive lock on `dovecot-uidlist.lock` while it reads, numbers the
messages it has not seen, drops the ones that are gone, and replaces the file atomically, so
concurrent sessions and other nodes on shared storage agree. Blocking: worker thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from appliance.durable import FILE_MODE, atomic_replace, exclusive_lock
from appliance.store.maildir import delivery_order

FILE_NAME = "dovecot-uidlist"
LOCK_NAME = "dovecot-uidlist.lock"


@dataclass
class UidState:
    uidvalidity: int
    next_uid: int
    uids: dict[str, int] = field(default_factory=dict)  # base name -> uid


def parse(text: str) -> UidState | None:
    """The state a uidlist file holds, or None if it is not one we can read."""
    lines = text.splitlines()
    if not lines:
        return None
    header = lines[0].split()
    if not header or header[0] != "3":
        return None
    values = {word[0]: word[1:] for word in header[1:] if word}
    try:
        state = UidState(int(values["V"]), int(values["N"]))
    except (KeyError, ValueError):
        return None
    for line in lines[1:]:
        uid_text, sep, name = line.partition(":")
        words = uid_text.split()
        if not sep or not words or not words[0].isdigit() or not name:
            continue  # a torn or foreign line: the message gets numbered again
        uid = int(words[0])
        state.uids[name] = uid
        state.next_uid = max(state.next_uid, uid + 1)
    return state


def format_state(state: UidState) -> bytes:
    lines = [f"3 V{state.uidvalidity} N{state.next_uid}"]
    lines += [f"{uid} :{name}" for name, uid in sorted(state.uids.items(), key=lambda i: i[1])]
    return ("\n".join(lines) + "\n").encode("utf-8")


class UidList:
    """The uidlist of one Maildir folder."""

    def __init__(self, folder: str | Path, allocate: Callable[[], int] | None = None) -> None:
        """allocate: gives a new folder its UID validity (default: the current time)."""
        self.folder = Path(folder)
        self.path = self.folder / FILE_NAME
        self.allocate = allocate

    def read(self) -> UidState:
        """The state on disk (a fresh one, not yet written, if there is no usable file)."""
        try:
            state = parse(self.path.read_text("utf-8", "replace"))
        except FileNotFoundError:
            state = None
        if state is None:
            validity = self.allocate() if self.allocate is not None else int(time.time())
            state = UidState(uidvalidity=validity, next_uid=1)
        return state

    def update(self, names: Iterable[str]) -> UidState:
        """The state with UIDs for exactly these base names; the ones not numbered yet get
        the next UIDs in delivery order (appliance.store.maildir.delivery_order)."""
        with exclusive_lock(self.folder / LOCK_NAME):
            state = self.read()
            wanted = set(names)
            before = state.uids
            kept = {n: uid for n, uid in before.items() if n in wanted}
            for name in sorted(wanted.difference(kept), key=delivery_order):
                kept[name] = state.next_uid
                state.next_uid += 1
            state.uids = kept
            if kept != before or not self.path.exists():
                atomic_replace(self.path, format_state(state), FILE_MODE)
            return state
