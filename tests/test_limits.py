"""appliance.limits on its own: slot shares, stress, whom to evict; deadlines on a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from appliance.limits import (
    COMMAND,
    DATA,
    GREETING,
    IDLE,
    ConnectionSlots,
    Deadlines,
    SessionLimits,
)


class Holder:
    def __init__(self, idle: float | None) -> None:
        self.idle = idle
        self.evicted = False
        self.stressed = 0

    def idle_since(self) -> float | None:
        return self.idle

    def evict(self) -> None:
        self.evicted = True

    def stress_changed(self) -> None:
        self.stressed += 1


def test_slots_share_stress_and_release() -> None:
    """Per-client share (IPv6 per /64), stress at the threshold and off below it."""
    slots = ConnectionSlots(10, 3, stress_threshold=0.8)
    held = [Holder(None) for _ in range(8)]
    for i, h in enumerate(held[:3]):
        assert slots.admit(f"2001:db8::{i + 1}", h)
    assert not slots.admit("2001:db8::99", Holder(None))  # the same /64: over its share
    for i, h in enumerate(held[3:], start=1):
        assert slots.admit(f"192.0.2.{i}", h)
    assert slots.stressed and all(h.stressed == 1 for h in held)
    slots.release(held[0])
    slots.release(held[0])  # twice: nothing more
    assert not slots.stressed and len(slots) == 7
    assert slots.connections_of("2001:db8::1") == 2


def test_full_slots_evict_longest_idle_of_busiest_client() -> None:
    """When full: the idle session from the client holding most slots, idle longest, goes;
    sessions that may not be closed never do; none evictable means refusal."""
    slots = ConnectionSlots(4, 10)
    a_busy, a_old, a_new, b_oldest = Holder(None), Holder(5.0), Holder(9.0), Holder(1.0)
    for ip, h in (("192.0.2.1", a_busy), ("192.0.2.1", a_old), ("192.0.2.1", a_new)):
        assert slots.admit(ip, h)
    assert slots.admit("192.0.2.2", b_oldest)
    newcomer = Holder(None)
    assert slots.admit("192.0.2.3", newcomer)
    assert a_old.evicted and not (a_busy.evicted or a_new.evicted or b_oldest.evicted)
    assert slots.evicted == 1 and len(slots) == 4
    a_new.idle = b_oldest.idle = None
    assert not slots.admit("192.0.2.4", Holder(None))


def deadlines(**kw) -> tuple[Deadlines, Clock, list[str], list[bool]]:
    clock = Clock()
    fired: list[str] = []
    stressed = [False]
    d = Deadlines(clock, SessionLimits(**kw), fired.append, stressed=lambda: stressed[0])
    return d, clock, fired, stressed


def test_each_deadline_fires_once_with_its_name() -> None:
    """Greeting before command before idle, as configured; only the first fires."""
    d, clock, fired, _ = deadlines(greeting_timeout=5, command_timeout=10, idle_timeout=20)
    clock.advance(5)
    assert fired == [GREETING]
    clock.advance(100)
    assert fired == [GREETING]

    d, clock, fired, _ = deadlines(command_timeout=10, idle_timeout=20)
    d.greeted()
    for _ in range(9):
        clock.advance(1)
        d.input()  # bytes, but never a whole request
    clock.advance(1)
    assert fired == [COMMAND]

    d, clock, fired, _ = deadlines(command_timeout=100, idle_timeout=20)
    d.greeted()
    clock.advance(20)
    assert fired == [IDLE]


def test_data_credit_capped_and_hold_stops_the_clock() -> None:
    """Each byte adds 1/rate s, never past data_timeout from now; while held nothing fires,
    and release starts the next request afresh."""
    d, clock, fired, _ = deadlines(data_timeout=10, min_data_rate=100, idle_timeout=1000)
    d.greeted()
    d.data_started()
    d.data_received(100_000)  # 1000 s of credit, capped at 10
    assert d.data_end == 10
    clock.advance(9)
    d.data_received(50)  # half a second
    assert d.data_end == 10.5
    clock.advance(1.6)
    assert fired == [DATA]

    d, clock, fired, _ = deadlines(command_timeout=10)
    d.greeted()
    d.hold()
    clock.advance(50)
    assert fired == []
    d.release()
    clock.advance(9.9)
    assert fired == []
    clock.advance(0.2)
    assert fired == [COMMAND]


def test_stress_shrinks_running_deadlines() -> None:
    """stress_changed(): a 300 s limit already running becomes stress_timeout from its start;
    a DATA deadline is cut to stress_timeout from now."""
    d, clock, fired, stressed = deadlines(stress_timeout=10)
    d.greeted()
    clock.advance(4)
    stressed[0] = True
    d.stress_changed()
    clock.advance(6.1)
    assert fired == [COMMAND]

    d, clock, fired, stressed = deadlines(stress_timeout=10, data_timeout=300)
    d.greeted()
    d.data_started()
    clock.advance(100)
    d.input()
    stressed[0] = True
    d.stress_changed()  # DATA now ends at 110
    clock.advance(5)
    d.input()  # idle would end at 115
    clock.advance(5.1)
    assert fired == [DATA]
