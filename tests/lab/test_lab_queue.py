"""sina down, then up: 163 defers with the reason, `queue list` shows it, and the message
arrives at the next retry (short schedule) or only after `queue flush` (long schedule); `queue
hold`, `release` and `delete` on a deferred message.

Each lab first sends one message through, so 163's resolver has sina.com's MX and address
cached: with sina stopped its DNS is gone too, and the deferral is then the connection's.
A connection 163 keeps idle when sina stops is dropped, not used (that case on its own:
test_relay_cached_connection_closed_by_peer_not_used).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from appliance.queue.inspect import list_queue
from tests.lab.conftest import (
    Appliance,
    dsn_report,
    dsns_for,
    lab_with,
    maillog,
    queue_cli,
    queue_entry,
    running,
    settled,
    start,
    status_line,
    submit,
    token,
    unfolded,
    wait_for,
    wait_line,
    wait_message,
    with_token,
)

SENDER, RCPT = "user1@163.com", "user3@sina.com"


def warmed_lab(
    tmp_path, schedule: str, cache: str = "2s", warning: str = "0"
) -> Iterator[dict[str, Appliance]]:
    labs = lab_with(
        tmp_path,
        both={
            "queue": {"retry_schedule": schedule, "delay_warning": warning},
            "relay": {"connection_cache_time": cache},
        },
    )
    with running(labs) as appliances:
        tok = token()
        submit(appliances["163"], SENDER, [RCPT], tok)
        wait_message(appliances["sina"], RCPT, tok)
        yield appliances


@pytest.fixture(scope="module")
def short_lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    """Both appliances, retry_schedule = 1s, a delay notice after 2s."""
    yield from warmed_lab(tmp_path_factory.mktemp("retry-short"), "1s", warning="2s")


@pytest.fixture(scope="module")
def long_lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    """Both appliances, retry_schedule = 1h: nothing is retried within a test by itself."""
    yield from warmed_lab(tmp_path_factory.mktemp("retry-long"), "1h")


@pytest.fixture(scope="module")
def cache_lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    """Both appliances, retry_schedule = 1h, idle relay connections kept 10s."""
    yield from warmed_lab(tmp_path_factory.mktemp("retry-cache"), "1h", "10s")


class SinaDown:
    """sina stopped for a block; started again however the block ends."""

    def __init__(self, sina: Appliance) -> None:
        self.sina = sina

    def __enter__(self) -> SinaDown:
        self.sina.stop()
        return self

    def up(self) -> None:
        if self.sina.proc is None or self.sina.proc.poll() is not None:
            start(self.sina)

    def __exit__(self, *exc: object) -> None:
        self.up()


def deferred_refused(a: Appliance, qid: str) -> str:
    """163's deferral line for qid: the connection to sina's MX host was refused."""
    line = status_line(a, qid, RCPT, "deferred")
    assert line.endswith(
        f"status=deferred (connect to mail.sina.com[127.0.1.4]:{a.ports[25]}: Connection refused)"
    ), line
    assert ", relay=none, " in line and ", dsn=4.4.1, " in line, line  # 4.4.1: no answer
    return line


def absent_for(predicate, seconds: float) -> bool:
    """True if predicate stays false for the whole time (a bounded negative check)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return False
        time.sleep(0.05)
    return True


def test_relay_next_hop_down_deferred_then_delivered_by_retry(short_lab) -> None:
    """sina down: deferred (Connection refused), listed, one delay notice; sina up: the retry delivers."""
    a, sina = short_lab["163"], short_lab["sina"]
    tok = token()
    with SinaDown(sina) as down:
        qid = submit(a, SENDER, [RCPT, "user2@163.com"], tok)
        deferred_refused(a, qid)
        wait_message(a, "user2@163.com", tok)
        entry = queue_entry(a, qid)
        assert entry, queue_cli(a, "list").stdout
        assert f"(connect to mail.sina.com[127.0.1.4]:{a.ports[25]}: Connection refused)" in entry
        assert re.search(rf"^\s+{re.escape(RCPT)}$", entry, re.M), entry
        assert "user2@163.com" not in entry, entry  # done: only the remote one waits
        assert re.search(r"^\s+next try: (now|in 1s)$", entry, re.M), entry
        assert f"<{SENDER}>" not in entry and SENDER in entry
        # still deferred at the next retries while sina is down
        wait_for(
            lambda: len(re.findall(rf"{qid}: to=<{RCPT}>, [^\n]*status=deferred", maillog(a))) >= 2,
            what="a second deferral by retry",
        )
        notice = wait_line(a, rf"{qid}: sender delay notification: ([0-9A-F]+)").group(1)
        status_line(a, notice, SENDER, "sent")
        down.up()
        data = wait_message(sina, RCPT, tok)
    assert tok.encode() in data
    (warning,) = dsns_for(a, SENDER, tok)
    msg, text, _, (rcpt,), returned = dsn_report(warning)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    assert "THIS IS A WARNING ONLY" in text
    assert rcpt["Action"] == "delayed", str(rcpt)
    # the notice's Status is the maillog's dsn= (4.4.1, no answer from host)
    assert rcpt["Status"] == "4.4.1", str(rcpt)
    assert unfolded(rcpt["Final-Recipient"]) == f"rfc822; {RCPT}"
    assert rcpt["Will-Retry-Until"] is not None
    assert returned.get_content_type() == "text/rfc822-headers"
    sent = status_line(a, qid, RCPT, "sent")
    assert f"relay=mail.sina.com[127.0.1.4]:{a.ports[25]}, " in sent
    wait_line(a, rf"{qid}: removed")
    wait_for(lambda: settled(a), what="163 queue empty")
    assert queue_cli(a, "list", check=True).stdout.strip() == "Mail queue is empty"
    assert len(dsns_for(a, SENDER, tok)) == 1  # the delay notice, once
    assert len(with_token(a, "user2@163.com", tok)) == 1


def test_queue_flush_long_schedule_delivers_only_when_flushed(long_lab) -> None:
    """retry_schedule = 1h: with sina back the message waits until `queue flush ID`, then the queue is empty."""
    a, sina = long_lab["163"], long_lab["sina"]
    tok = token()
    with SinaDown(sina) as down:
        qid = submit(a, SENDER, [RCPT], tok)
        deferred_refused(a, qid)
        entry = queue_entry(a, qid)
        assert "Connection refused)" in entry, entry
        assert re.search(r"next try: in (59m|1h)$", entry, re.M), entry
        down.up()
    assert absent_for(lambda: with_token(sina, RCPT, tok), 1.5), "sent before the flush"
    assert qid in {s.queue_id for s in list_queue(a.state / "queue")}, "left before the flush"
    out = queue_cli(a, "flush", qid, check=True)
    assert out.stdout.strip() == "flushed 1 message(s)", out.stdout
    wait_message(sina, RCPT, tok)
    assert "dsn=2.0.0" in status_line(a, qid, RCPT, "sent")
    wait_line(a, rf"{qid}: removed")
    wait_for(lambda: settled(a), what="163 queue empty")
    assert queue_cli(a, "list", check=True).stdout.strip() == "Mail queue is empty"


def test_queue_hold_release_delete_deferred_messages(long_lab) -> None:
    """Held: kept across restart and flush, sent at release; deleted: never sent; stopped: list works, flush refused."""
    a, sina = long_lab["163"], long_lab["sina"]
    kept, dropped = token(), token()
    with SinaDown(sina) as down:
        held_id = submit(a, SENDER, [RCPT], kept)
        gone_id = submit(a, SENDER, [RCPT], dropped)
        deferred_refused(a, held_id)
        deferred_refused(a, gone_id)

        out = queue_cli(a, "hold", held_id, check=True)
        assert out.stdout.strip() == "held 1 message(s)"
        show = queue_cli(a, "show", held_id, check=True).stdout
        assert "queue:     deferred (on hold)" in show, show
        assert re.search(rf"{re.escape(RCPT)}: deferred, relay=none, .*Connection refused\)", show)

        out = queue_cli(a, "delete", gone_id, check=True)
        assert out.stdout.strip() == "deleted 1 message(s)"
        wait_line(a, rf"{gone_id}: removed")

        # 163 stopped: the files still tell (held, the deleted one gone); control needs it
        a.stop()
        try:
            entry = queue_entry(a, held_id)
            assert entry.startswith(f"{held_id}!"), entry
            assert re.search(r"^\s+next try: when released$", entry, re.M), entry
            assert queue_entry(a, gone_id) == ""
            stopped = queue_cli(a, "flush")
            assert stopped.returncode != 0 and "not running" in stopped.stderr, stopped
            assert "Traceback" not in stopped.stderr
        finally:
            start(a)
        down.up()

    refused = queue_cli(a, "flush", held_id)
    assert refused.returncode != 0
    assert f"{held_id} is on hold: release it first" in refused.stderr, refused
    assert re.fullmatch(
        r"flushed \d+ message\(s\)", queue_cli(a, "flush", check=True).stdout.strip()
    )
    assert absent_for(lambda: with_token(sina, RCPT, kept), 1.0), "a held message was sent"
    assert len(re.findall(rf"{held_id}: to=<", maillog(a))) == 1  # not tried since the hold

    out = queue_cli(a, "release", held_id, check=True)
    assert out.stdout.strip() == "released 1 message(s)"
    wait_message(sina, RCPT, kept)
    status_line(a, held_id, RCPT, "sent")
    wait_for(lambda: settled(a), what="163 queue empty")
    assert with_token(sina, RCPT, dropped) == []
    assert f"{gone_id}: to=<{RCPT}>, relay=mail.sina.com" not in maillog(a)


def test_relay_cached_connection_closed_by_peer_not_used(cache_lab) -> None:
    """An idle connection sina closed (restart) is not reused: the next message is sent at once."""
    a, sina = cache_lab["163"], cache_lab["sina"]
    first = token()
    submit(a, SENDER, [RCPT], first)
    wait_message(sina, RCPT, first)  # 163 now holds an idle connection for 10s
    sina.stop()
    start(sina)
    tok = token()
    qid = submit(a, SENDER, [RCPT], tok)
    line = status_line(a, qid, RCPT)
    assert "status=sent" in line, line
    wait_message(sina, RCPT, tok, timeout=5)
