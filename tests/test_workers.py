"""QuickCalls: cheap calls inline on the reactor, the worker pool once they are found slow."""

from __future__ import annotations

import time

from twisted.internet import defer

from appliance.workers import QuickCalls


class RecordingPool:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def run(self, f, *args):
        self.calls.append(f.__name__)
        return defer.maybeDeferred(f, *args)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def results(d: defer.Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def test_fast_calls_run_inline_and_failures_come_back_as_failures() -> None:
    pool = RecordingPool()
    quick = QuickCalls(pool, clock=Clock())  # type: ignore[arg-type]

    def fast() -> int:
        return 7

    def broken() -> None:
        raise FileNotFoundError("gone")

    assert results(quick.run(fast)) == [7] and pool.calls == []
    (failure,) = results(quick.run(broken))
    assert failure.check(FileNotFoundError) and pool.calls == []


def test_repeated_slow_calls_send_every_call_to_the_pool_for_a_while() -> None:
    pool = RecordingPool()
    clock = Clock()
    quick = QuickCalls(pool, slow=0.001, strikes=2, cooldown=10, clock=clock)  # type: ignore[arg-type]

    def slow() -> str:
        time.sleep(0.005)
        return "done"

    def fast() -> str:
        return "fast"

    assert results(quick.run(slow)) == ["done"] and pool.calls == []  # one strike: inline still
    assert results(quick.run(slow)) == ["done"] and quick.slow_calls == 2
    assert results(quick.run(fast)) == ["fast"] and pool.calls == ["fast"]  # pooled now
    clock.now += 11
    quick.run(fast)
    assert pool.calls == ["fast"]  # inline again after the cooldown
    quick.enabled = False
    quick.run(fast)
    assert pool.calls == ["fast", "fast"]


def test_strikes_far_apart_do_not_add_up() -> None:
    pool = RecordingPool()
    clock = Clock()
    quick = QuickCalls(pool, slow=0.001, strikes=2, cooldown=10, clock=clock)  # type: ignore[arg-type]

    def slow() -> None:
        time.sleep(0.003)

    quick.run(slow)
    clock.now += 30
    quick.run(slow)
    quick.run(lambda: None)
    assert pool.calls == []
