"""The IMAP session's limits and error paths over StringTransport: bad arguments to every
command, out-of-state commands, literals split across packets, line and literal limits,
deadlines, connection slots, and random bytes that must never reach a traceback."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from appliance.limits import ConnectionSlots
from tests.imap.conftest import message

BAD_ARGS = [
    "SELECT",
    "SELECT a b",
    "EXAMINE",
    "CREATE",
    "DELETE",
    "RENAME a",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "LIST",
    "LIST a",
    'LIST "" a RETURN',
    'LIST "" a RETURN (BOGUS)',
    'LIST (RECURSIVEMATCH) "" *',
    "LSUB a",
    "STATUS INBOX",
    "STATUS INBOX (BOGUS)",
    "STATUS INBOX MESSAGES",
    "APPEND",
    "APPEND INBOX",
    "APPEND INBOX (\\Bogus) {1+}\r\nx",
    'APPEND INBOX "not a date" {1+}\r\nx',
    "CAPABILITY x",
    "NOOP x",
    "ID",
    'ID ("odd")',
    "ENABLE",
    "NAMESPACE x",
    "AUTHENTICATE",
]
BAD_SELECTED = [
    "FETCH",
    "FETCH 1",
    "FETCH x FLAGS",
    "FETCH 0 FLAGS",
    "FETCH 1:3 FLAGS",
    "FETCH 1 (FLAGS BOGUS)",
    "FETCH 1 BODY[BOGUS]",
    "FETCH 1 BODY[1.2.HEADER.FIELDS]",
    "FETCH 1 BODY[]<1.0>",
    "STORE 1 FLAGS",
    "STORE 1 BOGUS (\\Seen)",
    "STORE 1 +FLAGS (\\Bogus)",
    "COPY 1",
    "MOVE",
    "SEARCH",
    "SEARCH BOGUS",
    "SEARCH SINCE notadate",
    "SEARCH LARGER x",
    "SEARCH RETURN (BOGUS) ALL",
    "SORT",
    "SORT (BOGUS) UTF-8 ALL",
    "SORT (SUBJECT)",
    "THREAD",
    "THREAD BOGUS UTF-8 ALL",
    "UID",
    "UID EXPUNGE",
    "UID FETCH",
    "EXPUNGE x",
]


def test_bad_arguments_get_bad_and_the_session_goes_on(imap) -> None:
    imap.settings = replace(imap.settings, max_errors=1000)
    imap.deliver(message("one"))
    c = imap.logged_in()
    for line in BAD_ARGS:
        out = c.cmd(line)
        assert out.startswith("T BAD") and out.count("\r\n") == 1, (line, out)
    c.ok("SELECT INBOX")
    for line in BAD_SELECTED:
        out = c.cmd(line)
        assert out.startswith("T BAD"), (line, out)
    assert "* 1 FETCH (FLAGS (\\Recent))" in c.ok("FETCH 1 FLAGS")
    assert imap.lines("logout") == []


def test_out_of_state_commands(imap) -> None:
    c = imap.local()
    for line in ("SELECT INBOX", 'LIST "" *', "IDLE", "FETCH 1 FLAGS", "CLOSE", "ENABLE X"):
        assert c.cmd(line).startswith("T BAD"), line
    c.login()
    for line in ("FETCH 1 FLAGS", "STORE 1 FLAGS ()", "CLOSE", "UNSELECT", "EXPUNGE", "CHECK"):
        assert c.cmd(line).startswith("T BAD"), line
    assert c.cmd("STARTTLS").startswith("T BAD")
    assert c.cmd("AUTHENTICATE PLAIN").startswith("T BAD")


def test_read_only_mailbox_refuses_changes(imap) -> None:
    imap.deliver(message("one"))
    c = imap.logged_in()
    c.ok("EXAMINE INBOX")
    for line in ("STORE 1 +FLAGS (\\Seen)", "EXPUNGE", "MOVE 1 Trash"):
        assert c.cmd(line).startswith("T NO [READ-ONLY]"), line
    assert "\\Seen" not in c.ok("FETCH 1 (BODY[] FLAGS)")  # no implicit \Seen either
    c.ok("COPY 1 Trash")


def test_mailbox_errors_are_no(imap) -> None:
    c = imap.logged_in()
    assert c.cmd("RENAME Nope Other").startswith("T NO [NONEXISTENT]")
    assert c.cmd("RENAME Sent Drafts").startswith("T NO [ALREADYEXISTS]")
    assert c.cmd("CREATE a.b").startswith("T NO [CANNOT]")
    assert c.cmd("STATUS Nope (MESSAGES)").startswith("T NO [NONEXISTENT]")
    assert c.cmd("SUBSCRIBE Nope").startswith("T NO [NONEXISTENT]")
    assert c.cmd("EXAMINE Nope").startswith("T NO")
    assert c.cmd("APPEND INBOX {0+}\r\n").startswith("T NO")


def test_literal_split_across_packets_and_zero_length(imap) -> None:
    c = imap.logged_in()
    data = message("split")
    assert c.send(b"a1 APPEND INBOX {%d}\r\n" % len(data)) == "+ OK\r\n"
    for i in range(0, len(data), 7):
        assert c.send(data[i : i + 7]) == ""
    assert c.send(b"\r\n").startswith("a1 OK [APPENDUID")
    out = c.send(b"a2 LOGIN {0}\r\n")
    assert out == "+ OK\r\n"
    assert c.send(b' ""\r\n').startswith("a2 BAD")  # already logged in, but parsed


def test_line_too_long_is_bad_and_skipped(imap) -> None:
    imap.settings = replace(imap.settings, max_command_line=1024)
    c = imap.logged_in()
    out = c.send(b"a1 NOOP " + b"x" * 5000 + b"\r\n")
    assert out.startswith("a1 BAD") and "too long" in out
    assert c.cmd("NOOP").startswith("T OK")


def test_idle_timeout_at_thirty_minutes_and_login_deadline(imap) -> None:
    c = imap.logged_in()
    imap.clock.advance(1799)
    assert not c.closed
    imap.clock.advance(2)
    assert "* BYE" in c.read() and c.closed
    d = imap.connect()
    imap.clock.advance(imap.settings.limits.greeting_timeout + 1)
    assert d.closed


def test_idle_does_not_time_out_before_the_idle_limit_and_bad_done(imap) -> None:
    c = imap.logged_in()
    c.ok("SELECT INBOX")
    assert c.cmd("IDLE") == "+ idling\r\n"
    imap.clock.advance(600)
    assert not c.closed
    assert c.raw("NOT DONE").startswith("a3 BAD Expected DONE")
    assert c.cmd("NOOP").startswith("T OK")


def test_connection_slots_per_ip_and_total(imap) -> None:
    imap.settings = replace(imap.settings, max_connections=3, max_connections_per_ip=2)
    imap.slots = ConnectionSlots.for_service(imap.settings)
    a, b = imap.connect("192.0.2.1"), imap.connect("192.0.2.1")
    third = imap.connect("192.0.2.1")
    assert third.greeting.startswith("* BYE [UNAVAILABLE]") and third.closed
    assert not a.closed and not b.closed
    other = imap.connect("192.0.2.2")
    assert other.greeting.startswith("* OK")


def test_closing_session_gives_its_slot_back_at_once(imap) -> None:
    """After LOGOUT's BYE the close is under way, not done: the same client is served."""
    imap.settings = replace(imap.settings, max_connections_per_ip=1)
    imap.slots = ConnectionSlots.for_service(imap.settings)
    first = imap.connect("192.0.2.1")
    first.cmd("LOGOUT")
    assert first.closed
    again = imap.connect("192.0.2.1")
    assert again.greeting.startswith("* OK") and not again.closed
    first.session.connectionLost(None)
    assert imap.slots.connections_of("192.0.2.1") == 1


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_never_reach_a_traceback(imap, seed) -> None:
    """Garbage, half commands, stray literals and CR/LF in odd places: answers, never a
    logged failure (the test harness fails a test on any logged traceback)."""
    rng = random.Random(seed)
    imap.settings = replace(imap.settings, max_errors=100000, max_literal=4096)
    imap.deliver(message("one"))
    c = imap.logged_in()
    c.ok("SELECT INBOX")
    words = [b"FETCH", b"UID", b"STORE", b"SEARCH", b"1:*", b"(", b")", b"{3}", b"{2+}", b"[",
             b"]", b'"', b"\\", b"BODY[", b"<0.1>", b"*", b"%", b"NIL", b"\x00", b"\xff", b"~{1}",
             b"LIST", b"APPEND", b"INBOX", b"FLAGS", b"\r", b"\n", b" ", b"OR", b"NOT"]  # fmt: skip
    for _ in range(200):
        line = b"t " + b" ".join(rng.choice(words) for _ in range(rng.randint(0, 8)))
        c.send(line + b"\r\n")
    c.send(b"\r\n" * 3)
    out = c.send(b"z NOOP\r\n")
    assert "z OK" in out or c.closed


def test_fetch_of_a_big_folder_waits_for_a_client_that_does_not_read(imap) -> None:
    """Back-pressure: once the transport says its buffer is full (pauseProducing), FETCH
    renders no further batch until it drains; then it goes on to the tagged OK."""
    body = b"y" * 100_000
    for i in range(40):
        imap.deliver(message(f"big {i}", body.decode()))
    c = imap.logged_in()
    c.ok("SELECT INBOX")
    written = []
    real_write = c.transport.write

    def write(data: bytes) -> None:
        written.append(len(data))
        real_write(data)
        if sum(written) > 256 * 1024:
            c.session.pauseProducing()  # what a full transport buffer does

    c.transport.write = write  # type: ignore[method-assign]
    out = c.send(b"f1 FETCH 1:* BODY.PEEK[]\r\n")
    assert "f1 OK" not in out
    held = sum(written)
    assert held < 4 * 1024 * 1024, held  # at most a batch or two, not 4 MB
    written.clear()
    c.transport.write = real_write  # type: ignore[method-assign]
    c.session.resumeProducing()
    rest = c.read()
    assert rest.rstrip().endswith("f1 OK Fetch completed.") and rest.count(" FETCH (") >= 1
    assert (out + rest).count(" FETCH (BODY[] {") == 40


def test_pipelined_command_waits_for_the_one_before_it(imap) -> None:
    """A command pipelined behind APPEND runs only once APPEND has answered, even when the
    look at the folder after it goes to the worker pool (held here, one job at a time):
    never two commands' jobs in the pool at once."""
    from twisted.internet import defer

    c = imap.logged_in()
    c.ok("SELECT INBOX")
    imap.pool.hold = True
    out = c.send(b"a1 APPEND INBOX {1+}\r\nx\r\na2 NOOP\r\n")
    while imap.pool.held:
        assert len(imap.pool.held) == 1, (imap.pool.calls, out)
        (d, f, args) = imap.pool.held.pop()
        defer.maybeDeferred(f, *args).chainDeferred(d)
        out += c.read()
    assert "a1 OK" in out and "a2 OK" in out, out
    assert out.index("a1 OK") < out.index("a2 OK"), out
