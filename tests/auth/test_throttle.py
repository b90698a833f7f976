"""The shared login throttle, driven by a Clock: counting at the start, per client and per
user, what a success clears, memory bounds, and the block state across a restart."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from appliance.auth.throttle import FailureThrottle
from appliance.ip import client_key


def make(**kwargs) -> tuple[FailureThrottle, Clock]:
    clock = Clock()
    clock.advance(10_000)
    return FailureThrottle(clock, **kwargs), clock


def fail(throttle: FailureThrottle, ip: str, user: str = "user1@example.test") -> float:
    attempt = throttle.begin(ip, user)
    assert attempt is not None, f"{ip} as {user} was refused"
    return attempt.failed()


def test_delay_doubles_per_failure_up_to_cap() -> None:
    """Failure replies wait 1, 2, 4, 8, 16, 16... seconds; other clients start at 1."""
    throttle, _ = make(max_failures=100)
    assert throttle.delay_for("192.0.2.1") == 1.0
    assert [fail(throttle, "192.0.2.1") for _ in range(7)] == [1, 2, 4, 8, 16, 16, 16]
    assert throttle.delay_for("192.0.2.2") == 1.0


def test_parallel_attempts_count_when_they_start() -> None:
    """Forty attempts begun before any is answered: the first ten count, the other thirty are
    refused without being checked, the right password among them included."""
    throttle, _ = make(max_failures=10)
    attempts = [throttle.begin("192.0.2.1", "user2@example.test") for _ in range(39)]
    last = throttle.begin("192.0.2.1", "user1@example.test")  # would have been the right one
    assert sum(a is not None for a in attempts) == 10
    assert last is None
    assert not throttle.blocked("192.0.2.1")  # slots taken, not yet failures
    for a in attempts[:10]:
        assert a is not None
        a.failed()
    assert throttle.recent_failures("192.0.2.1") == 10
    assert throttle.blocked("192.0.2.1")


def test_admit_parallel_good_logins_wait_for_a_slot_all_get_in() -> None:
    """Twenty logins of one client at once with the right password: ten are checked at
    once, the others wait instead of failing, and each success lets waiting ones in."""
    throttle, _ = make(max_failures=10)
    admitted = [throttle.admit("192.0.2.1", "user1@example.test") for _ in range(20)]
    now = [d.result for d in admitted if d.called]
    assert len(now) == 10 and all(a is not None for a in now)
    assert not throttle.blocked("192.0.2.1")
    now[0].succeeded()  # a good password: its user's attempts from this client are forgotten
    assert all(d.called and d.result is not None for d in admitted)
    for d in admitted[1:]:
        d.result.succeeded()
    assert throttle.recent_failures("192.0.2.1") == 0


def test_admit_parallel_guesses_at_most_max_failures_checked() -> None:
    """Forty parallel guesses: ten are checked, thirty wait; once the ten have failed the
    client is blocked and the thirty are refused without being checked."""
    throttle, _ = make(max_failures=10)
    admitted = [throttle.admit("192.0.2.1", "user2@example.test") for _ in range(40)]
    checked = [d.result for d in admitted if d.called]
    assert len(checked) == 10
    for a in checked:
        a.failed()
    assert throttle.blocked("192.0.2.1")
    assert all(d.called for d in admitted)
    assert [d.result for d in admitted[10:]] == [None] * 30


def test_admit_waiting_login_cancelled_leaves_no_trace() -> None:
    """A session that goes away while its login waits: the wait is dropped."""
    throttle, _ = make(max_failures=2)
    first = [throttle.admit("192.0.2.1", "user1@example.test") for _ in range(2)]
    waiting = throttle.admit("192.0.2.1", "user1@example.test")
    assert not waiting.called
    waiting.cancel()
    waiting.addErrback(lambda f: None)
    first[0].result.abandoned()
    assert throttle._waiting == {}
    assert throttle.recent_failures("192.0.2.1") == 1  # the other first attempt


def test_admit_blocked_client_refused_at_once() -> None:
    """A client with max_failures failures gets None at once, nothing waits."""
    throttle, _ = make(max_failures=3)
    for _ in range(3):
        fail(throttle, "192.0.2.1")
    d = throttle.admit("192.0.2.1", "user1@example.test")
    assert d.called and d.result is None


def test_success_clears_only_that_user_from_that_client() -> None:
    """Rounds of nine bad guesses for user2, each followed by a good login as user1, from
    one client: the good logins do not hide the guesses, the tenth guess is blocked."""
    throttle, clock = make(max_failures=10)
    for _ in range(9):
        fail(throttle, "192.0.2.1", "user2@example.test")
    good = throttle.begin("192.0.2.1", "user1@example.test")
    assert good is not None
    good.succeeded()
    assert throttle.recent_failures("192.0.2.1") == 9
    fail(throttle, "192.0.2.1", "user2@example.test")
    assert throttle.blocked("192.0.2.1")
    assert throttle.begin("192.0.2.1", "user1@example.test") is None


def test_success_clears_own_failures() -> None:
    """Mistyping one's own password, then getting it right, leaves nothing counted."""
    throttle, _ = make()
    for _ in range(3):
        fail(throttle, "192.0.2.1", "User1@Example.test")
    good = throttle.begin("192.0.2.1", "user1@example.test")
    assert good is not None
    good.succeeded()
    assert throttle.recent_failures("192.0.2.1") == 0
    assert throttle.user_failures("user1@example.test") == 0
    assert throttle.delay_for("192.0.2.1") == 1.0


def test_abandoned_attempt_does_not_count() -> None:
    """The backend could not answer: the attempt is forgotten."""
    throttle, _ = make()
    attempt = throttle.begin("192.0.2.1", "user1@example.test")
    assert attempt is not None and throttle.recent_failures("192.0.2.1") == 1
    attempt.abandoned()
    assert throttle.recent_failures("192.0.2.1") == 0


def test_user_blocked_across_clients_others_unaffected() -> None:
    """Guesses for one user from many clients block that user, not the clients' other users."""
    throttle, _ = make(max_user_failures=5)
    for i in range(5):
        fail(throttle, f"192.0.2.{i}", "victim@example.test")
    assert throttle.blocked("192.0.2.200", "victim@example.test")
    assert throttle.begin("192.0.2.200", "Victim@example.test") is None
    assert not throttle.blocked("192.0.2.200")
    assert throttle.begin("192.0.2.0", "other@example.test") is not None


def test_blocked_until_window_passes() -> None:
    """max_failures within the window block the client; the oldest expiring unblocks it."""
    throttle, clock = make(window=900, max_failures=10)
    for _ in range(9):
        fail(throttle, "192.0.2.1")
        clock.advance(10)
    assert not throttle.blocked("192.0.2.1")
    fail(throttle, "192.0.2.1")
    assert throttle.blocked("192.0.2.1")
    assert not throttle.blocked("192.0.2.9")
    clock.advance(900 - 90)  # the first failure is now exactly window old
    assert not throttle.blocked("192.0.2.1")
    assert throttle.recent_failures("192.0.2.1") == 9
    clock.advance(100)
    assert len(throttle) == 0 or throttle.recent_failures("192.0.2.1") == 0
    assert throttle.delay_for("192.0.2.1") == 1.0


def test_memory_bounded_many_clients_and_one_client() -> None:
    """More clients than max_tracked: the least recently failing are forgotten; one client
    keeps at most max_failures entries and stays blocked."""
    throttle, clock = make(max_tracked=100, max_failures=5)
    for i in range(1000):
        fail(throttle, f"127.9.{i // 256}.{i % 256}", f"u{i}@example.test")
        clock.advance(0.01)
    assert len(throttle) == 100
    assert throttle.recent_failures("127.9.0.0") == 0
    assert throttle.recent_failures("127.9.3.231") == 1  # the 1000th client
    assert len(throttle.users.by_key) == 100
    for _ in range(10_000):
        throttle.begin("192.0.2.1", "x@example.test")
    assert throttle.recent_failures("192.0.2.1") == 5
    assert len(throttle.clients.by_key[client_key("192.0.2.1")]) == 5


def test_ipv6_counted_per_64() -> None:
    """Addresses in one IPv6 /64 share a count; IPv4-mapped addresses count as IPv4."""
    throttle, _ = make(max_failures=3)
    fail(throttle, "2001:db8:1:2::1")
    fail(throttle, "2001:db8:1:2:ffff::9")
    fail(throttle, "2001:db8:1:2:abcd::")
    assert throttle.blocked("2001:db8:1:2::77")
    assert not throttle.blocked("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("not-an-ip") == "not-an-ip"


def test_block_logged_with_client_and_user(log_lines) -> None:
    """Reaching the limit logs one warning naming the client and the user."""
    throttle, _ = make(max_failures=2)
    fail(throttle, "192.0.2.1", "user2@example.test")
    fail(throttle, "192.0.2.1", "user2@example.test")
    blocked = [line for line in log_lines if "refused" in line]
    assert len(blocked) == 1
    assert "192.0.2.1" in blocked[0] and "user=user2@example.test" in blocked[0]


def test_block_state_survives_restart(tmp_path) -> None:
    """Stopping writes the blocked clients and users (0600); a new throttle reads them back,
    keeps them blocked until the window passes, and forgets what was not blocked."""
    state = tmp_path / "login-failures.json"
    throttle, clock = make(max_failures=3, max_user_failures=4, state_file=state)
    throttle.startService()
    for _ in range(3):
        fail(throttle, "192.0.2.1", "user2@example.test")
    fail(throttle, "192.0.2.7", "user2@example.test")  # user2 now has 4: blocked too
    fail(throttle, "192.0.2.9", "user3@example.test")  # neither blocked: not kept
    throttle.stopService()
    assert state.stat().st_mode & 0o777 == 0o600
    saved = json.loads(state.read_text())
    assert set(saved["clients"]) == {"192.0.2.1"}
    assert set(saved["users"]) == {"user2@example.test"}

    again = FailureThrottle(clock, max_failures=3, max_user_failures=4, state_file=state)
    again.startService()
    assert again.blocked("192.0.2.1")
    assert again.blocked("192.0.2.50", "user2@example.test")
    assert not again.blocked("192.0.2.9")
    clock.advance(901)
    assert not again.blocked("192.0.2.1")
    assert not again.blocked("192.0.2.50", "user2@example.test")


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"clients": [1, 2]}', b"[]"])
def test_bad_state_file_means_no_blocks(tmp_path, log_lines, content) -> None:
    """A damaged state file is reported and ignored: the throttle starts empty."""
    state = tmp_path / "login-failures.json"
    state.write_bytes(content)
    throttle, _ = make(state_file=state)
    throttle.startService()
    assert len(throttle) == 0
    assert any("ignoring login throttle state" in line for line in log_lines)
    throttle.stopService()


@pytest_twisted.inlineCallbacks
def test_block_written_soon_after_it_starts(tmp_path) -> None:
    """A new block reaches the state file within about a second, written off the reactor
    thread, without waiting for the stop (a kill -9 keeps it)."""
    from twisted.internet import defer, task

    state = tmp_path / "login-failures.json"
    throttle = FailureThrottle(reactor, max_failures=2, state_file=state)
    throttle.startService()
    try:
        fail(throttle, "192.0.2.1")
        fail(throttle, "192.0.2.1")
        for _ in range(100):  # bounded: 10 s at most
            if state.exists():
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        assert json.loads(state.read_text())["clients"].keys() == {"192.0.2.1"}
    finally:
        throttle.stopService()
        yield defer.succeed(None)
