"""What one SMTP listener is configured to do: its limits (SMTPSettings) and its kind of port.

Plain values, built by service.py from the [smtp] and [auth] sections and shared by every
session of the listener.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from appliance.limits import SessionLimits

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class SMTPSettings:
    hostname: str
    banner: str = ""
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_command_line: int = 2048
    max_text_line: int = 1000  # octets including CRLF (RFC 5321 4.5.3.1.6)
    limits: SessionLimits = field(default_factory=SessionLimits)  # deadlines and stress mode
    max_connections: int = 200  # across every SMTP port (the factory's default slots)
    max_connections_per_ip: int = 20
    max_errors: int = 20
    plaintext_networks: tuple[Network, ...] = ()  # PLAIN/LOGIN allowed here without TLS
    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")  # CRAM-MD5 added when the backend can


@dataclass(frozen=True)
class ListenerMode:
    """What kind of port this is: MTA (25), implicit TLS (465) or submission (587)."""

    name: str  # "smtp", "smtps", "submission"
    implicit_tls: bool = False
    auth_required: bool = False  # submission: MAIL needs AUTH first


MTA = ListenerMode("smtp")
SMTPS = ListenerMode("smtps", implicit_tls=True, auth_required=True)
SUBMISSION = ListenerMode("submission", auth_required=True)
