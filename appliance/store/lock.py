"""POP3 session locks: one session per mailbox, across processes and nodes sharing the tree.

The lock is a file in the mailbox's INBOX Maildir, named as Dovecot's
(src/pop3/pop3-client.c, ``POP3_LOCK_FNAME``), so a Dovecot serving the same tree and this
appliance keep out of each other's way too:

    <Maildir>/dovecot-pop3-session.lock

Its content, written in full before the file appears (a temporary file link()ed into place,
which fails if the lock exists: O_EXCL semantics that also hold on NFS, and no reader ever
sees a half-written lock):

    mailappliance-pop3-lock 1
    host=mail.163.com
    pid=4242
    start=1234567            the holder's start time (/proc/<pid>/stat field 22), "" unknown
    node=<boot id>/pid:[4026531836]   where that pid means something (kernel boot, pid namespace)
    time=1764590000          when it was taken
    token=<32 hex digits>    unique: how the holder recognises the file as its own
    owner=pop3 session 1a2b from 192.0.2.7

The holder refreshes it (touches its mtime) at least every `refresh_interval`. Someone else's
lock is stale, and is taken over, when

- its mtime is older than `stale_after` (default 300 s, Dovecot's
  POP3_SESSION_DOTLOCK_STALE_TIMEOUT_SECS): a holder on any node stopped refreshing; or
- it names our node (same boot id and pid namespace) and a pid that no longer exists, or
  that now belongs to a process started at another time (pid reuse): taken over at once.

A lock from another node, or one we cannot parse (Dovecot's own "pid:host"), is only ever
stale by its mtime. Nothing is kept in this process's memory but the token of the locks it
holds. Taking over and releasing first rename the file aside and check it is exactly the
file judged (same inode, mtime and bytes) or ours (same bytes); if not, it is linked back,
so a lock someone else has just taken is never removed. Blocking: worker thread only.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from twisted.logger import Logger

from appliance.durable import FILE_MODE, OPEN_NEW, close_quietly, unlink_quietly, write_all

LOCK_NAME = "dovecot-pop3-session.lock"
STALE_AFTER = 300.0  # seconds without a refresh
MAGIC = "mailappliance-pop3-lock 1"
_MAX_READ = 4096
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def node_id() -> str:
    """Where a pid identifies a process: this kernel boot and this pid namespace ("" when
    /proc cannot tell, and then no lock is judged by its pid)."""
    boot = _read_text("/proc/sys/kernel/random/boot_id")
    if not boot:
        return ""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{boot}/{namespace}"


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on; [] if there is no such process."""
    stat = _read_text(f"/proc/{pid}/stat")
    # the command name (field 2) may hold spaces and parentheses: count after the last ')'
    return stat.rpartition(")")[2].split()


def process_start(pid: int) -> str:
    """The process's start time in clock ticks after boot, "" if unknown (or no process)."""
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else ""


def pid_alive(pid: int, start: str = "") -> bool:
    """Whether pid (on this node) is still the process that wrote start."""
    if pid <= 0:
        return True  # not a pid we can ask about (0 and -1 mean groups to kill()): assume alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user
    fields = _stat_fields(pid)
    if fields and fields[0] in ("Z", "X"):
        return False  # killed, not yet reaped by its parent: it holds nothing any more
    if start:
        now = process_start(pid)
        if now and now != start:
            return False  # the pid was reused by a later process
    return True


def _one_line(text: str, limit: int = 200) -> str:
    return "".join(c if " " <= c < "\x7f" else "?" for c in text)[:limit]


@dataclass(frozen=True)
class LockInfo:
    """What a lock file says about its holder."""

    host: str
    pid: int
    start: str
    node: str
    time: int
    token: str
    owner: str

    @classmethod
    def mine(cls, host: str, owner: str) -> LockInfo:
        pid = os.getpid()
        return cls(
            host=_one_line(host),
            pid=pid,
            start=process_start(pid),
            node=node_id(),
            time=int(time.time()),
            token=secrets.token_hex(16),
            owner=_one_line(owner),
        )

    def format(self) -> bytes:
        lines = [
            MAGIC,
            f"host={self.host}",
            f"pid={self.pid}",
            f"start={self.start}",
            f"node={self.node}",
            f"time={self.time}",
            f"token={self.token}",
            f"owner={self.owner}",
        ]
        return ("\n".join(lines) + "\n").encode("ascii", "replace")

    @classmethod
    def parse(cls, data: bytes) -> LockInfo | None:
        """The holder a lock file names, or None if it is not one of ours (or is torn)."""
        lines = data.decode("ascii", "replace").splitlines()
        if not lines or lines[0] != MAGIC:
            return None
        values = dict(line.partition("=")[::2] for line in lines[1:])
        try:
            return cls(
                host=values["host"],
                pid=int(values["pid"]),
                start=values["start"],
                node=values["node"],
                time=int(values["time"]),
                token=values["token"],
                owner=values.get("owner", ""),
            )
        except (KeyError, ValueError):
            return None


def read_lock(path: str | Path) -> tuple[os.stat_result, bytes] | None:
    """The lock file's stat and bytes, or None if there is none."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    try:
        return os.fstat(fd), os.read(fd, _MAX_READ)
    finally:
        os.close(fd)


def stale_reason(
    st: os.stat_result, data: bytes, stale_after: float, now: float | None = None
) -> str | None:
    """Why someone else's lock may be taken over, or None while it holds."""
    age = (time.time() if now is None else now) - st.st_mtime
    if age > stale_after:
        return f"not refreshed for {age:.0f}s"
    info = LockInfo.parse(data)
    if info is not None and info.node and info.node == node_id():
        if not pid_alive(info.pid, info.start):
            return f"process {info.pid} on {info.host} is gone"
    return None


def _create(path: Path, data: bytes) -> bool:
    """Make the lock file with data, complete, unless it exists; True if made."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, OPEN_NEW, FILE_MODE)
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            pass  # a file system without hard links: plain O_EXCL below
    finally:
        unlink_quietly(tmp)
    try:
        fd = os.open(path, OPEN_NEW, FILE_MODE)
    except FileExistsError:
        return False
    try:
        write_all(fd, data)
    except BaseException:
        close_quietly(fd)
        unlink_quietly(path)
        raise
    os.close(fd)
    return True


def _remove_if(path: Path, expected: Callable[[os.stat_result, bytes], bool]) -> bool:
    """Remove the lock file only if it is the one expected; True if removed.

    Renamed aside first (atomic), so what is checked is what is removed; a file that turns
    out to be another one (taken, or refreshed, meanwhile) is linked back into place.
    """
    aside = path.with_name(f".{path.name}.{secrets.token_hex(8)}.gone")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        moved = read_lock(aside)
        if moved is not None and expected(*moved):
            return True
        try:
            os.link(aside, path)
        except FileExistsError:
            pass  # a new lock was made meanwhile: its holder wins, the displaced one's
            # next refresh() says it lost the lock
        except OSError:
            if not path.exists():
                os.rename(aside, path)
        return False
    finally:
        unlink_quietly(aside)


def _identity(st: os.stat_result, data: bytes) -> tuple[int, int, int, bytes]:
    return st.st_dev, st.st_ino, st.st_mtime_ns, data


def _same_as(judged: tuple[int, int, int, bytes]) -> Callable[[os.stat_result, bytes], bool]:
    return lambda st, data: _identity(st, data) == judged


class SessionLock:
    """interfaces.MailboxLock: a held dovecot-pop3-session.lock."""

    log = Logger()

    def __init__(self, path: Path, data: bytes, stale_after: float) -> None:
        self.path = path
        self.data = data
        self.stale_after = stale_after
        # Dovecot touches every 10 s against 5 min; a fifth of the timeout leaves room for a
        # slow worker pool and a file server's coarse mtimes
        self.refresh_interval = stale_after / 5
        self._released = False

    @classmethod
    def acquire(
        cls, folder: str | Path, owner: str, hostname: str, stale_after: float = STALE_AFTER
    ) -> SessionLock | None:
        """Take the lock in folder (which must exist); None if someone else holds it."""
        path = Path(folder) / LOCK_NAME
        for _ in range(5):  # each round trip ends in a decision unless others race us
            data = LockInfo.mine(hostname, owner).format()
            if _create(path, data):
                return cls(path, data, stale_after)
            found = read_lock(path)
            if found is None:
                continue  # released just now
            st, held = found
            reason = stale_reason(st, held, stale_after)
            if reason is None:
                return None
            holder = LockInfo.parse(held)
            if _remove_if(path, _same_as(_identity(st, held))):
                cls.log.warn(
                    "taking over stale POP3 lock {path} of {holder}: {reason}",
                    path=str(path),
                    holder=holder.owner if holder is not None and holder.owner else "unknown",
                    reason=reason,
                )
        return None

    @property
    def held(self) -> bool:
        """Whether the lock file is still ours (reads it)."""
        found = None if self._released else read_lock(self.path)
        return found is not None and found[1] == self.data

    def refresh(self) -> bool:
        if self._released:
            return False
        try:
            fd = os.open(self.path, _READ_FLAGS)
        except FileNotFoundError:
            return False
        try:
            if os.read(fd, _MAX_READ) != self.data:
                return False
            os.utime(fd)  # through the fd: the very file just checked, not a name
        finally:
            os.close(fd)
        return True

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        _remove_if(self.path, lambda st, data: data == self.data)
