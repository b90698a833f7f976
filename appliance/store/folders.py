"""A mailbox's folder tree in Maildir++ layout, and the small files IMAP keeps beside it.

    Maildir/                     INBOX (new/ cur/ tmp/, dovecot-uidlist)
    Maildir/.Sent/               folder "Sent"
    Maildir/.Archive.2026/       folder "Archive/2026" ('/' in IMAP names, '.' on disk)
    Maildir/subscriptions        subscribed folder names, one per line (Dovecot's file)
    Maildir/dovecot-uidvalidity  the last UID validity given to a folder of this mailbox (hex)
    Maildir/.special-use         present once the special-use folders were made (RFC 6154)

Every folder's UID validity comes from `UidValidity.allocate()`, which never gives the same
value twice in one mailbox (a folder deleted and made again, or renamed over another, gets a
new one: clients must not reuse their cached UIDs). Blocking: worker thread only.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from appliance.durable import FILE_MODE, atomic_replace, exclusive_lock, fsync_dir

INBOX = "INBOX"
SUBSCRIPTIONS = "subscriptions"
UIDVALIDITY = "dovecot-uidvalidity"
SPECIAL_MARK = ".special-use"
# RFC 6154 folders made for every new user, with their attribute
SPECIAL_USE: dict[str, str] = {
    "Drafts": "\\Drafts",
    "Sent": "\\Sent",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}


def check_name(folder: str) -> list[str]:
    """The levels of a folder name ('Archive/2026' -> ['Archive', '2026']); ValueError for
    one that cannot be a Maildir++ folder (an empty level, '.', NUL, a level with '.')."""
    parts = folder.split("/")
    if any(not p or p in (".", "..") or "." in p or "\0" in p or "\n" in p for p in parts):
        raise ValueError(f"unsupported folder name: {folder!r}")
    return parts


def folder_dir(root: Path, folder: str) -> Path:
    """The directory of a folder under the INBOX Maildir root."""
    if folder.upper() == INBOX:
        return root
    return root / ("." + ".".join(check_name(folder)))


def list_folders(root: Path) -> list[str]:
    """Every folder but INBOX, sorted (a folder is a '.Name' directory with a cur/)."""
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return []
    names = []
    for entry in entries:
        if entry.startswith(".") and entry not in (".", "..") and (root / entry / "cur").is_dir():
            names.append(entry[1:].replace(".", "/"))
    return sorted(names)


def children(root: Path, folder: str) -> list[str]:
    prefix = folder + "/"
    return [name for name in list_folders(root) if name.startswith(prefix)]


def delete_folder(root: Path, folder: str) -> None:
    """Remove a folder and its messages; FileNotFoundError if it does not exist, ValueError
    for INBOX. Its children stay (RFC 3501 6.3.4: the name lives on as \\Noselect)."""
    if folder.upper() == INBOX:
        raise ValueError("INBOX cannot be deleted")
    path = folder_dir(root, folder)
    if not (path / "cur").is_dir():
        raise FileNotFoundError(folder)
    # renamed aside first: a crash halfway leaves a hidden '..deleted' directory, never a
    # half-empty folder that clients would see
    aside = root / f"..deleted.{os.getpid()}.{time.time_ns()}"
    os.rename(path, aside)
    fsync_dir(root)
    shutil.rmtree(aside, ignore_errors=True)
    # the subscription stays (RFC 3501 6.3.6: a subscribed name need not exist)


def rename_folder(root: Path, old: str, new: str) -> None:
    """Rename a folder and every folder below it; FileNotFoundError if old does not exist,
    FileExistsError if new (or one of the renamed children) does. INBOX is not renamed here."""
    check_name(new)
    src = folder_dir(root, old)
    if not (src / "cur").is_dir():
        raise FileNotFoundError(old)
    moves = [(old, new)] + [(c, new + c[len(old) :]) for c in children(root, old)]
    for _, target in moves:
        if folder_dir(root, target).exists():
            raise FileExistsError(target)
    for source, target in moves:
        os.rename(folder_dir(root, source), folder_dir(root, target))
    fsync_dir(root)
    subscribed = subscriptions(root)
    renamed = [name for name in subscribed if name == old or name.startswith(old + "/")]
    if renamed:
        kept = [name for name in subscribed if name not in renamed]
        _write_subscriptions(root, kept + [new + name[len(old) :] for name in renamed])


def subscriptions(root: Path) -> list[str]:
    try:
        text = (root / SUBSCRIPTIONS).read_text("utf-8", "replace")
    except FileNotFoundError:
        return []
    lines = text.splitlines()
    if lines and lines[0].startswith("V\t"):  # Dovecot 2.3's versioned format
        lines = lines[1:]
    return [line for line in dict.fromkeys(lines) if line]


def _write_subscriptions(root: Path, names: list[str]) -> None:
    data = "".join(f"{name}\n" for name in names).encode("utf-8")
    root.mkdir(parents=True, exist_ok=True)
    atomic_replace(root / SUBSCRIPTIONS, data, FILE_MODE)


def set_subscribed(root: Path, folder: str, subscribed: bool) -> None:
    with exclusive_lock(root / (SUBSCRIPTIONS + ".lock")):
        names = subscriptions(root)
        if subscribed and folder not in names:
            _write_subscriptions(root, [*names, folder])
        elif not subscribed and folder in names:
            _write_subscriptions(root, [name for name in names if name != folder])


class UidValidity:
    """Hands out the UID validity of each new folder of one mailbox: the current time, or
    one more than the last value given if that is not smaller (two folders made in the same
    second still differ), recorded in dovecot-uidvalidity under a lock."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def allocate(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / UIDVALIDITY
        with exclusive_lock(self.root / (UIDVALIDITY + ".lock")):
            try:
                last = int(path.read_text("ascii").strip() or "0", 16)
            except (FileNotFoundError, ValueError):
                last = 0
            value = max(int(time.time()), last + 1) & 0xFFFFFFFF or 1
            atomic_replace(path, f"{value:08x}\n".encode("ascii"), FILE_MODE)
            return value


def special_made(root: Path) -> bool:
    """Whether this mailbox's special-use folders were made already (once per user)."""
    return (root / SPECIAL_MARK).exists()


def mark_special_made(root: Path) -> None:
    """Record that they were (after making them: a crash before leaves them to make again)."""
    root.mkdir(parents=True, exist_ok=True)
    atomic_replace(root / SPECIAL_MARK, b"", FILE_MODE)
