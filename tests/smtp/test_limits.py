"""SMTP under abuse, on the reactor's clock: the shared login throttle, deadlines that bytes
do not restart, stress mode with shared connection slots, back-pressure, clean replies."""

from __future__ import annotations

import ipaddress

from appliance.auth.throttle import FailureThrottle
from appliance.limits import ConnectionSlots, SessionLimits
from tests.smtp.conftest import Session
from tests.smtp.test_server import b64

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
TIMEOUT = "421 4.4.2 mail.example.test Error: timeout exceeded"


def auth_line(user: str, password: str) -> str:
    return "AUTH PLAIN " + b64(f"\0{user}\0{password}") + "\r\n"


def throttled(smtp, **kw):
    """A first session whose factory has a real throttle; more sessions via more()."""
    s = smtp(plaintext_networks=LOOPBACK, **kw)
    s.factory.throttle = FailureThrottle(smtp.clock, base_delay=1.0, max_failures=10)
    return s


def more(first: Session, peer: str = "127.0.0.1") -> Session:
    return Session(first.factory, first.clock, peer)


# ---------------------------------------------------------------------------- the throttle


def test_forty_parallel_auth_attempts_right_password_last_no_235(smtp) -> None:
    """39 wrong and then the right password, all sent before any answer: ten are counted and
    answered 535 after their delays, the rest (the right one too) get 421 without a check."""
    first = throttled(smtp, max_connections_per_ip=50)
    sessions = [first.ready()] + [more(first).ready() for _ in range(39)]
    replies = []
    for s in sessions[:-1]:
        replies.append(s.send(auth_line("user2@example.test", "guess")))
    replies.append(sessions[-1].send(auth_line("user1@example.test", "secret")))
    smtp.clock.advance(60)
    replies = [r + s.read() for r, s in zip(replies, sessions, strict=True)]
    flat = [line for r in replies for line in r]
    assert not any(line.startswith("235") for line in flat)
    assert flat.count("535 5.7.8 Error: authentication failed") == 10
    assert flat.count("421 4.7.0 mail.example.test Error: too many failed logins") == 30
    assert replies[-1] == ["421 4.7.0 mail.example.test Error: too many failed logins"]
    refused = [line for line in smtp.logs if "login refused" in line]
    assert len(refused) == 30 and all("[127.0.0.1]" in line for line in refused)


def test_success_for_one_user_keeps_failures_for_another(smtp) -> None:
    """Four rounds of nine parallel guesses for user2, each followed by a good login as
    user1: the good logins clear nothing of user2's, so the second round is blocked."""
    first = throttled(smtp, max_connections_per_ip=100)
    outcomes: list[str] = []
    for _ in range(4):
        guesses = [more(first).ready() for _ in range(9)]
        sent = [s.send(auth_line("user2@example.test", "guess")) for s in guesses]
        smtp.clock.advance(60)
        outcomes += [(r + s.read())[-1][:3] for r, s in zip(sent, guesses, strict=True)]
        good = more(first).ready()
        outcomes.append("good:" + good.cmd(auth_line("user1@example.test", "secret").strip()))
    assert outcomes[:10] == ["535"] * 9 + ["good:235 2.7.0 Authentication successful"]
    assert outcomes.count("535") == 10  # 9 in round one, 1 in round two, then blocked
    assert "235" not in "".join(outcomes[10:])


def test_blocked_user_gets_454_without_a_check(smtp) -> None:
    """A user past its own limit (from many clients) gets 454 4.7.0; the client stays open."""
    first = throttled(smtp)
    first.factory.throttle.max_user_failures = 3
    first.factory.throttle.users.limit = 3
    for i in range(3):
        s = more(first, f"127.0.0.{10 + i}").ready()
        s.send(auth_line("user1@example.test", "guess"))
    smtp.clock.advance(60)
    s = more(first, "127.0.0.99").ready()
    assert s.cmd(auth_line("user1@example.test", "secret").strip()) == (
        "454 4.7.0 Too many failed logins for this user, try again later"
    )
    assert not s.transport.disconnecting
    assert s.cmd("NOOP") == "250 2.0.0 Ok"


def test_backend_unavailable_attempt_not_counted(smtp) -> None:
    """When the backend cannot answer, 454 4.7.0 and the attempt is not held against anyone."""
    from twisted.internet import defer

    from appliance.errors import ApplianceError

    s = throttled(smtp).ready()

    def down(credentials):
        return defer.fail(ApplianceError("directory down"))

    s.factory.authenticator.authenticate = down  # type: ignore[method-assign]
    try:
        assert s.cmd(auth_line("user1@example.test", "x").strip()) == (
            "454 4.7.0 Temporary authentication failure"
        )
    finally:
        del s.factory.authenticator.authenticate
    assert s.factory.throttle.recent_failures("127.0.0.1") == 0


# ---------------------------------------------------------------------------- deadlines


def test_client_dripping_a_byte_a_second_cut_by_command_deadline(smtp) -> None:
    """A NOOP sent one byte a second, never finished: every byte is input, but the request
    deadline (command_timeout) does not restart, so 421 4.4.2 comes on time."""
    s = smtp(limits=SessionLimits(idle_timeout=60, command_timeout=30)).ready()
    for i in range(29):
        assert s.send(b"N") == [], f"cut after {i} s"
        smtp.clock.advance(1)
    smtp.clock.advance(1.5)
    assert s.read() == [TIMEOUT]
    assert s.transport.disconnecting
    assert any(line.startswith("timeout after EHLO from") for line in smtp.logs)


def test_complete_commands_each_get_a_new_deadline(smtp) -> None:
    """A client sending whole commands slowly but steadily is not cut."""
    s = smtp(limits=SessionLimits(command_timeout=30, idle_timeout=60)).ready()
    for _ in range(10):
        smtp.clock.advance(20)
        assert s.cmd("NOOP") == "250 2.0.0 Ok"


def test_greeting_deadline(smtp) -> None:
    """Connect, then only NOOPs: the greeting deadline passes before EHLO; after EHLO it is
    gone."""
    s = smtp(limits=SessionLimits(greeting_timeout=20, command_timeout=300))
    s.read()
    for _ in range(3):
        smtp.clock.advance(6)
        assert s.cmd("NOOP") == "250 2.0.0 Ok"
    smtp.clock.advance(3)
    assert s.read() == [TIMEOUT]
    t = smtp(limits=SessionLimits(greeting_timeout=20)).ready()  # EHLO done at once
    smtp.clock.advance(25)
    assert t.read() == [] and t.cmd("NOOP") == "250 2.0.0 Ok"


def data_started(smtp, limits: SessionLimits) -> Session:
    s = smtp(limits=limits).ready()
    assert s.cmd("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok"
    assert s.cmd("RCPT TO:<user1@example.test>") == "250 2.1.5 Ok"
    assert s.cmd("DATA").startswith("354")
    return s


def test_data_below_min_rate_cut(smtp) -> None:
    """DATA dripping a byte a second (below 500 B/s): the DATA deadline runs out."""
    s = data_started(smtp, SessionLimits(data_timeout=30, min_data_rate=500, idle_timeout=60))
    for _ in range(29):
        s.send(b"x")
        smtp.clock.advance(1)
    assert s.read() == []
    smtp.clock.advance(2)
    assert s.read() == [TIMEOUT]
    assert any(line.startswith("timeout after DATA from") for line in smtp.logs)
    assert smtp.sink.committed == []


def test_data_at_min_rate_goes_on(smtp) -> None:
    """A sender keeping 1000 B/s over 2 minutes (deadline 30 s, 500 B/s) is never cut."""
    s = data_started(smtp, SessionLimits(data_timeout=30, min_data_rate=500, idle_timeout=60))
    for _ in range(120):
        s.send(b"y" * 98 + b"\r\n" + b"z" * 898 + b"\r\n")
        smtp.clock.advance(1)
    assert s.read() == []
    assert s.cmd(".").startswith("250 2.0.0 Ok: queued as")


def test_deadline_paused_while_server_busy(smtp) -> None:
    """Time the server spends (a delayed 535) is not charged to the client's deadline."""
    s = throttled(smtp, limits=SessionLimits(command_timeout=10, idle_timeout=10))
    s.ready()
    s.factory.throttle.base_delay = 8.0
    s.send(auth_line("user1@example.test", "wrong"))
    smtp.clock.advance(8)
    assert s.read() == ["535 5.7.8 Error: authentication failed"]
    smtp.clock.advance(9)
    assert s.cmd("NOOP") == "250 2.0.0 Ok"


# ---------------------------------------------------------------------------- stress mode


def test_fresh_client_served_when_slow_clients_hold_every_slot(smtp) -> None:
    """Ten slots held by slow unauthenticated clients (from a few IPs), one logged in: a new
    client gets its 220 at once; the longest-idle session of the busiest IP makes room."""
    first = smtp(plaintext_networks=LOOPBACK, max_connections=10, max_connections_per_ip=6)
    first.ready()
    assert first.cmd(auth_line("user1@example.test", "secret").strip()).startswith("235")
    held = []
    for i in range(9):
        smtp.clock.advance(0.5)
        s = more(first, "127.0.0.2" if i < 6 else "127.0.0.3")
        s.read()
        s.send(b"NO")  # a command trickling in
        held.append(s)
    smtp.clock.advance(0.5)
    fresh = more(first, "127.0.0.50")
    assert fresh.read() == ["220 mail.example.test ESMTP mailappliance"]
    assert held[0].read() == [
        "421 4.7.0 mail.example.test Error: too many connections, closing idle session"
    ]
    assert held[0].transport.disconnecting
    assert not first.transport.disconnecting  # authenticated: kept
    assert all(not s.transport.disconnecting for s in held[1:])
    assert first.factory.slots.evicted == 1


def test_stress_shrinks_deadlines_of_existing_sessions(smtp) -> None:
    """At 80% of the slots every session's limits become stress_timeout (10 s): idle ones
    are closed after 10 s until the count is below 80% (a closing session gives its slot
    back at once), and the rest have the normal limits again."""
    first = smtp(max_connections=10, limits=SessionLimits(stress_timeout=10)).ready()
    others = [more(first).ready() for _ in range(6)]
    smtp.clock.advance(30)
    assert first.read() == []  # 7 of 10: not stressed, the 300 s limits hold
    others += [more(first).ready() for _ in range(2)]  # 9 of 10: stressed
    assert first.factory.slots.stressed
    smtp.clock.advance(11)
    closed = [s for s in [first, *others] if s.read() == [TIMEOUT]]
    assert closed[:1] == [first] and len(closed) == 2  # 9 -> 7, below the 8 of 80%
    assert not first.factory.slots.stressed
    smtp.clock.advance(260)  # 301 s: the normal idle limit of those idle since t=0
    assert sum(s.read() == [TIMEOUT] for s in others) == 5


def test_per_ip_share_counts_across_ports(smtp) -> None:
    """The SMTP ports share slots: an IP at its share on 25 is refused on 587 as well."""
    from appliance.smtp.factory import SMTPFactory
    from appliance.smtp.settings import SUBMISSION

    slots = ConnectionSlots(100, 2)
    mta = smtp()
    mta.factory.slots = slots
    a, b = more(mta), more(mta)
    sub = SMTPFactory(
        mta.factory.settings,
        SUBMISSION,
        sink=mta.factory.sink,
        policy=mta.factory.policy,
        authenticator=None,
        tls=None,
        throttle=None,
        events=mta.factory.events,
        reactor=smtp.clock,
        slots=slots,
    )
    c = Session(sub, smtp.clock, "127.0.0.1")
    assert a.read()[0].startswith("220") and b.read()[0].startswith("220")
    assert c.read() == ["421 4.7.0 mail.example.test Error: too many connections"]
    d = Session(sub, smtp.clock, "127.0.0.2")
    assert d.read()[0].startswith("220")


# ---------------------------------------------------------------------------- back-pressure


def test_not_reading_client_stops_being_read_and_answered(smtp) -> None:
    """When the transport says its buffer is full (pauseProducing), pipelined commands wait;
    past MAX_PIPELINED unanswered bytes the socket is no longer read; once the replies drain
    everything is answered in order."""
    from appliance.smtp.connection import MAX_PIPELINED

    s = smtp().ready()
    assert s.transport.producer is s.proto
    s.proto.pauseProducing()
    assert s.send("NOOP\r\nRSET\r\nNOOP\r\n") == []
    assert s.transport.producerState == "producing"  # a TLS handshake may still need reading
    n = MAX_PIPELINED // 6 + 1
    assert s.send(b"NOOP\r\n" * n) == []
    assert s.transport.producerState == "paused"
    s.proto.resumeProducing()
    assert s.transport.producerState == "producing"
    assert s.read() == ["250 2.0.0 Ok"] * (3 + n)


def test_deadline_aborts_a_client_that_does_not_read(smtp) -> None:
    """A timeout on a client that reads nothing cuts the connection instead of waiting for the
    replies to drain for ever."""
    s = smtp(limits=SessionLimits(command_timeout=30)).ready()
    s.proto.pauseProducing()
    smtp.clock.advance(31)
    assert s.transport.disconnecting
    assert getattr(s.transport, "aborted", True)


# ---------------------------------------------------------------------------- clean replies


def test_replies_never_echo_control_bytes(smtp) -> None:
    """A NUL, an escape sequence, a DEL or non-ASCII without SMTPUTF8 in a parameter come
    back as '?'."""
    s = smtp().ready()
    for junk in ("X\x00=1", "\x1b[31mX=1", "X\x7f=1", "X\u202e=1", "Xé=1"):
        reply = s.cmd(f"MAIL FROM:<a@example.org> {junk}")
        assert reply.startswith("5"), reply
        assert reply.isascii() and reply.isprintable(), repr(reply)
        assert "?" in reply
    raw = s.transport.value()
    assert b"\x00" not in raw and b"\x1b" not in raw
