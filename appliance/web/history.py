"""The last day of mail traffic by minute, for the status page's plots.

`History` is one more observer of the mail event stream (as the metrics are): it counts each
event it knows into the current minute of its series, in rings of 1,440 minutes, and gives a
series back over the last hour (by minute) or the last day (by quarter hour). Prometheus
keeps history for those who run one; the page must show the last day without one. Memory is
fixed: seven series of 1,440 integers.

    queued (by anyone)                  accepted
    status sent / deferred / bounced    delivered / deferred / bounced (one per recipient)
    smtpd reject                        rejected
    smtpd auth, pop3d/imapd/webadmin login          logins
    auth_failed of the same services    login failures
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.logger import ILogObserver
from zope.interface import implementer

from appliance.log import component_of

MINUTES = 1440  # a day
SERIES = (
    "accepted", "delivered", "deferred", "bounced", "rejected", "logins", "login failures",
)  # fmt: skip
LOGIN_SERVICES = ("smtpd", "pop3d", "imapd", "webadmin")
_DELIVERY = {"sent": "delivered", "deferred": "deferred", "bounced": "bounced"}


def series_of(event: dict[str, Any]) -> str | None:
    """Which series an event counts in, if any."""
    kind = event.get("event")
    if kind == "queued":
        return "accepted"
    if kind == "status":
        return _DELIVERY.get(event.get("status", ""))
    component = component_of(event)
    if kind == "reject":
        return "rejected" if component == "smtpd" else None
    if kind in ("auth", "login") and component in LOGIN_SERVICES:
        return "logins"
    if kind == "auth_failed" and component in LOGIN_SERVICES:
        return "login failures"
    return None


@implementer(ILogObserver)
class History:
    """Per-minute counts of the last day; clock: seconds since the epoch."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.rings = {name: [0] * MINUTES for name in SERIES}
        self.minute = int(clock() // 60)  # the minute the rings end at

    def __call__(self, event: dict[str, Any]) -> None:
        name = series_of(event)
        if name is not None:
            self.count(name)

    def count(self, name: str, n: int = 1) -> None:
        self._advance()
        self.rings[name][self.minute % MINUTES] += n

    def _advance(self) -> None:
        now = int(self.clock() // 60)
        gone = now - self.minute
        if gone <= 0:
            return
        for ring in self.rings.values():
            for m in range(self.minute + 1, self.minute + 1 + min(gone, MINUTES)):
                ring[m % MINUTES] = 0
        self.minute = now

    def last(self, name: str, minutes: int, step: int = 1) -> list[int]:
        """The counts of the last `minutes` minutes (the current one last), summed by `step`."""
        if not 0 < minutes <= MINUTES or minutes % step:
            raise ValueError(f"cannot give {minutes} minutes by {step}")
        self._advance()
        ring = self.rings[name]
        first = self.minute - minutes + 1
        values = [ring[m % MINUTES] for m in range(first, self.minute + 1)]
        return [sum(values[i : i + step]) for i in range(0, minutes, step)]
