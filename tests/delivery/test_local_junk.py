"""Local delivery into Junk: a message our filters marked (DMARC quarantine, SpamAssassin's
X-Spam-Flag: YES) goes to the mailbox's Junk folder, made for a user who never had one; an
unmarked one, or a mark below the header, stays in the INBOX. Both delivery paths (the
streaming one before the 250, the spool's copies after it), on a real Maildir."""

from __future__ import annotations

import pytest
from twisted.internet import defer

from appliance.delivery.local import LocalDelivery, folder_for
from appliance.interfaces import Envelope, Mailbox, QueuedMessage, Recipient
from appliance.store.store import MaildirStore

BOX = Mailbox.of("user1@example.test")
SPAM = b"X-Spam-Flag: YES\r\nSubject: buy now\r\n\r\nbody\r\n"
QUARANTINED = b"X-DMARC-Quarantine: example.org\r\nSubject: hi\r\n\r\nbody\r\n"
HAM = b"Subject: hi\r\n\r\nX-Spam-Flag: YES is what the body says\r\n"


class InlinePool:
    def run(self, f, *args):
        return defer.maybeDeferred(f, *args)


def queued() -> QueuedMessage:
    env = Envelope("a@example.org", (Recipient(BOX.address),), "192.0.2.1", "client.test")
    return QueuedMessage("Q1", env, 0.0, 0)


@pytest.fixture
def target(tmp_path) -> LocalDelivery:
    return LocalDelivery(MaildirStore(tmp_path, "mx.test"), InlinePool())  # type: ignore[arg-type]


def where(target: LocalDelivery) -> dict[str, int]:
    store = target.store
    return {f: len(store.list_messages(BOX, f).messages) for f in store.folders(BOX)}


def test_folder_for_reads_only_the_header() -> None:
    assert folder_for(SPAM) == "Junk" and folder_for(QUARANTINED) == "Junk"
    assert folder_for(HAM) == "INBOX" and folder_for(b"X-Spam-Flag: NO\r\n\r\n") == "INBOX"


@pytest.mark.parametrize("data", [SPAM, QUARANTINED])
def test_streamed_marked_message_lands_in_junk(target, data) -> None:
    stream = target.start_streaming(queued(), BOX.address)
    stream.write(data)
    results: list = []
    stream.commit().addCallback(results.append)
    assert results and results[0].outcome.name == "SENT"
    counts = where(target)
    assert counts["Junk"] == 1 and counts["INBOX"] == 0 and "Sent" in counts  # made for it


@pytest.mark.parametrize("data", [SPAM, HAM])
def test_streamed_message_given_to_commit_goes_where_its_header_says(target, data) -> None:
    """The text handed to commit() (the filters' buffer) counts as much as written text: a
    mark in its header sends it to Junk, one below the header does not."""
    stream = target.start_streaming(queued(), BOX.address)
    stream.write(b"X-Spam-Score: 0.1\r\n")  # what our filters add in front
    results: list = []
    stream.commit([data[:5], data[5:]]).addCallback(results.append)
    assert results and results[0].outcome.name == "SENT"
    folder = "Junk" if data is SPAM else "INBOX"
    (stored,) = target.store.list_messages(BOX, folder).messages
    text = target.store.read_messages(BOX, folder, [stored.key], 10_000)[stored.key]
    assert text is not None and text.endswith(b"X-Spam-Score: 0.1\r\n" + data)


def test_spooled_copies_go_where_their_header_says(target, tmp_path) -> None:
    from appliance.queue.files import SpooledBody  # what the spool hands to deliveries

    for i, data in enumerate((SPAM, HAM)):
        spooled = tmp_path / f"spooled{i}"
        spooled.write_bytes(data)
        delivery = target.start(queued())
        delivery.add_recipient(BOX.address)
        delivery.body(SpooledBody(str(spooled), len(data)))  # read from the file
        results: list = []
        delivery.commit().addCallback(results.append)
        assert results and results[0][0].outcome.name == "SENT"
    counts = where(target)
    assert counts["Junk"] == 1 and counts["INBOX"] == 1
    (junk,) = target.store.list_messages(BOX, "Junk").messages
    data = target.store.read_messages(BOX, "Junk", [junk.key], 10_000)[junk.key]
    assert data is not None and data.startswith(b"Return-Path: <a@example.org>\r\n")
    assert data.endswith(SPAM)
