"""Zones that follow what they publish: rebuilt when the published records change.

Our zones carry records made from the appliance's own state (the DKIM keys of
appliance.dns.published). ZoneRefresher looks at a stamp of that state every interval and,
when it changed, builds the zones again and swaps them into every Authority that serves
them (BIND's `rndc reload`, done for the admin after `dkim rotate`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from appliance.dns.authority import Authority, Zone


class ZoneRefresher(service.Service):
    log = Logger()

    def __init__(
        self,
        authorities: Sequence[Authority],
        build: Callable[[], list[Zone]],
        stamp: Callable[[], object],
        reactor: object,
        interval: float = 10.0,
    ) -> None:
        self.authorities = authorities
        self.build = build
        self.stamp = stamp
        self.reactor = reactor
        self.interval = interval
        self.last = self._stamp()
        self.loop: LoopingCall | None = None

    def _stamp(self) -> object:
        try:
            return self.stamp()
        except OSError as e:
            return ("unreadable", str(e))

    def startService(self) -> None:  # noqa: N802 (Twisted's API)
        super().startService()
        self.loop = LoopingCall(self.check)
        self.loop.clock = self.reactor  # type: ignore[assignment]
        self.loop.start(self.interval, now=False)

    def stopService(self) -> None:  # noqa: N802
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        return super().stopService()

    def check(self) -> None:
        stamp = self._stamp()
        if stamp == self.last:
            return
        self.last = stamp
        try:
            zones = self.build()
        except Exception:
            self.log.failure("rebuilding the zones failed; the old ones stay")
            return
        for a in self.authorities:
            a.replace(zones)
        self.log.info("zones reloaded: {count} zones", count=len(zones))
