"""The store's IMAP side on a real Maildir: folders, subscriptions, UID validity, keywords,
APPEND, COPY, flag changes against the current name, \\Recent."""

from __future__ import annotations

import os

import pytest

from appliance.interfaces import Mailbox
from appliance.store.store import MaildirStore

BOX = Mailbox.of("user1@example.test")


@pytest.fixture
def store(tmp_path) -> MaildirStore:
    return MaildirStore(tmp_path / "mail", "mail.example.test")


def test_folders_create_rename_delete_and_children(store) -> None:
    store.create_folder(BOX, "Work")
    store.create_folder(BOX, "Work/2026")
    with pytest.raises(FileExistsError):
        store.create_folder(BOX, "Work")
    with pytest.raises(ValueError):
        store.create_folder(BOX, "bad.name")
    assert store.folders(BOX) == ["INBOX", "Work", "Work/2026"]
    store.set_subscribed(BOX, "Work/2026", True)
    store.rename_folder(BOX, "Work", "Old")
    assert store.folders(BOX) == ["INBOX", "Old", "Old/2026"]
    assert store.subscriptions(BOX) == ["Old/2026"]
    store.delete_folder(BOX, "Old/2026")
    assert store.subscriptions(BOX) == ["Old/2026"]  # RFC 3501: DELETE does not unsubscribe
    with pytest.raises(FileNotFoundError):
        store.delete_folder(BOX, "Old/2026")
    with pytest.raises(FileNotFoundError):
        store.list_messages(BOX, "Old/2026")
    with pytest.raises(ValueError):
        store.delete_folder(BOX, "INBOX")
    store.create_folder(BOX, "P")
    store.create_folder(BOX, "P/Q")
    store.delete_folder(BOX, "P")  # its child stays: P lives on as \Noselect
    assert store.folders(BOX) == ["INBOX", "Old", "P/Q"]


def test_uidvalidity_differs_for_folders_made_in_one_second(store) -> None:
    store.create_folder(BOX, "A")
    store.create_folder(BOX, "B")
    a = store.list_messages(BOX, "A").uidvalidity
    b = store.list_messages(BOX, "B").uidvalidity
    store.delete_folder(BOX, "A")
    store.create_folder(BOX, "A")
    again = store.list_messages(BOX, "A").uidvalidity
    assert len({a, b, again}) == 3


def test_special_use_folders_made_once(store) -> None:
    special = store.special_use(BOX)
    assert special["Sent"] == "\\Sent" and set(special) == {
        "Drafts", "Sent", "Trash", "Junk", "Archive"
    }  # fmt: skip
    assert set(store.folders(BOX)) >= {"Sent", "Drafts", "Trash", "Junk", "Archive"}
    assert "Sent" in store.subscriptions(BOX)
    store.delete_folder(BOX, "Junk")
    store.special_use(BOX)
    assert "Junk" not in store.folders(BOX)  # made for a new user only, not forced back


def test_add_message_flags_keywords_and_internaldate(store) -> None:
    validity, uid = store.add_message(BOX, "INBOX", b"Subject: x\r\n\r\nhi\r\n",
                                      frozenset({"\\Seen", "$Label1"}), 837570265.0)  # fmt: skip
    listing = store.list_messages(BOX)
    assert (listing.uidvalidity, uid) == (validity, 1)
    m = listing.messages[0]
    assert m.flags == {"\\Seen", "$Label1"} and m.received == 837570265.0
    assert store.keywords(BOX, "INBOX") == ["$Label1"]
    assert store.read_messages(BOX, "INBOX", [m.key], 100) == {m.key: b"Subject: x\r\n\r\nhi\r\n"}
    with pytest.raises(FileNotFoundError):
        store.add_message(BOX, "Nowhere", b"x", frozenset())


def test_change_flags_applies_to_the_current_name(store) -> None:
    store.add_message(BOX, "INBOX", b"x\r\n", frozenset())
    key = store.list_messages(BOX).messages[0].key
    assert store.change_flags(BOX, "INBOX", [key], frozenset({"\\Answered"}), "+") == {
        key: {"\\Answered"}
    }
    # another session, still holding the listing from before, removes \Seen: \Answered stays
    assert store.change_flags(BOX, "INBOX", [key], frozenset({"\\Seen"}), "-") == {
        key: {"\\Answered"}
    }
    store.change_flags(BOX, "INBOX", [key], frozenset({"\\Flagged"}), "=")
    assert store.list_messages(BOX).messages[0].flags == {"\\Flagged"}
    store.expunge(BOX, "INBOX", [key])
    assert store.change_flags(BOX, "INBOX", [key], frozenset({"\\Seen"}), "+") == {}


def test_copy_keeps_flags_and_links_the_file(store) -> None:
    store.create_folder(BOX, "Archive")
    store.add_message(BOX, "INBOX", b"one\r\n", frozenset({"\\Flagged", "Todo"}))
    store.add_message(BOX, "INBOX", b"two\r\n", frozenset())
    keys = [m.key for m in store.list_messages(BOX).messages]
    validity, pairs = store.copy_messages(BOX, "INBOX", keys, "Archive")
    assert validity == store.list_messages(BOX, "Archive").uidvalidity
    assert [uid for _, uid in pairs] == [1, 2]
    copied = store.list_messages(BOX, "Archive").messages
    assert copied[0].flags == {"\\Flagged", "Todo"} and copied[1].flags == frozenset()
    src = store.folder(BOX, "INBOX").cur
    assert any(os.stat(p).st_nlink == 2 for p in src.iterdir())


def test_rename_inbox_moves_its_messages(store) -> None:
    store.add_message(BOX, "INBOX", b"one\r\n", frozenset({"\\Seen"}))
    store.rename_folder(BOX, "INBOX", "Old")
    assert store.list_messages(BOX).messages == ()
    assert [m.flags for m in store.list_messages(BOX, "Old").messages] == [{"\\Seen"}]


def test_claim_recent(store) -> None:
    store.deliver(BOX, iter([b"a\r\n"]))
    assert store.claim_recent(BOX, "INBOX", False) == 1
    assert store.claim_recent(BOX, "INBOX", True) == 1
    assert store.claim_recent(BOX, "INBOX", False) == 2  # claimed up to uidnext
    store.deliver(BOX, iter([b"b\r\n"]))
    assert store.claim_recent(BOX, "INBOX", True) == 2


def test_peek_never_writes_and_gives_none_when_messages_came(store) -> None:
    """peek_messages (for QuickCalls) answers from the last look or a listing of renames
    only; new messages, which the uid list must number, make it None."""
    assert store.peek_messages(BOX) is None  # no look yet: only list_messages may make one
    store.add_message(BOX, "INBOX", b"one\r\n", frozenset())
    listing = store.list_messages(BOX)
    assert store.peek_messages(BOX) is listing
    key = listing.messages[0].key
    store.change_flags(BOX, "INBOX", [key], frozenset({"\\Seen"}), "+")
    peeked = store.peek_messages(BOX)
    assert peeked is not None and peeked.messages[0].flags == {"\\Seen"}
    uidlist = store.maildir(BOX).path / "dovecot-uidlist"
    before = uidlist.read_bytes()
    store.deliver(BOX, iter([b"two\r\n"]))
    assert store.peek_messages(BOX) is None
    assert uidlist.read_bytes() == before
    assert len(store.list_messages(BOX).messages) == 2


def test_peek_refuses_to_list_a_big_changed_folder(store, monkeypatch) -> None:
    """A look that would list a folder of more than PEEK_LIMIT messages is not a quick call:
    peek_messages says None (the caller asks list_messages in a worker thread)."""
    from appliance.store import scan

    monkeypatch.setattr(scan, "PEEK_LIMIT", 2)
    for i in range(3):
        store.add_message(BOX, "INBOX", f"m{i}\r\n".encode(), frozenset())
    listing = store.list_messages(BOX)
    store.change_flags(BOX, "INBOX", [listing.messages[0].key], frozenset({"\\Seen"}), "+")
    assert store.peek_messages(BOX) is None
    assert store.list_messages(BOX).messages[0].flags == {"\\Seen"}
