"""Slow down password guessing: per-client delays that double with each recent AUTH failure.

The SMTP layer (later IMAP/POP3) asks `blocked(ip)` before starting an AUTH exchange (True:
answer `421 4.7.0` and close), and on a failed login calls `delay = record_failure(ip)` and
sends the 535 only after `delay` seconds (reactor.callLater). A successful login calls
`record_success(ip)`, which forgets the client's failures.

Failures older than `window` seconds no longer count. IPv6 clients are counted per /64,
since one host usually owns a whole /64. Memory is bounded: at most `max_failures`
timestamps per client and `max_tracked` clients; beyond that the client whose last failure
is oldest is forgotten. The state is in memory only: a restart forgets it, which costs an
attacker nothing worth protecting against here.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from typing import Any

from twisted.logger import Logger

from appliance.ip import client_ip


def client_key(ip: str) -> str:
    """The unit we count failures for: the IPv4 address, or the IPv6 /64."""
    addr = client_ip(ip)
    if addr is None:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class FailureThrottle:
    """Per-client failure counts with exponential delays and a block after too many."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        base_delay: float = 1.0,
        max_delay: float = 16.0,
        window: float = 900,
        max_failures: int = 10,
        max_tracked: int = 10000,
    ) -> None:
        self.reactor = reactor
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.window = window
        self.max_failures = max_failures
        self.max_tracked = max_tracked
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        """How many clients are tracked (for tests and stats)."""
        return len(self._failures)

    def _recent(self, key: str) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        horizon = self.reactor.seconds() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)

    def recent_failures(self, ip: str) -> int:
        """Failures of this client within the window."""
        return self._recent(client_key(ip))

    def delay_for(self, ip: str) -> float:
        """Seconds to wait before answering this client's next AUTH failure."""
        n = self._recent(client_key(ip))
        # computed by doubling up to the cap, so a large n cannot overflow a float
        delay = self.base_delay
        for _ in range(n):
            if delay >= self.max_delay:
                break
            delay *= 2
        return min(delay, self.max_delay)

    def record_failure(self, ip: str) -> float:
        """Count a failed login; returns the delay to apply to this failure's reply."""
        key = client_key(ip)
        delay = self.delay_for(ip)
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.max_failures)
        times.append(self.reactor.seconds())
        self._failures.move_to_end(key)
        if len(times) == self.max_failures:
            self.log.info(
                "{peer}: {count} failed logins, blocked", peer=key, count=self.max_failures
            )
        self._evict()
        return delay

    def record_success(self, ip: str) -> None:
        """A good login: forget this client's failures."""
        self._failures.pop(client_key(ip), None)

    def blocked(self, ip: str) -> bool:
        """Whether the client reached max_failures within the window."""
        return self._recent(client_key(ip)) >= self.max_failures

    def _evict(self) -> None:
        while len(self._failures) > self.max_tracked:
            # the first entry failed least recently: cheapest to forget
            self._failures.popitem(last=False)
