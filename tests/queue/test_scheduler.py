"""The deferred queue: relay attempts, the retry schedule, restarts, expiry, kill safety.

A real Queue over a real Maildir store, a real SendmailPolicy over a passwd file and real
Notices; only the relay target is scripted (its own tests use real sockets): it records what it
is handed and answers each recipient with the outcomes the test planned, one per attempt.
The helpers here are shared with test_scheduler_admin.py (the admin commands),
test_notices.py and tests/web/test_metrics.py.
"""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from appliance.auth.passwd import PasswdFile
from appliance.interfaces import (
    Envelope,
    Mailbox,
    MessageBody,
    Outcome,
    QueuedMessage,
    Recipient,
    RecipientResult,
)
from appliance.log import mail_logger
from appliance.maillog import render
from appliance.policy.sendmail import SendmailPolicy
from appliance.queue.notices import Notices
from appliance.queue.queue import Queue
from appliance.queue.scheduler import RelayScheduler
from appliance.queue.state import DeliveryState, read_state
from appliance.service import build_queue
from appliance.store.store import MaildirStore

HOST = "mx.163.test"
DOMAIN = "163.test"
POSTMASTER = "postmaster@163.test"
USERS = ("user1@163.test", "user2@163.test", "postmaster@163.test")
SENDER = "user1@163.test"
HOP = "mx.remote.test[127.0.0.1]:25"
SENT_REPLY = "250 2.0.0 Ok: queued as 4F2A19C03B"
BODY = (
    b"Received: from client.test (unknown [127.0.0.1])\r\n\tby mx.163.test (mailappliance)\r\n"
    b"From: user1@163.test\r\nTo: rcpt@remote.test\r\nSubject: scheduled test\r\n"
    b"Message-ID: <sched.1@163.test>\r\n\r\nHello,\r\nthe body.\r\n"
)


# -- values -----------------------------------------------------------------------------------


def box(address: str) -> Mailbox:
    localpart, domain = address.split("@")
    return Mailbox(domain, localpart)


def local(address: str, notify: str | None = None) -> Recipient:
    return Recipient(address, (box(address),), notify=notify)


def remote(address: str, notify: str | None = None, orcpt: str | None = None) -> Recipient:
    """A relayed recipient as the policy resolves it."""
    return Recipient(address, remote=True, forward_to=(address,), notify=notify, orcpt=orcpt)


def envelope(
    *rcpts: Recipient,
    mail_from: str = SENDER,
    age: float = 0.0,
    notice: str = "",
    ret: str | None = None,
) -> Envelope:
    """An envelope that arrived age seconds ago (arrival is what expiry and delays count from)."""
    return Envelope(
        mail_from=mail_from,
        recipients=rcpts,
        client_ip="127.0.0.1",
        helo="client.test",
        received_at=time.time() - age,
        notice=notice,
        dsn_ret=ret,
    )


def deferred_result(address: str) -> RecipientResult:
    reply = f"451 4.3.0 <{address}>: Temporary lookup failure"
    text = f"host mx.remote.test[127.0.0.1] said: {reply} (in reply to RCPT TO command)"
    return RecipientResult(address, Outcome.DEFERRED, text, HOP, reply=reply)


def bounced_result(address: str) -> RecipientResult:
    reply = f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
    text = f"host mx.remote.test[127.0.0.1] said: {reply} (in reply to RCPT TO command)"
    return RecipientResult(address, Outcome.BOUNCED, text, HOP, reply=reply)


def sent_result(address: str, dsn_forwarded: bool = False) -> RecipientResult:
    return RecipientResult(
        address, Outcome.SENT, SENT_REPLY, HOP, reply=SENT_REPLY, dsn_forwarded=dsn_forwarded
    )


def refused_result(address: str) -> RecipientResult:
    """A temporary failure with no reply from anyone (the next hop could not be reached)."""
    text = "connect to mx.remote.test[127.0.0.1]:25: Connection refused"
    return RecipientResult(address, Outcome.DEFERRED, text, HOP)


CANNED: dict[Outcome, Callable[[str], RecipientResult]] = {
    Outcome.SENT: sent_result,
    Outcome.DEFERRED: deferred_result,
    Outcome.BOUNCED: bounced_result,
}
Step = Outcome | RecipientResult | Callable[[str], RecipientResult]


# -- the scripted relay target ----------------------------------------------------------------


@dataclass
class Attempt:
    """One message handed to the target."""

    queue_id: str
    envelope: Envelope
    arrival: float
    recipients: list[str]
    body: bytes
    at: float
    results: list[RecipientResult] = field(default_factory=list)
    at_once: float | None = None  # the wait of a cut-through (start_at_once), else None


class ScriptedTarget:
    """interfaces.DeliveryTarget "relay" that answers from a plan instead of the network.

    plan(address, *steps): the outcome of each attempt for that address, the last repeating;
    an address without a plan is SENT. gate: a Deferred the next commit waits for (an attempt
    in flight). on_start(message) runs when a delivery starts (to look at the queue then).
    """

    name = "relay"

    def __init__(self) -> None:
        self.plans: dict[str, list[Step]] = {}
        self.attempts: list[Attempt] = []
        self.gate: Deferred[None] | None = None
        self.gates: list[Deferred[None]] = []  # every gate used, opened at teardown
        self.on_start: Callable[[QueuedMessage], object] | None = None
        self.stopped = False

    def plan(self, address: str, *steps: Step) -> None:
        self.plans[address] = list(steps)

    def result(self, address: str) -> RecipientResult:
        steps = self.plans.get(address) or [Outcome.SENT]
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if isinstance(step, Outcome):
            return CANNED[step](address)
        if isinstance(step, RecipientResult):
            return replace(step, address=address)
        return step(address)

    def of(self, queue_id: str) -> list[Attempt]:
        return [a for a in self.attempts if a.queue_id == queue_id]

    def to(self, address: str) -> list[Attempt]:
        return [a for a in self.attempts if address in a.recipients]

    # DeliveryTarget

    def start(self, message: QueuedMessage) -> ScriptedDelivery:
        if self.on_start is not None:
            self.on_start(message)
        return ScriptedDelivery(self, message)

    def start_at_once(self, message: QueuedMessage, wait: float) -> ScriptedDelivery:
        if self.on_start is not None:
            self.on_start(message)
        return ScriptedDelivery(self, message, at_once=wait)

    def start_streaming(self, message: QueuedMessage, address: str) -> None:
        return None

    def check_address(self, address: str) -> None:
        pass

    def clean_stale(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True


class ScriptedDelivery:
    def __init__(
        self, target: ScriptedTarget, message: QueuedMessage, at_once: float | None = None
    ) -> None:
        self.target = target
        self.message = message
        self.at_once = at_once
        self.rcpts: list[str] = []
        self._body: MessageBody | None = None

    def add_recipient(self, address: str) -> None:
        self.rcpts.append(address)

    def body(self, body: MessageBody) -> None:
        self._body = body

    def commit(self) -> Deferred[list[RecipientResult]]:
        assert self._body is not None, "body() first"
        m = self.message
        attempt = Attempt(
            m.queue_id, m.envelope, m.arrival, list(self.rcpts), b"".join(self._body.chunks()),
            time.time(),
        )  # fmt: skip
        attempt.at_once = self.at_once
        attempt.results = [self.target.result(a) for a in self.rcpts]
        self.target.attempts.append(attempt)
        gate, self.target.gate = self.target.gate, None
        if gate is None:
            return defer.succeed(attempt.results)
        self.target.gates.append(gate)
        return gate.addCallback(lambda _: attempt.results)

    def abort(self) -> None:
        pass


# -- the appliance's queue side, for real -----------------------------------------------------


class Rig:
    """Queue + Maildir store + policy + notices + scheduler over one state folder.

    A second Rig over the same folder (after stop()) is the appliance after a restart.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        target: ScriptedTarget | None = None,
        schedule: tuple[float, ...] = (60.0,),
        max_lifetime: float = 5 * 86400.0,
        delay_warning: float = 0.0,
        postmaster: str = POSTMASTER,
        max_active: int = 1000,
        cut_through_wait: float = 0.0,
    ) -> None:
        self.state_dir = state_dir
        self.lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            self.lines.append(render(event))

        self.queue, self.store = build_queue(
            state_dir, HOST, reactor, events=mail_logger("local", observe)
        )
        passwd = state_dir / "passwd"
        if not passwd.exists():
            passwd.write_text("".join(f"{u}:\n" for u in USERS))
        self.policy = SendmailPolicy(
            local_domains=[DOMAIN], users=PasswdFile(passwd, reactor=reactor)
        )
        self.target = target or ScriptedTarget()
        self.notices = Notices(
            self.queue,
            self.policy,
            self.queue.pool,
            hostname=HOST,
            postmaster=postmaster,
            events=mail_logger("bounce", observe),
        )
        self.scheduler = RelayScheduler(
            self.queue,
            self.target,
            self.notices,
            schedule=schedule,
            max_lifetime=max_lifetime,
            delay_warning=delay_warning,
            max_active=max_active,
            cut_through_wait=cut_through_wait,
            events=mail_logger("smtp", observe),
        )
        # as service.attach_relay wires them
        self.queue.relay = self.scheduler
        self.queue.notices = self.notices

    @property
    def deferred(self) -> Path:
        return self.queue.deferred_dir

    @defer.inlineCallbacks
    def start(self) -> Iterator[Deferred[Any]]:
        self.queue.start()
        yield self.queue.recover()

    def stop(self) -> Deferred[None]:
        return self.queue.stop()

    def state(self, qid: str) -> DeliveryState:
        return read_state(str(self.deferred / f"{qid}.state"))

    def queue_files(self) -> list[str]:
        return files_under(self.queue.queue_dir)

    def mail(self, address: str) -> list[bytes]:
        return delivered(self.store, address)

    @defer.inlineCallbacks
    def settled(self, attempts: int, timeout: float = 5.0) -> Iterator[Deferred[Any]]:
        """Wait until the target has seen that many attempts and everything they started
        (state records, notices, their local copies) is done."""
        yield wait_until(lambda: len(self.target.attempts) >= attempts, timeout)
        yield self.queue.idle()

    def send(self, env: Envelope, data: bytes = BODY) -> Deferred[str]:
        return send(self.queue, env, data)


def files_under(path: Path) -> list[str]:
    """The queue's files, without spare/ (emptied files kept for reuse: checked empty)."""
    files = [p for p in path.rglob("*") if p.is_file()]
    assert [p for p in files if p.parent.name == "spare" and p.stat().st_size] == []
    return sorted(str(p.relative_to(path)) for p in files if p.parent.name != "spare")


def delivered(store: MaildirStore, address: str) -> list[bytes]:
    md = store.maildir(box(address))
    return [md.read_message("new", n) for n in sorted(md.list_new())]


def send(queue: Queue, env: Envelope, data: bytes = BODY) -> Deferred[str]:
    msg = queue.begin(env)
    msg.write(data)
    return msg.commit()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> Deferred[None]:
    """Poll condition every few milliseconds; fail after timeout seconds."""

    @defer.inlineCallbacks
    def poll() -> Iterator[Deferred[Any]]:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            yield deferLater(reactor, 0.005, lambda: None)

    return poll()


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class Report:
    """A DSN taken apart: the message, its readable text, its delivery-status blocks, and
    the returned part."""

    message: EmailMessage
    text: str
    per_message: Message
    per_recipient: list[Message]
    returned: Message

    @property
    def actions(self) -> list[str]:
        return [str(b["Action"]) for b in self.per_recipient]

    @property
    def finals(self) -> list[str]:
        return [str(b["Final-Recipient"]) for b in self.per_recipient]


def report(raw: bytes) -> Report:
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    text, status, returned = msg.get_payload()  # type: ignore[misc]
    assert status.get_content_type() == "message/delivery-status"
    per_message, *per_recipient = status.get_payload()
    return Report(msg, text.get_content(), per_message, per_recipient, returned)


class Rigs:
    """Every rig a test made, stopped (threads joined) afterwards."""

    def __init__(self) -> None:
        self.made: list[Rig] = []

    @defer.inlineCallbacks
    def __call__(self, state_dir: Path, **kwargs: Any) -> Iterator[Deferred[Any]]:
        rig = Rig(state_dir, **kwargs)
        self.made.append(rig)
        yield rig.start()
        return rig

    @defer.inlineCallbacks
    def stop_all(self) -> Iterator[Deferred[Any]]:
        for rig in self.made:
            for gate in rig.target.gates:  # a failed test may have left an attempt waiting
                if not gate.called:
                    gate.callback(None)
            yield rig.stop()


@pytest.fixture(name="rigs")
def rigs_fixture() -> Iterator[Rigs]:
    made = Rigs()
    yield made
    pytest_twisted.blockon(made.stop_all())


def status_lines(rig: Rig, qid: str) -> list[str]:
    return [line for line in rig.lines if line.startswith(f"{qid}: to=")]


# -- first attempt ----------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_scheduler_remote_only_all_sent_files_removed_and_logged(tmp_path, rigs):
    """Remote recipients only: deferred/ at commit, handed over at once, all SENT -> files gone,
    one maillog status line each with relay= and dsn=2.0.0, then removed."""
    rig = yield rigs(tmp_path)
    committed = time.time()
    qid = yield rig.send(envelope(remote("a@remote.test"), remote("b@remote.test")))
    # durable in deferred/ when the commit fires (nothing in incoming/), not yet tried
    assert rig.queue_files() == [f"deferred/{qid}", f"deferred/{qid}.env"]
    yield rig.settled(1)
    (attempt,) = rig.target.attempts
    assert attempt.queue_id == qid
    assert attempt.recipients == ["a@remote.test", "b@remote.test"]
    assert attempt.body == BODY
    assert attempt.at - committed < 2.0  # not after the schedule's 60 s
    assert rig.queue_files() == []
    lines = status_lines(rig, qid)
    assert len(lines) == 2
    for line, rcpt in zip(lines, ("a@remote.test", "b@remote.test"), strict=True):
        assert line.startswith(f"{qid}: to=<{rcpt}>, relay={HOP}, delay=")
        assert line.endswith(f", dsn=2.0.0, status=sent ({SENT_REPLY})")
    assert rig.lines[-1] == f"{qid}: removed"
    assert rig.mail(SENDER) == []  # no notice was asked for


@pytest_twisted.inlineCallbacks
def test_scheduler_mixed_local_and_remote_local_first_then_relayed(tmp_path, rigs):
    """Local copy delivered first, then only the remote part goes to deferred/ and the relay."""
    rig = yield rigs(tmp_path)
    qid = yield rig.send(envelope(local("user2@163.test"), remote("a@remote.test")))
    yield rig.settled(1)
    (copy,) = rig.mail("user2@163.test")
    assert copy.endswith(BODY)
    (attempt,) = rig.target.attempts
    assert attempt.queue_id == qid
    assert attempt.recipients == ["a@remote.test"]
    assert [r.address for r in attempt.envelope.recipients] == ["a@remote.test"]
    assert all(not r.mailboxes for r in attempt.envelope.recipients)
    assert rig.queue_files() == []
    lines = status_lines(rig, qid)
    assert [line.split(",")[:2] for line in lines] == [
        [f"{qid}: to=<user2@163.test>", " relay=local"],
        [f"{qid}: to=<a@remote.test>", f" relay={HOP}"],
    ]
    assert rig.lines[-1] == f"{qid}: removed"


# -- retries ----------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_scheduler_deferred_retried_after_schedule_waits_last_repeating(tmp_path, rigs):
    """DEFERRED is retried after 0.05 s, then 0.15 s, then 0.15 s again; .state has the
    attempts and next_try each time."""
    schedule = (0.05, 0.15)
    rig = yield rigs(tmp_path, schedule=schedule)
    seen: list[DeliveryState] = []
    rig.target.on_start = lambda m: seen.append(rig.state(m.queue_id))
    d = Outcome.DEFERRED
    rig.target.plan("a@remote.test", d, d, d, d, Outcome.SENT)
    qid = yield rig.send(envelope(remote("a@remote.test")))
    yield rig.settled(5)
    attempts = rig.target.of(qid)
    assert len(attempts) == 5
    assert seen[0] == DeliveryState()  # nothing tried yet
    for n in range(1, 5):
        state = seen[n]
        wait = schedule[min(n - 1, len(schedule) - 1)]
        assert state.attempts == n
        rcpt = state.rcpts["a@remote.test"]
        assert rcpt.status == "deferred" and rcpt.relay == HOP
        assert "451 4.3.0" in rcpt.text
        assert state.next_try - rcpt.at == pytest.approx(wait)
        assert attempts[n].at >= state.next_try  # never before it is due
        assert attempts[n].at - attempts[n - 1].at >= wait
    assert rig.queue_files() == []
    lines = status_lines(rig, qid)
    statuses = [line.rsplit("status=", 1)[1].split(" ")[0] for line in lines]
    assert statuses == ["deferred", "deferred", "deferred", "deferred", "sent"]
    assert all("dsn=4.3.0" in line for line in lines[:4])


@pytest_twisted.inlineCallbacks
def test_scheduler_restart_resumes_saved_schedule_without_resending(tmp_path, rigs):
    """After a restart the saved next_try is kept and the recipient already SENT is not sent
    again; the deferred one is retried when due."""
    rig = yield rigs(tmp_path, schedule=(0.5,))
    rig.target.plan("b@remote.test", Outcome.DEFERRED, Outcome.SENT)
    qid = yield rig.send(envelope(remote("a@remote.test"), remote("b@remote.test")))
    yield rig.settled(1)
    saved = rig.state(qid)
    assert saved.attempts == 1
    assert saved.rcpts["a@remote.test"].status == "sent"
    assert saved.rcpts["b@remote.test"].status == "deferred"
    yield rig.stop()

    target = ScriptedTarget()  # a fresh process: only the files carry over
    target.plan("b@remote.test", Outcome.SENT)
    again = yield rigs(tmp_path, target=target, schedule=(0.5,))
    assert again.scheduler.entries[qid].state.next_try == saved.next_try
    yield again.settled(1)
    (attempt,) = target.attempts
    assert attempt.recipients == ["b@remote.test"]
    assert attempt.at >= saved.next_try
    assert attempt.body == BODY
    assert again.queue_files() == []
    assert again.lines[-1] == f"{qid}: removed"


@pytest_twisted.inlineCallbacks
def test_scheduler_restart_held_message_stays_held(tmp_path, rigs):
    """A held message is loaded as held after a restart: flush passes it by, release tries it."""
    rig = yield rigs(tmp_path)
    rig.target.plan("a@remote.test", Outcome.DEFERRED)
    qid = yield rig.send(envelope(remote("a@remote.test")))
    yield rig.settled(1)
    assert (yield rig.scheduler.hold(qid)) == 1
    yield rig.stop()

    target = ScriptedTarget()
    again = yield rigs(tmp_path, target=target)
    assert (yield again.scheduler.flush(None)) == 0
    yield again.queue.idle()
    assert target.attempts == []
    assert (yield again.scheduler.release(qid)) == 1
    yield again.settled(1)
    assert again.queue_files() == []


# -- expiry and delay warnings ----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_scheduler_expired_deferral_bounced_with_dsn(tmp_path, rigs):
    """A deferral past max_lifetime is a bounce: 'message expired' logged, a failure DSN to
    the sender, the files removed."""
    rig = yield rigs(tmp_path, max_lifetime=500.0)
    rig.target.plan("a@remote.test", refused_result)
    qid = yield rig.send(envelope(remote("a@remote.test"), age=1000.0))
    yield rig.settled(1)
    (line,) = status_lines(rig, qid)
    assert "status=bounced (message expired after 1000 seconds in the queue; last error: " in line
    assert "Connection refused" in line
    assert rig.queue_files() == []
    (raw,) = rig.mail(SENDER)
    dsn = report(raw)
    assert dsn.actions == ["failed"]
    assert dsn.finals == ["rfc822; a@remote.test"]
    block = dsn.per_recipient[0]
    # the reason reaches the sender even though no server replied
    assert "message expired" in str(block["Diagnostic-Code"])
    assert "Connection refused" in dsn.text
    assert "said:" not in dsn.text  # nobody said anything: it is our own reason


@pytest_twisted.inlineCallbacks
def test_scheduler_retry_capped_at_expiry_then_bounced(tmp_path, rigs):
    """With a wait longer than the lifetime left, the retry comes when the message expires."""
    rig = yield rigs(tmp_path, schedule=(60.0,), max_lifetime=0.3)
    rig.target.plan("a@remote.test", Outcome.DEFERRED)
    qid = yield rig.send(envelope(remote("a@remote.test")))
    yield rig.settled(2)
    first, second = rig.target.of(qid)
    assert second.at >= first.arrival + 0.3
    assert second.at - first.at < 5.0
    assert "status=bounced (message expired after" in status_lines(rig, qid)[-1]
    (raw,) = rig.mail(SENDER)
    assert report(raw).actions == ["failed"]
    assert rig.queue_files() == []


@pytest_twisted.inlineCallbacks
def test_scheduler_delay_warning_sent_once_message_stays(tmp_path, rigs):
    """Once the message is delay_warning old a delay DSN goes out, only once; the message
    stays queued and is delivered later."""
    rig = yield rigs(tmp_path, schedule=(0.05,), delay_warning=50.0)
    seen: list[tuple[DeliveryState, list[str]]] = []
    rig.target.on_start = lambda m: seen.append((rig.state(m.queue_id), rig.queue_files()))
    d = Outcome.DEFERRED
    rig.target.plan("a@remote.test", d, d, d, Outcome.SENT)
    qid = yield rig.send(envelope(remote("a@remote.test"), age=100.0))
    yield rig.settled(4)
    state, files = seen[1]  # as the second attempt found it
    assert state.warned
    assert files == [f"deferred/{qid}", f"deferred/{qid}.env", f"deferred/{qid}.state"]
    (raw,) = rig.mail(SENDER)  # one warning over three deferrals
    dsn = report(raw)
    assert dsn.actions == ["delayed"]
    assert str(dsn.message["Subject"]) == "Delayed Mail (still being retried)"
    assert dsn.per_recipient[0]["Will-Retry-Until"] is not None
    assert str(dsn.per_recipient[0]["Status"]) == "4.3.0"
    assert dsn.returned.get_content_type() == "text/rfc822-headers"  # RET default for delays
    assert rig.queue_files() == []
    assert status_lines(rig, qid)[-1].endswith(f"status=sent ({SENT_REPLY})")


@pytest_twisted.inlineCallbacks
def test_scheduler_delay_warning_not_repeated_after_restart(tmp_path, rigs):
    """The warned record survives a restart: no second delay notice."""
    rig = yield rigs(tmp_path, delay_warning=50.0)
    rig.target.plan("a@remote.test", Outcome.DEFERRED)
    qid = yield rig.send(envelope(remote("a@remote.test"), age=100.0))
    yield rig.settled(1)
    assert len(rig.mail(SENDER)) == 1
    yield rig.stop()
    target = ScriptedTarget()
    target.plan("a@remote.test", Outcome.DEFERRED)
    again = yield rigs(tmp_path, target=target, delay_warning=50.0)
    assert (yield again.scheduler.flush(qid)) == 1
    yield again.settled(1)
    assert again.state(qid).attempts == 2
    assert len(again.mail(SENDER)) == 1


# -- kill safety ------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_scheduler_crash_after_dsn_before_record_bounced_again(tmp_path, rigs, logged_errors):
    """Killed after the bounce is queued but before the recipient is recorded: after a
    restart the recipient is tried and bounced again (a second notice, never none)."""
    rig = yield rigs(tmp_path)
    rig.target.plan("a@remote.test", Outcome.BOUNCED)
    real_record = rig.queue.files.record
    calls: list[object] = []

    def record(*args: Any) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise OSError(5, "simulated crash before the state is written")
        real_record(*args)

    rig.queue.files.record = record  # type: ignore[method-assign]
    rig.target.plan("b@remote.test", Outcome.DEFERRED)  # so the entry is not done at once
    qid = yield rig.send(envelope(remote("a@remote.test"), remote("b@remote.test")))
    yield rig.settled(1)
    assert len(calls) == 1
    assert len(rig.mail(SENDER)) == 1  # the notice was durable first
    assert "a@remote.test" not in rig.state(qid).rcpts  # ... the record never made it
    assert [e.get("log_format") for e in logged_errors] == ["{queue_id}: relay attempt failed"]
    logged_errors.clear()
    yield rig.stop()

    target = ScriptedTarget()
    target.plan("a@remote.test", Outcome.BOUNCED)
    again = yield rigs(tmp_path, target=target)
    assert (yield again.scheduler.flush(qid)) == 1
    yield again.settled(1)
    (attempt,) = target.attempts
    assert attempt.recipients == ["a@remote.test", "b@remote.test"]
    notices = again.mail(SENDER)
    assert len(notices) == 2
    assert all(report(raw).finals == ["rfc822; a@remote.test"] for raw in notices)
    assert again.queue_files() == []
