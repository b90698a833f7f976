"""What one IMAP listener is configured to do: plain values shared by its sessions.

Built by service.py from the [imap] and [auth] sections.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from appliance.limits import SessionLimits

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _default_limits() -> SessionLimits:
    # RFC 3501 section 5.4: an inactivity autologout timer of at least 30 minutes
    return SessionLimits(idle_timeout=1800, command_timeout=1800)


@dataclass(frozen=True)
class IMAPSettings:
    hostname: str
    banner: str = ""
    # a command line (without its literals); Dovecot's imap_max_line_length is 64 KiB
    max_command_line: int = 65536
    max_literal: int = 50 * 1024 * 1024  # one APPEND message (the SMTP message size limit)
    limits: SessionLimits = field(default_factory=_default_limits)
    max_connections: int = 500  # across every IMAP port (the factory's default slots)
    max_connections_per_ip: int = 20
    max_errors: int = 20
    plaintext_networks: tuple[Network, ...] = ()  # LOGIN, PLAIN without TLS here
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")  # CRAM-MD5 added when the backend can
    idle_poll: float = 5.0  # while IDLE, look for changes made by other processes this often
    # looks at a folder, flag renames and small reads on the reactor while they take
    # microseconds (appliance.workers.QuickCalls); False: every store call in the pool
    quick_store_calls: bool = True
