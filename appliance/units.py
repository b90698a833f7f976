"""Time values written the BIND way (3600, 10m, 1h30m, 2W), shared by the INI file and zones."""

from __future__ import annotations

import re

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
