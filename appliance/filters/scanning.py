"""What the virus and spam filters share: their settings and what a daemon failure becomes.

A daemon that is down, slow or talking nonsense is never a silent pass: by default the
message is refused for now (451 4.7.1, the client retries later) and a log line says why;
an admin who prefers mail unscanned to mail delayed sets on_failure = accept, and then the
verdict still carries the reason into the maillog.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.filters.daemon import DaemonAddress
from appliance.interfaces import Envelope, FilterVerdict

TEMPFAIL = "tempfail"
ACCEPT_UNSCANNED = "accept"


@dataclass(frozen=True)
class ScannerSettings:
    address: DaemonAddress
    timeout: float = 30.0
    on_failure: str = TEMPFAIL  # or ACCEPT_UNSCANNED
    max_size: int = 25 * 1024 * 1024  # larger messages are not scanned (and say so)
    scan_authenticated: bool = True  # also mail from logged-in users (submission)


def wants(settings: ScannerSettings, envelope: Envelope) -> bool:
    return settings.scan_authenticated or not envelope.ours


def failure_verdict(settings: ScannerSettings, what: str, reason: str) -> FilterVerdict:
    """A daemon could not answer: 451 or accept, as configured, with the reason for the log."""
    if settings.on_failure == ACCEPT_UNSCANNED:
        return FilterVerdict(reason=f"not scanned: {reason}")
    return FilterVerdict(451, f"4.7.1 Temporary failure in {what}, try again later", reason=reason)


def too_big(settings: ScannerSettings, size: int) -> FilterVerdict | None:
    if size > settings.max_size:
        return FilterVerdict(reason=f"not scanned: {size} bytes, over max_size {settings.max_size}")
    return None
