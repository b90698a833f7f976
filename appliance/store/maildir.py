"""Our own Maildir store: durable delivery (tmp -> fsync -> new -> fsync dir) and simple reads.

twisted.mail.maildir cannot be used (str/bytes paths on Python 3, text-mode reads, no fsync), so
this module is the one place that knows the on-disk layout:

    <mail_root>/<domain>/<localpart>/Maildir/{tmp,new,cur}     (directories 0700, files 0600)

Names follow Dovecot: ``<secs>.M<usecs>P<pid>Q<counter>.<host>`` in tmp/, and the same with
``,S=<size>`` appended in new/ (``:2,<flags>`` added once moved to cur/). Messages are stored
exactly as received on the wire (CRLF line ends), so POP3/IMAP can serve the bytes unchanged.

Everything here blocks (file system calls, fsync): callers run it in a thread pool, never on the
reactor thread. `DirSync` lets many threads share one fsync of the same directory.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from appliance.interfaces import Mailbox

DIR_MODE = 0o700
FILE_MODE = 0o600
COPY_CHUNK = 1024 * 1024
TMP_MAX_AGE = 36 * 3600  # Dovecot's limit for stale tmp/ files left by a crash

# itertools.count.__next__ is atomic under the GIL, so pool threads can share it.
_counter = itertools.count(1)
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def is_disk_full(exc: BaseException) -> bool:
    """Whether exc means "no space" (or quota exceeded): the caller answers 452 4.3.1."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def escape_hostname(hostname: str) -> str:
    """The hostname as Dovecot writes it in file names: '/' and ':' would break the name."""
    return hostname.replace("/", "\\057").replace(":", "\\072")


def unique_name(hostname: str) -> str:
    """A tmp/ name unique across time, processes (pid), threads (counter) and hosts."""
    usecs = time.time_ns() // 1000
    secs, usec = divmod(usecs, 1_000_000)
    return f"{secs}.M{usec}P{os.getpid()}Q{next(_counter)}.{escape_hostname(hostname)}"


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


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until everything is written (a write near a full disk may be short)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(path: str | Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fill_and_sync(fd: int, path: str | Path, chunks: Iterable[bytes]) -> int:
    """Write chunks to the new file fd, fsync and close it; on any failure remove path.

    Returns the number of bytes written. The one way every file we create becomes durable.
    """
    size = 0
    try:
        try:
            for chunk in chunks:
                write_all(fd, chunk)
                size += len(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink_quietly(path)
        raise
    return size


def read_chunks(path: str | Path) -> Iterator[bytes]:
    src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while chunk := os.read(src, COPY_CHUNK):
            yield chunk
    finally:
        os.close(src)


def unlink_quietly(path: str | Path) -> None:
    """Remove a file during cleanup; a file that is already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _Round:
    """One fsync of one directory, shared by every thread that joined it."""

    __slots__ = ("finished", "error")

    def __init__(self) -> None:
        self.finished = False
        self.error: OSError | None = None


class _DirState:
    __slots__ = ("running", "pending")

    def __init__(self) -> None:
        self.running: _Round | None = None
        self.pending: _Round | None = None


class DirSync:
    """Coalesced directory fsync: `sync(dir)` returns once an fsync that began after the call ended.

    A rename is durable only after an fsync of its directory that *started* after the rename.
    When an fsync of that directory is already running, a caller cannot use it; it joins the
    next round instead, and one thread runs that round for every caller that joined meanwhile.
    Under load this turns N directory fsyncs into about two.
    """

    def __init__(self, fsync: Callable[[str], None] = fsync_dir) -> None:
        self._fsync = fsync
        self._cond = threading.Condition()
        self._dirs: dict[str, _DirState] = {}

    def sync(self, path: str | Path) -> None:
        key = str(path)
        with self._cond:
            state = self._dirs.get(key)
            if state is None:
                state = self._dirs[key] = _DirState()
            if state.running is None:
                # Nothing running: lead the pending round (others may wait on it) or a new one.
                current = state.pending or _Round()
                state.pending = None
                state.running = current
            else:
                if state.pending is None:
                    state.pending = _Round()
                current = state.pending
                while not current.finished:
                    if state.running is None and state.pending is current:
                        state.running, state.pending = current, None
                        break
                    self._cond.wait()
                else:
                    if current.error is not None:
                        raise current.error
                    return
        try:
            self._fsync(key)
        except OSError as e:
            current.error = e
        with self._cond:
            current.finished = True
            state.running = None
            if state.pending is None and self._dirs.get(key) is state:
                del self._dirs[key]  # no one is waiting: keep the table small
            self._cond.notify_all()
        if current.error is not None:
            raise current.error


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
        FileNotFoundError is raised, for a caller on the reactor thread that must not fsync.
        """
        if str(self.path) not in _ready:
            if not create_folder:
                raise FileNotFoundError(f"{self.path} not yet checked in this process")
            self.ensure()
        name = unique_name(hostname)
        try:
            fd = os.open(f"{self._tmp}/{name}", _OPEN_NEW, FILE_MODE)
        except FileNotFoundError:
            # removed behind our back (an admin deleted the mailbox): make it again
            _ready.discard(str(self.path))
            if not create_folder:
                raise
            self.ensure()
            fd = os.open(f"{self._tmp}/{name}", _OPEN_NEW, FILE_MODE)
        return fd, name

    def tmp_path(self, name: str) -> str:
        return f"{self._tmp}/{name}"

    def publish(self, name: str, size: int, dirsync: DirSync | None = None) -> str:
        """Move a written and fsync'd tmp/ file into new/ and fsync new/; returns the new name.

        If the directory fsync fails the file is taken out of new/ again: the caller reports a
        failure, and a message the sender will retry must not also be delivered now.
        """
        final = f"{name},S={size}"
        src, dst = f"{self._tmp}/{name}", f"{self._new}/{final}"
        try:
            os.rename(src, dst)
        except OSError:
            unlink_quietly(src)
            raise
        try:
            if dirsync is not None:
                dirsync.sync(self._new)
            else:
                fsync_dir(self._new)
        except OSError:
            unlink_quietly(dst)
            raise
        return final

    def deliver(self, data: bytes, hostname: str, dirsync: DirSync | None = None) -> str:
        """Deliver one whole message durably; returns its name in new/."""
        fd, name = self.create_tmp(hostname)
        size = fill_and_sync(fd, self.tmp_path(name), [data])
        return self.publish(name, size, dirsync)

    def deliver_copy(
        self, prefix: bytes, source: str | Path, hostname: str, dirsync: DirSync | None = None
    ) -> str:
        """Deliver prefix + the bytes of the file source durably; returns its name in new/."""
        fd, name = self.create_tmp(hostname)
        size = fill_and_sync(
            fd, self.tmp_path(name), itertools.chain([prefix], read_chunks(source))
        )
        return self.publish(name, size, dirsync)

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


def _safe_component(value: str, what: str) -> str:
    # Domains and local parts come from policy, but a '/' or '..' must never reach a path.
    if not value or value in (".", "..") or "/" in value or "\0" in value:
        raise ValueError(f"unsafe mailbox {what}: {value!r}")
    return value


class MaildirStore:
    """Maps a Mailbox to its Maildir under mail_root."""

    def __init__(self, mail_root: str | Path, cache_size: int = 4096) -> None:
        self.mail_root = Path(mail_root)
        self._cache: dict[Mailbox, Maildir] = {}
        self._cache_size = cache_size

    def maildir(self, mailbox: Mailbox) -> Maildir:
        """The mailbox's Maildir (not created); ValueError for a name that would escape mail_root."""
        md = self._cache.get(mailbox)
        if md is None:
            domain = _safe_component(mailbox.domain, "domain")
            localpart = _safe_component(mailbox.localpart, "local part")
            md = Maildir(self.mail_root / domain / localpart / "Maildir")
            if len(self._cache) >= self._cache_size:
                self._cache.clear()  # crude, but a cache miss only costs a few path joins
            self._cache[mailbox] = md
        return md
