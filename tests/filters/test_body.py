"""SpillBuffer: small texts stay in memory, big ones go to an unlinked file and come back
whole, in order, in bounded chunks; closing lets everything go."""

from __future__ import annotations

import os

import pytest

from appliance.filters.body import READ, SpillBuffer, SpillFiles


def test_spill_small_text_in_memory_no_file(tmp_path) -> None:
    """Under the memory part: in_memory() has it all, and no file exists."""
    b = SpillBuffer(tmp_path, memory=1000)
    b.write(b"a" * 600)
    b.write(b"b" * 300)
    assert b.size == 900 and b.in_memory() == b"a" * 600 + b"b" * 300
    assert list(b.chunks()) == [b"a" * 600 + b"b" * 300]
    assert os.listdir(tmp_path) == []


def test_spill_big_text_to_unlinked_file_read_back_whole(tmp_path) -> None:
    """Past the memory part: the text goes to a file nobody can see in the folder, and
    chunks() gives it back byte for byte, a megabyte at most at a time."""
    b = SpillBuffer(tmp_path, memory=1000)
    parts = [bytes([65 + i % 26]) * 70_000 for i in range(40)]
    for p in parts:
        b.write(p)
    assert b.in_memory() is None
    assert os.listdir(tmp_path) == []  # O_TMPFILE (or unlinked at once)
    chunks = list(b.chunks())
    assert b"".join(chunks) == b"".join(parts) and max(map(len, chunks)) <= READ
    assert b"".join(b.chunks()) == b"".join(parts)  # readable again
    b.close()
    b.close()
    assert b.in_memory() == b""


def test_spill_write_after_close_ignored(tmp_path) -> None:
    """A session that ends while the text still arrives: writes go nowhere."""
    b = SpillBuffer(tmp_path, memory=10)
    b.close()
    b.write(b"x" * 100)
    assert list(b.chunks()) == []


def test_spill_files_are_kept_emptied_and_serve_the_next_text_whole(tmp_path) -> None:
    """A closed buffer's file goes back to its SpillFiles emptied (the same inode serves the
    next large text, from offset 0: no hole, no bytes of the last one); past `keep` files
    are closed, not kept."""
    files = SpillFiles(tmp_path, keep=1)
    first = SpillBuffer(files, memory=1000)
    first.write(b"a" * 300_000)
    assert first._fd is not None
    inode = os.fstat(first._fd).st_ino
    first.close()
    second, third = SpillBuffer(files, memory=1000), SpillBuffer(files, memory=1000)
    second.write(b"b" * 100_000)
    third.write(b"c" * 100_000)
    assert second._fd is not None and third._fd is not None
    assert os.fstat(second._fd).st_ino == inode and os.fstat(third._fd).st_ino != inode
    assert os.fstat(second._fd).st_size == 100_000
    assert b"".join(second.chunks()) == b"b" * 100_000
    kept_fd, other_fd = second._fd, third._fd
    second.close()
    third.close()  # keep=1: this one is closed
    assert files._kept == [kept_fd]
    with pytest.raises(OSError):  # the file past keep is closed
        os.fstat(other_fd)
    assert os.listdir(tmp_path) == []
