"""What one POP3 listener is configured to do: plain values shared by its sessions.

Built by service.py from the [pop3] and [auth] sections.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from appliance.limits import SessionLimits

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _default_limits() -> SessionLimits:
    # RFC 1939 section 3: an inactivity autologout timer of at least 10 minutes
    return SessionLimits(idle_timeout=600, command_timeout=600)


@dataclass(frozen=True)
class POP3Settings:
    hostname: str
    banner: str = ""
    # RFC 2449 allows commands of 255 octets; we accept up to this, CRLF included
    max_command_line: int = 512
    limits: SessionLimits = field(default_factory=_default_limits)
    max_connections: int = 200  # across every POP3 port (the factory's default slots)
    max_connections_per_ip: int = 20
    max_errors: int = 20
    plaintext_networks: tuple[Network, ...] = ()  # USER/PASS, PLAIN, LOGIN without TLS here
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")  # CRAM-MD5 added when the backend can
    # the windows of small messages read ahead of RETR are read on the reactor while that
    # takes microseconds (appliance.workers.QuickCalls); False: always in the pool
    quick_store_calls: bool = True
