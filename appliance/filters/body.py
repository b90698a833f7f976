"""A message's text kept while the filters decide on it (interfaces.BodyBuffer).

Up to MEMORY bytes stay in memory (most mail: the filters then read no file and wake no
thread); past that everything goes to an anonymous temporary file in the filter folder
(created unlinked, so a crash leaves nothing behind), written on the reactor thread in
64 KiB slices as the spool writes. chunks() reads it back, a megabyte at most at a time.

The files are kept, emptied, for the next large message (SpillFiles), as the queue keeps
its spares: on ext4 a new inode costs a search past the ones freed lately, and each large
message would otherwise make one and free one.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from appliance.durable import is_disk_full, write_all
from appliance.interfaces import DiskFull

MEMORY = 256 * 1024
SLICE = 64 * 1024
READ = 1024 * 1024
KEEP = 32  # emptied files kept for the next large messages


class SpillFiles:
    """The unlinked files of one folder that SpillBuffers spill into: take() one (a kept
    one, emptied, or a new one), give() it back when done (emptied and kept, up to keep)."""

    def __init__(self, folder: Path, keep: int = KEEP) -> None:
        self.folder = folder
        self.keep = keep
        self._kept: list[int] = []

    def take(self) -> int:
        if self._kept:
            return self._kept.pop()
        try:
            return os.open(self.folder, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        # no O_TMPFILE on this file system: a named file, unlinked at once
        fd, name = tempfile.mkstemp(dir=self.folder, prefix="body-")
        os.unlink(name)
        return fd

    def give(self, fd: int) -> None:
        if len(self._kept) < self.keep:
            try:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)  # the next writes start at 0, not past a hole
            except OSError:
                pass
            else:
                self._kept.append(fd)
                return
        os.close(fd)


class SpillBuffer:
    """BodyBuffer: memory first, then an unlinked file taken from files (given a folder
    instead, a file of its own, closed at the end)."""

    def __init__(self, files: SpillFiles | Path, memory: int = MEMORY) -> None:
        self.files = files if isinstance(files, SpillFiles) else SpillFiles(files, keep=0)
        self.folder = self.files.folder
        self.memory = memory
        self.size = 0
        self._mem = bytearray()
        self._fd: int | None = None
        self._closed = False
        self._whole: bytes | None = None  # in_memory()'s bytes, until the next write

    def write(self, data: bytes) -> None:
        if self._closed or not data:
            return
        self._whole = None
        self.size += len(data)
        self._mem += data
        if self._fd is None and len(self._mem) <= self.memory:
            return
        if len(self._mem) >= SLICE:
            self._spill()

    def _spill(self) -> None:
        try:
            if self._fd is None:
                self._fd = self.files.take()
            write_all(self._fd, self._mem)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFull(f"filter buffer in {self.folder}: {e}") from e
            raise
        del self._mem[:]

    def in_memory(self) -> bytes | None:
        # every filter that reads the text asks: one copy of it, not one each
        if self._fd is not None:
            return None
        if self._whole is None:
            self._whole = bytes(self._mem)
        return self._whole

    def chunks(self) -> Iterator[bytes]:
        if self._fd is None:
            whole = self.in_memory()
            if whole:
                yield whole
            return
        if self._mem:
            self._spill()
        offset = 0
        while offset < self.size:
            data = os.pread(self._fd, READ, offset)
            if not data:
                break
            offset += len(data)
            yield data

    def close(self) -> None:
        self._closed = True
        self._mem = bytearray()
        self._whole = None
        fd, self._fd = self._fd, None
        if fd is not None:
            self.files.give(fd)
