"""The SMTP session and the filter chain (appliance.filters.chain over scripted filters):
asked after the policy at connect, MAIL, RCPT and the end of the data, their refusals
answered with their codes, their headers put in front of the message, the text held back
from the sink until they have accepted it."""

from __future__ import annotations

import ipaddress

from twisted.internet import defer

from appliance.filters.base import Filter, MessageCheck
from appliance.filters.chain import FilterChain
from appliance.interfaces import ACCEPT, FilterVerdict
from appliance.log import mail_logger
from appliance.smtp.settings import SUBMISSION

DATA = "Subject: hi\r\n\r\nhello\r\n.\r\n"


class Scripted(Filter):
    """Answers each stage as told; records what it was asked."""

    def __init__(self, name: str = "scripted", **answers: object) -> None:
        self.name = name
        self.answers = answers
        self.asked: list[str] = []
        self.bodies: list[bytes] = []
        self.pending: defer.Deferred[FilterVerdict] | None = None

    def _answer(self, stage: str):
        self.asked.append(stage)
        answer = self.answers.get(stage, ACCEPT)
        if answer == "wait":
            self.pending = defer.Deferred()
            return self.pending
        return answer

    def connect(self, facts):
        return self._answer("connect")

    def sender(self, facts, mail_from):
        return self._answer("sender")

    def recipient(self, facts, mail_from, rcpt):
        return self._answer(f"rcpt {rcpt}")

    def wants_body(self, envelope):
        return self.answers.get("body", True) is not False

    def message(self, check: MessageCheck):
        self.bodies.append(b"".join(check.body.chunks()))
        answer = self._answer("message")
        return answer


def chain_of(smtp, tmp_path, *filters: Filter) -> FilterChain:
    return FilterChain(
        filters,
        hostname="mail.example.test",
        spill_folder=tmp_path,
        events=mail_logger("filter", smtp.observer),
    )


def send_message(s, rcpt: str = "user1@example.test") -> str:
    """MAIL, RCPT, DATA and the text; the reply to the end of the data ("" if none yet)."""
    s.cmd("MAIL FROM:<a@sina.test>")
    s.cmd(f"RCPT TO:<{rcpt}>")
    s.cmd("DATA")
    return (s.send(DATA) or [""])[-1]


def test_filters_connect_refusal_turns_client_away(smtp, tmp_path) -> None:
    """A filter's refusal at connect (a DNSBL) replaces the greeting; commands get 503."""
    f = Scripted(connect=FilterVerdict(554, "5.7.1 Service unavailable; listed"))
    s = smtp(filters=chain_of(smtp, tmp_path, f))
    assert s.read() == ["554 5.7.1 Service unavailable; listed"]
    assert s.cmd("EHLO x.test").startswith("503 5.5.1")
    assert any("reject: CONNECT" in line and "listed" in line for line in smtp.logs)


def test_filters_sender_and_recipient_refusals_with_their_codes(smtp, tmp_path) -> None:
    """MAIL and RCPT refusals of a filter come after the policy's yes, with their codes."""
    f = Scripted(
        sender=FilterVerdict(550, "5.7.23 SPF fail"),
    )
    s = smtp(filters=chain_of(smtp, tmp_path, f)).ready()
    assert s.cmd("MAIL FROM:<a@sina.test>") == "550 5.7.23 SPF fail"
    f.answers = {"rcpt user2@example.test": FilterVerdict(450, "4.2.0 Greylisted, try later")}
    assert s.cmd("MAIL FROM:<a@sina.test>").startswith("250")
    assert s.cmd("RCPT TO:<user2@example.test>") == "450 4.2.0 Greylisted, try later"
    assert s.cmd("RCPT TO:<user1@example.test>").startswith("250")
    assert "sender" in f.asked and "rcpt user1@example.test" in f.asked


def test_filters_not_asked_when_the_policy_refused_first(smtp, tmp_path) -> None:
    """A recipient the policy refuses never reaches the filters."""
    f = Scripted()
    s = smtp(filters=chain_of(smtp, tmp_path, f)).ready()
    s.cmd("MAIL FROM:<a@sina.test>")
    assert s.cmd("RCPT TO:<nobody@example.test>").startswith("550 5.1.1")
    assert not any(a.startswith("rcpt") for a in f.asked)


def test_filters_headers_in_front_text_reaches_sink_only_after_yes(smtp, tmp_path) -> None:
    """While the filter decides nothing is written to the sink; accepted, its headers come
    first (before our Received), then the text, then the commit."""
    f = Scripted(message="wait")
    s = smtp(filters=chain_of(smtp, tmp_path, f)).ready()
    assert send_message(s) == ""
    message = smtp.sink.begun[-1]
    assert bytes(message.data) == b"" and smtp.sink.committed == []
    assert f.bodies[0].startswith(b"Received: from client.example.org")
    assert f.bodies[0].endswith(b"Subject: hi\r\n\r\nhello\r\n")
    f.pending.callback(FilterVerdict(headers=("X-Spam-Flag: YES", "X-Spam-Score: 6.1")))
    assert s.read()[-1].startswith("250 2.0.0 Ok: queued as")
    data = bytes(message.data)
    assert data.startswith(b"X-Spam-Flag: YES\r\nX-Spam-Score: 6.1\r\nReceived: from ")
    assert data.endswith(b"Subject: hi\r\n\r\nhello\r\n")
    assert smtp.sink.committed == [message]
    assert any("filter scripted: tag" in line for line in smtp.logs)


def test_filters_end_of_data_refusal_aborts_message(smtp, tmp_path) -> None:
    """A refusal at the end (a virus) is the reply; the message is aborted, not committed."""
    f = Scripted(message=FilterVerdict(554, "5.7.1 Message rejected: virus found (Eicar)"))
    s = smtp(filters=chain_of(smtp, tmp_path, f)).ready()
    assert send_message(s) == "554 5.7.1 Message rejected: virus found (Eicar)"
    assert smtp.sink.begun[-1].aborted and smtp.sink.committed == []
    assert any("reject: END-OF-MESSAGE" in line for line in smtp.logs)
    assert any("filter scripted: reject 554" in line for line in smtp.logs)


def test_filters_chain_stops_at_first_refusal_and_orders_headers(smtp, tmp_path) -> None:
    """Filters run in order; a refusal ends the stage (later ones are not asked); headers
    of all that accepted keep their order."""
    a = Scripted("a", message=FilterVerdict(headers=("X-A: 1",)))
    b = Scripted("b", message=FilterVerdict(headers=("X-B: 2",)))
    s = smtp(filters=chain_of(smtp, tmp_path, a, b)).ready()
    assert send_message(s).startswith("250")
    assert bytes(smtp.sink.committed[-1].data).startswith(b"X-A: 1\r\nX-B: 2\r\nReceived:")
    a.answers = {"message": FilterVerdict(451, "4.7.1 Temporary failure")}
    b.asked.clear()
    assert send_message(s) == "451 4.7.1 Temporary failure"
    assert "message" not in b.asked


def test_filters_unexpected_failure_is_451_never_accept(smtp, tmp_path, logged_errors) -> None:
    """A filter that raises: logged, and the message refused for now (451 4.7.1)."""

    class Broken(Scripted):
        def message(self, check):
            raise RuntimeError("bug")

    s = smtp(filters=chain_of(smtp, tmp_path, Broken())).ready()
    assert send_message(s) == "451 4.7.1 Temporary failure in message checks, try again later"
    assert smtp.sink.committed == []
    assert any("filter {filter} failed" in str(e.get("log_format")) for e in logged_errors)
    logged_errors.clear()  # expected: the bug is logged


def test_filters_without_body_interest_text_goes_straight_to_sink(smtp, tmp_path) -> None:
    """When no filter wants the text (e.g. spamd skips logged-in users) it is streamed to
    the sink as it comes, as without filters."""
    f = Scripted(body=False)
    s = smtp(filters=chain_of(smtp, tmp_path, f)).ready()
    assert send_message(s).startswith("250")
    assert "message" not in f.asked
    assert bytes(smtp.sink.committed[-1].data).startswith(b"Received: from")


def test_filters_big_text_spills_to_file_and_arrives_whole(smtp, tmp_path) -> None:
    """A text past the memory part goes through a file in the filter folder and reaches
    the sink byte for byte; the file is gone afterwards."""
    f = Scripted()
    s = smtp(filters=chain_of(smtp, tmp_path, f), max_message_size=10 * 1024 * 1024).ready()
    s.cmd("MAIL FROM:<a@sina.test>")
    s.cmd("RCPT TO:<user1@example.test>")
    s.cmd("DATA")
    line = b"y" * 998 + b"\r\n"
    s.send(b"Subject: big\r\n\r\n" + line * 600)
    assert s.send(".\r\n")[-1].startswith("250")
    data = bytes(smtp.sink.committed[-1].data)
    assert data.endswith(b"Subject: big\r\n\r\n" + line * 600)
    assert list(tmp_path.iterdir()) == []


def test_filters_text_goes_to_the_commit_and_its_buffer_lives_until_it_fired(
    smtp, tmp_path
) -> None:
    """Accepted, the filters' headers are written and the text is handed to commit() (its
    worker thread reads the buffer): the buffer, spilled to a file here, still gives the
    whole text while the commit runs, and only its 250 comes after."""
    f = Scripted(message=FilterVerdict(headers=("X-Spam-Score: 0.1",)))
    s = smtp(filters=chain_of(smtp, tmp_path, f), max_message_size=10 * 1024 * 1024).ready()
    smtp.sink.hold = True
    s.cmd("MAIL FROM:<a@sina.test>")
    s.cmd("RCPT TO:<user1@example.test>")
    s.cmd("DATA")
    line = b"z" * 998 + b"\r\n"
    s.send(b"Subject: big\r\n\r\n" + line * 400)  # 400 KB: past the buffer's memory part
    assert s.send(".\r\n") == []  # no reply while the commit runs
    ((rest, held),) = smtp.sink.held
    message = smtp.sink.begun[-1]
    assert bytes(message.data) == b"X-Spam-Score: 0.1\r\n"  # write() took the headers only
    text = b"".join(rest)
    assert text.startswith(b"Received: from ") and text.endswith(
        b"Subject: big\r\n\r\n" + line * 400
    )
    held.callback(message.queue_id)
    assert s.read()[-1].startswith("250 2.0.0 Ok: queued as")


def test_commit_says_the_sender_waits_only_with_the_text_in_memory(smtp, tmp_path) -> None:
    """commit(rest) gets rest as bytes (the text in memory, a client waiting: the queue may
    relay it at once) without filters (b"") and through filters with the text still in the
    buffer's memory; a text the buffer spilled to a file goes as chunks for the commit's
    thread to read."""
    s = smtp().ready()
    assert send_message(s).startswith("250 2.0.0 Ok: queued as")
    assert smtp.sink.waiting == smtp.sink.committed == [smtp.sink.begun[-1]]

    f = Scripted(message=FilterVerdict(headers=("X-Spam-Score: 0.1",)))
    s = smtp(filters=chain_of(smtp, tmp_path, f), max_message_size=10 * 1024 * 1024).ready()
    assert send_message(s).startswith("250 2.0.0 Ok: queued as")
    small = smtp.sink.begun[-1]
    assert smtp.sink.waiting[-1] is small and smtp.sink.committed[-1] is small
    assert bytes(small.data).endswith(b"Subject: hi\r\n\r\nhello\r\n")

    s.cmd("MAIL FROM:<a@sina.test>")
    s.cmd("RCPT TO:<user1@example.test>")
    s.cmd("DATA")
    line = b"z" * 998 + b"\r\n"
    s.send(b"Subject: big\r\n\r\n" + line * 400)  # past the buffer's memory part
    assert s.send(".\r\n")[-1].startswith("250 2.0.0 Ok: queued as")
    big = smtp.sink.begun[-1]
    assert smtp.sink.committed[-1] is big and smtp.sink.waiting[-1] is small
    assert bytes(big.data).endswith(line * 400)


def test_filters_trusted_relay_client_told_to_the_filters(smtp, tmp_path) -> None:
    """A client the access map lets relay (our own hosts) goes through the chain too, marked
    trusted at every stage, so each filter decides (DKIM signs its mail; SPF, DNSBL, DMARC
    and greylisting leave it alone)."""
    from appliance.interfaces import Verdict

    smtp.policy.connect = Verdict(relay=True)
    seen: list[bool] = []

    class Recording(Scripted):
        def connect(self, facts):
            seen.append(facts.trusted)
            return super().connect(facts)

        def wants_body(self, envelope):
            seen.append(envelope.trusted and envelope.ours)
            return True

    f = Recording()
    s = smtp(filters=chain_of(smtp, tmp_path, f)).ready()
    assert send_message(s).startswith("250")
    assert seen and all(seen)
    assert "message" in f.asked


def test_filters_submission_gets_same_chain(smtp, tmp_path) -> None:
    """On 587 after AUTH the chain is asked too (each filter decides what it skips)."""
    import base64

    f = Scripted()
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    s = smtp(SUBMISSION, filters=chain_of(smtp, tmp_path, f), plaintext_networks=loopback).ready()
    token = base64.b64encode(b"\0user1@example.test\0secret").decode()
    assert s.cmd(f"AUTH PLAIN {token}").startswith("235")
    s.cmd("MAIL FROM:<user1@example.test>")
    s.cmd("RCPT TO:<user2@example.test>")
    s.cmd("DATA")
    assert s.send(DATA)[-1].startswith("250")
    assert "message" in f.asked
