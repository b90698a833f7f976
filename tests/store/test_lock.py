"""POP3 session locks: a dovecot-pop3-session.lock file, exclusive across store objects
(nodes) sharing a tree, stale by timeout or by a dead holder on this node."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.interfaces import Mailbox
from appliance.store import lock as lockmod
from appliance.store.lock import LOCK_NAME, LockInfo, SessionLock, node_id
from appliance.store.store import MaildirStore

USER = Mailbox("163.test", "user1")


def lock_path(root: Path) -> Path:
    return root / "163.test" / "user1" / "Maildir" / LOCK_NAME


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_foreign_lock(root: Path, pid: int, node: str, start: str = "") -> bytes:
    """A lock file as another session would have written it."""
    info = LockInfo("other.test", pid, start, node, int(time.time()), "ab" * 16, "pop3 other")
    path = lock_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = info.format()
    path.write_bytes(data)
    return data


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_lock_two_nodes_same_tree_exclusive(tmp_path: Path) -> None:
    """Two store objects over one tree (two nodes): the second gets None while the first
    holds the lock, and gets it once the first releases it."""
    node_a = MaildirStore(tmp_path, "a.test")
    node_b = MaildirStore(tmp_path, "b.test")
    held = node_a.lock_mailbox(USER, "pop3 session 1")
    assert held is not None
    assert node_b.lock_mailbox(USER, "pop3 session 2") is None
    assert node_a.lock_mailbox(USER, "pop3 session 3") is None  # same process, same answer
    held.release()
    assert not lock_path(tmp_path).exists()
    again = node_b.lock_mailbox(USER, "pop3 session 2")
    assert again is not None
    again.release()


def test_lock_other_mailbox_independent(tmp_path: Path) -> None:
    """Locks are per mailbox: another user's session is not in the way."""
    store = MaildirStore(tmp_path, "a.test")
    first = store.lock_mailbox(USER, "s1")
    other = store.lock_mailbox(Mailbox("163.test", "user2"), "s2")
    assert first is not None and other is not None
    first.release()
    other.release()


def test_lock_file_names_host_pid_node_token_and_owner(tmp_path: Path) -> None:
    """The file says who holds it: our host name, pid, node identity and the owner line."""
    store = MaildirStore(tmp_path, "mx.test")
    held = store.lock_mailbox(USER, "pop3 session 7 from 192.0.2.7\r\nforged=line")
    assert held is not None
    data = lock_path(tmp_path).read_bytes()
    info = LockInfo.parse(data)
    assert info is not None
    assert info.host == "mx.test"
    assert info.pid == os.getpid()
    assert info.node == node_id()
    assert len(info.token) == 32
    assert info.owner == "pop3 session 7 from 192.0.2.7??forged=line"
    assert data.count(b"\n") == 8
    assert oct(lock_path(tmp_path).stat().st_mode & 0o777) == "0o600"
    held.release()


def test_lock_not_refreshed_past_stale_after_taken_over(tmp_path: Path) -> None:
    """A lock whose mtime is older than stale_after is taken over, whoever holds it."""
    write_foreign_lock(tmp_path, pid=os.getpid(), node="another-boot/pid:[1]")
    store = MaildirStore(tmp_path, "b.test", stale_after=60)
    assert store.lock_mailbox(USER, "s") is None
    age(lock_path(tmp_path), 61)
    held = store.lock_mailbox(USER, "s")
    assert held is not None and held.held
    held.release()


def test_lock_tiny_stale_after_held_lock_lost_and_refresh_says_so(tmp_path: Path) -> None:
    """With a tiny stale_after a lock nobody refreshes is taken over, and the old holder's
    refresh() and release() then leave the new holder's file alone."""
    slow = MaildirStore(tmp_path, "a.test", stale_after=0.05)
    first = slow.lock_mailbox(USER, "slow session")
    assert first is not None
    age(lock_path(tmp_path), 1)
    second = MaildirStore(tmp_path, "b.test", stale_after=0.05).lock_mailbox(USER, "new")
    assert second is not None
    assert first.refresh() is False
    first.release()
    assert second.held
    second.release()
    assert not lock_path(tmp_path).exists()


def test_lock_dead_pid_on_this_node_taken_over_at_once(tmp_path: Path) -> None:
    """A fresh lock naming this node and a process that is gone is stale at once."""
    write_foreign_lock(tmp_path, pid=dead_pid(), node=node_id())
    store = MaildirStore(tmp_path, "b.test")  # default 5 minutes: the timeout is not why
    held = store.lock_mailbox(USER, "s")
    assert held is not None
    info = LockInfo.parse(lock_path(tmp_path).read_bytes())
    assert info is not None and info.pid == os.getpid()
    held.release()


def test_lock_reused_pid_on_this_node_taken_over(tmp_path: Path) -> None:
    """A live pid whose process started at another time than the lock says (pid reuse) is
    not the holder: the lock is taken over."""
    write_foreign_lock(tmp_path, pid=os.getpid(), node=node_id(), start="1")
    if not lockmod.process_start(os.getpid()):
        pytest.skip("no /proc here to read process start times")
    held = MaildirStore(tmp_path, "b.test").lock_mailbox(USER, "s")
    assert held is not None
    held.release()


def test_lock_dead_pid_on_other_node_waits_for_timeout(tmp_path: Path) -> None:
    """Another node's pid means nothing here: its lock holds until stale_after."""
    write_foreign_lock(tmp_path, pid=dead_pid(), node="another-boot/pid:[4026531836]")
    assert MaildirStore(tmp_path, "b.test").lock_mailbox(USER, "s") is None


def test_lock_unparsable_file_stale_only_by_mtime(tmp_path: Path) -> None:
    """A lock we cannot read (Dovecot's own "pid:host", or a torn file) holds until its
    mtime is older than stale_after."""
    path = lock_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(f"{dead_pid()}:other.test".encode())
    store = MaildirStore(tmp_path, "b.test", stale_after=30)
    assert store.lock_mailbox(USER, "s") is None
    age(path, 31)
    held = store.lock_mailbox(USER, "s")
    assert held is not None
    held.release()


def test_lock_release_leaves_someone_elses_lock(tmp_path: Path) -> None:
    """A holder whose file was replaced by another session's does not remove it."""
    held = MaildirStore(tmp_path, "a.test").lock_mailbox(USER, "s1")
    assert held is not None
    path = lock_path(tmp_path)
    path.unlink()
    theirs = write_foreign_lock(tmp_path, pid=os.getpid(), node="another-boot/x")
    held.release()
    assert path.read_bytes() == theirs
    assert [p.name for p in path.parent.iterdir() if "lock" in p.name] == [LOCK_NAME]
    held.release()  # twice: harmless
    assert path.read_bytes() == theirs


def test_lock_refresh_keeps_it_alive(tmp_path: Path) -> None:
    """refresh() touches the file, so a lock in use is not stale even past stale_after
    since it was taken."""
    store = MaildirStore(tmp_path, "a.test", stale_after=30)
    held = store.lock_mailbox(USER, "s")
    assert held is not None
    assert held.refresh_interval == pytest.approx(6)
    path = lock_path(tmp_path)
    age(path, 25)
    assert held.refresh() is True
    assert time.time() - path.stat().st_mtime < 5
    # the refresh put the mtime back to now: well within stale_after for another node
    assert MaildirStore(tmp_path, "b.test", stale_after=30).lock_mailbox(USER, "x") is None
    held.release()
    assert held.refresh() is False


def test_lock_takeover_race_never_removes_fresh_lock(tmp_path: Path, monkeypatch) -> None:
    """A stale lock replaced by a fresh one between our judging and our removing is put
    back, and we do not get the lock."""
    write_foreign_lock(tmp_path, pid=os.getpid(), node="another-boot/x")
    path = lock_path(tmp_path)
    age(path, 400)
    fresh = b"fresh lock of a faster taker\n"
    real_rename = os.rename

    def racing_rename(src, dst, *args, **kwargs):
        if Path(src) == path and str(dst).endswith(".gone"):
            path.unlink()
            path.write_bytes(fresh)  # the faster taker wins between our read and rename
            monkeypatch.setattr(os, "rename", real_rename)
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", racing_rename)
    assert MaildirStore(tmp_path, "b.test").lock_mailbox(USER, "slow taker") is None
    assert path.read_bytes() == fresh
    assert [p.name for p in path.parent.iterdir() if "lock" in p.name] == [LOCK_NAME]


def test_lock_concurrent_takers_exactly_one_wins(tmp_path: Path) -> None:
    """Threads (sessions) racing for one mailbox: exactly one gets the lock."""
    import threading

    store = MaildirStore(tmp_path, "a.test")
    store.maildir(USER).ensure()
    results: list[SessionLock | None] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        results.append(store.lock_mailbox(USER, "racer"))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    winners[0].release()


def test_lock_held_by_another_process_then_killed_taken_over(tmp_path: Path) -> None:
    """A lock held by another process excludes us; once that process is killed (-9, no
    release) the lock it left names a dead pid on this node and is taken over at once."""
    script = (
        "import sys\n"
        "from appliance.interfaces import Mailbox\n"
        "from appliance.store.store import MaildirStore\n"
        f"lock = MaildirStore({str(tmp_path)!r}, 'a.test').lock_mailbox("
        "Mailbox('163.test', 'user1'), 'child')\n"
        "print('locked' if lock else 'busy', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"locked\n"
        store = MaildirStore(tmp_path, "b.test")
        assert store.lock_mailbox(USER, "s") is None
        child.kill()
        child.wait()
        held = store.lock_mailbox(USER, "s")
        assert held is not None
        held.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdin is not None:
            child.stdin.close()
        if child.stdout is not None:
            child.stdout.close()


def test_pid_alive_zombie_counts_as_dead() -> None:
    """A lock holder killed but not yet reaped by its parent (a zombie) holds nothing: its
    lock is taken over at once, not after stale_after."""
    import signal

    from appliance.store.lock import pid_alive

    child = subprocess.Popen(["sleep", "30"])
    try:
        assert pid_alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            stat = open(f"/proc/{child.pid}/stat").read()
            if stat.rpartition(")")[2].split()[0] == "Z":
                break
            time.sleep(0.01)
        assert not pid_alive(child.pid)
    finally:
        child.wait()
