"""Queue files are reused: a retired file's emptied inode becomes the next new file.

Real files in a temporary queue folder; inode numbers show which file is which.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from appliance.durable import DirSync
from appliance.queue import files as files_mod
from appliance.queue.files import QueueFiles


def make(tmp_path: Path) -> QueueFiles:
    return QueueFiles(tmp_path / "queue", DirSync())


def spares(q: QueueFiles) -> list[str]:
    return sorted(os.listdir(q.spare))


def write(q: QueueFiles, path: str, data: bytes) -> int:
    fd = q.new_file(path)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return os.stat(path).st_ino


def test_retired_file_is_emptied_and_its_inode_reused(tmp_path):
    q = make(tmp_path)
    first = write(q, f"{q.deferred}/AAAAAAAAA1", b"a message that was relayed")
    q.retire(f"{q.deferred}/AAAAAAAAA1")
    assert not os.path.lexists(f"{q.deferred}/AAAAAAAAA1")
    [name] = spares(q)
    spare = os.stat(f"{q.spare}/{name}")
    assert (spare.st_ino, spare.st_size, spare.st_mode & 0o777) == (first, 0, 0o600)

    fd = q.create_tmp("BBBBBBBBB2")
    assert fd is not None
    os.write(fd, b"the next one")
    os.close(fd)
    again = os.stat(f"{q.tmp}/BBBBBBBBB2")
    assert (again.st_ino, again.st_nlink) == (first, 1)
    assert spares(q) == []
    assert Path(f"{q.tmp}/BBBBBBBBB2").read_bytes() == b"the next one"


def test_no_spare_means_a_new_file(tmp_path):
    q = make(tmp_path)
    a = write(q, f"{q.tmp}/AAAAAAAAA1", b"x")
    b = write(q, f"{q.tmp}/BBBBBBBBB2", b"y")
    assert a != b and spares(q) == []


def test_an_existing_name_is_never_replaced_and_the_spare_is_kept(tmp_path):
    q = make(tmp_path)
    write(q, f"{q.deferred}/AAAAAAAAA1", b"done")
    q.retire(f"{q.deferred}/AAAAAAAAA1")
    Path(f"{q.tmp}/BBBBBBBBB2").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        q.new_file(f"{q.tmp}/BBBBBBBBB2")
    assert Path(f"{q.tmp}/BBBBBBBBB2").read_bytes() == b"someone else's"
    assert len(spares(q)) == 1
    # create_tmp's answer to a taken id is unchanged: None, the caller draws another
    assert q.create_tmp("BBBBBBBBB2") is None
    assert len(spares(q)) == 1


def test_a_spare_with_bytes_left_is_emptied_when_reused(tmp_path):
    """retire() renames, then empties: a crash in between leaves bytes, never reused as such."""
    q = make(tmp_path)
    Path(q.spare, "leftover").write_bytes(b"old message " * 100)
    q = make(tmp_path)  # a restart: spare/ is listed again, and emptied
    assert os.stat(f"{q.spare}/leftover").st_size == 0
    fd = q.create_tmp("AAAAAAAAA1")
    assert fd is not None
    os.write(fd, b"new")
    os.close(fd)
    assert Path(f"{q.tmp}/AAAAAAAAA1").read_bytes() == b"new"


def test_a_spare_removed_behind_our_back_is_skipped(tmp_path):
    q = make(tmp_path)
    for qid in ("AAAAAAAAA1", "BBBBBBBBB2"):
        write(q, f"{q.deferred}/{qid}", b"m")
    for qid in ("AAAAAAAAA1", "BBBBBBBBB2"):
        q.retire(f"{q.deferred}/{qid}")
    gone, kept = spares(q)  # in the order they were retired, the order they are reused
    kept_ino = os.stat(f"{q.spare}/{kept}").st_ino
    os.unlink(f"{q.spare}/{gone}")
    assert write(q, f"{q.tmp}/CCCCCCCCC3", b"n") == kept_ino
    assert write(q, f"{q.tmp}/DDDDDDDDD4", b"o") != kept_ino  # none left: a new one


def test_at_most_spare_max_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(files_mod, "SPARE_MAX", 2)
    q = make(tmp_path)
    for qid in ("AAAAAAAAA1", "BBBBBBBBB2", "CCCCCCCCC3"):
        write(q, f"{q.deferred}/{qid}", b"m")
    for qid in ("AAAAAAAAA1", "BBBBBBBBB2", "CCCCCCCCC3"):
        q.retire(f"{q.deferred}/{qid}")
    assert len(spares(q)) == 2
    assert os.listdir(q.deferred) == []


def test_retire_of_a_file_already_gone_is_quiet(tmp_path):
    q = make(tmp_path)
    q.retire(f"{q.deferred}/AAAAAAAAA1")
    assert spares(q) == []


def test_remove_deferred_keeps_data_and_envelope_as_spares(tmp_path):
    q = make(tmp_path)
    for suffix in ("", ".env", ".state", ".hold"):
        Path(f"{q.deferred}/AAAAAAAAA1{suffix}").write_bytes(b"x")
    q.remove_deferred("AAAAAAAAA1")
    assert os.listdir(q.deferred) == []
    assert len(spares(q)) == 2
    assert all(os.stat(f"{q.spare}/{n}").st_size == 0 for n in spares(q))


def test_crash_recovery_leaves_spares_alone(tmp_path):
    q = make(tmp_path)
    write(q, f"{q.deferred}/AAAAAAAAA1", b"m")
    q.retire(f"{q.deferred}/AAAAAAAAA1")
    Path(f"{q.tmp}/BBBBBBBBB2").write_bytes(b"never acknowledged")
    q.clean_after_crash(set())
    assert os.listdir(q.tmp) == []
    assert len(spares(q)) == 1


def test_without_hard_links_files_are_created_and_removed_as_usual(tmp_path, monkeypatch):
    """A file system that refuses link() (EPERM, as vfat and some FUSE ones do): the queue
    stops reusing, says so once, and keeps working."""
    q = make(tmp_path)
    write(q, f"{q.deferred}/AAAAAAAAA1", b"m")
    q.retire(f"{q.deferred}/AAAAAAAAA1")
    assert len(spares(q)) == 1

    def refuse(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    write(q, f"{q.tmp}/BBBBBBBBB2", b"n")
    assert Path(f"{q.tmp}/BBBBBBBBB2").read_bytes() == b"n"
    q.retire(f"{q.tmp}/BBBBBBBBB2")
    assert not os.path.lexists(f"{q.tmp}/BBBBBBBBB2")
    assert len(spares(q)) == 1  # the old spare is left; nothing new is kept
