"""Durable files: atomic replace keeps the mode from creation, creates and cleans up."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance import durable


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_replace_new_file_has_mode_and_data(tmp_path: Path) -> None:
    """A replaced file holds the new bytes with exactly the mode asked for, whatever the umask."""
    old = os.umask(0o077)
    try:
        durable.atomic_replace(tmp_path / "cert.pem", b"new", 0o644)
    finally:
        os.umask(old)
    assert (tmp_path / "cert.pem").read_bytes() == b"new"
    assert mode(tmp_path / "cert.pem") == 0o644
    assert os.listdir(tmp_path) == ["cert.pem"]


def test_atomic_replace_failure_leaves_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch
) -> None:
    """If the write fails the old file is untouched and no temporary file is left."""
    target = tmp_path / "passwd"
    target.write_bytes(b"old")

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "fsync", broken)
    with pytest.raises(OSError):
        durable.atomic_replace(target, b"new", 0o600)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["passwd"]


def test_create_file_refuses_existing_and_cleans_up(tmp_path: Path) -> None:
    """create_file never replaces a file (O_EXCL)."""
    durable.create_file(tmp_path / "q", b"1")
    with pytest.raises(FileExistsError):
        durable.create_file(tmp_path / "q", b"2")
    assert (tmp_path / "q").read_bytes() == b"1"
    assert mode(tmp_path / "q") == 0o600


def test_make_dirs_only_the_folder_itself_gets_the_mode(tmp_path: Path) -> None:
    """As mkdir -p -m: the new folder gets the mode, new parents the umask's default,
    existing ones keep theirs; a file in the way fails with what mkdir says."""
    (tmp_path / "a").mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        assert durable.make_dirs(tmp_path / "a" / "b" / "c", 0o700) is True
    finally:
        os.umask(old)
    assert mode(tmp_path / "a") == 0o755
    assert mode(tmp_path / "a" / "b") == 0o755
    assert mode(tmp_path / "a" / "b" / "c") == 0o700
    assert durable.make_dirs(tmp_path / "a" / "b", 0o700) is False
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(FileExistsError):
        durable.make_dirs(tmp_path / "f", 0o700)
    with pytest.raises(NotADirectoryError):
        durable.make_dirs(tmp_path / "f" / "g", 0o700)


def test_is_disk_full_only_for_space_errors() -> None:
    """ENOSPC and EDQUOT mean 452; other errors do not."""
    assert durable.is_disk_full(OSError(28, "No space left on device"))
    assert not durable.is_disk_full(OSError(5, "Input/output error"))
    assert not durable.is_disk_full(ValueError("x"))


def test_atomic_replace_refuses_a_device_or_folder(tmp_path) -> None:
    """Renaming over /dev/null (say, `ca issue --key-out /dev/null`) would replace the device
    with a file: refused, and the device left as it was."""
    import os
    import stat

    import pytest

    from appliance.durable import atomic_replace

    dev = tmp_path / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(OSError, match="not a regular file"):
        atomic_replace(dev, b"key", 0o600)
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    with pytest.raises(IsADirectoryError):
        atomic_replace(tmp_path, b"key", 0o600)
    atomic_replace(tmp_path / "f", b"1", 0o600)
    atomic_replace(tmp_path / "f", b"2", 0o600)
    assert (tmp_path / "f").read_bytes() == b"2"
    assert sorted(os.listdir(tmp_path)) == ["f", "null"]


def test_write_chunks_joins_small_neighbours_and_keeps_the_order(tmp_path, monkeypatch) -> None:
    """Small chunks go out in one write, a large one on its own; the bytes are all there, in
    order, and the count returned is theirs."""
    writes: list[int] = []
    real_write = os.write

    def write(fd: int, data) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    chunks = [b"a" * 100, b"b" * 200, b"c" * 100_000, b"d" * 10, b"e" * 20]
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert durable.write_chunks(fd, chunks) == sum(map(len, chunks))
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(chunks)
    assert writes == [300, 100_000, 30]
