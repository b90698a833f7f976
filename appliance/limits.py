"""Session limits shared by every protocol: connection slots, deadlines and stress mode.

One home for what SMTP, POP3, IMAP and DNS over TCP need to stay fair under abuse:

- `ConnectionSlots`: the connections of one service, counted across all its ports, with a
  per-client share (an IPv4 address, or an IPv6 /64). When the slots are mostly used
  (`stress_threshold`, default 80%) the service is *stressed*, as Postfix's master(8) says:
  every session is told so and shrinks its deadlines, and when the last slot is taken a new
  client takes the slot of the session that has been idle longest without logging in (from
  the client holding the most slots), so a fresh client is served however many slow clients
  hold slots.
- `Deadlines`: all the time limits of one session on one timer. Not only an idle timer that
  every byte restarts (a client dripping a byte a second would never be cut), but Postfix's
  per-request deadlines: a whole request (a command line, a SASL response) must arrive within
  `command_timeout` of when the server started waiting for it; the greeting phase (connect to
  EHLO, or to login) has its own deadline; and DATA must keep a minimum rate
  (`smtpd_min_data_rate`): its deadline starts at `data_timeout` and each N bytes received add
  N / `min_data_rate` seconds, never beyond `data_timeout` from now. Under stress every limit
  is at most `stress_timeout` (Postfix's `${stress?10}s`).

The hot path costs a clock read per input burst; the timer is re-armed only when a deadline
comes nearer than the one it is set for, and a timer that fires early re-arms itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from appliance.ip import client_key


@dataclass(frozen=True)
class SessionLimits:
    """The time limits of one protocol's sessions (seconds; rates in bytes per second)."""

    idle_timeout: float = 300  # no byte at all for this long
    command_timeout: float = 300  # a whole request, from when the server waits for it
    greeting_timeout: float = 300  # connect to a successful greeting (EHLO/HELO)
    data_timeout: float = 300  # the DATA deadline at its start, and its cap
    min_data_rate: float = 500  # each byte of DATA buys 1/min_data_rate seconds
    stress_timeout: float = 10  # every limit above, while the service is stressed
    stress_threshold: float = 0.8  # the share of slots in use that makes it stressed

    def under(self, seconds: float, stressed: bool) -> float:
        """A limit as it applies now."""
        return min(seconds, self.stress_timeout) if stressed else seconds


# ---------------------------------------------------------------------------- slots


class Slot(Protocol):
    """What a session offers the slots it holds one of."""

    def idle_since(self) -> float | None:
        """When it became idle, if it may be closed to make room (idle and not logged in);
        None if it is doing something or its client has authenticated."""
        ...

    def evict(self) -> None:
        """Close the session to make room for a new client (its slot is already freed)."""
        ...

    def stress_changed(self) -> None:
        """The service became stressed: apply the shorter limits now."""
        ...


class ServiceSettings(Protocol):
    """What a service's settings say about its connections (SMTPSettings, POP3Settings)."""

    @property
    def max_connections(self) -> int: ...

    @property
    def max_connections_per_ip(self) -> int: ...

    @property
    def limits(self) -> SessionLimits: ...


class ConnectionSlots:
    """Connections of one service across all its ports, with a per-client share."""

    @classmethod
    def for_service(cls, settings: ServiceSettings) -> ConnectionSlots:
        """The slots a service's settings ask for (one set for all its ports)."""
        return cls(
            settings.max_connections,
            settings.max_connections_per_ip,
            stress_threshold=settings.limits.stress_threshold,
        )

    def __init__(
        self, max_connections: int, max_per_client: int, *, stress_threshold: float = 0.8
    ) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.stress_at = max(1, int(max_connections * stress_threshold + 0.5))
        self.holders: dict[Slot, str] = {}  # in admission order; value: client key
        self.per_client: dict[str, int] = {}
        self.stressed = False
        self.evicted = 0  # sessions closed to make room (for stats)

    def __len__(self) -> int:
        return len(self.holders)

    def admit(self, ip: str, holder: Slot) -> bool:
        """Give holder a slot; False if the client is over its share, or every slot is held by
        a session that may not be closed."""
        key = client_key(ip)
        used = self.per_client.get(key, 0)
        if used >= self.max_per_client:
            return False
        if len(self.holders) >= self.max_connections:
            victim = self._victim()
            if victim is None:
                return False
            self.release(victim)
            self.evicted += 1
            victim.evict()
        self.holders[holder] = key
        self.per_client[key] = self.per_client.get(key, 0) + 1
        if not self.stressed and len(self.holders) >= self.stress_at:
            self.stressed = True
            for other in list(self.holders):
                other.stress_changed()
        return True

    def release(self, holder: Slot) -> None:
        """Free holder's slot (again: nothing)."""
        key = self.holders.pop(holder, None)
        if key is None:
            return
        left = self.per_client[key] - 1
        if left:
            self.per_client[key] = left
        else:
            del self.per_client[key]
        if self.stressed and len(self.holders) < self.stress_at:
            self.stressed = False

    def connections_of(self, ip: str) -> int:
        return self.per_client.get(client_key(ip), 0)

    def _victim(self) -> Slot | None:
        """The idle, unauthenticated session to close: from the client with most slots, the
        one idle longest."""
        best: Slot | None = None
        best_rank: tuple[int, float] | None = None
        for holder, key in self.holders.items():
            since = holder.idle_since()
            if since is None:
                continue
            rank = (-self.per_client[key], since)
            if best_rank is None or rank < best_rank:
                best, best_rank = holder, rank
        return best


# ---------------------------------------------------------------------------- deadlines

GREETING = "greeting"
COMMAND = "command"
DATA = "data"
IDLE = "idle"


class Deadlines:
    """Every time limit of one session on one timer; expired(which) is called once, with
    GREETING, COMMAND, DATA or IDLE, when the first of them passes.

    While held (the server is busy on the session's behalf: a lookup, a commit, a delayed
    reply) nothing expires; release() starts the next request afresh.
    """

    def __init__(
        self,
        clock: IReactorTime,
        limits: SessionLimits,
        expired: Callable[[str], None],
        stressed: Callable[[], bool] = lambda: False,
    ) -> None:
        self.clock = clock
        self.limits = limits
        self.expired = expired
        self.stressed = stressed
        now = clock.seconds()
        self.last_input = now
        self.greeting_start: float | None = now
        self.request_start = now
        self.data_end: float | None = None  # set while DATA is read
        self.held = False
        self.stopped = False
        self.timer: IDelayedCall | None = None
        self._arm(self.deadline()[0])

    # the hot path: plain attribute updates

    def input(self) -> None:
        """Bytes arrived (restarts only the idle limit)."""
        self.last_input = self.clock.seconds()

    def request(self) -> None:
        """A request was complete: the next one's deadline starts now."""
        self.request_start = self.clock.seconds()
        if self.data_end is not None:
            self.data_end = None

    def progress(self) -> None:
        """The session moved on without new input (a client reading a long answer): the
        idle limit and the request deadline start afresh."""
        now = self.clock.seconds()
        self.last_input = self.request_start = now

    # phase changes

    def greeted(self) -> None:
        """The greeting phase is over (EHLO/HELO accepted, or logged in)."""
        self.greeting_start = None

    def data_started(self) -> None:
        now = self.clock.seconds()
        self.data_end = now + self.limits.under(self.limits.data_timeout, self.stressed())
        self._nearer(self.data_end)

    def data_received(self, count: int) -> None:
        """count bytes of DATA arrived: credit them on the DATA deadline."""
        end = self.data_end
        if end is None:
            return
        now = self.clock.seconds()
        cap = self.limits.under(self.limits.data_timeout, self.stressed())
        self.data_end = now + min(cap, end - now + count / self.limits.min_data_rate)

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False
        now = self.clock.seconds()
        self.last_input = self.request_start = now
        self._nearer(self.deadline()[0])

    def stress_changed(self) -> None:
        """Shorter limits apply now: a DATA deadline is cut to stress_timeout from now."""
        if self.data_end is not None:
            now = self.clock.seconds()
            self.data_end = min(self.data_end, now + self.limits.stress_timeout)
        self._nearer(self.deadline()[0])

    def stop(self) -> None:
        self.stopped = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    # the timer

    def deadline(self) -> tuple[float, str]:
        """The first limit to pass, and which it is."""
        lim = self.limits
        stressed = self.stressed()
        first = (self.last_input + lim.under(lim.idle_timeout, stressed), IDLE)
        if self.data_end is not None:
            first = min(first, (self.data_end, DATA))
        else:
            first = min(
                first, (self.request_start + lim.under(lim.command_timeout, stressed), COMMAND)
            )
        if self.greeting_start is not None:
            first = min(
                first, (self.greeting_start + lim.under(lim.greeting_timeout, stressed), GREETING)
            )
        return first

    def _nearer(self, when: float) -> None:
        timer = self.timer
        if timer is not None and timer.active() and timer.getTime() <= when:
            return
        self._arm(when)

    def _arm(self, when: float) -> None:
        if self.stopped:
            return
        timer = self.timer
        delay = max(0.0, when - self.clock.seconds())
        if timer is not None and timer.active():
            timer.reset(delay)
        else:
            self.timer = self.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self.timer = None
        if self.stopped:
            return
        now = self.clock.seconds()
        if self.held:
            # re-checked when released; meanwhile look again after the shortest limit
            self._arm(now + self.limits.under(self.limits.idle_timeout, self.stressed()))
            return
        when, which = self.deadline()
        if when > now:
            self._arm(when)
            return
        self.stop()
        self.expired(which)
