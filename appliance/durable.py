"""Durable files: the one home for write + fsync (file and folder), atomic replace and locks.

Every file the appliance creates and promises to keep (spool files, Maildir copies, the CA's
files, the passwd file) goes through here, so the order that makes it survive a crash is
written once:

- `create_file(path, data)`: a new file (O_EXCL), written and fsync'd; nothing left on failure.
- `fill_and_sync(fd, path, chunks)`: the same for an fd the caller opened (streamed chunks,
  written by `write_chunks`).
- `atomic_replace(path, data, mode)`: readers see the old or the new file, never a mix; the
  temporary file has `mode` from its creation (a key is never readable by others, not even
  for a moment), and the folder is fsync'd after the rename.
- `fsync_dir(path)` and `DirSync`: make a rename or a new entry durable; `DirSync` lets many
  threads share one directory fsync.
- `exclusive_lock(path)`: flock on a lock file or a directory, for admin edits racing the daemon.

Everything here blocks: callers run it in a thread pool or before the reactor starts.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
READ_CHUNK = 1024 * 1024
OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

StrPath = str | Path


def is_disk_full(exc: BaseException) -> bool:
    """Whether exc means "no space" (or quota exceeded): the caller answers 452 4.3.1."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until everything is written (a write near a full disk may be short)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_chunks(fd: int, chunks: Iterable[bytes], join_under: int = 64 * 1024) -> int:
    """Write chunks in order, small neighbours joined into one write (a message's added
    headers and its text: one system call, not three); returns the bytes written."""
    held: list[bytes] = []
    held_size = total = 0
    for chunk in chunks:
        total += len(chunk)
        if held_size + len(chunk) < join_under:
            held.append(chunk)
            held_size += len(chunk)
            continue
        if held:
            write_all(fd, b"".join(held))
            held, held_size = [], 0
        write_all(fd, chunk)
    if held:
        write_all(fd, b"".join(held))
    return total


def close_quietly(fd: int | None) -> None:
    """Close an fd during cleanup; an error closing it changes nothing for the caller."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def unlink_quietly(path: StrPath) -> None:
    """Remove a file during cleanup; a file that is already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_dir(path: StrPath) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fill_and_sync(fd: int, path: StrPath, chunks: Iterable[bytes]) -> int:
    """Write chunks to the new file fd, fsync and close it; on any failure remove path.

    Returns the number of bytes written. The one way every file we create becomes durable.
    """
    try:
        try:
            size = write_chunks(fd, chunks)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink_quietly(path)
        raise
    return size


def create_file(path: StrPath, data: bytes, mode: int = FILE_MODE) -> None:
    """Create path (it must not exist), write data and fsync it; nothing is left on failure.

    The folder is not fsync'd: the caller renames the file into place and syncs that folder.
    """
    fill_and_sync(os.open(path, OPEN_NEW, mode), path, [data])


def read_chunks(path: StrPath, chunk: int = READ_CHUNK) -> Iterator[bytes]:
    """The bytes of a file in chunks, without reading it whole into memory."""
    src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while data := os.read(src, chunk):
            yield data
    finally:
        os.close(src)


def atomic_replace(
    path: StrPath, data: bytes, mode: int, *, owner: tuple[int, int] | None = None
) -> None:
    """Replace path with data durably; readers see the old or the new file, never a mix.

    The temporary file is created beside path with `mode` already applied (O_EXCL,
    O_NOFOLLOW), then fchmod'ed to exactly `mode` (the umask may only have narrowed it),
    optionally fchown'ed to owner (uid, gid; ignored when we may not), written, fsync'd,
    renamed over path, and the folder fsync'd. Raises OSError; nothing is left behind.
    A path that exists and is not a regular file (a device such as /dev/null, a folder) is
    refused with IsADirectoryError or OSError(EINVAL): renaming over it would replace it.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
            raise OSError(errno.EINVAL, "not a regular file, refusing to replace it", str(path))
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, OPEN_NEW | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)
            if owner is not None:
                try:
                    os.fchown(fd, *owner)
                except PermissionError:
                    pass  # not root: the file stays ours
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def make_dirs(path: StrPath, mode: int | None = DIR_MODE) -> bool:
    """Create path and missing parents durably (each new entry's parent fsync'd); True if new.

    As `mkdir -p -m`: only path itself, if created here, gets `mode` (None: the umask's
    default); missing parents get the umask's default. A file at path raises
    FileExistsError, a file where a parent should be NotADirectoryError.
    """
    path = Path(path)
    if path.is_dir():
        return False
    chain: list[Path] = []
    p = path
    while not p.is_dir():
        if p != path and p.exists():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(p))
        chain.append(p)
        p = p.parent
    for d in reversed(chain):
        own = mode if d == path else None
        try:
            os.mkdir(d, 0o777 if own is None else own)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue
        if own is not None:
            os.chmod(d, own)  # the umask may have narrowed it
        fsync_dir(d.parent)
    return True


@contextmanager
def exclusive_lock(path: StrPath) -> Iterator[None]:
    """Hold an exclusive flock on path (a directory, or a lock file made 0600 if missing).

    Serialises writers between the daemon and a concurrent admin command; readers never
    need it, since every replacement is an atomic rename.
    """
    p = Path(path)
    if p.is_dir():
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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

    on_wait, if given, is called in a caller's thread each time it starts waiting for the
    next round (with the internal lock held, just before it waits): tests synchronise on it.
    """

    def __init__(
        self,
        fsync: Callable[[str], None] = fsync_dir,
        on_wait: Callable[[], object] | None = None,
    ) -> None:
        self._fsync = fsync
        self._on_wait = on_wait
        self._cond = threading.Condition()
        self._dirs: dict[str, _DirState] = {}

    def sync(self, path: StrPath) -> None:
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
                if self._on_wait is not None:
                    self._on_wait()
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
