"""Cut-through: a message for one remote recipient, whole in memory, whose sender waits
(commit(rest) with rest as bytes), is relayed before it is ever spooled.

The rig of test_scheduler.py: a real Queue, Maildir store, policy and notices; the relay
target scripted. What is checked: when the queue relays at once (and with which wait), that
a sent message leaves no file and the maillog lines of a queued-then-sent message in their
order, and that anything but SENT spools the message and the usual attempts follow (a
deferral retried, a refusal bounced to the sender).
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer

from appliance.interfaces import Outcome
from tests.queue.test_scheduler import (  # noqa: F401 (the rigs fixture)
    BODY,
    HOP,
    SENDER,
    SENT_REPLY,
    envelope,
    local,
    remote,
    report,
    rigs_fixture,
    status_lines,
    wait_until,
)

WAIT = 5.0


def commit_waiting(rig, env, data=BODY, rest=b""):
    """As the SMTP server commits a message held in memory: rest as bytes."""
    msg = rig.queue.begin(env)
    msg.write(data)
    return msg.commit(rest)


@pytest_twisted.inlineCallbacks
def test_cut_through_sent_leaves_no_file_and_logs_queued_sent_removed(tmp_path, rigs):
    """SENT at once: the commit fires with the queue id only after the relay's result, no
    queue file was made (tmp/ included), and the maillog reads as for a spooled message."""
    rig = yield rigs(tmp_path, cut_through_wait=WAIT)
    qid = yield commit_waiting(rig, envelope(remote("a@remote.test")), BODY[:40], BODY[40:])
    (attempt,) = rig.target.attempts  # made before the commit fired
    assert (attempt.queue_id, attempt.at_once) == (qid, WAIT)
    assert attempt.recipients == ["a@remote.test"]
    assert attempt.body == BODY  # write()'s part and rest's, in order
    yield rig.queue.idle()
    assert rig.queue_files() == []
    assert list((rig.queue.queue_dir / "spare").iterdir()) == []  # not even a reused file
    assert qid not in rig.scheduler.entries
    mine = [line for line in rig.lines if line.startswith(f"{qid}: ")]
    assert mine[0] == f"{qid}: from=<{SENDER}>, size={len(BODY)}, nrcpt=1 (queue active)"
    assert mine[1].startswith(f"{qid}: to=<a@remote.test>, relay={HOP}, delay=")
    assert mine[1].endswith(f", dsn=2.0.0, status=sent ({SENT_REPLY})")
    assert mine[2:] == [f"{qid}: removed"]


@pytest_twisted.inlineCallbacks
def test_cut_through_deferred_is_spooled_and_tried_as_usual(tmp_path, rigs):
    """DEFERRED at once (no connection free in time, a 4xx): the commit fires once the
    message is durable in deferred/; the scheduler's own attempt follows at once, and its
    deferral is recorded and logged."""
    rig = yield rigs(tmp_path, cut_through_wait=WAIT)
    rig.target.plan("a@remote.test", Outcome.DEFERRED)
    qid = yield commit_waiting(rig, envelope(remote("a@remote.test")))
    assert {f"deferred/{qid}", f"deferred/{qid}.env"} <= set(rig.queue_files())
    yield rig.settled(2)
    first, second = rig.target.attempts
    assert (first.at_once, second.at_once) == (WAIT, None)
    assert second.queue_id == qid and second.body == BODY
    (line,) = status_lines(rig, qid)  # the attempt at once is not a maillog status line
    assert ", status=deferred (" in line
    assert rig.state(qid).done == set()
    assert rig.queue_files() == [f"deferred/{qid}", f"deferred/{qid}.env", f"deferred/{qid}.state"]


@pytest_twisted.inlineCallbacks
def test_cut_through_refused_is_spooled_then_bounced_to_the_sender(tmp_path, rigs):
    """A 5xx at once: spooled like any other message, refused again by the next attempt, and
    bounced: the sender gets the failure notice, with the message, and the files go."""
    rig = yield rigs(tmp_path, cut_through_wait=WAIT)
    rig.target.plan("a@remote.test", Outcome.BOUNCED)
    qid = yield commit_waiting(rig, envelope(remote("a@remote.test")))
    yield rig.settled(2)
    yield wait_until(lambda: rig.mail(SENDER) != [])
    (notice,) = rig.mail(SENDER)
    r = report(notice)
    assert r.actions == ["failed"] and r.finals == ["rfc822; a@remote.test"]
    yield wait_until(lambda: rig.queue_files() == [])
    (line,) = status_lines(rig, qid)
    assert ", status=bounced (" in line


@pytest_twisted.inlineCallbacks
def test_cut_through_only_for_one_remote_recipient_with_the_sender_waiting(tmp_path, rigs):
    """Spooled first, relayed by the scheduler as before: two recipients, a local one beside
    a remote one, NOTIFY=SUCCESS (its notice needs the spooled text), and a commit whose rest
    is not bytes (the sender does not wait: a notice of ours, say)."""
    rig = yield rigs(tmp_path, cut_through_wait=WAIT)
    cases = [
        envelope(remote("a@remote.test"), remote("b@remote.test")),
        envelope(local("user2@163.test"), remote("c@remote.test")),
        envelope(remote("d@remote.test", notify="SUCCESS")),
    ]
    for env in cases:
        yield commit_waiting(rig, env)
    msg = rig.queue.begin(envelope(remote("e@remote.test")))
    msg.write(BODY)
    yield msg.commit()
    yield rig.settled(4)
    assert sorted(tuple(a.recipients) for a in rig.target.attempts) == [
        ("a@remote.test", "b@remote.test"),
        ("c@remote.test",),
        ("d@remote.test",),
        ("e@remote.test",),
    ]
    assert [a.at_once for a in rig.target.attempts] == [None] * 4


@pytest_twisted.inlineCallbacks
def test_cut_through_off_with_wait_zero(tmp_path, rigs):
    """cut_through_wait 0 (and the rig's default): spooled first, then relayed."""
    rig = yield rigs(tmp_path, cut_through_wait=0.0)
    qid = yield commit_waiting(rig, envelope(remote("a@remote.test")))
    assert rig.queue_files() == [f"deferred/{qid}", f"deferred/{qid}.env"]
    yield rig.settled(1)
    assert rig.target.attempts[0].at_once is None


@pytest_twisted.inlineCallbacks
def test_cut_through_stop_waits_for_the_attempt_then_spools(tmp_path, rigs):
    """The queue's stop() waits for a cut-through in flight; one that ends DEFERRED then is
    spooled (the relay takes it up after the next start), not lost."""
    rig = yield rigs(tmp_path, cut_through_wait=WAIT)
    rig.target.plan("a@remote.test", Outcome.DEFERRED)
    gate: defer.Deferred[None] = defer.Deferred()
    rig.target.gate = gate
    committed = commit_waiting(rig, envelope(remote("a@remote.test")))
    assert not committed.called
    (attempt,) = rig.target.attempts
    assert attempt.at_once == WAIT  # in flight, behind the gate
    stopped = rig.stop()
    assert not stopped.called  # the attempt holds it
    gate.callback(None)
    qid = yield committed
    yield stopped
    assert rig.queue_files() == [f"deferred/{qid}", f"deferred/{qid}.env"]
