"""Per-client AUTH failure throttle, driven by a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from appliance.auth.throttle import FailureThrottle, client_key


def make(**kwargs: float) -> tuple[FailureThrottle, Clock]:
    clock = Clock()
    clock.advance(10_000)
    return FailureThrottle(clock, **kwargs), clock


def test_throttle_delay_doubles_per_failure_up_to_cap() -> None:
    """Failure replies wait 1, 2, 4, 8, 16, 16... seconds; delay_for tells the next one."""
    throttle, _ = make()
    assert throttle.delay_for("192.0.2.1") == 1.0
    delays = [throttle.record_failure("192.0.2.1") for _ in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 16.0, 16.0]
    assert throttle.delay_for("192.0.2.1") == 16.0
    assert throttle.delay_for("192.0.2.2") == 1.0


def test_throttle_blocked_after_max_failures_until_window_passes() -> None:
    """max_failures within the window block the client; the oldest expiring unblocks it."""
    throttle, clock = make(window=900, max_failures=10)
    for _ in range(9):
        throttle.record_failure("192.0.2.1")
        clock.advance(10)
    assert not throttle.blocked("192.0.2.1")
    throttle.record_failure("192.0.2.1")
    assert throttle.blocked("192.0.2.1")
    assert not throttle.blocked("192.0.2.9")
    clock.advance(900 - 90)  # the first failure is now exactly window old
    assert not throttle.blocked("192.0.2.1")
    assert throttle.recent_failures("192.0.2.1") == 9


def test_throttle_failures_expire_after_window_delay_resets() -> None:
    """Once every failure is older than the window the client starts again at base_delay."""
    throttle, clock = make(window=60)
    for _ in range(4):
        throttle.record_failure("192.0.2.1")
    clock.advance(61)
    assert throttle.delay_for("192.0.2.1") == 1.0
    assert len(throttle) == 0


def test_throttle_success_resets_client() -> None:
    """A good login forgets the client's failures."""
    throttle, _ = make()
    for _ in range(10):
        throttle.record_failure("192.0.2.1")
    assert throttle.blocked("192.0.2.1")
    throttle.record_success("192.0.2.1")
    assert not throttle.blocked("192.0.2.1")
    assert throttle.delay_for("192.0.2.1") == 1.0


def test_throttle_many_clients_memory_bounded() -> None:
    """More clients than max_tracked: the least recently failing are forgotten."""
    throttle, clock = make(max_tracked=100)
    for i in range(1000):
        throttle.record_failure(f"127.9.{i // 256}.{i % 256}")
        clock.advance(0.01)
    assert len(throttle) == 100
    assert throttle.recent_failures("127.9.0.0") == 0
    assert throttle.recent_failures("127.9.3.231") == 1  # the 1000th client


def test_throttle_one_client_memory_bounded() -> None:
    """A client failing forever keeps at most max_failures timestamps and stays blocked."""
    throttle, clock = make(max_failures=5)
    for _ in range(10_000):
        throttle.record_failure("192.0.2.1")
        clock.advance(0.01)
    assert throttle.recent_failures("192.0.2.1") == 5
    assert throttle.blocked("192.0.2.1")
    assert len(throttle._failures["192.0.2.1"]) == 5


def test_throttle_ipv6_counted_per_64() -> None:
    """Addresses in one IPv6 /64 share a count; IPv4-mapped addresses count as IPv4."""
    throttle, _ = make(max_failures=3)
    throttle.record_failure("2001:db8:1:2::1")
    throttle.record_failure("2001:db8:1:2:ffff::9")
    throttle.record_failure("2001:db8:1:2:abcd::")
    assert throttle.blocked("2001:db8:1:2::77")
    assert not throttle.blocked("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("not-an-ip") == "not-an-ip"


def test_throttle_custom_base_and_cap_respected() -> None:
    """base_delay and max_delay shape the sequence."""
    throttle, _ = make(base_delay=0.5, max_delay=3.0)
    assert [throttle.record_failure("192.0.2.1") for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
