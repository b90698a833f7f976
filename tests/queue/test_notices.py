"""DSNs of the queue: who gets which notice, what it says, null-sender rules, and a notice
that cannot be queued. Real queue, store, policy and notices; the relay target is scripted
(see test_scheduler.py for the rig)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from appliance.interfaces import Outcome
from appliance.queue.envelope import read_queue_entry
from appliance.queue.notices import DOUBLE_BOUNCE
from appliance.queue.state import DeliveryState
from tests.queue.test_scheduler import (
    BODY,
    HOST,
    POSTMASTER,
    SENDER,
    SENT_REPLY,
    Rigs,
    envelope,
    files_under,
    local,
    parse,
    remote,
    report,
    sent_result,
    status_lines,
    wait_until,
)


@pytest.fixture
def rigs() -> Iterator[Rigs]:
    made = Rigs()
    yield made
    pytest_twisted.blockon(made.stop_all())


def notice_lines(rig: Any) -> list[str]:
    return [line for line in rig.lines if "notification: " in line]


# -- failures ---------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_notices_bounce_to_local_sender_lists_only_failed(tmp_path, rigs):
    """A bounced recipient: a failure DSN in the local sender's Maildir, from the null sender,
    naming only the failed recipient with its ORCPT, status and the reply, the original
    returned; the entry removed."""
    rig = yield rigs(tmp_path)
    rig.target.plan("a@remote.test", Outcome.BOUNCED)
    env = envelope(remote("a@remote.test", orcpt="rfc822;A@remote.test"), remote("b@remote.test"))
    qid = yield rig.send(env)
    yield rig.settled(1)
    assert rig.queue_files() == []
    (raw,) = rig.mail(SENDER)
    assert raw.startswith(b"Return-Path: <>\r\nDelivered-To: user1@163.test\r\n")
    dsn = report(raw)
    m = dsn.message
    assert str(m["From"]) == f"Mail Delivery System <MAILER-DAEMON@{HOST}>"
    assert m["To"].addresses[0].addr_spec == SENDER
    assert str(m["Subject"]) == "Undelivered Mail Returned to Sender"
    assert str(m["Auto-Submitted"]) == "auto-replied"
    assert str(dsn.per_message["Reporting-MTA"]) == f"dns; {HOST}"
    assert str(dsn.per_message["X-Postfix-Queue-ID"]) == qid
    (block,) = dsn.per_recipient
    reply = "550 5.1.1 <a@remote.test>: Recipient address rejected: User unknown"
    assert str(block["Final-Recipient"]) == "rfc822; a@remote.test"
    assert str(block["Original-Recipient"]) == "rfc822; A@remote.test"
    assert str(block["Action"]) == "failed"
    assert str(block["Status"]) == "5.1.1"
    assert str(block["Remote-MTA"]) == "dns; mx.remote.test"
    assert str(block["Diagnostic-Code"]) == f"smtp; {reply}"
    assert f"<a@remote.test>: host mx.remote.test said: {reply}" in dsn.text
    assert "b@remote.test" not in dsn.text
    assert dsn.returned.get_content_type() == "message/rfc822"  # RET default for failures
    assert dsn.returned.get_payload()[0]["Subject"] == "scheduled test"
    (bounced,) = [line for line in status_lines(rig, qid) if "a@remote.test" in line]
    assert "dsn=5.1.1, status=bounced (host mx.remote.test[127.0.0.1] said: 550 5.1.1" in bounced
    (line,) = notice_lines(rig)
    assert line.startswith(f"{qid}: sender non-delivery notification: ")


@pytest_twisted.inlineCallbacks
def test_notices_notify_never_bounce_without_dsn(tmp_path, rigs):
    """NOTIFY=NEVER: the recipient is bounced and done, no notice at all."""
    rig = yield rigs(tmp_path)
    rig.target.plan("a@remote.test", Outcome.BOUNCED)
    qid = yield rig.send(envelope(remote("a@remote.test", notify="NEVER")))
    yield rig.settled(1)
    assert rig.queue_files() == []
    assert rig.mail(SENDER) == []
    assert notice_lines(rig) == []
    assert "status=bounced" in status_lines(rig, qid)[0]
    assert len(rig.target.attempts) == 1


@pytest_twisted.inlineCallbacks
def test_notices_ret_hdrs_returns_headers_only(tmp_path, rigs):
    """RET=HDRS: the failure notice carries the original's header section only."""
    rig = yield rigs(tmp_path)
    rig.target.plan("a@remote.test", Outcome.BOUNCED)
    yield rig.send(envelope(remote("a@remote.test"), ret="HDRS"))
    yield rig.settled(1)
    (raw,) = rig.mail(SENDER)
    dsn = report(raw)
    assert dsn.returned.get_content_type() == "text/rfc822-headers"
    assert b"the body." not in raw


# -- success ----------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_notices_success_relayed_when_next_hop_did_not_forward(tmp_path, rigs):
    """NOTIFY=SUCCESS, SENT to a next hop that did not take the request along: a 'relayed'
    DSN to the sender."""
    rig = yield rigs(tmp_path)
    yield rig.send(envelope(remote("a@remote.test", notify="SUCCESS")))
    yield rig.settled(1)
    assert rig.queue_files() == []
    (raw,) = rig.mail(SENDER)
    dsn = report(raw)
    assert str(dsn.message["Subject"]) == "Successful Mail Delivery Report"
    assert dsn.actions == ["relayed"]
    (block,) = dsn.per_recipient
    assert str(block["Status"]) == "2.0.0"
    assert str(block["Diagnostic-Code"]) == f"smtp; {SENT_REPLY}"
    assert dsn.returned.get_content_type() == "text/rfc822-headers"
    (line,) = notice_lines(rig)
    assert "sender delivery status notification" in line


@pytest_twisted.inlineCallbacks
def test_notices_success_forwarded_by_next_hop_no_dsn(tmp_path, rigs):
    """NOTIFY=SUCCESS taken along by the next hop (dsn_forwarded): it reports, we do not."""
    rig = yield rigs(tmp_path)
    rig.target.plan("a@remote.test", sent_result("a@remote.test", dsn_forwarded=True))
    yield rig.send(envelope(remote("a@remote.test", notify="SUCCESS")))
    yield rig.settled(1)
    assert rig.queue_files() == []
    assert rig.mail(SENDER) == []
    assert notice_lines(rig) == []


@pytest_twisted.inlineCallbacks
def test_notices_local_delivery_notify_success_delivered_dsn(tmp_path, rigs):
    """A local copy whose recipient asked NOTIFY=SUCCESS: a 'delivered' DSN to the sender."""
    rig = yield rigs(tmp_path)
    qid = yield rig.send(envelope(local("user2@163.test", notify="SUCCESS,FAILURE")))
    yield wait_until(lambda: len(rig.mail(SENDER)) == 1)
    yield rig.queue.idle()
    (copy,) = rig.mail("user2@163.test")
    assert copy.endswith(BODY)
    dsn = report(rig.mail(SENDER)[0])
    assert dsn.actions == ["delivered"]
    assert dsn.finals == ["rfc822; user2@163.test"]
    assert str(dsn.per_message["X-Postfix-Queue-ID"]) == qid
    assert rig.queue_files() == []
    assert rig.target.attempts == []


# -- the null sender --------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_notices_failed_bounce_goes_to_postmaster_as_double_bounce(tmp_path, rigs):
    """A message from the null sender that fails: the notice goes to the postmaster."""
    rig = yield rigs(tmp_path)
    rig.target.plan("a@remote.test", Outcome.BOUNCED)
    yield rig.send(envelope(remote("a@remote.test"), mail_from="", notice="bounce"))
    yield rig.settled(1)
    assert rig.queue_files() == []
    (raw,) = rig.mail(POSTMASTER)
    assert raw.startswith(b"Return-Path: <>\r\n")
    dsn = report(raw)
    assert dsn.message["To"].addresses[0].addr_spec == POSTMASTER
    assert dsn.actions == ["failed"]
    assert rig.mail(SENDER) == []


@pytest_twisted.inlineCallbacks
def test_notices_bounce_chain_double_bounce_failing_is_dropped(tmp_path, rigs):
    """A remote sender's bounce is relayed; when it bounces a double bounce (notice
    "double-bounce" in its .env) goes to the postmaster; when that fails too it is dropped:
    no further notice, every file gone."""
    rig = yield rigs(tmp_path, postmaster="postmaster@admin.test")
    rig.target.plan("a@remote.test", Outcome.BOUNCED)
    rig.target.plan("sender@remote.test", Outcome.BOUNCED)
    rig.target.plan("postmaster@admin.test", Outcome.DEFERRED, Outcome.BOUNCED)
    qid = yield rig.send(envelope(remote("a@remote.test"), mail_from="sender@remote.test"))
    yield rig.settled(3)
    first, bounce, double = rig.target.attempts
    assert first.queue_id == qid
    assert bounce.recipients == ["sender@remote.test"]
    assert bounce.envelope.mail_from == "" and bounce.envelope.notice == "bounce"
    assert report(bounce.body).finals == ["rfc822; a@remote.test"]
    assert double.recipients == ["postmaster@admin.test"]
    assert files_under(rig.queue.queue_dir) == [
        f"deferred/{double.queue_id}",
        f"deferred/{double.queue_id}.env",
        f"deferred/{double.queue_id}.state",
    ]
    stored = read_queue_entry(rig.deferred / f"{double.queue_id}.env").envelope
    assert stored.notice == DOUBLE_BOUNCE and stored.mail_from == ""
    dsn = report(double.body)
    assert dsn.message["To"].addresses[0].addr_spec == "postmaster@admin.test"
    assert dsn.finals == ["rfc822; sender@remote.test"]
    # the returned message is the bounce itself
    assert dsn.returned.get_payload()[0]["Subject"] == "Undelivered Mail Returned to Sender"

    assert (yield rig.scheduler.flush(double.queue_id)) == 1
    yield rig.settled(4)
    assert rig.queue_files() == []
    assert (yield rig.scheduler.flush(None)) == 0
    yield rig.queue.idle()
    assert len(rig.target.attempts) == 4
    assert len(notice_lines(rig)) == 2  # the bounce and the double bounce, nothing more
    assert rig.mail(POSTMASTER) == []
    assert status_lines(rig, double.queue_id)[-1].split("status=")[1].startswith("bounced")


@pytest_twisted.inlineCallbacks
def test_notices_null_sender_never_notified(tmp_path, rigs):
    """From the null sender, neither a delay nor a success notice is made, whatever NOTIFY
    says (there is nobody to send it to)."""
    rig = yield rigs(tmp_path, schedule=(0.05,), delay_warning=10.0)
    rig.target.plan("a@remote.test", Outcome.DEFERRED, Outcome.SENT)
    qid = yield rig.send(
        envelope(
            remote("a@remote.test", notify="SUCCESS,DELAY,FAILURE"),
            mail_from="",
            notice="bounce",
            age=100.0,
        )
    )
    yield rig.settled(2)
    assert [a.queue_id for a in rig.target.attempts] == [qid, qid]
    assert rig.queue_files() == []
    assert files_under(rig.store.mail_root) == []
    assert notice_lines(rig) == []


@pytest_twisted.inlineCallbacks
def test_notices_refused_sender_redirected_to_postmaster(tmp_path, rigs):
    """A sender the policy refuses (no such local user): the notice goes to the postmaster,
    addressed to the postmaster."""
    rig = yield rigs(tmp_path)
    rig.target.plan("a@remote.test", Outcome.BOUNCED)
    yield rig.send(envelope(remote("a@remote.test"), mail_from="ghost@163.test"))
    yield rig.settled(1)
    assert rig.queue_files() == []
    (raw,) = rig.mail(POSTMASTER)
    assert parse(raw)["To"].addresses[0].addr_spec == POSTMASTER
    assert report(raw).finals == ["rfc822; a@remote.test"]


# -- a notice that cannot be queued -----------------------------------------------------------


def block_mailbox(rig: Any, address: str) -> Any:
    """Make address's mailbox unwritable (a file where its folder goes); returns the undo."""
    localpart, domain = address.split("@")
    blocker = rig.store.mail_root / domain / localpart
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"not a directory")
    return blocker.unlink


@pytest_twisted.inlineCallbacks
def test_notices_bounce_not_queued_recipient_stays_deferred(tmp_path, rigs, log_lines):
    """The failure notice cannot be written: the recipient is not recorded as bounced but
    stays deferred and is tried again after the wait; then the notice goes out."""
    rig = yield rigs(tmp_path, schedule=(0.1,))
    rig.target.plan("a@remote.test", Outcome.BOUNCED)
    unblock = block_mailbox(rig, SENDER)
    seen: list[tuple[DeliveryState, list[str]]] = []

    def on_start(message: Any) -> None:
        seen.append((rig.state(message.queue_id), rig.queue_files()))
        if len(seen) == 2:
            unblock()

    rig.target.on_start = on_start
    qid = yield rig.send(envelope(remote("a@remote.test")))
    yield rig.settled(2)
    state, files = seen[1]  # as the retry found it
    assert state.rcpts["a@remote.test"].status == "deferred"
    assert state.attempts == 1
    assert files == [f"deferred/{qid}", f"deferred/{qid}.env", f"deferred/{qid}.state"]
    first, second = rig.target.attempts
    assert second.at - first.at >= 0.1
    assert any("cannot queue the non-delivery notice" in line for line in log_lines)
    (raw,) = rig.mail(SENDER)
    assert report(raw).actions == ["failed"]
    assert rig.queue_files() == []


@pytest_twisted.inlineCallbacks
def test_notices_expired_notice_not_queued_retried_after_wait(tmp_path, rigs):
    """An expired message whose notice cannot be queued waits the schedule before trying
    again (no busy loop on a message past its lifetime)."""
    rig = yield rigs(tmp_path, schedule=(0.2,), max_lifetime=500.0)
    rig.target.plan("a@remote.test", Outcome.DEFERRED)
    unblock = block_mailbox(rig, SENDER)
    rig.target.on_start = lambda m: len(rig.target.attempts) == 1 and unblock()
    qid = yield rig.send(envelope(remote("a@remote.test"), age=1000.0))
    yield rig.settled(2)
    first, second = rig.target.of(qid)
    assert second.at - first.at >= 0.2
    assert len(rig.target.attempts) == 2
    (raw,) = rig.mail(SENDER)
    assert report(raw).actions == ["failed"]
    assert rig.queue_files() == []


@pytest_twisted.inlineCallbacks
def test_notices_queue_disk_full_for_remote_sender_retried(tmp_path, rigs, monkeypatch):
    """The bounce to a remote sender hits a full disk in the queue: the recipient stays
    deferred; on the next try the bounce is queued and relayed."""
    rig = yield rigs(tmp_path, schedule=(60.0,))
    rig.target.plan("a@remote.test", Outcome.BOUNCED)
    real_commit = rig.queue.files.commit
    full = [True]

    def commit(fd: int, data: bytes, entry: Any, target: str) -> None:
        if full[0] and entry.envelope.notice:
            os.close(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_commit(fd, data, entry, target)

    monkeypatch.setattr(rig.queue.files, "commit", commit)
    qid = yield rig.send(envelope(remote("a@remote.test"), mail_from="sender@remote.test"))
    yield rig.settled(1)
    assert rig.state(qid).rcpts["a@remote.test"].status == "deferred"
    assert [
        n for n in files_under(rig.queue.queue_dir) if not n.startswith(f"deferred/{qid}")
    ] == []
    full[0] = False
    assert (yield rig.scheduler.flush(qid)) == 1
    yield rig.settled(3)  # the retry, then the bounce relayed
    assert rig.target.attempts[2].recipients == ["sender@remote.test"]
    assert rig.queue_files() == []
