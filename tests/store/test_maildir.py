"""Maildir store: unique names, durable publish order, coalesced directory fsyncs, binary reads."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from appliance.durable import DirSync
from appliance.interfaces import Mailbox
from appliance.store import maildir as maildir_module
from appliance.store.maildir import (
    Maildir,
    delivery_order,
    escape_hostname,
    size_from_name,
    unique_name,
)
from appliance.store.store import MaildirStore

MESSAGE = b"From: a@example.test\r\nSubject: hi\r\n\r\nbody line\r\n.leading dot\r\n"


def test_unique_name_dovecot_format_has_time_usec_pid_counter_host() -> None:
    """A tmp name reads <secs>.M<usec>P<pid>Q<counter>.<host>, like Dovecot's."""
    name = unique_name("mx.example.test")
    secs, rest = name.split(".", 1)
    assert abs(int(secs) - time.time()) < 5
    assert rest.startswith("M")
    assert f"P{os.getpid()}Q" in rest
    assert rest.endswith(".mx.example.test")


def test_escape_hostname_slash_and_colon_escaped() -> None:
    """'/' and ':' in the hostname cannot break the file name or the ':2,' info part."""
    assert escape_hostname("a/b:c") == "a\\057b\\072c"
    assert "/" not in unique_name("a/b:c") and ":" not in unique_name("a/b:c")


def test_unique_name_many_threads_never_collide() -> None:
    """Names drawn at once from several threads are all distinct."""
    names: list[str] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [unique_name("h") for _ in range(500)]
        with lock:
            names.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 4000


def test_maildir_deliver_1000_quick_deliveries_all_distinct(tmp_path: Path) -> None:
    """1000 deliveries in a tight loop give 1000 files in new/ and nothing left in tmp/."""
    md = Maildir(tmp_path / "Maildir")
    names = {md.deliver(MESSAGE, "mx.test") for _ in range(1000)}
    assert len(names) == 1000
    assert set(md.list_new()) == names
    assert os.listdir(md.tmp) == []


def test_maildir_deliver_creates_folders_0700_on_first_delivery(tmp_path: Path) -> None:
    """The Maildir and its missing parents appear on first delivery, each mode 0700."""
    md = MaildirStore(tmp_path / "mail").maildir(Mailbox("example.test", "user1"))
    assert not md.exists()
    md.deliver(MESSAGE, "mx.test")
    for d in (
        tmp_path / "mail" / "example.test",
        tmp_path / "mail" / "example.test" / "user1",
        md.path,
        md.tmp,
        md.new,
        md.cur,
    ):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    (name,) = md.list_new()
    assert stat.S_IMODE((md.new / name).stat().st_mode) == 0o600


def test_maildir_deliver_exact_bytes_and_size_in_name(tmp_path: Path) -> None:
    """new/ holds the bytes unchanged (CRLF kept) and the name carries S=<size>."""
    md = Maildir(tmp_path / "Maildir")
    name = md.deliver(MESSAGE, "mx.test")
    assert name.endswith(f",S={len(MESSAGE)}")
    assert size_from_name(name) == len(MESSAGE)
    assert md.read_message("new", name) == MESSAGE
    with md.open_message("new", name) as f:
        assert "b" in f.mode


def test_maildir_publish_fsyncs_file_then_renames_then_fsyncs_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is fsync'd before it appears in new/, and new/ is fsync'd after the rename."""
    md = Maildir(tmp_path / "Maildir")
    md.ensure()
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def rename(src, dst) -> None:
        real_rename(src, dst)
        events.append(("rename", str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    name = md.deliver(MESSAGE, "mx.test")
    tmp_file = str(md.tmp / name.split(",")[0])
    assert events == [
        ("fsync", tmp_file),
        ("rename", str(md.new / name)),
        ("fsync", str(md.new)),
    ]


def test_maildir_publish_dir_fsync_fails_file_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If new/ cannot be fsync'd the message is not left in new/ (the sender will retry)."""
    md = Maildir(tmp_path / "Maildir")
    md.ensure()

    def failing(path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(maildir_module, "fsync_dir", failing)
    with pytest.raises(OSError):
        md.deliver(MESSAGE, "mx.test")
    assert md.list_new() == [] and os.listdir(md.tmp) == []


def test_maildir_move_to_cur_adds_flags_and_keeps_bytes(tmp_path: Path) -> None:
    """A seen message moves to cur/ with ':2,<flags>'; its bytes and size stay readable."""
    md = Maildir(tmp_path / "Maildir")
    name = md.deliver(MESSAGE, "mx.test")
    target = md.move_to_cur(name, "SF")
    assert target == f"{name}:2,FS"
    assert md.list_new() == [] and md.list_cur() == [target]
    assert md.read_message("cur", target) == MESSAGE
    assert md.message_size("cur", target) == len(MESSAGE)
    md.remove("cur", target)
    assert md.list_cur() == []


def test_maildir_list_missing_folder_empty(tmp_path: Path) -> None:
    """A mailbox that never got mail lists as empty instead of failing."""
    md = Maildir(tmp_path / "nothing" / "Maildir")
    assert md.list_new() == [] and md.list_cur() == []


def test_maildir_message_name_with_slash_refused(tmp_path: Path) -> None:
    """A name from a client (POP3/IMAP) cannot reach outside the folder."""
    md = Maildir(tmp_path / "Maildir")
    with pytest.raises(ValueError):
        md.read_message("new", "../../etc/passwd")
    with pytest.raises(ValueError):
        md.read_message("tmp", "x")


def test_maildir_clean_tmp_removes_only_stale_files(tmp_path: Path) -> None:
    """Crash leftovers older than the limit go; a file being written now stays."""
    md = Maildir(tmp_path / "Maildir")
    md.ensure()
    old, fresh = md.tmp / "old", md.tmp / "fresh"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 40 * 3600,) * 2)
    assert md.clean_tmp() == 1
    assert sorted(os.listdir(md.tmp)) == ["fresh"]


@pytest.mark.parametrize("domain,localpart", [("..", "u"), ("d", "a/b"), ("d", ""), ("d", ".")])
def test_maildirstore_unsafe_mailbox_refused(tmp_path: Path, domain: str, localpart: str) -> None:
    """Domains and local parts that would escape mail_root raise ValueError."""
    with pytest.raises(ValueError):
        MaildirStore(tmp_path).maildir(Mailbox(domain, localpart))


def test_dirsync_concurrent_callers_share_fsyncs_each_after_its_call() -> None:
    """20 threads get by with far fewer fsyncs, and each returns only after an fsync that
    started after it called."""
    lock = threading.Lock()
    clock = [0]
    runs: list[tuple[int, int]] = []  # (start tick, end tick) of each fsync

    def tick() -> int:
        with lock:
            clock[0] += 1
            return clock[0]

    def slow_fsync(path: str) -> None:
        start = tick()
        time.sleep(0.02)
        runs.append((start, tick()))

    sync = DirSync(slow_fsync)
    calls: list[tuple[int, int]] = []
    barrier = threading.Barrier(20)

    def caller() -> None:
        barrier.wait()
        called = tick()
        sync.sync("/some/dir")
        calls.append((called, tick()))

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 20
    assert len(runs) <= 5
    for called, returned in calls:
        assert any(called < start and end < returned for start, end in runs)


def test_dirsync_failure_reaches_every_waiter() -> None:
    """An fsync error is raised in every thread that relied on that fsync."""
    started = threading.Event()
    release = threading.Event()
    count = [0]

    def fsync(path: str) -> None:
        count[0] += 1
        if count[0] == 1:
            started.set()
            release.wait(5)
            return
        raise OSError(5, "Input/output error")

    joined = threading.Semaphore(0)  # released by each caller that waits for the next round
    sync = DirSync(fsync, on_wait=joined.release)
    errors: list[BaseException | None] = []

    def caller() -> None:
        try:
            sync.sync("/d")
            errors.append(None)
        except OSError as e:
            errors.append(e)

    first = threading.Thread(target=caller)
    first.start()
    started.wait(5)
    waiters = [threading.Thread(target=caller) for _ in range(5)]
    for t in waiters:
        t.start()
    # Release the first fsync only once all five wait for the next round (bounded wait).
    for _ in waiters:
        assert joined.acquire(timeout=5)
    release.set()
    for t in [first, *waiters]:
        t.join()
    assert errors.count(None) == 1
    assert sum(isinstance(e, OSError) for e in errors) == 5
    assert count[0] == 2


def test_maildir_first_deliveries_racing_in_threads_all_land(tmp_path) -> None:
    """Many threads delivering at once into a mailbox that does not exist yet: none fails.

    Regression: a thread found tmp/ already made by another and renamed into a new/ that
    the other had not made yet (ENOENT, the copy deferred).
    """
    import threading

    for round_ in range(20):
        md = Maildir(tmp_path / f"d{round_}" / "user" / "Maildir")
        errors: list[BaseException] = []

        def deliver(i: int, md: Maildir = md, errors: list = errors) -> None:
            try:
                md.deliver(f"message {i}\r\n".encode(), "mx.test")
            except BaseException as e:  # noqa: BLE001 (collected for the assertion)
                errors.append(e)

        threads = [threading.Thread(target=deliver, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert errors == []
        assert len(md.list_new()) == 8


def test_maildir_removed_at_run_time_is_made_again(tmp_path) -> None:
    """A mailbox deleted after its first delivery is recreated by the next one."""
    import shutil

    md = Maildir(tmp_path / "example.test" / "user" / "Maildir")
    md.deliver(b"one\r\n", "mx.test")
    shutil.rmtree(tmp_path / "example.test" / "user")
    md.deliver(b"two\r\n", "mx.test")
    assert [md.read_message("new", n) for n in md.list_new()] == [b"two\r\n"]


def test_delivery_order_compares_times_and_counter_as_numbers() -> None:
    """Names sort as delivered: seconds, microseconds and counter as numbers, not strings
    (Dovecot's order); a name of another form sorts after them."""
    names = [
        "1700000000.M99P7Q10.host",
        "1700000000.M100000P7Q2.host",
        "1700000000.M99P7Q9.host",
        "1699999999.M999999P7Q1.host",
        "odd-name",
        "1700000001.host",
    ]
    assert sorted(names, key=delivery_order) == [
        "1699999999.M999999P7Q1.host",
        "1700000000.M99P7Q9.host",
        "1700000000.M99P7Q10.host",
        "1700000000.M100000P7Q2.host",
        "1700000001.host",
        "odd-name",
    ]


def test_read_many_whole_cut_and_gone_with_one_read_per_small_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_many gives a small message whole, a big one's first limit + 1 octets, None for one
    gone, an empty file empty; and reads a small file with one read() (no second read() just
    to see its end: for a 1 KB message that is a fifth of its system calls)."""
    md = Maildir(tmp_path / "Maildir")
    small = md.deliver(MESSAGE, "mx.test")
    big_bytes = b"x" * 5000
    big = md.deliver(big_bytes, "mx.test")
    exact = md.deliver(b"y" * 100, "mx.test")
    empty = md.deliver(b"", "mx.test")
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(maildir_module.os, "read", counting_read)
    got = md.read_many(
        [
            ("small", ("new", small)),
            ("big", ("new", big)),
            ("exact", ("new", exact)),
            ("empty", ("new", empty)),
            ("gone", ("new", "1.M1P1Q1.mx.test,S=3")),
        ],
        100,
        lambda ident: None,
    )
    assert got == {
        "small": MESSAGE,
        "big": big_bytes[:101],
        "exact": b"y" * 100,
        "empty": b"",
        "gone": None,
    }
    assert reads == [len(MESSAGE), 101, 100]  # one each; the empty file is not read at all


def test_read_up_to_continues_a_short_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A read() that returns less than asked (the file changed after fstat, or a file system
    that returns short reads) is continued until the size or the end."""
    path = tmp_path / "m"
    path.write_bytes(b"abcdefghij")
    real_read = os.read
    monkeypatch.setattr(maildir_module.os, "read", lambda fd, n: real_read(fd, min(n, 3)))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert maildir_module._read_up_to(fd, 100) == b"abcdefghij"
    finally:
        os.close(fd)
