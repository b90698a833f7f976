"""The queue's folders and files: where a message waits until every target has it.

Layout under state_dir/queue:

    tmp/<qid>, <qid>.env          being received; never acknowledged (recovery deletes them)
    incoming/<qid>, <qid>.env     acknowledged, local delivery pending
    incoming/<qid>.done           mailboxes already delivered (one JSON string a line)
    deferred/<qid>, <qid>.env     local part done; only remote recipients are left
    deferred/<qid>.state          per-recipient results and the retry schedule (queue.state)
    deferred/<qid>.hold           present: on hold, not tried until released
    corrupt/                      queue files whose envelope cannot be read
    spare/                        emptied files of messages that left, kept for reuse

A message in incoming/ or deferred/ is complete only when both <qid> and <qid>.env exist:
data is renamed in first, so a crash leaves at worst an orphan that recovery removes, never
an .env without its data. Every method here blocks (worker thread), except the constructor,
which runs before the reactor serves anyone.

Files are reused rather than created and deleted: a queue file that is done with is renamed
into spare/ and emptied, and the next file the queue needs is that inode, linked in under its
new name (link, so that an existing name is never replaced, as with O_EXCL). On ext4 without
a journal every new inode costs a scan past the inodes deleted in the last minutes of its
block group (ext4 avoids reusing them then), which made creating queue files most of the
spool's CPU under load (bench/relay_load.py: 163 spent 42% of its CPU in openat). Elsewhere it
saves the allocation and freeing of an inode per file. At most SPARE_MAX spares are kept.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from twisted.logger import Logger

from appliance.durable import (
    DIR_MODE,
    FILE_MODE,
    OPEN_NEW,
    DirSync,
    create_file,
    fill_and_sync,
    fsync_dir,
    read_chunks,
    unlink_quietly,
    write_all,
)
from appliance.queue.envelope import QueueEntry, read_queue_entry
from appliance.queue.state import DeliveryState, append_state, read_state

DEFERRED_SUFFIXES = ("", ".env", ".state", ".hold")
SPARE_MAX = 10_000  # emptied queue files kept in spare/ for reuse
OPEN_SPARE = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


class SpooledBody:
    """interfaces.MessageBody of a message in a queue file."""

    def __init__(self, path: str, size: int, data: bytes | None = None) -> None:
        self.path = path
        self.size = size
        self.data = data  # the whole message, if still in memory (len(data) == size)

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            return iter((self.data,))
        return read_chunks(self.path)

    def in_memory(self) -> bytes | None:
        return self.data


class QueueFiles:
    log = Logger()

    def __init__(self, queue_dir: str | Path, dirsync: DirSync) -> None:
        self.queue_dir = Path(queue_dir)
        self.tmp_dir = self.queue_dir / "tmp"
        self.incoming_dir = self.queue_dir / "incoming"
        self.deferred_dir = self.queue_dir / "deferred"
        self.corrupt_dir = self.queue_dir / "corrupt"
        self.spare_dir = self.queue_dir / "spare"
        # plain strings for the hot path: pathlib joins cost more than the syscalls
        self.tmp = str(self.tmp_dir)
        self.incoming = str(self.incoming_dir)
        self.deferred = str(self.deferred_dir)
        self.spare = str(self.spare_dir)
        self.dirsync = dirsync
        for d in (self.queue_dir, self.tmp_dir, self.incoming_dir, self.deferred_dir,
                  self.corrupt_dir, self.spare_dir):  # fmt: skip
            if not d.is_dir():
                d.mkdir(DIR_MODE, parents=True, exist_ok=True)
                fsync_dir(d.parent)
        # names in spare/; deque.popleft/append are atomic, so worker threads share it unlocked
        # bytes left by a crash inside retire() go now
        self._spares = collections.deque(n for n in os.listdir(self.spare) if self._emptied(n))
        self._reuse = True
        # spare names: unique in this run (count() is safe across threads), and not those of
        # an earlier run (the prefix is the start time)
        self._spare_prefix = f"{time.time_ns():x}"
        self._spare_count = itertools.count()

    # -- files: new ones are spares reused when there are any

    def new_file(self, path: str) -> int:
        """Open a new, empty file at path for writing; FileExistsError if path exists."""
        spares = self._spares
        while self._reuse:
            try:
                name = spares.popleft()
            except IndexError:
                break
            spare = f"{self.spare}/{name}"
            try:
                os.link(spare, path)
            except FileNotFoundError:
                continue  # removed behind our back (an admin cleaning up): take the next
            except FileExistsError:
                spares.appendleft(name)
                raise
            except OSError as e:
                # a file system without hard links: stop reusing, create files as usual
                spares.appendleft(name)
                self._reuse = False
                self.log.warn(
                    "queue files are not reused: cannot link {path}: {reason}",
                    path=spare,
                    reason=e.strerror or str(e),
                )
                break
            try:
                os.unlink(spare)  # the inode lives on under path
                # O_TRUNC: empty even if someone wrote to it behind our back
                return os.open(path, OPEN_SPARE)
            except BaseException:
                unlink_quietly(path)
                raise
        return os.open(path, OPEN_NEW, FILE_MODE)

    def new_file_with(self, path: str, data: bytes) -> None:
        """create_file() on a reused inode: path holds data, fsync'd (not its folder)."""
        fill_and_sync(self.new_file(path), path, [data])

    def retire(self, path: str) -> None:
        """Remove a queue file: its name goes now, its emptied inode is kept for new_file().

        Renamed first and emptied after, so no crash can leave an empty file under a queue
        name (a journaled file system keeps the two in order). Like an unlink, the removal
        is not made durable here: after a crash the file may be back, and is delivered again.
        """
        if not self._reuse or len(self._spares) >= SPARE_MAX:
            unlink_quietly(path)
            return
        name = f"{self._spare_prefix}.{next(self._spare_count)}"
        spare = f"{self.spare}/{name}"
        try:
            os.rename(path, spare)
        except FileNotFoundError:
            return
        if self._emptied(name):
            self._spares.append(name)

    def _emptied(self, name: str) -> bool:
        """Empty spare/<name>; False (and the file removed) if it cannot be: a spare never
        keeps a message's bytes."""
        spare = f"{self.spare}/{name}"
        try:
            os.truncate(spare, 0)
        except FileNotFoundError:
            return False
        except OSError as e:
            unlink_quietly(spare)
            self.log.warn("cannot empty {path}: {reason}", path=spare, reason=str(e))
            return False
        return True

    # -- receiving

    def create_tmp(self, queue_id: str) -> int | None:
        """Open tmp/<qid> for writing (O_EXCL); None if the id is taken here or on disk."""
        path = f"{self.tmp}/{queue_id}"
        try:
            fd = self.new_file(path)
        except FileExistsError:
            return None
        if os.path.lexists(f"{self.incoming}/{queue_id}") or os.path.lexists(
            f"{self.deferred}/{queue_id}"
        ):
            # left by an earlier run: the rename in commit would replace that message
            os.close(fd)
            os.unlink(path)
            return None
        return fd

    def paths(self, queue_id: str, target: str) -> list[str]:
        """Every file a message being received may have created (for cleanup)."""
        q = queue_id
        return [f"{self.tmp}/{q}", f"{self.tmp}/{q}.env", f"{target}/{q}", f"{target}/{q}.env"]

    def commit(self, fd: int, data: bytes, entry: QueueEntry, target: str) -> None:
        """Write the rest, fsync the data, write the envelope, rename both into target."""
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        qid = entry.queue_id
        self.new_file_with(f"{self.tmp}/{qid}.env", entry.to_bytes())
        # Data first: an .env beside its data is a complete message (recovery relies on it).
        os.rename(f"{self.tmp}/{qid}", f"{target}/{qid}")
        os.rename(f"{self.tmp}/{qid}.env", f"{target}/{qid}.env")
        self.dirsync.sync(target)

    def body(self, entry: QueueEntry) -> SpooledBody:
        return SpooledBody(f"{self.incoming}/{entry.queue_id}", entry.size)

    # -- after local delivery

    def settle(self, entry: QueueEntry, sent: Iterable[str], complete: bool) -> str | None:
        """Note the copies delivered; when complete, finish the entry: 'removed' or 'deferred'.

        The progress lines are not fsync'd: the copies themselves are; losing a line in a
        crash only means a duplicate copy after recovery, never a lost one.
        """
        qid = entry.queue_id
        lines = b"".join(json.dumps(address).encode() + b"\n" for address in sent)
        if lines and not complete:
            fd = os.open(
                f"{self.incoming}/{qid}.done",
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                FILE_MODE,
            )
            try:
                os.write(fd, lines)
            finally:
                os.close(fd)
        return self.finish(entry) if complete else None

    def finish(self, entry: QueueEntry) -> str:
        """All local copies are durable: remove the queue files or hand them to the relay."""
        qid = entry.queue_id
        inc, dfr = self.incoming, self.deferred
        if entry.remote_recipients:
            tmp_env = f"{self.tmp}/{qid}.env"
            unlink_quietly(tmp_env)
            self.new_file_with(tmp_env, entry.only_remote().to_bytes())
            # .env first: a crash in between leaves incoming/ complete (delivered again, then
            # moved again), never a deferred/ data file without its envelope.
            os.rename(tmp_env, f"{dfr}/{qid}.env")
            os.rename(f"{inc}/{qid}", f"{dfr}/{qid}")
            self.dirsync.sync(dfr)
            outcome = "deferred"
        else:
            outcome = "removed"
            self.retire(f"{inc}/{qid}")
        # Data goes first, so a crash leaves an orphan .env that recovery deletes.
        self.retire(f"{inc}/{qid}.env")
        unlink_quietly(f"{inc}/{qid}.done")
        return outcome

    # -- the deferred queue (the relay's)

    def deferred_body(self, entry: QueueEntry, data: bytes | None = None) -> SpooledBody:
        return SpooledBody(f"{self.deferred}/{entry.queue_id}", entry.size, data)

    def scan_deferred(self) -> list[str]:
        """Queue ids with both files in deferred/."""
        names = set(os.listdir(self.deferred))
        return [n for n in names if "." not in n and f"{n}.env" in names]

    def load_deferred(self, qid: str) -> tuple[QueueEntry, DeliveryState, bool] | None:
        """A deferred entry, its state and whether it is held; unreadable -> corrupt/."""
        base = f"{self.deferred}/{qid}"
        try:
            entry = read_queue_entry(f"{base}.env")
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            self.log.error(
                "{queue_id}: unreadable envelope, moved to queue/corrupt: {reason}",
                queue_id=qid,
                reason=str(e),
            )
            for suffix in DEFERRED_SUFFIXES:
                try:
                    os.rename(f"{base}{suffix}", self.corrupt_dir / f"{qid}{suffix}")
                except FileNotFoundError:
                    pass
            return None
        return entry, read_state(f"{base}.state"), os.path.lexists(f"{base}.hold")

    def record(self, qid: str, records: list[dict[str, object]], sync: bool) -> None:
        """Append to deferred/<qid>.state; sync: durable (the file and its name) on return."""
        path = f"{self.deferred}/{qid}.state"
        new = sync and not os.path.lexists(path)
        append_state(path, records, sync=sync)
        if new:
            self.dirsync.sync(self.deferred)

    def remove_deferred(self, qid: str) -> None:
        """Every recipient is done: data first, so a crash leaves only orphans recovery drops."""
        base = f"{self.deferred}/{qid}"
        self.retire(base)
        self.retire(f"{base}.env")
        unlink_quietly(f"{base}.state")
        unlink_quietly(f"{base}.hold")

    def remove_all_deferred(self, qids: list[str]) -> None:
        """remove_deferred() of several messages, in one thread job."""
        for qid in qids:
            self.remove_deferred(qid)

    def set_hold(self, qid: str, held: bool) -> bool:
        """Put a deferred message on hold or release it; False if there is no such message."""
        base = f"{self.deferred}/{qid}"
        if not os.path.lexists(base):
            return False
        if held:
            if not os.path.lexists(f"{base}.hold"):
                create_file(f"{base}.hold", b"")
        else:
            unlink_quietly(f"{base}.hold")
        self.dirsync.sync(self.deferred)
        return True

    # -- retry and recovery

    def scan_incoming(self) -> list[str]:
        """Queue ids with both files in incoming/, oldest first."""
        names = set(os.listdir(self.incoming))
        ids = [n for n in names if "." not in n and f"{n}.env" in names]
        ids.sort(key=lambda q: _mtime(f"{self.incoming}/{q}"))
        return ids

    def load(self, qid: str) -> tuple[QueueEntry, frozenset[str]] | None:
        """An incoming entry and its progress; an unreadable one is moved to corrupt/."""
        try:
            entry = read_queue_entry(f"{self.incoming}/{qid}.env")
        except FileNotFoundError:
            return None  # delivered and removed since the scan
        except (ValueError, KeyError, TypeError) as e:
            self.log.error(
                "{queue_id}: unreadable envelope, moved to queue/corrupt: {reason}",
                queue_id=qid,
                reason=str(e),
            )
            for suffix in ("", ".env", ".done"):
                try:
                    os.rename(f"{self.incoming}/{qid}{suffix}", self.corrupt_dir / f"{qid}{suffix}")
                except FileNotFoundError:
                    pass
            return None
        done: set[str] = set()
        try:
            with open(f"{self.incoming}/{qid}.done", "rb") as f:
                for line in f.read().split(b"\n")[:-1]:  # a torn last line is ignored
                    try:
                        done.add(json.loads(line))
                    except ValueError:
                        pass
        except FileNotFoundError:
            pass
        return entry, frozenset(done)

    def clean_after_crash(self, active: set[str]) -> None:
        """Drop what was never acknowledged: all of tmp/, and incomplete pairs in incoming/ and
        deferred/ (a commit cut between its renames, or a removal cut half way). Ids in active (being
        received or delivered right now) are left alone; membership tests are thread-safe."""
        for name in os.listdir(self.tmp):
            if name.split(".", 1)[0] in active:
                continue
            unlink_quietly(f"{self.tmp}/{name}")
            self.log.info("removed unacknowledged queue/tmp/{name}", name=name)
        for folder in (self.incoming, self.deferred):
            names = set(os.listdir(folder))
            for name in names:
                qid = name.split(".", 1)[0]
                if qid in active:
                    continue
                if qid not in names or f"{qid}.env" not in names:
                    unlink_quietly(f"{folder}/{name}")
                    self.log.info(
                        "removed incomplete queue/{folder}/{name}",
                        folder=os.path.basename(folder),
                        name=name,
                    )


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0
