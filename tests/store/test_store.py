"""The MailStore read side: folders, stable UIDs (dovecot-uidlist), flags, expunge, watchers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from appliance.interfaces import Mailbox
from appliance.store.flags import Keywords
from appliance.store.folder_ops import info_of
from appliance.store.store import MaildirStore, base_of
from appliance.store.uidlist import UidList, parse

USER = Mailbox("163.test", "user1")


def deliver(store: MaildirStore, text: str, mailbox: Mailbox = USER) -> str:
    return store.deliver(mailbox, iter([text.encode()]))


def test_store_list_messages_uids_in_arrival_order_and_sizes_exact(tmp_path: Path) -> None:
    """New messages get UIDs 1, 2, 3 in delivery order; size is the bytes reading gives."""
    store = MaildirStore(tmp_path, "mx.test")
    names = [deliver(store, f"message {i}\r\n" * (i + 1)) for i in range(3)]
    listing = store.list_messages(USER)
    assert [m.uid for m in listing.messages] == [1, 2, 3]
    assert [m.key for m in listing.messages] == [base_of(n) for n in names]
    assert listing.uidnext == 4
    for m in listing.messages:
        with store.open_message(USER, "INBOX", m.key) as f:
            assert len(f.read()) == m.size


def test_store_uids_stable_across_flag_changes_and_new_store_objects(tmp_path: Path) -> None:
    """Flags move a message to cur/ with ':2,' but its UID and UIDVALIDITY stay; a fresh
    store object (another session, a restart) sees the same numbers."""
    store = MaildirStore(tmp_path, "mx.test")
    for i in range(2):
        deliver(store, f"m{i}\r\n")
    first = store.list_messages(USER)
    key = first.messages[0].key
    store.set_flags(USER, "INBOX", key, frozenset({"\\Seen", "\\Flagged"}))
    again = MaildirStore(tmp_path, "mx.test").list_messages(USER)
    assert again.uidvalidity == first.uidvalidity
    assert [(m.uid, m.key) for m in again.messages] == [(m.uid, m.key) for m in first.messages]
    assert again.messages[0].flags == frozenset({"\\Seen", "\\Flagged"})
    assert again.messages[1].flags == frozenset()
    cur = list((tmp_path / "163.test" / "user1" / "Maildir" / "cur").iterdir())
    assert [p.name for p in cur] == [f"{key}:2,FS"]


def test_store_expunged_uid_never_reused(tmp_path: Path) -> None:
    """After an expunge the next message gets a new UID, not the freed one."""
    store = MaildirStore(tmp_path, "mx.test")
    deliver(store, "a\r\n")
    deliver(store, "b\r\n")
    listing = store.list_messages(USER)
    store.expunge(USER, "INBOX", [listing.messages[1].key, "no-such-key"])
    deliver(store, "c\r\n")
    assert [m.uid for m in store.list_messages(USER).messages] == [1, 3]


def test_store_open_expunged_message_file_not_found(tmp_path: Path) -> None:
    """A message expunged by another session is FileNotFoundError, not another message."""
    store = MaildirStore(tmp_path, "mx.test")
    deliver(store, "a\r\n")
    (m,) = store.list_messages(USER).messages
    store.expunge(USER, "INBOX", [m.key])
    with pytest.raises(FileNotFoundError):
        store.open_message(USER, "INBOX", m.key)


def test_store_folders_created_listed_and_separate(tmp_path: Path) -> None:
    """Maildir++ folders: 'Archive/2026' is .Archive.2026; each folder has its own UIDs."""
    store = MaildirStore(tmp_path, "mx.test")
    deliver(store, "inbox\r\n")
    store.create_folder(USER, "Sent")
    store.create_folder(USER, "Archive/2026")
    assert store.folders(USER) == ["INBOX", "Archive/2026", "Sent"]
    assert (tmp_path / "163.test" / "user1" / "Maildir" / ".Archive.2026" / "new").is_dir()
    assert store.list_messages(USER, "Sent").messages == ()
    with pytest.raises(ValueError):
        store.folder(USER, "../escape")


def test_store_unsafe_mailbox_refused(tmp_path: Path) -> None:
    """A mailbox name that would leave the mail root is refused before any file is made."""
    store = MaildirStore(tmp_path, "mx.test")
    with pytest.raises(ValueError):
        store.check(Mailbox("163.test", "../x"))
    assert list(tmp_path.iterdir()) == []


def test_store_announce_reaches_watchers_until_stopped(tmp_path: Path, logged_errors) -> None:
    """watch() callbacks hear announce(); a failing one does not stop the others."""
    store = MaildirStore(tmp_path, "mx.test")
    heard: list[Mailbox] = []

    def broken(mailbox: Mailbox) -> None:
        raise RuntimeError("watcher bug")

    stop = store.watch(heard.append)
    store.watch(broken)
    store.announce(USER)
    stop()
    store.announce(USER)
    assert heard == [USER]
    assert len(logged_errors) == 2  # the broken watcher, once per announce
    logged_errors.clear()


def test_store_announce_failing_watcher_is_logged(tmp_path: Path, logged_errors) -> None:
    """A watcher that raises is logged as a failure (and the autouse check sees it)."""
    store = MaildirStore(tmp_path, "mx.test")
    store.watch(lambda mailbox: 1 / 0)
    store.announce(USER)
    assert len(logged_errors) == 1
    logged_errors.clear()


def test_uidlist_concurrent_updates_agree(tmp_path: Path) -> None:
    """Threads numbering the same folder at once never give one name two UIDs."""
    store = MaildirStore(tmp_path, "mx.test")
    for i in range(20):
        deliver(store, f"{i}\r\n")
    results: list[dict[str, int]] = []

    def session() -> None:
        results.append({m.key: m.uid for m in store.list_messages(USER).messages})

    threads = [threading.Thread(target=session) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 8
    assert all(r == results[0] for r in results)
    assert sorted(results[0].values()) == list(range(1, 21))


def test_uidlist_file_in_dovecot_v3_format(tmp_path: Path) -> None:
    """The file reads '3 V<validity> N<next>' then '<uid> :<name>' lines; new names are
    numbered in delivery order, whatever order they are given in."""
    folder = tmp_path / "Maildir"
    folder.mkdir()
    first, second = "1700000001.M5P1Q1.h", "1700000001.M10P1Q2.h"  # (M10 > M5 as numbers)
    state = UidList(folder).update([second, first])
    text = (folder / "dovecot-uidlist").read_text()
    assert text.splitlines() == [f"3 V{state.uidvalidity} N3", f"1 :{first}", f"2 :{second}"]
    again = parse(text)
    assert again is not None and again.uids == {first: 1, second: 2} and again.next_uid == 3


def test_uidlist_torn_line_renumbers_only_that_message(tmp_path: Path) -> None:
    """A garbled line loses that name's UID (it gets a new one), the others keep theirs."""
    folder = tmp_path / "Maildir"
    folder.mkdir()
    (folder / "dovecot-uidlist").write_text("3 V7 N3\n1 :a\n2 :b\ngarb")
    state = UidList(folder).update(["a", "b", "garb"])
    assert state.uidvalidity == 7
    assert state.uids == {"a": 1, "b": 2, "garb": 3}


def test_flags_of_reads_maildir_info(tmp_path) -> None:
    """':2,DFRST' are Draft, Flagged, Answered, Seen, Deleted; a keyword letter the folder's
    dovecot-keywords does not define is ignored."""
    keywords = Keywords(tmp_path)
    assert keywords.flags_of(info_of("x:2,DFRSTz")) == frozenset(
        {"\\Draft", "\\Flagged", "\\Answered", "\\Seen", "\\Deleted"}
    )
    assert keywords.flags_of(info_of("x,S=5")) == frozenset()
    (tmp_path / "dovecot-keywords").write_text("0 $Forwarded\n25 Junk\n")
    assert keywords.flags_of("Sa") == frozenset({"\\Seen", "$Forwarded"})
    assert keywords.flags_of("z") == frozenset({"Junk"})
    assert keywords.letters_of(frozenset({"$forwarded", "\\seen", "New"})) == "Sab"
    assert (tmp_path / "dovecot-keywords").read_text() == "0 $Forwarded\n1 New\n25 Junk\n"


def test_store_unchanged_folder_answered_from_its_last_scan(tmp_path, monkeypatch) -> None:
    """A folder whose new/, cur/ and uid list are unchanged is not listed again; any
    delivery, rename (flags, by anyone) or expunge is seen at the next call; a folder
    changed within the last FRESH_NS is always scanned."""
    import os

    from appliance.interfaces import Mailbox
    from appliance.store import scan as scan_module
    from appliance.store.store import MaildirStore

    monkeypatch.setattr(scan_module, "FRESH_NS", 0)
    st = MaildirStore(tmp_path, "mx.test")
    mb = Mailbox("163.test", "u")
    scans: list[int] = []
    real = st.scanner.rescan
    monkeypatch.setattr(st.scanner, "rescan", lambda md, prev: scans.append(1) or real(md, prev))
    st.deliver(mb, iter([b"Subject: 1\r\n\r\nx\r\n"]))
    first = st.list_messages(mb)
    assert st.list_messages(mb) is first and len(scans) == 1
    st.deliver(mb, iter([b"Subject: 2\r\n\r\nx\r\n"]))
    second = st.list_messages(mb)
    assert len(second.messages) == 2 and len(scans) == 2
    md = st.maildir(mb)
    name = os.listdir(md.new)[0]  # another process flags a message: a rename in the tree
    os.rename(md.new / name, md.cur / (name + ":2,S"))
    third = st.list_messages(mb)
    assert len(scans) == 3 and any("\\Seen" in m.flags for m in third.messages)
    st.expunge(mb, "INBOX", [third.messages[0].key])
    assert len(st.list_messages(mb).messages) == 1 and len(scans) == 4
    assert len(st.open_maildrop(mb).messages) == 1 and len(scans) == 4  # shared with POP3
    monkeypatch.setattr(scan_module, "FRESH_NS", 10**18)  # everything counts as just changed
    st.list_messages(mb)
    st.list_messages(mb)
    assert len(scans) == 6


def test_scan_after_flag_changes_keeps_uids_and_unchanged_messages(tmp_path) -> None:
    """A look after only renames (flags) reuses the UIDs without touching the uid list,
    and the StoredMessage objects of messages whose names did not change; a look when
    nothing changed at all returns the very same listing."""
    import os

    from appliance.interfaces import Mailbox
    from appliance.store.store import MaildirStore

    st = MaildirStore(tmp_path, "mx.test")
    mb = Mailbox("163.test", "u")
    for i in range(3):
        st.deliver(mb, iter([f"Subject: {i}\r\n\r\nx\r\n".encode()]))
    first = st.list_messages(mb)
    uidlist = st.maildir(mb).path / "dovecot-uidlist"
    before = os.stat(uidlist).st_mtime_ns
    assert st.list_messages(mb) is first  # (within FRESH_NS: listed again, nothing changed)
    st.change_flags(mb, "INBOX", [first.messages[1].key], frozenset({"\\Seen"}), "+")
    second = st.list_messages(mb)
    assert [m.uid for m in second.messages] == [1, 2, 3]
    assert second.messages[1].flags == {"\\Seen"}
    assert second.messages[0] is first.messages[0] and second.messages[2] is first.messages[2]
    assert os.stat(uidlist).st_mtime_ns == before  # nothing written
