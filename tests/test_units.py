"""appliance.units: time values and the once-a-second texts."""

from __future__ import annotations

from appliance.units import SecondText, parse_time


def test_second_text_renders_once_per_second() -> None:
    calls: list[int] = []

    def render(second: int) -> str:
        calls.append(second)
        return f"t{second}"

    text = SecondText(render)
    assert [text(100), text(100), text(101), text(101), text(100)] == [
        "t100", "t100", "t101", "t101", "t100",
    ]  # fmt: skip
    assert calls == [100, 101, 100]


def test_parse_time_bind_values() -> None:
    assert [parse_time(t) for t in ("3600", "1h", "1h30m", "2W", "x")] == [
        3600, 3600, 5400, 1209600, None,
    ]  # fmt: skip
