"""Durable spool: fast and spool paths, fsync order, abort, disk full, recovery, kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from appliance.interfaces import DiskFull, Envelope, Mailbox, Recipient
from appliance.log import mail_logger
from appliance.maillog import render
from appliance.queue.envelope import QueueEntry, read_queue_entry
from appliance.queue.queue import Queue
from appliance.service import build_queue
from appliance.store.store import MaildirStore
from tests.conftest import REPO
from tests.queue.test_scheduler import files_under

BODY = (
    b"Received: from client.test (unknown [127.0.0.1])\r\n\tby mx.test (mailappliance)\r\n"
    b"From: sender@remote.test\r\nSubject: test\r\n\r\nHello,\r\n.dot line unstuffed\r\n"
)
QID = re.compile(r"^[0-9A-F]{10}$")


def box(address: str) -> Mailbox:
    localpart, domain = address.split("@")
    return Mailbox(domain, localpart)


def local(address: str, *targets: str) -> Recipient:
    return Recipient(address, tuple(box(t) for t in (targets or (address,))))


def remote(address: str) -> Recipient:
    return Recipient(address, remote=True)


def envelope(*rcpts: Recipient, mail_from: str = "sender@remote.test") -> Envelope:
    return Envelope(
        mail_from=mail_from,
        recipients=rcpts,
        client_ip="127.0.0.1",
        helo="client.test",
        received_at=time.time(),
    )


def delivered(store: MaildirStore, address: str) -> list[bytes]:
    """The contents of every message in the mailbox's new/."""
    md = store.maildir(box(address))
    return [md.read_message("new", n) for n in md.list_new()]


def copy_of(address: str, data: bytes = BODY, mail_from: str = "sender@remote.test") -> bytes:
    return f"Return-Path: <{mail_from}>\r\nDelivered-To: {address}\r\n".encode() + data


class Made:
    """A queue over local delivery into a Maildir store, and its maillog lines."""

    def __init__(self, state_dir: Path, **kwargs) -> None:
        self.lines: list[str] = []
        self.on_line: Callable[[str], object] = self.lines.append
        events = mail_logger("local", lambda e: self.on_line(render(e)))
        self.spool, self.store = build_queue(state_dir, "mx.test", reactor, events=events, **kwargs)


@pytest.fixture
def make_spool() -> Iterator[Callable[..., Made]]:
    """Spools on real directories, started; all stopped (threads joined) after the test."""
    made: list[Queue] = []

    def make(state_dir: Path, **kwargs) -> Made:
        m = Made(state_dir, **kwargs)
        m.spool.start()
        made.append(m.spool)
        return m

    yield make
    for spool in made:
        pytest_twisted.blockon(spool.stop())


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (real ENOSPC); skipped where mounting is not allowed."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def send(spool: Queue, env: Envelope, data: bytes = BODY, chunk: int = 4096) -> defer.Deferred:
    msg = spool.begin(env)
    for i in range(0, len(data), chunk):
        msg.write(data[i : i + chunk])
    return msg.commit()


# -- fast path --------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_spool_fast_path_single_mailbox_lands_in_new_with_headers(tmp_path, make_spool):
    """One local mailbox: the exact bytes, behind Return-Path and Delivered-To, in new/ at once."""
    m = make_spool(tmp_path)
    qid = yield send(m.spool, envelope(local("user1@163.test")))
    assert QID.match(qid)
    assert delivered(m.store, "user1@163.test") == [copy_of("user1@163.test")]
    assert files_under(m.spool.queue_dir) == []
    md = m.store.maildir(box("user1@163.test"))
    assert os.listdir(md.tmp) == []
    (name,) = md.list_new()
    assert name.endswith(f",S={len(copy_of('user1@163.test'))}")
    assert (
        m.lines[0] == f"{qid}: from=<sender@remote.test>, size={len(BODY)}, nrcpt=1 (queue active)"
    )
    assert re.fullmatch(
        rf"{qid}: to=<user1@163\.test>, relay=local, delay=\d+\.\d\d, "
        r"dsn=2\.0\.0, status=sent \(delivered to maildir\)",
        m.lines[1],
    )
    assert m.lines[2:] == [f"{qid}: removed"]


@pytest_twisted.inlineCallbacks
def test_spool_fast_path_two_aliases_same_mailbox_one_copy(tmp_path, make_spool):
    """Two recipients resolving to one mailbox get one copy, logged with orig_to."""
    m = make_spool(tmp_path)
    env = envelope(local("postmaster@163.test", "admin@163.test"), local("admin@163.test"))
    qid = yield send(m.spool, env)
    assert delivered(m.store, "admin@163.test") == [copy_of("admin@163.test")]
    assert f"{qid}: to=<admin@163.test>, relay=local" in m.lines[1]
    assert "orig_to" not in m.lines[1]


@pytest_twisted.inlineCallbacks
def test_spool_alias_to_other_mailbox_logs_orig_to(tmp_path, make_spool):
    """A recipient delivered to a different mailbox is logged like Postfix, with orig_to=."""
    m = make_spool(tmp_path)
    qid = yield send(m.spool, envelope(local("postmaster@163.test", "admin@163.test")))
    assert m.lines[1].startswith(
        f"{qid}: to=<admin@163.test>, orig_to=<postmaster@163.test>, relay=local, delay="
    )


@pytest_twisted.inlineCallbacks
def test_spool_null_sender_return_path_empty(tmp_path, make_spool):
    """A bounce (MAIL FROM:<>) gets 'Return-Path: <>'."""
    m = make_spool(tmp_path)
    yield send(m.spool, envelope(local("user1@163.test"), mail_from=""))
    assert delivered(m.store, "user1@163.test") == [copy_of("user1@163.test", mail_from="")]


@pytest_twisted.inlineCallbacks
def test_spool_large_message_streamed_in_chunks_exact_bytes(tmp_path, make_spool):
    """A 3 MB message written in 1000-byte pieces arrives byte for byte, on both paths."""
    m = make_spool(tmp_path)
    data = BODY + bytes(range(256)) * (3 * 1024 * 1024 // 256) + b"\r\n"
    yield send(m.spool, envelope(local("big@163.test")), data, chunk=1000)
    yield send(m.spool, envelope(local("a@163.test"), local("b@163.test")), data, chunk=1000)
    yield m.spool.idle()
    assert delivered(m.store, "big@163.test") == [copy_of("big@163.test", data)]
    assert delivered(m.store, "a@163.test") == [copy_of("a@163.test", data)]
    assert delivered(m.store, "b@163.test") == [copy_of("b@163.test", data)]


class HandedToRelay:
    """Where a remote-only message goes at commit (the relay's side of the seam)."""

    def __init__(self) -> None:
        self.handed: list[tuple[str, bytes | None]] = []

    def add(self, entry: QueueEntry, data: bytes | None) -> None:
        self.handed.append((entry.queue_id, data))

    def stop(self) -> None:
        pass


def drawn(chunks: list[bytes], threads: list[threading.Thread]) -> Iterator[bytes]:
    for chunk in chunks:
        threads.append(threading.current_thread())
        yield chunk


PATHS = {
    "fast": lambda: envelope(local("user1@163.test")),
    "spool": lambda: envelope(local("user1@163.test"), local("user2@163.test")),
    "remote": lambda: envelope(remote("user3@sina.test")),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("size", [1000, 300_000], ids=["small", "large"])
@pytest_twisted.inlineCallbacks
def test_spool_commit_takes_the_rest_in_its_thread_exact_bytes(tmp_path, make_spool, path, size):
    """commit(rest): what write() took comes first, then rest, drawn in the commit's worker
    thread, never on the reactor; the copy, the queue file and the logged size hold it all.
    A remote-only message small enough to stay in memory is handed to the relay whole."""
    m = make_spool(tmp_path)
    m.spool.relay = relay = HandedToRelay()  # type: ignore[assignment]
    head = b"X-Spam-Score: 0.1\r\n"
    text = BODY + b"z" * size + b"\r\n"
    chunks = [text[i : i + 65536] for i in range(0, len(text), 65536)]
    threads: list[threading.Thread] = []
    msg = m.spool.begin(PATHS[path]())
    msg.write(head)
    qid = yield msg.commit(drawn(chunks, threads))
    yield m.spool.idle()
    assert len(threads) == len(chunks)
    assert threading.current_thread() not in threads
    whole = head + text
    assert m.lines[0].startswith(f"{qid}: from=<sender@remote.test>, size={len(whole)}, ")
    if path == "remote":
        assert (m.spool.deferred_dir / qid).read_bytes() == whole
        assert read_queue_entry(m.spool.deferred_dir / f"{qid}.env").size == len(whole)
        assert relay.handed == [(qid, whole if size == 1000 else None)]
        return
    assert delivered(m.store, "user1@163.test") == [copy_of("user1@163.test", whole)]
    assert files_under(m.spool.queue_dir) == []


@pytest.mark.parametrize("two_mailboxes", [False, True], ids=["fast", "spool"])
@pytest_twisted.inlineCallbacks
def test_spool_disk_full_in_commits_rest_fails_diskfull_and_leaves_nothing(
    small_tmpfs, make_spool, two_mailboxes
):
    """A rest larger than the file system: the commit fails with DiskFull, nothing is left,
    not even an open file."""
    m = make_spool(small_tmpfs)
    m.store.maildir(box("user1@163.test")).ensure()
    rcpts = [local("user1@163.test")] + ([local("user2@163.test")] if two_mailboxes else [])
    open_before = len(os.listdir("/proc/self/fd"))
    msg = m.spool.begin(envelope(*rcpts))
    msg.write(BODY)
    with pytest.raises(DiskFull):
        yield msg.commit([b"x" * 65536] * 12)  # 768 KiB into 512
    msg.abort()
    yield m.spool.idle()
    assert files_under(small_tmpfs) == []
    assert len(os.listdir("/proc/self/fd")) == open_before
    assert m.lines == []


# -- spool path -------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_spool_two_mailboxes_and_remote_copies_and_deferred_keeps_remote(tmp_path, make_spool):
    """Two local copies, each with its own Delivered-To; deferred/ keeps only the remote one."""
    m = make_spool(tmp_path)
    env = envelope(local("user1@163.test"), local("user2@163.test"), remote("user3@sina.test"))
    qid = yield send(m.spool, env)
    yield m.spool.idle()
    assert delivered(m.store, "user1@163.test") == [copy_of("user1@163.test")]
    assert delivered(m.store, "user2@163.test") == [copy_of("user2@163.test")]
    assert files_under(m.spool.queue_dir) == [f"deferred/{qid}", f"deferred/{qid}.env"]
    assert (m.spool.deferred_dir / qid).read_bytes() == BODY
    entry = read_queue_entry(m.spool.deferred_dir / f"{qid}.env")
    assert entry.queue_id == qid and entry.size == len(BODY)
    assert entry.envelope.recipients == (remote("user3@sina.test"),)
    assert entry.envelope.mail_from == "sender@remote.test"
    assert (
        m.lines[0] == f"{qid}: from=<sender@remote.test>, size={len(BODY)}, nrcpt=3 (queue active)"
    )
    sent = sorted(line for line in m.lines if "status=sent" in line)
    assert [line.split(",")[0] for line in sent] == [
        f"{qid}: to=<user1@163.test>",
        f"{qid}: to=<user2@163.test>",
    ]
    assert f"{qid}: removed" not in m.lines


@pytest_twisted.inlineCallbacks
def test_spool_two_local_mailboxes_queue_file_removed(tmp_path, make_spool):
    """With only local recipients the queue files are gone once both copies are delivered."""
    m = make_spool(tmp_path)
    qid = yield send(m.spool, envelope(local("user1@163.test"), local("user2@163.test")))
    yield m.spool.idle()
    assert delivered(m.store, "user1@163.test") == [copy_of("user1@163.test")]
    assert delivered(m.store, "user2@163.test") == [copy_of("user2@163.test")]
    assert files_under(m.spool.queue_dir) == []
    assert m.lines[-1] == f"{qid}: removed"


@pytest_twisted.inlineCallbacks
def test_spool_remote_only_committed_straight_to_deferred(tmp_path, make_spool):
    """A message with no local mailbox goes to deferred/ at commit, envelope intact."""
    m = make_spool(tmp_path)
    qid = yield send(m.spool, envelope(remote("user3@sina.test"), remote("user4@sina.test")))
    assert files_under(m.spool.queue_dir) == [f"deferred/{qid}", f"deferred/{qid}.env"]
    entry = read_queue_entry(m.spool.deferred_dir / f"{qid}.env")
    assert [r.address for r in entry.envelope.recipients] == [
        "user3@sina.test",
        "user4@sina.test",
    ]


@pytest_twisted.inlineCallbacks
def test_spool_failed_local_delivery_stays_queued_and_timer_retries(tmp_path, make_spool):
    """A mailbox that cannot be written stays in incoming/; the retry timer delivers it later."""
    m = make_spool(tmp_path, retry_interval=0.05)
    blocker = m.store.mail_root / "163.test" / "user2"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"not a directory")
    qid = yield send(m.spool, envelope(local("user1@163.test"), local("user2@163.test")))
    yield m.spool.idle()
    assert delivered(m.store, "user1@163.test") == [copy_of("user1@163.test")]
    assert sorted(os.listdir(m.spool.incoming_dir)) == [qid, f"{qid}.done", f"{qid}.env"]
    (deferred_line,) = [line for line in m.lines if "status=deferred" in line]
    assert deferred_line.startswith(f"{qid}: to=<user2@163.test>, relay=local, delay=")
    assert "cannot write to maildir: Not a directory" in deferred_line

    removed: defer.Deferred[None] = defer.Deferred()
    m.on_line = lambda line: (
        m.lines.append(line),
        line == f"{qid}: removed" and not removed.called and removed.callback(None),
    )
    blocker.unlink()
    yield removed  # fired by the timer's delivery, no sleep
    assert delivered(m.store, "user1@163.test") == [copy_of("user1@163.test")]
    assert delivered(m.store, "user2@163.test") == [copy_of("user2@163.test")]
    assert files_under(m.spool.queue_dir) == []


# -- durability order -------------------------------------------------------------------------


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Record every os.fsync (by path) and os.rename, in the order they complete."""
    events: list[tuple[str, ...]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def rename(src, dst) -> None:
        real_rename(src, dst)
        events.append(("rename", str(src), str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    return events


@pytest_twisted.inlineCallbacks
def test_spool_fast_path_commit_fsyncs_file_renames_fsyncs_dir_then_fires(
    tmp_path, make_spool, recorder
):
    """Fast path: fsync(file) -> rename into new/ -> fsync(new/) -> Deferred fires."""
    m = make_spool(tmp_path)
    md = m.store.maildir(box("user1@163.test"))
    d = send(m.spool, envelope(local("user1@163.test")))
    d.addCallback(lambda qid: recorder.append(("fired",)) or qid)
    yield d
    (name,) = md.list_new()
    tmp_file = str(md.tmp / name.split(",")[0])
    # Leave out the fsyncs that made the new folder itself durable (first delivery).
    mine = [e for e in recorder if e == ("fired",) or e[1].startswith((str(md.tmp), str(md.new)))]
    assert mine == [
        ("fsync", tmp_file),
        ("rename", tmp_file, str(md.new / name)),
        ("fsync", str(md.new)),
        ("fired",),
    ]


@pytest_twisted.inlineCallbacks
def test_spool_spool_path_commit_durable_before_fires(tmp_path, make_spool, recorder):
    """Spool path: data and envelope fsync'd before their renames, incoming/ fsync'd after both
    renames, and only then the Deferred fires."""
    m = make_spool(tmp_path)
    d = send(m.spool, envelope(local("user1@163.test"), local("user2@163.test")))
    d.addCallback(lambda qid: recorder.append(("fired",)) or qid)
    qid = yield d
    yield m.spool.idle()
    tmp, inc = str(m.spool.tmp_dir), str(m.spool.incoming_dir)
    i = recorder.index
    fired = i(("fired",))
    data_synced = i(("fsync", f"{tmp}/{qid}"))
    env_synced = i(("fsync", f"{tmp}/{qid}.env"))
    data_moved = i(("rename", f"{tmp}/{qid}", f"{inc}/{qid}"))
    env_moved = i(("rename", f"{tmp}/{qid}.env", f"{inc}/{qid}.env"))
    dir_synced = i(("fsync", inc))
    assert data_synced < data_moved < dir_synced < fired
    assert env_synced < env_moved < dir_synced


@pytest.mark.parametrize("existing_mailbox", [False, True], ids=["first-mail", "existing"])
@pytest_twisted.inlineCallbacks
def test_spool_reactor_thread_never_fsyncs(tmp_path, make_spool, monkeypatch, existing_mailbox):
    """write() and commit() leave every fsync to the pool, even for a large first message."""
    m = make_spool(tmp_path)
    if existing_mailbox:
        m.store.maildir(box("user1@163.test")).ensure()
        m.store.maildir(box("user2@163.test")).ensure()
    main = threading.current_thread()
    on_reactor: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if threading.current_thread() is main:
            on_reactor.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    big = BODY * 3000
    yield send(m.spool, envelope(local("user1@163.test")), big)
    yield send(m.spool, envelope(local("user1@163.test"), local("user2@163.test")), big)
    yield m.spool.idle()
    assert on_reactor == []
    assert delivered(m.store, "user1@163.test") == [copy_of("user1@163.test", big)] * 2
    assert delivered(m.store, "user2@163.test") == [copy_of("user2@163.test", big)]


@pytest_twisted.inlineCallbacks
def test_spool_fast_path_reactor_thread_creates_no_file(tmp_path, make_spool, monkeypatch):
    """A large message on the fast path: its Maildir file is made in a worker thread (the
    bytes wait in memory meanwhile), then written as they come; the reactor thread creates
    no file, and the copy is byte for byte."""
    m = make_spool(tmp_path)
    m.store.maildir(box("user1@163.test")).ensure()
    main = threading.current_thread()
    created_on_reactor: list[str] = []
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and threading.current_thread() is main:
            created_on_reactor.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    big = BODY * 3000
    msg = m.spool.begin(envelope(local("user1@163.test")))
    for i in range(0, len(big), 16384):
        msg.write(big[i : i + 16384])
        yield m.spool.idle()  # a reactor turn between packets
    md = m.store.maildir(box("user1@163.test"))
    (tmp_name,) = os.listdir(md.tmp)
    assert 0 < os.path.getsize(f"{md.tmp}/{tmp_name}") < len(big)  # written as it came
    yield msg.commit()
    monkeypatch.undo()
    assert created_on_reactor == []
    assert delivered(m.store, "user1@163.test") == [copy_of("user1@163.test", big)]


# -- abort ------------------------------------------------------------------------------------


@pytest.mark.parametrize("settled", [True, False], ids=["file-made", "file-being-made"])
@pytest.mark.parametrize("two_mailboxes", [False, True], ids=["fast", "spool"])
@pytest_twisted.inlineCallbacks
def test_spool_abort_leaves_nothing(tmp_path, make_spool, two_mailboxes, settled):
    """abort() after a large write removes its files, also while the fast path's file is
    still being made in a worker thread; twice is fine."""
    m = make_spool(tmp_path)
    m.store.maildir(box("user1@163.test")).ensure()
    rcpts = [local("user1@163.test")] + ([local("user2@163.test")] if two_mailboxes else [])
    msg = m.spool.begin(envelope(*rcpts))
    msg.write(BODY * 2000)
    if settled:
        yield m.spool.idle()
        assert [f for f in files_under(tmp_path) if "/tmp/" in f or f.startswith("queue/tmp")]
    msg.abort()
    msg.abort()
    msg.write(b"late bytes after abort are ignored")
    yield m.spool.idle()
    assert files_under(tmp_path) == []
    assert m.lines == []
    with pytest.raises(RuntimeError):
        yield msg.commit()


@pytest_twisted.inlineCallbacks
def test_spool_abort_after_commit_keeps_message(tmp_path, make_spool):
    """A late abort() (connection lost after the 250) must not delete an accepted message."""
    m = make_spool(tmp_path)
    msg = m.spool.begin(envelope(local("user1@163.test"), local("user2@163.test")))
    msg.write(BODY)
    d = msg.commit()
    msg.abort()  # while committing
    yield d
    msg.abort()  # after
    yield m.spool.idle()
    assert delivered(m.store, "user1@163.test") == [copy_of("user1@163.test")]
    assert delivered(m.store, "user2@163.test") == [copy_of("user2@163.test")]


def test_spool_begin_unsafe_mailbox_refused(tmp_path, make_spool):
    """A mailbox name that would escape mail_root is refused before anything is written."""
    m = make_spool(tmp_path)
    with pytest.raises(ValueError):
        m.spool.begin(envelope(Recipient("x@163.test", (Mailbox("163.test", "../x"),))))


# -- disk full --------------------------------------------------------------------------------


@pytest.mark.parametrize("two_mailboxes", [False, True], ids=["fast", "spool"])
@pytest_twisted.inlineCallbacks
def test_spool_disk_full_in_write_raises_and_leaves_nothing(small_tmpfs, make_spool, two_mailboxes):
    """Writing more than the file system holds raises DiskFull; every file of it is gone.
    The reactor turns between the writes, as between the packets of a real DATA (the fast
    path's file is made in a worker thread, the bytes wait in memory until then)."""
    m = make_spool(small_tmpfs)
    m.store.maildir(box("user1@163.test")).ensure()  # else the first mail waits in memory
    rcpts = [local("user1@163.test")] + ([local("user2@163.test")] if two_mailboxes else [])
    msg = m.spool.begin(envelope(*rcpts))
    with pytest.raises(DiskFull):
        for _ in range(100):
            msg.write(b"x" * 16384)
            yield m.spool.idle()
    with pytest.raises(DiskFull):
        msg.write(b"more")
    msg.abort()
    yield m.spool.idle()
    assert files_under(small_tmpfs) == []


def fill(path: Path, leave: int) -> None:
    """Fill the file system at path until only about `leave` bytes remain."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    size = (path / "filler").stat().st_size
    os.truncate(path / "filler", max(0, size - leave))


@pytest.mark.parametrize("two_mailboxes", [False, True], ids=["fast", "spool"])
@pytest_twisted.inlineCallbacks
def test_spool_disk_full_at_commit_fails_diskfull_and_leaves_nothing(
    small_tmpfs, make_spool, two_mailboxes
):
    """A message that fits the write buffer but not the disk fails at commit with DiskFull."""
    m = make_spool(small_tmpfs)
    m.store.maildir(box("user1@163.test")).ensure()
    fill(small_tmpfs, 16 * 1024)
    rcpts = [local("user1@163.test")] + ([local("user2@163.test")] if two_mailboxes else [])
    msg = m.spool.begin(envelope(*rcpts))
    msg.write(b"x" * 40000)  # below the write buffer: nothing reaches the disk yet
    with pytest.raises(DiskFull):
        yield msg.commit()
    msg.abort()
    yield m.spool.idle()
    assert files_under(small_tmpfs) == ["filler"]
    assert m.lines == []


@pytest_twisted.inlineCallbacks
def test_spool_disk_full_during_delivery_stays_queued_then_delivered_once(small_tmpfs, make_spool):
    """Copies that do not fit are deferred (no partial files); after space is freed a retry
    delivers only the missing ones."""
    m = make_spool(small_tmpfs)
    data = BODY + b"y" * (200 * 1024)
    addresses = ["user1@163.test", "user2@163.test", "user3@163.test"]
    qid = yield send(m.spool, envelope(*(local(a) for a in addresses)), data)
    yield m.spool.idle()
    got = {a: delivered(m.store, a) for a in addresses}
    assert sum(len(v) for v in got.values()) == 1
    assert sorted(os.listdir(m.spool.incoming_dir)) == [qid, f"{qid}.done", f"{qid}.env"]
    for a in addresses:
        md = m.store.maildir(box(a))
        assert not md.tmp.exists() or os.listdir(md.tmp) == []
    deferred_lines = [line for line in m.lines if "status=deferred" in line]
    assert len(deferred_lines) == 2
    assert all("No space left on device" in line for line in deferred_lines)

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_tmpfs)], check=True)
    handled = yield m.spool.retry()
    yield m.spool.idle()
    assert handled == [qid]
    for a in addresses:
        assert delivered(m.store, a) == [copy_of(a, data)]
    assert files_under(m.spool.queue_dir) == []
    assert m.lines[-1] == f"{qid}: removed"


# -- recovery ---------------------------------------------------------------------------------


def queue_message(spool: Queue, folder: Path, qid: str, env: Envelope, data: bytes = BODY) -> None:
    (folder / qid).write_bytes(data)
    (folder / f"{qid}.env").write_bytes(QueueEntry(qid, env, time.time(), len(data)).to_bytes())


@pytest_twisted.inlineCallbacks
def test_spool_recover_after_crash_delivers_incoming_and_cleans(tmp_path, make_spool):
    """recover(): tmp/ emptied, incomplete pairs dropped, incoming/ delivered (skipping
    mailboxes already done), deferred/ left alone."""
    state = tmp_path / "state"
    first, first_store = build_queue(state, "mx.test", reactor)  # only to create the layout
    q = first.queue_dir
    env = envelope(local("user1@163.test"), local("user2@163.test"), remote("user3@sina.test"))
    queue_message(first, q / "incoming", "AAAAAAAAA1", env)
    # user1 got its copy before the crash; a torn last line must be ignored.
    first_store.maildir(box("user1@163.test")).deliver(copy_of("user1@163.test"), "mx.test")
    (q / "incoming" / "AAAAAAAAA1.done").write_bytes(b'"user1@163.test"\n"user2@16')
    queue_message(first, q / "incoming", "BBBBBBBBB2", envelope(local("user4@163.test")))
    (q / "incoming" / "CCCCCCCCC3").write_bytes(b"cut between the renames")
    (q / "incoming" / "DDDDDDDDD4.env").write_bytes(b"{}")
    (q / "tmp" / "EEEEEEEEE5").write_bytes(b"half a message")
    (q / "tmp" / "EEEEEEEEE5.env").write_bytes(b"{}")
    queue_message(first, q / "deferred", "FFFFFFFFF6", envelope(remote("x@sina.test")))

    m = make_spool(state)
    handled = yield m.spool.recover()
    assert sorted(handled) == ["AAAAAAAAA1", "BBBBBBBBB2"]
    assert delivered(m.store, "user1@163.test") == [copy_of("user1@163.test")]
    assert delivered(m.store, "user2@163.test") == [copy_of("user2@163.test")]
    assert delivered(m.store, "user4@163.test") == [copy_of("user4@163.test")]
    assert files_under(q) == [
        "deferred/AAAAAAAAA1",
        "deferred/AAAAAAAAA1.env",
        "deferred/FFFFFFFFF6",
        "deferred/FFFFFFFFF6.env",
    ]
    entry = read_queue_entry(q / "deferred" / "AAAAAAAAA1.env")
    assert entry.envelope.recipients == (remote("user3@sina.test"),)
    assert "BBBBBBBBB2: removed" in m.lines


@pytest_twisted.inlineCallbacks
def test_spool_recover_corrupt_envelope_moved_aside(tmp_path, make_spool):
    """An envelope that cannot be parsed is kept in queue/corrupt/, not retried forever."""
    m = make_spool(tmp_path)
    inc = m.spool.incoming_dir
    (inc / "ABCDEF0123").write_bytes(BODY)
    (inc / "ABCDEF0123.env").write_bytes(b"not json")
    handled = yield m.spool.recover()
    assert handled == []
    assert files_under(m.spool.queue_dir) == ["corrupt/ABCDEF0123", "corrupt/ABCDEF0123.env"]


@pytest_twisted.inlineCallbacks
def test_spool_recover_idempotent_second_run_does_nothing(tmp_path, make_spool):
    """Running recover() again after a clean recovery delivers nothing twice."""
    m = make_spool(tmp_path)
    queue_message(m.spool, m.spool.incoming_dir, "0123456789", envelope(local("u@163.test")))
    assert (yield m.spool.recover()) == ["0123456789"]
    assert (yield m.spool.recover()) == []
    assert delivered(m.store, "u@163.test") == [copy_of("u@163.test")]


CHILD = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
from twisted.internet import reactor
from appliance.interfaces import Envelope, Mailbox, Recipient
from pathlib import Path
from appliance.service import build_queue

spool, _store = build_queue(Path({state!r}), "mx.test", reactor)
rcpts = tuple(
    Recipient(a, (Mailbox(a.split("@")[1], a.split("@")[0]),)) for a in {addresses!r}
) + (Recipient("far@sina.test", remote=True),) * {remote!r}
env = Envelope("sender@remote.test", rcpts, "127.0.0.1", "client.test", received_at=time.time())

def acked(qid):
    # The moment the SMTP layer would send "250 Ok: queued as <qid>": die right there.
    sys.stdout.write(qid + "\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

def go():
    spool.start()
    msg = spool.begin(env)
    msg.write({body!r})
    msg.commit().addCallback(acked)

reactor.callWhenRunning(go)
reactor.run()
"""


@pytest.mark.parametrize(
    "addresses,remote_too",
    [(["user1@163.test"], False), (["user1@163.test", "user2@163.test"], True)],
    ids=["fast", "spool"],
)
@pytest_twisted.inlineCallbacks
def test_spool_kill9_right_after_250_message_delivered_after_restart(
    tmp_path, make_spool, addresses, remote_too
):
    """A process SIGKILLed just after acknowledging loses nothing: after recover() every
    mailbox has the message (maybe twice, never zero times) and the remote part is queued."""
    state = tmp_path / "state"
    code = CHILD.format(
        repo=str(REPO), state=str(state), addresses=addresses, remote=int(remote_too), body=BODY
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, cwd=str(REPO)
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    qid = proc.stdout.decode().strip()
    assert QID.match(qid)

    m = make_spool(state)
    handled = yield m.spool.recover()
    assert set(handled) <= {qid}
    for a in addresses:
        copies = delivered(m.store, a)
        assert 1 <= len(copies) <= 2
        assert set(copies) == {copy_of(a)}
    queue = files_under(m.spool.queue_dir)
    assert queue == ([f"deferred/{qid}", f"deferred/{qid}.env"] if remote_too else [])


# -- concurrency and lifecycle ----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_spool_fifty_concurrent_commits_all_succeed(tmp_path, make_spool):
    """50 commits in flight at once (both paths) all succeed with distinct ids and files."""
    m = make_spool(tmp_path, fsync_threads=8)
    ds = []
    for i in range(50):
        if i % 2:
            env = envelope(local(f"user{i % 5}@163.test"))
        else:
            env = envelope(local(f"user{i % 5}@163.test"), local("all@163.test"))
        ds.append(send(m.spool, env, BODY + f"message {i}\r\n".encode()))
    qids = yield defer.gatherResults(ds)
    assert len(set(qids)) == 50
    yield m.spool.idle()
    assert len(delivered(m.store, "all@163.test")) == 25
    total = sum(len(delivered(m.store, f"user{k}@163.test")) for k in range(5))
    assert total == 50
    every = [c for k in range(5) for c in delivered(m.store, f"user{k}@163.test")]
    assert sorted(c.rsplit(b"message ", 1)[1] for c in every) == sorted(
        f"{i}\r\n".encode() for i in range(50)
    )
    assert files_under(m.spool.queue_dir) == []


@pytest_twisted.inlineCallbacks
def test_spool_stop_waits_for_commits_in_flight(tmp_path):
    """stop() fires only after a commit that was running has finished and been delivered."""
    spool, store = build_queue(tmp_path, "mx.test", reactor)
    spool.start()
    results: list[str] = []
    d = send(spool, envelope(local("a@163.test"), local("b@163.test")))
    d.addCallback(results.append)
    yield spool.stop()
    assert len(results) == 1
    assert delivered(store, "a@163.test") == [copy_of("a@163.test")]
    assert delivered(store, "b@163.test") == [copy_of("b@163.test")]
    assert not spool.pool.started
    with pytest.raises(RuntimeError):
        spool.begin(envelope(local("a@163.test")))


@pytest_twisted.inlineCallbacks
def test_spool_queue_ids_unique_and_postfix_shaped(tmp_path, make_spool):
    """Queue ids are 10 upper-case hex digits, distinct across many messages."""
    m = make_spool(tmp_path)
    qids = yield defer.gatherResults(
        [send(m.spool, envelope(remote(f"r{i}@sina.test"))) for i in range(200)]
    )
    assert all(QID.match(q) for q in qids)
    assert len(set(qids)) == 200
    assert len(os.listdir(m.spool.deferred_dir)) == 400


@pytest_twisted.inlineCallbacks
def test_spool_queue_id_taken_on_disk_new_id_drawn(tmp_path, make_spool, monkeypatch):
    """If the drawn id already names a queued message, another id is used (nothing replaced)."""
    m = make_spool(tmp_path)
    queue_message(m.spool, m.spool.deferred_dir, "0000000001", envelope(remote("x@sina.test")))
    ids = iter([0x1, 0x2])
    monkeypatch.setattr("appliance.queue.queue._rng.getrandbits", lambda bits: next(ids))
    qid = yield send(m.spool, envelope(remote("y@sina.test")))
    assert qid == "0000000002"
    assert read_queue_entry(m.spool.deferred_dir / "0000000001.env").envelope.recipients == (
        remote("x@sina.test"),
    )
    assert json.loads((m.spool.deferred_dir / "0000000002.env").read_bytes())["queue_id"] == qid


@pytest_twisted.inlineCallbacks
def test_spool_recover_removes_stale_maildir_tmp_files(tmp_path, make_spool):
    """recover() removes Maildir tmp/ files older than 36 hours, keeps younger ones."""
    m = make_spool(tmp_path)
    md = m.store.maildir(box("user1@163.test"))
    md.ensure()
    old, young = md.tmp / "old-crash", md.tmp / "young"
    old.write_bytes(b"x")
    young.write_bytes(b"y")
    stamp = time.time() - 37 * 3600
    os.utime(old, (stamp, stamp))
    yield m.spool.recover()
    assert not old.exists() and young.exists()
