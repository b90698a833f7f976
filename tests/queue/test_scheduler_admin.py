"""The deferred queue's admin commands: flush, hold, release and delete, of one message or
of all, on messages waiting and on one being tried.

The rig of test_scheduler.py: a real Queue over a real Maildir store, a real SendmailPolicy and
real Notices; only the relay target is scripted.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from appliance.interfaces import Outcome
from tests.queue.test_scheduler import (
    SENDER,
    envelope,
    remote,
    rigs_fixture,  # noqa: F401 (the rigs fixture)
    status_lines,
    wait_until,
)

# -- QueueAdmin -------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_scheduler_flush_resets_next_try_and_tries_at_once(tmp_path, rigs):
    """flush(qid) tries a message waiting 60 s now; an unknown id counts 0."""
    rig = yield rigs(tmp_path, schedule=(60.0,))
    rig.target.plan("a@remote.test", Outcome.DEFERRED, Outcome.SENT)
    qid = yield rig.send(envelope(remote("a@remote.test")))
    yield rig.settled(1)
    assert rig.state(qid).next_try > time.time() + 50
    assert (yield rig.scheduler.flush("0000000000")) == 0
    assert (yield rig.scheduler.flush(qid)) == 1
    yield rig.settled(2)
    assert len(rig.target.of(qid)) == 2
    assert rig.queue_files() == []


@pytest_twisted.inlineCallbacks
def test_scheduler_hold_not_tried_until_release(tmp_path, rigs):
    """hold makes a .hold file and keeps the message from every attempt (flush too);
    release removes it and tries at once."""
    rig = yield rigs(tmp_path, schedule=(60.0,))
    rig.target.plan("a@remote.test", Outcome.DEFERRED, Outcome.SENT)
    rig.target.plan("b@remote.test", Outcome.DEFERRED)
    held = yield rig.send(envelope(remote("a@remote.test")))
    other = yield rig.send(envelope(remote("b@remote.test")))
    yield rig.settled(2)
    assert (yield rig.scheduler.hold(held)) == 1
    assert (rig.deferred / f"{held}.hold").exists()
    assert (yield rig.scheduler.hold("0000000000")) == 0
    assert (yield rig.scheduler.flush(held)) == 0
    assert (yield rig.scheduler.flush(None)) == 1  # the other one only
    yield rig.settled(3)
    assert len(rig.target.of(other)) == 2
    assert len(rig.target.of(held)) == 1  # due like the other, but held
    assert (yield rig.scheduler.release(other)) == 0  # not held
    assert (yield rig.scheduler.release(held)) == 1
    assert not (rig.deferred / f"{held}.hold").exists()
    yield rig.settled(4)
    assert len(rig.target.of(held)) == 2
    assert not any(name.startswith(held) for name in os.listdir(rig.deferred))


@pytest_twisted.inlineCallbacks
def test_scheduler_delete_removes_files_never_tried_again(tmp_path, rigs):
    """delete: every file gone at once, no bounce, not tried again."""
    rig = yield rigs(tmp_path, schedule=(60.0,))
    rig.target.plan("a@remote.test", Outcome.DEFERRED)
    qid = yield rig.send(envelope(remote("a@remote.test")))
    yield rig.settled(1)
    assert (yield rig.scheduler.delete(qid)) == 1
    assert rig.queue_files() == []
    assert (yield rig.scheduler.delete(qid)) == 0
    assert (yield rig.scheduler.flush(None)) == 0
    yield rig.queue.idle()
    assert len(rig.target.attempts) == 1
    assert rig.lines[-1] == f"{qid}: removed"
    assert rig.mail(SENDER) == []


@pytest_twisted.inlineCallbacks
def test_scheduler_delete_active_removed_after_attempt(tmp_path, rigs):
    """Deleting a message being tried: it counts once, its files go when the attempt ends,
    its results are not recorded and it is not tried again."""
    rig = yield rigs(tmp_path, schedule=(0.05,))
    rig.target.gate = Deferred()
    gate = rig.target.gate
    rig.target.plan("a@remote.test", Outcome.DEFERRED)
    qid = yield rig.send(envelope(remote("a@remote.test")))
    yield wait_until(lambda: len(rig.target.attempts) == 1)
    assert (yield rig.scheduler.delete(qid)) == 1
    assert (yield rig.scheduler.delete(None)) == 0  # already deleted
    assert (yield rig.scheduler.hold(None)) == 0
    assert (yield rig.scheduler.flush(None)) == 0
    assert (rig.deferred / qid).exists()  # the attempt still reads it
    gate.callback(None)
    yield rig.queue.idle()
    assert rig.queue_files() == []
    assert status_lines(rig, qid) == []
    assert rig.lines.count(f"{qid}: removed") == 1
    assert rig.scheduler.entries == {}
    assert len(rig.target.attempts) == 1


@pytest_twisted.inlineCallbacks
def test_scheduler_delete_while_notice_queued_files_still_removed(tmp_path, rigs):
    """A delete arriving while the attempt settles (its bounce being queued) still removes
    every file once the attempt is over: a deleted message never comes back after a restart."""
    rig = yield rigs(tmp_path, schedule=(60.0,))
    rig.target.plan("a@remote.test", Outcome.BOUNCED)
    rig.target.plan("b@remote.test", Outcome.DEFERRED)
    real_send = rig.notices.send
    qid_box: list[str] = []

    def send_after_delete(*args: Any, **kwargs: Any) -> Deferred[Any]:
        d = rig.scheduler.delete(qid_box[0])
        return d.addCallback(lambda _: real_send(*args, **kwargs))

    rig.notices.send = send_after_delete  # type: ignore[method-assign]
    rig.target.on_start = lambda m: qid_box.append(m.queue_id)
    yield rig.send(envelope(remote("a@remote.test"), remote("b@remote.test")))
    yield rig.settled(1)
    assert rig.queue_files() == []
    assert rig.scheduler.entries == {}


@pytest_twisted.inlineCallbacks
def test_scheduler_admin_all_counts(tmp_path, rigs):
    """None means every message: hold, release (tried at once), flush and delete count them."""
    rig = yield rigs(tmp_path, schedule=(60.0,))
    qids = []
    for n in range(3):
        rig.target.plan(f"r{n}@remote.test", Outcome.DEFERRED)
        qids.append((yield rig.send(envelope(remote(f"r{n}@remote.test")))))
    yield rig.settled(3)
    assert (yield rig.scheduler.hold(None)) == 3
    assert sorted(n for n in os.listdir(rig.deferred) if n.endswith(".hold")) == sorted(
        f"{q}.hold" for q in qids
    )
    assert (yield rig.scheduler.flush(None)) == 0
    assert (yield rig.scheduler.release(None)) == 3
    yield rig.settled(6)
    assert (yield rig.scheduler.flush(None)) == 3
    yield rig.settled(9)
    assert (yield rig.scheduler.delete(None)) == 3
    assert rig.queue_files() == []
    assert (yield rig.scheduler.delete(None)) == 0
