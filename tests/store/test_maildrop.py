"""POP3 maildrop snapshots: numbers, UIDLs and sizes, and the UPDATE state's durable
deletions (each message deleted or intact, never half) and new/ -> cur/ moves."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from appliance.interfaces import Mailbox
from appliance.store.store import MaildirStore

USER = Mailbox("163.test", "user1")


def deliver(store: MaildirStore, text: str) -> str:
    return store.deliver(USER, iter([text.encode()]))


def message(i: int) -> str:
    """A message as local delivery stores it: CRLF lines, our headers in front."""
    return (
        "Return-Path: <sender@sina.test>\r\nDelivered-To: user1@163.test\r\n"
        f"Subject: {i}\r\n\r\n" + f"line {i}\r\n.dot line\r\n" * (i + 1)
    )


def maildir(root: Path) -> Path:
    return root / "163.test" / "user1" / "Maildir"


def contents(store: MaildirStore) -> dict[str, bytes]:
    """uidl -> bytes of every message a fresh snapshot sees."""
    drop = store.open_maildrop(USER)
    found = {}
    for m in drop.messages:
        with drop.open(m.number) as f:
            found[m.uidl] = f.read()
    return found


def test_maildrop_numbers_uidls_sizes_match_uidlist_and_bytes(tmp_path: Path) -> None:
    """Numbers 1..n in UID order; UIDL is Dovecot's %08Xu%08Xv; each size is exactly the
    octets open() gives (CRLF as delivered), and STAT's total is their sum."""
    store = MaildirStore(tmp_path, "mx.test")
    for i in range(3):
        deliver(store, message(i))
    drop = store.open_maildrop(USER)
    listing = store.list_messages(USER)
    assert [m.number for m in drop.messages] == [1, 2, 3]
    assert [(m.uid, m.key) for m in drop.messages] == [(m.uid, m.key) for m in listing.messages]
    assert drop.uidvalidity == listing.uidvalidity
    for m in drop.messages:
        assert m.uidl == f"{m.uid:08X}{drop.uidvalidity:08X}"
        assert re.fullmatch(r"[0-9A-F]{16}", m.uidl)
        with drop.open(m.number) as f:
            data = f.read()
        assert len(data) == m.size
        assert data == message(m.number - 1).encode()
    assert drop.total_size == sum(m.size for m in drop.messages)


def test_maildrop_stable_across_snapshots_and_restart(tmp_path: Path) -> None:
    """Two snapshots, and one from a new store object (a restart), give the same numbers,
    UIDs and UIDLs."""
    store = MaildirStore(tmp_path, "mx.test")
    for i in range(4):
        deliver(store, message(i))
    first = store.open_maildrop(USER).messages
    assert store.open_maildrop(USER).messages == first
    assert MaildirStore(tmp_path, "other.test").open_maildrop(USER).messages == first


def test_maildrop_delivered_during_session_only_in_next(tmp_path: Path) -> None:
    """A message delivered after the snapshot is not in it; the next snapshot has it, with
    the next number and UID."""
    store = MaildirStore(tmp_path, "mx.test")
    deliver(store, message(0))
    drop = store.open_maildrop(USER)
    deliver(store, message(1))
    assert len(drop.messages) == 1
    with pytest.raises(ValueError):
        drop.open(2)
    assert drop.apply_deletions([1]) == 1
    after = store.open_maildrop(USER)
    assert [(m.number, m.uid) for m in after.messages] == [(1, 2)]
    with after.open(1) as f:
        assert f.read() == message(1).encode()


def test_maildrop_empty_mailbox_has_no_messages(tmp_path: Path) -> None:
    """A user who never had mail gets an empty maildrop (and an INBOX, as Dovecot makes)."""
    drop = MaildirStore(tmp_path, "mx.test").open_maildrop(USER)
    assert drop.messages == () and drop.total_size == 0
    assert drop.apply_deletions([]) == 0
    assert (maildir(tmp_path) / "cur").is_dir()


def test_maildrop_apply_deletions_removes_exactly_those(tmp_path: Path) -> None:
    """The numbers given are removed, the others stay with their UIDs and bytes."""
    store = MaildirStore(tmp_path, "mx.test")
    for i in range(5):
        deliver(store, message(i))
    before = contents(store)
    drop = store.open_maildrop(USER)
    assert drop.apply_deletions([2, 4]) == 2
    kept = [drop.messages[i].uidl for i in (0, 2, 4)]
    assert contents(store) == {uidl: before[uidl] for uidl in kept}
    assert [m.uid for m in store.open_maildrop(USER).messages] == [1, 3, 5]


def test_maildrop_update_moves_new_to_cur_and_marks_retrieved_seen(tmp_path: Path) -> None:
    """After UPDATE nothing of the snapshot is left in new/: kept messages are in cur/ with
    ':2,', the retrieved ones with S, flags IMAP set are kept; later mail stays in new/."""
    store = MaildirStore(tmp_path, "mx.test")
    for i in range(3):
        deliver(store, message(i))
    first_key = store.list_messages(USER).messages[0].key
    store.set_flags(USER, "INBOX", first_key, frozenset({"\\Flagged"}))
    drop = store.open_maildrop(USER)
    late = deliver(store, message(9))
    assert drop.apply_deletions([], retrieved=[1, 3]) == 0
    keys = [m.key for m in drop.messages]
    cur = sorted(os.listdir(maildir(tmp_path) / "cur"))
    assert cur == sorted([f"{keys[0]}:2,FS", f"{keys[1]}:2,", f"{keys[2]}:2,S"])
    assert os.listdir(maildir(tmp_path) / "new") == [late]
    flags = {m.key: m.flags for m in store.list_messages(USER).messages}
    assert flags[keys[0]] == {"\\Flagged", "\\Seen"}
    assert flags[keys[1]] == frozenset()
    assert flags[keys[2]] == {"\\Seen"}
    assert [m.uid for m in store.open_maildrop(USER).messages] == [1, 2, 3, 4]


def test_maildrop_deletions_synced_before_moves(tmp_path: Path, monkeypatch) -> None:
    """UPDATE unlinks, fsyncs the folder, and only then renames the kept messages."""
    store = MaildirStore(tmp_path, "mx.test")
    for i in range(3):
        deliver(store, message(i))
    drop = store.open_maildrop(USER)
    events: list[str] = []

    def spy(label, real):
        def call(path, *args, **kwargs):
            events.append(label(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "unlink", spy(lambda p: "unlink", os.unlink))
    monkeypatch.setattr(os, "rename", spy(lambda p: "rename", os.rename))
    sync = spy(lambda p: "sync " + Path(p).name, store.dirsync.sync)
    monkeypatch.setattr(store.dirsync, "sync", sync)
    drop.apply_deletions([1, 2])
    assert events[:3] == ["unlink", "unlink", "sync new"]
    assert events[3] == "rename" and "sync cur" in events[4:]


class Crash(BaseException):
    """kill -9 in the middle: nothing after this point runs."""


def test_maildrop_crash_during_update_each_message_deleted_or_intact(
    tmp_path: Path, monkeypatch
) -> None:
    """A crash after the first of three unlinks: a new snapshot (a restarted server) shows
    each message either gone or intact, byte for byte, with its UIDL; never half."""
    store = MaildirStore(tmp_path, "mx.test")
    for i in range(4):
        deliver(store, message(i))
    before = contents(store)
    drop = store.open_maildrop(USER)
    real_unlink = os.unlink
    calls = []

    def dying_unlink(path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 1:
            raise Crash()
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", dying_unlink)
    with pytest.raises(Crash):
        drop.apply_deletions([1, 2, 3])
    monkeypatch.setattr(os, "unlink", real_unlink)
    after = contents(MaildirStore(tmp_path, "mx.test"))
    for uidl, data in after.items():
        assert before[uidl] == data  # intact
    assert set(after) == set(before) - {drop.messages[0].uidl}
    # the next session can finish the job
    again = MaildirStore(tmp_path, "mx.test").open_maildrop(USER)
    assert again.apply_deletions([1, 2]) == 2
    assert list(contents(store)) == [drop.messages[3].uidl]


def test_maildrop_unlink_error_others_removed_then_oserror(tmp_path: Path, monkeypatch) -> None:
    """An error removing one message does not stop the others; the caller gets OSError
    (POP3: "-ERR some deleted messages not removed") and that message is intact."""
    store = MaildirStore(tmp_path, "mx.test")
    for i in range(3):
        deliver(store, message(i))
    before = contents(store)
    drop = store.open_maildrop(USER)
    real_unlink = os.unlink
    stuck = drop.messages[1].key

    def failing_unlink(path, *args, **kwargs):
        if stuck in str(path):
            raise PermissionError(13, "Permission denied")
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", failing_unlink)
    with pytest.raises(OSError, match="1 message"):
        drop.apply_deletions([1, 2, 3])
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert contents(store) == {drop.messages[1].uidl: before[drop.messages[1].uidl]}


def test_maildrop_deleting_message_expunged_elsewhere_not_an_error(tmp_path: Path) -> None:
    """A message someone else (IMAP) expunged after the snapshot: deleting it is fine and
    not counted; opening it is FileNotFoundError."""
    store = MaildirStore(tmp_path, "mx.test")
    for i in range(3):
        deliver(store, message(i))
    drop = store.open_maildrop(USER)
    store.expunge(USER, "INBOX", [drop.messages[0].key])
    with pytest.raises(FileNotFoundError):
        drop.open(1)
    assert drop.apply_deletions([1, 2]) == 1
    assert [m.uid for m in store.open_maildrop(USER).messages] == [3]


def test_maildrop_message_moved_by_imap_still_read_and_deleted(tmp_path: Path) -> None:
    """A message IMAP flagged after the snapshot (renamed into cur/) is still found by its
    key for RETR and for DELE."""
    store = MaildirStore(tmp_path, "mx.test")
    deliver(store, message(0))
    deliver(store, message(1))
    drop = store.open_maildrop(USER)
    store.set_flags(USER, "INBOX", drop.messages[0].key, frozenset({"\\Answered"}))
    with drop.open(1) as f:
        assert f.read() == message(0).encode()
    store.set_flags(USER, "INBOX", drop.messages[0].key, frozenset({"\\Flagged"}))
    assert drop.apply_deletions([1], retrieved=[2]) == 1
    assert [m.uid for m in store.open_maildrop(USER).messages] == [2]


def test_maildrop_read_lists_the_folder_once_however_many_moved(tmp_path: Path) -> None:
    """A window whose messages IMAP all renamed since the snapshot costs one listing of the
    folder, not one per message (it may be read on the reactor), and each is found."""
    store = MaildirStore(tmp_path, "mx.test")
    for i in range(6):
        deliver(store, message(i))
    drop = store.open_maildrop(USER)
    for m in drop.messages:
        store.set_flags(USER, "INBOX", m.key, frozenset({"\\Flagged"}))
    listings = []
    files = drop.maildir.files
    drop.maildir.files = lambda: (listings.append(1), files())[1]  # type: ignore[method-assign]
    got = drop.read(range(1, 7), 100_000)
    assert got == {i + 1: message(i).encode() for i in range(6)}
    assert listings == [1]
    assert drop.read(range(1, 7), 100_000) == got and listings == [1]  # found where they are


def test_maildrop_bad_number_refused_nothing_done(tmp_path: Path) -> None:
    """A number outside the snapshot is ValueError, and no message is touched."""
    store = MaildirStore(tmp_path, "mx.test")
    deliver(store, message(0))
    drop = store.open_maildrop(USER)
    for bad in (0, 2, -1):
        with pytest.raises(ValueError):
            drop.apply_deletions([1, bad])
        with pytest.raises(ValueError):
            drop.open(bad)
    assert len(store.open_maildrop(USER).messages) == 1
    assert os.listdir(maildir(tmp_path) / "cur") == []


def test_maildrop_read_several_whole_expunged_none_moved_found(tmp_path: Path) -> None:
    """read() gives each message's bytes by number (as open() does), None for one expunged
    meanwhile, finds one IMAP renamed into cur/, and reads at most limit + 1 octets."""
    store = MaildirStore(tmp_path, "mx.test")
    for i in range(4):
        deliver(store, message(i))
    drop = store.open_maildrop(USER)
    store.expunge(USER, "INBOX", [drop.messages[1].key])
    store.set_flags(USER, "INBOX", drop.messages[2].key, frozenset({"\\Flagged"}))
    got = drop.read([1, 2, 3, 4], 100_000)
    assert got == {
        1: message(0).encode(),
        2: None,
        3: message(2).encode(),
        4: message(3).encode(),
    }
    assert drop.read([4], 10) == {4: message(3).encode()[:11]}
    with pytest.raises(ValueError):
        drop.read([5], 10)
