"""ServerHealth: hold-downs of forwarders that timed out, on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from appliance.dns.health import ServerHealth

A = ("127.0.0.1", 5300)
B = ("127.0.0.2", 5300)


def test_unknown_server_is_asked() -> None:
    assert ServerHealth(Clock()).skip(A) is None


def test_timed_out_server_held_back_then_one_probe() -> None:
    clock = Clock()
    health = ServerHealth(clock, first_hold=1.0, max_hold=60.0)
    health.timed_out(A)
    assert "held back for 1.0s more" in health.skip(A)
    assert health.skip(B) is None  # only the server that timed out
    clock.advance(1.0)
    assert health.skip(A) is None  # the probe
    assert "a probe is on its way" in health.skip(A)  # everyone else while it is out
    health.answered(A)
    assert health.skip(A) is None and health.skip(A) is None  # back in use for all


def test_hold_doubles_per_timeout_up_to_the_maximum_and_resets_on_answer() -> None:
    clock = Clock()
    health = ServerHealth(clock, first_hold=1.0, max_hold=5.0)
    holds = []
    for _ in range(5):
        health.timed_out(A)
        start = clock.seconds()
        while health.skip(A) is not None:
            clock.advance(0.5)
        holds.append(clock.seconds() - start)
    assert holds == [1.0, 2.0, 4.0, 5.0, 5.0]
    health.answered(A)
    health.timed_out(A)
    clock.advance(0.9)
    assert health.skip(A) is not None  # a fresh first hold of 1 s again
    clock.advance(0.1)
    assert health.skip(A) is None
