"""Which forwarders answer: one that let a query time out is not asked again for a while.

A forwarder that drops queries (a host switched off, a firewall) costs every lookup the whole
forward_timeout; mail checks SPF and DMARC on every message, so each message would wait for it.
As Unbound's infrastructure cache does, a server that timed out is held back: for `first_hold`
seconds, doubled after each further timeout up to `max_hold`. When the hold ends, one query
is let through as a probe while the others still skip the server; any prompt outcome of it
(an answer, a REFUSED, an ICMP refusal: nothing to wait for) puts it back in use at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Server = tuple[str, int]


@dataclass
class _State:
    until: float = 0.0  # not asked before this time
    hold: float = 0.0  # the last hold: the next one is twice as long
    probing: bool = False  # the query let through after a hold is still out


class ServerHealth:
    """Hold-downs of forwarders that timed out (see the module); clock: reactor.seconds()."""

    def __init__(self, clock: Any, first_hold: float = 1.0, max_hold: float = 60.0) -> None:
        self.clock = clock
        self.first_hold = first_hold
        self.max_hold = max_hold
        self._held: dict[Server, _State] = {}  # only servers that timed out

    def skip(self, server: Server) -> str | None:
        """Why server is not to be asked now (None: ask it). A server whose hold is over is
        asked by this caller alone, as the probe, until answered() or timed_out()."""
        state = self._held.get(server)
        if state is None:
            return None
        if state.probing:
            return f"{server[0]}:{server[1]} timed out before; a probe is on its way"
        left = state.until - self.clock.seconds()
        if left > 0:
            return f"{server[0]}:{server[1]} timed out before; held back for {left:.1f}s more"
        state.probing = True
        return None

    def answered(self, server: Server) -> None:
        """server replied without making the caller wait out the timeout."""
        self._held.pop(server, None)

    def timed_out(self, server: Server) -> None:
        state = self._held.setdefault(server, _State())
        state.hold = min(self.max_hold, state.hold * 2) if state.hold else self.first_hold
        state.until = self.clock.seconds() + state.hold
        state.probing = False
