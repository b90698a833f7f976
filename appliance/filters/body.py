"""A message's text kept while the filters decide on it (interfaces.BodyBuffer).

Up to MEMORY bytes stay in memory (most mail: the filters then read no file and wake no
thread); past that everything goes to an anonymous temporary file in the filter folder
(created unlinked, so a crash leaves nothing behind), written on the reactor thread in
64 KiB slices as the spool writes. chunks() reads it back, a megabyte at most at a time.
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


class SpillBuffer:
    """BodyBuffer: memory first, then an unlinked file under folder."""

    def __init__(self, folder: Path, memory: int = MEMORY) -> None:
        self.folder = folder
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
                self._fd = self._open()
            write_all(self._fd, self._mem)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFull(f"filter buffer in {self.folder}: {e}") from e
            raise
        del self._mem[:]

    def _open(self) -> int:
        try:
            return os.open(self.folder, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        # no O_TMPFILE on this file system: a named file, unlinked at once
        fd, name = tempfile.mkstemp(dir=self.folder, prefix="body-")
        os.unlink(name)
        return fd

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
            os.close(fd)
