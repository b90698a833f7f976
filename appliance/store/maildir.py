"""One Maildir folder: durable delivery (tmp -> fsync -> new -> fsync dir) and simple reads.

twisted.mail.maildir cannot be used (str/bytes paths on Python 3, text-mode reads, no fsync), so
this module is the one place that knows a Maildir folder's layout (appliance.store.store maps
mailboxes to folders):

    <folder>/{tmp,new,cur}     (directories 0700, files 0600)

Names follow Dovecot: ``<secs>.M<usecs>P<pid>Q<counter>.<host>`` in tmp/, and the same with
``,S=<size>`` appended in new/ (``:2,<flags>`` added once moved to cur/). Messages are stored
exactly as received on the wire (CRLF line ends), so POP3/IMAP can serve the bytes unchanged.

Everything here blocks (file system calls, fsync): callers run it in a thread pool, never on the
reactor thread. appliance.durable's `DirSync` lets many threads share one fsync of a directory.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, TypeVar

from appliance.durable import (
    DIR_MODE,
    FILE_MODE,
    OPEN_NEW,
    DirSync,
    fill_and_sync,
    fsync_dir,
    unlink_quietly,
)

TMP_MAX_AGE = 36 * 3600  # Dovecot's limit for stale tmp/ files left by a crash

# itertools.count.__next__ is atomic under the GIL, so pool threads can share it.
_counter = itertools.count(1)


def escape_hostname(hostname: str) -> str:
    """The hostname as Dovecot writes it in file names: '/' and ':' would break the name."""
    return hostname.replace("/", "\\057").replace(":", "\\072")


def unique_name(hostname: str) -> str:
    """A tmp/ name unique across time, processes (pid), threads (counter) and hosts."""
    usecs = time.time_ns() // 1000
    secs, usec = divmod(usecs, 1_000_000)
    return f"{secs}.M{usec}P{os.getpid()}Q{next(_counter)}.{escape_hostname(hostname)}"


_TIME_PARTS = re.compile(r"(\d+)\.(?:M(\d+))?(?:[^Q.]*Q(\d+))?")


def delivery_order(name: str) -> tuple[int, int, int, str]:
    """A sort key putting Maildir names in the order they were delivered: the seconds, the
    microseconds (M) and our counter (Q) compared as numbers, as Dovecot compares them
    (plain string order puts 'M99' after 'M100000', 'Q10' before 'Q9'); other names last."""
    m = _TIME_PARTS.match(name)
    if m is None:
        return (1 << 62, 0, 0, name)
    secs, usec, q = m.groups()
    return (int(secs), int(usec or 0), int(q or 0), name)


def size_from_name(name: str) -> int | None:
    """The S=<size> recorded in a new/ or cur/ name, or None (saves a stat per message)."""
    base = name.split(":", 1)[0]
    for part in base.split(",")[1:]:
        if part.startswith("S="):
            try:
                return int(part[2:])
            except ValueError:
                return None
    return None


def _read_up_to(fd: int, want: int) -> bytes:
    """Up to want octets of a file (fewer at its end), without asking for more than it has.

    A file smaller than want is asked for its exact size, so one read() returns it all: asking
    for one octet more would take a second read() to see the end (most of a 1 KB message's
    cost is its system calls). A read that still comes back short (the file changed since
    fstat) is continued until want or the end."""
    want = min(want, os.fstat(fd).st_size)
    if want <= 0:
        return b""
    data = os.read(fd, want)
    while len(data) < want:
        more = os.read(fd, want - len(data))
        if not more:
            break
        data += more
    return data


K = TypeVar("K")

# Maildir folders this process has made sure of (created and fsync'd all the way up); set
# operations are atomic under the GIL, and a folder is added only after ensure() finished.
_ready: set[str] = set()


class Maildir:
    """One Maildir folder (the directory holding tmp/, new/, cur/)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = self.path / "tmp"
        self.new = self.path / "new"
        self.cur = self.path / "cur"
        # Plain strings for the delivery hot path: pathlib joins cost more than the syscalls.
        self._tmp = str(self.tmp)
        self._new = str(self.new)

    def __repr__(self) -> str:
        return f"Maildir({str(self.path)!r})"

    def exists(self) -> bool:
        return self.new.is_dir()

    def ensure(self) -> None:
        """Create the folder (and missing parents) 0700, durably, and remember it as ready.

        A new/ that vanishes in a crash would take its messages with it, so every directory
        entry on the way (mail root -> domain -> user -> Maildir -> tmp/new/cur) is fsync'd
        before the first delivery of this process uses the folder. Another thread may be
        creating the same folder: its mkdirs happen before our fsyncs or fail ours with
        EEXIST, so after our fsyncs every entry is durable whoever made it. tmp/ is made last,
        so a tmp/ that exists means new/ and cur/ do too.
        """
        chain: list[Path] = []
        p = self.path
        while not p.is_dir():
            chain.append(p)
            p = p.parent
        chain.reverse()
        for d in (*chain, self.new, self.cur, self.tmp):
            try:
                os.mkdir(d, DIR_MODE)
            except FileExistsError:
                pass
        for d in (self.path.parent.parent.parent, self.path.parent.parent, self.path.parent,
                  self.path):  # fmt: skip
            if d.is_dir():
                fsync_dir(d)
        _ready.add(str(self.path))

    # -- writing (blocking; run in a thread) -------------------------------------------------

    def create_tmp(self, hostname: str, *, create_folder: bool = True) -> tuple[int, str]:
        """Open a new, uniquely named file in tmp/ for writing; returns (fd, name).

        A missing folder is created (with fsyncs) unless create_folder is false; then
        FileNotFoundError is raised (NewMessage.open_now leaves a new mailbox's folder, and its
        fsyncs, to the commit).
        """
        if str(self.path) not in _ready:
            if not create_folder:
                raise FileNotFoundError(f"{self.path} not yet checked in this process")
            self.ensure()
        name = unique_name(hostname)
        try:
            fd = os.open(f"{self._tmp}/{name}", OPEN_NEW, FILE_MODE)
        except FileNotFoundError:
            # removed behind our back (an admin deleted the mailbox): make it again
            _ready.discard(str(self.path))
            if not create_folder:
                raise
            self.ensure()
            fd = os.open(f"{self._tmp}/{name}", OPEN_NEW, FILE_MODE)
        return fd, name

    def tmp_path(self, name: str) -> str:
        return f"{self._tmp}/{name}"

    def publish(
        self, name: str, size: int, dirsync: DirSync | None = None, into: Maildir | None = None
    ) -> str:
        """Move a written and fsync'd tmp/ file into new/ (of `into`, another folder of the
        same mailbox, if given) and fsync that new/; returns the new name.

        If the directory fsync fails the file is taken out of new/ again: the caller reports a
        failure, and a message the sender will retry must not also be delivered now.
        """
        final = f"{name},S={size}"
        new = into._new if into is not None else self._new
        src, dst = f"{self._tmp}/{name}", f"{new}/{final}"
        try:
            os.rename(src, dst)
        except OSError:
            unlink_quietly(src)
            raise
        try:
            if dirsync is not None:
                dirsync.sync(new)
            else:
                fsync_dir(new)
        except OSError:
            unlink_quietly(dst)
            raise
        return final

    def deliver(self, data: bytes, hostname: str, dirsync: DirSync | None = None) -> str:
        """Deliver one whole message durably; returns its name in new/."""
        return self.deliver_chunks([data], hostname, dirsync)

    def deliver_chunks(
        self,
        chunks: Iterable[bytes],
        hostname: str,
        dirsync: DirSync | None = None,
        into: Maildir | None = None,
    ) -> str:
        """Deliver the concatenated chunks durably; returns the message's name in new/ (of
        `into`, if given)."""
        fd, name = self.create_tmp(hostname)
        size = fill_and_sync(fd, self.tmp_path(name), chunks)
        return self.publish(name, size, dirsync, into)

    # -- reading and moving (for POP3 / IMAP) ------------------------------------------------

    def _list(self, folder: Path) -> list[str]:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        # Names start with the delivery time, so sorting gives arrival order.
        return sorted(n for n in names if not n.startswith("."))

    def list_new(self) -> list[str]:
        """Names in new/ (not yet seen by a client), oldest first."""
        return self._list(self.new)

    def list_cur(self) -> list[str]:
        """Names in cur/ (seen; may carry ':2,<flags>'), oldest first."""
        return self._list(self.cur)

    def files(self) -> dict[str, tuple[str, str]]:
        """base name (without ':2,<flags>') -> (subdir, file name) for every message in new/
        and cur/; a message moved from new/ to cur/ while listing is found in cur/."""
        found: dict[str, tuple[str, str]] = {}
        for subdir, folder in (("new", self._new), ("cur", f"{self.path}/cur")):
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                continue
            for name in names:
                if name[0] != ".":
                    found[name.partition(":")[0]] = (subdir, name)
        return found

    def _folder(self, subdir: str) -> Path:
        if subdir not in ("new", "cur"):
            raise ValueError(f"subdir must be 'new' or 'cur', not {subdir!r}")
        return self.path / subdir

    def _file(self, subdir: str, name: str) -> Path:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a message name: {name!r}")
        return self._folder(subdir) / name

    def open_message(self, subdir: str, name: str) -> BinaryIO:
        """The message file opened for reading in binary mode (POP3/IMAP send it as is)."""
        return open(self._file(subdir, name), "rb")

    def read_message(self, subdir: str, name: str) -> bytes:
        with self.open_message(subdir, name) as f:
            return f.read()

    def read_many(
        self,
        wanted: Iterable[tuple[K, tuple[str, str] | None]],
        limit: int,
        relocate: Callable[[K], tuple[str, str] | None],
    ) -> dict[K, bytes | None]:
        """The bytes (whole if at most limit octets, else the first limit + 1) of messages
        given as (their id, (subdir, name) where last seen); a file not found there is looked
        for again once with relocate(id) (its flags changed meanwhile); None for one gone.
        One descriptor per subdir and names opened under it: no walk of the long path per
        message, and no buffered file object, which is most of reading a 1 KB file."""
        out: dict[K, bytes | None] = {}
        dirs: dict[str, int] = {}
        try:
            for ident, where in wanted:
                data: bytes | None = None
                for _ in range(2):
                    if where is None:
                        break
                    subdir, name = where
                    dfd = dirs.get(subdir)
                    if dfd is None:
                        dfd = dirs[subdir] = os.open(
                            f"{self.path}/{subdir}", os.O_RDONLY | os.O_DIRECTORY
                        )
                    try:
                        fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
                    except FileNotFoundError:
                        where = relocate(ident)
                        continue
                    try:
                        data = _read_up_to(fd, limit + 1)
                    finally:
                        os.close(fd)
                    break
                out[ident] = data
        finally:
            for dfd in dirs.values():
                os.close(dfd)
        return out

    def message_size(self, subdir: str, name: str) -> int:
        size = size_from_name(name)
        return size if size is not None else os.stat(self._file(subdir, name)).st_size

    def move_to_cur(self, name: str, flags: str = "") -> str:
        """Mark a new/ message as seen by the client: new/<name> -> cur/<name>:2,<flags>."""
        target = f"{name.split(':', 1)[0]}:2,{''.join(sorted(set(flags)))}"
        os.rename(self._file("new", name), self._file("cur", target))
        return target

    def remove(self, subdir: str, name: str) -> None:
        os.unlink(self._file(subdir, name))

    def clean_tmp(self, max_age: float = TMP_MAX_AGE, now: float | None = None) -> int:
        """Remove tmp/ files older than max_age (left by a crash before delivery); returns count."""
        now = time.time() if now is None else now
        removed = 0
        for name in self._list(self.tmp):
            path = self.tmp / name
            try:
                if now - path.stat().st_mtime > max_age:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed
