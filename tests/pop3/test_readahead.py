"""Small messages read ahead of RETR (appliance.pop3.readahead) through a whole session:
what is read when, within what bounds, and that every answer is still exactly the message.

Most tests follow the windows through the worker pool (`pooled`: [pop3] quick_store_calls
off, as every read is once reads are found slow), where each read is a job the harness
records; the last ones check the default, windows read on the reactor by the listener's
QuickCalls, and its way back to the pool."""

from __future__ import annotations

import dataclasses
import os

import pytest

from appliance.pop3.readahead import BUDGET, WINDOW
from appliance.pop3.stream import stuffed
from tests.pop3.conftest import Harness


@pytest.fixture
def pooled(pop: Harness) -> Harness:
    """The harness with quick_store_calls off: every window read is a pool job."""
    pop.settings = dataclasses.replace(pop.settings, quick_store_calls=False)
    return pop


def small(i: int, size: int = 200) -> bytes:
    head = f"Subject: {i}\r\n\r\n".encode()
    body = (b".dot\r\n" + b"x" * 70 + b"\r\n") * (size // 78 + 1)
    return head + body[: max(size - len(head) - 2, 0)] + b"\r\n"


def answer(msg: bytes) -> bytes:
    body, end = stuffed(msg)
    return b"+OK %d octets\r\n" % len(msg) + body + end


def session(pop: Harness, messages: list[bytes]):
    for m in messages:
        pop.deliver(m)
    c = pop.local()
    assert c.login().startswith("+OK Logged in")
    pop.pool.calls.clear()
    return c


def held(c) -> list[int]:
    return sorted(c.session.readahead.held)


def test_window_read_in_one_job_then_next_window_once_half_used(pooled: Harness) -> None:
    pop = pooled
    """RETR 1 reads messages 1..WINDOW in one job; the next window is read once half of the
    first is used; every answer is the message, stuffed, byte for byte."""
    msgs = [small(i) for i in range(WINDOW * 2 + 5)]
    c = session(pop, msgs)
    assert c.send(b"RETR 1\r\n") == answer(msgs[0])
    assert pop.pool.calls == ["read"]
    assert held(c) == list(range(2, WINDOW + 1))
    half = WINDOW // 2
    for n in range(2, half):
        assert c.send(b"RETR %d\r\n" % n) == answer(msgs[n - 1])
    assert pop.pool.calls == ["read"]
    assert c.send(b"RETR %d\r\n" % half) == answer(msgs[half - 1])
    assert pop.pool.calls == ["read", "read"]  # the second window, from WINDOW + 1
    assert held(c) == list(range(half + 1, 2 * WINDOW + 1))
    for n in range(half + 1, len(msgs) + 1):
        assert c.send(b"RETR %d\r\n" % n) == answer(msgs[n - 1])
    assert pop.pool.calls.count("read") == 3
    assert c.session.readahead.held == {}


def test_window_bounded_by_budget(pooled: Harness) -> None:
    pop = pooled
    """Bigger messages: a window holds no more than BUDGET octets."""
    size = 20 * 1024
    msgs = [small(i, size) for i in range(20)]
    c = session(pop, msgs)
    assert c.send(b"RETR 1\r\n") == answer(msgs[0])
    ra = c.session.readahead
    assert len(held(c)) + 1 == BUDGET // size
    assert ra.held_bytes <= BUDGET


def test_big_message_streamed_and_window_stops_before_it(pooled: Harness) -> None:
    pop = pooled
    """A message over 64 KiB is never read ahead: a window ends before it, the next one
    skips it, and it is streamed."""
    big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 100
    msgs = [small(0), small(1), big, small(3), small(4)]
    c = session(pop, msgs)
    assert c.send(b"RETR 1\r\n") == answer(msgs[0])
    assert pop.pool.calls == ["read", "read"]  # 1..2, then (half of it used) 4..5
    assert held(c) == [2, 4, 5]
    assert c.send(b"RETR 2\r\n") == answer(msgs[1])
    assert c.send(b"RETR 3\r\n") == answer(big)
    assert "_open_first" in pop.pool.calls
    assert c.send(b"RETR 4\r\n") == answer(msgs[3])
    assert held(c) == [5]


def test_message_removed_meanwhile_answered_err_others_fine(pooled: Harness) -> None:
    pop = pooled
    """A message whose file went away (another node, IMAP) before it was read: -ERR for it,
    the others are answered."""
    msgs = [small(i) for i in range(3)]
    c = session(pop, msgs)
    drop = c.session.maildrop
    cur = pop.store.mail_root / "example.test" / "user1" / "Maildir"
    for sub in ("new", "cur"):
        for name in os.listdir(cur / sub):
            if name.startswith(drop.messages[1].key):
                os.unlink(cur / sub / name)
    assert c.send(b"RETR 1\r\n") == answer(msgs[0])
    assert c.send(b"RETR 2\r\n") == b"-ERR [SYS/TEMP] message 2 was removed meanwhile\r\n"
    assert c.send(b"RETR 3\r\n") == answer(msgs[2])


def test_top_keeps_the_bytes_for_the_retr_after_it(pooled: Harness) -> None:
    pop = pooled
    """TOP answers from what was read ahead and keeps it: the RETR after it needs no job."""
    msgs = [small(i) for i in range(3)]
    c = session(pop, msgs)
    assert c.send(b"TOP 1 0\r\n") == b"+OK\r\nSubject: 0\r\n\r\n.\r\n"
    assert c.send(b"RETR 1\r\n") == answer(msgs[0])
    assert pop.pool.calls == ["read"]


def test_deleted_messages_not_read(pooled: Harness) -> None:
    pop = pooled
    """Messages marked deleted are left out of a window."""
    msgs = [small(i) for i in range(5)]
    c = session(pop, msgs)
    assert c.send(b"DELE 2\r\nDELE 4\r\n").count(b"+OK") == 2
    assert c.send(b"RETR 1\r\n") == answer(msgs[0])
    assert held(c) == [3, 5]


def test_jump_lets_what_the_client_passed_go(pooled: Harness) -> None:
    pop = pooled
    """A client jumping ahead: what it skipped is let go, so memory stays bounded."""
    msgs = [small(i) for i in range(WINDOW * 3)]
    c = session(pop, msgs)
    c.send(b"RETR 1\r\n")
    far = 2 * WINDOW + 1
    assert c.send(b"RETR %d\r\n" % far) == answer(msgs[far - 1])
    assert held(c) and min(held(c)) > far
    assert c.session.readahead.held_bytes <= BUDGET


def test_pipelined_retrs_wait_for_the_read_in_flight_in_order(pooled: Harness) -> None:
    pop = pooled
    """While the window is still being read, pipelined RETRs wait; then all are answered
    in order."""
    msgs = [small(i) for i in range(4)]
    c = session(pop, msgs)
    pop.pool.hold = True
    assert c.send(b"RETR 1\r\nRETR 2\r\nLIST 3\r\nRETR 3\r\n") == b""
    pop.pool.release()
    expected = answer(msgs[0]) + answer(msgs[1]) + b"+OK 3 %d\r\n" % len(msgs[2])
    assert c.read() == expected + answer(msgs[2])


def test_pipelined_retrs_stop_while_the_client_does_not_read(pooled: Harness) -> None:
    pop = pooled
    """Hundreds of pipelined RETRs and a client that reads nothing: answering stops once the
    transport's buffer is full, and goes on when it drains."""
    msgs = [small(i, 4000) for i in range(200)]
    c = session(pop, msgs)
    t = c.transport

    def full(data: bytes, write=t.write) -> None:
        write(data)
        if len(t.value()) > 64 * 1024:
            c.session.pauseProducing()

    t.write = full
    out = c.send(b"".join(b"RETR %d\r\n" % n for n in range(1, 201)))
    assert c.session.write_blocked and len(out) < 200 * 1024
    while c.session.write_blocked:
        c.session.resumeProducing()
        out += c.read()
    assert out == b"".join(answer(m) for m in msgs)


def reads(c) -> list[int]:
    """The first message of each window read so far (the maildrop's read calls, recorded)."""
    return c.session.maildrop.windows_read


def record_reads(c) -> None:
    drop = c.session.maildrop
    drop.windows_read = []
    read = drop.read

    def recorded(numbers, limit):
        numbers = list(numbers)
        drop.windows_read.append(numbers[0])
        return read(numbers, limit)

    drop.read = recorded


def test_windows_read_on_the_reactor_by_default(pop: Harness) -> None:
    """[pop3] quick_store_calls (on by default): each window is read at once, inline, by
    the listener's QuickCalls; no pool job; the same windows, the same answers."""
    assert pop.settings.quick_store_calls
    msgs = [small(i) for i in range(WINDOW * 2 + 5)]
    c = session(pop, msgs)
    record_reads(c)
    assert c.send(b"RETR 1\r\n") == answer(msgs[0])
    assert held(c) == list(range(2, WINDOW + 1))
    for n in range(2, len(msgs) + 1):
        assert c.send(b"RETR %d\r\n" % n) == answer(msgs[n - 1])
    assert reads(c) == [1, WINDOW + 1, 2 * WINDOW + 1]
    assert "read" not in pop.pool.calls and "_open_first" not in pop.pool.calls
    assert c.session.factory.quick.slow_calls == 0


def test_slow_reads_send_the_windows_to_the_pool(pop: Harness) -> None:
    """Reads found slow (here: every call counts as slow) send every window read after the
    third strike to the pool, for the listener's cooldown; answers stay exact."""
    msgs = [small(i) for i in range(WINDOW * 5)]
    c = session(pop, msgs)
    quick = c.session.factory.quick
    quick.slow = -1.0  # any call is slow
    record_reads(c)
    for n in range(1, len(msgs) + 1):
        assert c.send(b"RETR %d\r\n" % n) == answer(msgs[n - 1])
    assert len(reads(c)) == 5
    assert quick.slow_calls == quick.strikes  # then the pool: no more timed inline calls
    assert pop.pool.calls.count("recorded") == 5 - quick.strikes


def test_quick_calls_are_the_listeners(pop: Harness) -> None:
    """One QuickCalls per listener: a store found slow by one session sends the next
    session's reads to the pool too."""
    factory = pop.factory()
    assert factory.quick is factory.quick
    assert factory.quick.enabled
    off = dataclasses.replace(pop.settings, quick_store_calls=False)
    pop.settings = off
    assert not pop.factory().quick.enabled


def test_a_big_maildrop_is_read_in_the_pool(pop: Harness, monkeypatch) -> None:
    """A maildrop of more than QUICK_MESSAGES has its windows read by worker jobs (a moved
    message makes a read list the folder: no quick call for a big one)."""
    monkeypatch.setattr("appliance.pop3.session.QUICK_MESSAGES", 3)
    msgs = [small(i) for i in range(4)]
    c = session(pop, msgs)
    assert c.send(b"RETR 1\r\n") == answer(msgs[0])
    assert pop.pool.calls == ["read"]
    assert held(c) == [2, 3, 4]
