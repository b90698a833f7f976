"""Time values written the BIND way (3600, 10m, 1h30m, 2W), shared by the INI file and zones."""

from __future__ import annotations

import re
from collections.abc import Callable

_TIME_RE = re.compile(r"[0-9]+|(?:[0-9]+[wdhms])+", re.IGNORECASE)
_TIME_PART_RE = re.compile(r"([0-9]+)([wdhms])", re.IGNORECASE)
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_time(text: str) -> int | None:
    """Seconds in a BIND time value (3600, 1h, 1h30m, 2W), or None if it is not one."""
    if not _TIME_RE.fullmatch(text):
        return None
    if text.isdigit():
        return int(text)
    return sum(int(n) * _UNIT_SECONDS[unit.lower()] for n, unit in _TIME_PART_RE.findall(text))


def age_text(seconds: float) -> str:
    """A span for people: '45s', '12m', '3.5h', '2.1d'."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def size_text(octets: int) -> str:
    """A size for people: '512B', '3.4K', '1.2M', '2.0G'."""
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if octets >= factor:
            return f"{octets / factor:.1f}{unit}"
    return f"{octets}B"


class SecondText:
    """render(second) for a whole second (a time.time() cut to int), made once per second:
    log stamps and header dates come several times a message, and strftime and formatdate
    are slow. One (second, text) pair, swapped whole, so a worker thread reads either."""

    def __init__(self, render: Callable[[int], str]) -> None:
        self.render = render
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, second: int) -> str:
        last = self._last
        if last[0] != second:
            last = self._last = (second, self.render(second))
        return last[1]
