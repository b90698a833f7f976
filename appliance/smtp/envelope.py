"""From an SMTP transaction to what the queue gets: the Envelope and our Received header.

The WITH keyword follows RFC 3848 (SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA); the Received header
reads like Postfix's, with the TLS version and cipher and the authenticated sender when known.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from email.utils import formatdate

from appliance.interfaces import Envelope, Recipient
from appliance.smtp.params import MailParams
from appliance.units import SecondText


@dataclass
class Transaction:
    """One MAIL FROM and the recipients accepted since."""

    mail_from: str  # "" for <>
    params: MailParams
    recipients: list[Recipient] = field(default_factory=list)
    discard: bool = False  # policy said DISCARD: accept, then keep nothing
    received_at: float = 0.0  # time.time() when MAIL was accepted


def protocol_keyword(*, esmtp: bool, tls: bool, authenticated: bool) -> str:
    """The RFC 3848 WITH keyword for the Received header and the envelope."""
    proto = "ESMTP" if esmtp else "SMTP"
    if tls:
        proto += "S"
    if authenticated:
        proto += "A"
    if proto == "SMTPA" or proto == "SMTPSA":  # RFC 3848 has no such keywords
        proto = "E" + proto
    return proto


def envelope_of(
    txn: Transaction,
    *,
    client_ip: str,
    client_name: str | None,
    helo: str | None,
    esmtp: bool,
    tls: str | None,
    auth_user: str | None,
    session_id: str,
    trusted: bool = False,
) -> Envelope:
    """The envelope of the message about to be received in txn."""
    p = txn.params
    return Envelope(
        mail_from=txn.mail_from,
        recipients=tuple(txn.recipients),
        client_ip=client_ip,
        helo=helo or "",
        client_name=client_name,
        auth_user=auth_user,
        tls=tls,
        protocol=protocol_keyword(
            esmtp=esmtp, tls=tls is not None, authenticated=auth_user is not None
        ),
        body=p.body,
        smtputf8=p.smtputf8,
        dsn_ret=p.ret,
        dsn_envid=p.envid,
        received_at=txn.received_at,
        session_id=session_id,
        trusted=trusted,
    )


_DATE = SecondText(lambda second: formatdate(second, localtime=False))  # RFC 5322, UTC


def _now_date() -> str:
    return _DATE(int(time.time()))


def received_header(env: Envelope, queue_id: str, hostname: str) -> bytes:
    """Our Received: header for the message: CRLF line ends, continuation lines tab-indented."""
    lines = [
        f"Received: from {env.helo} ({env.client_name or 'unknown'} [{env.client_ip}])",
        f"\tby {hostname} (mailappliance) with {env.protocol} id {queue_id}",
    ]
    if env.tls and " " in env.tls:
        version, cipher = env.tls.split(" ", 1)
        lines.append(f"\t(using {version} with cipher {cipher})")
    if env.auth_user:
        lines.append(f"\t(Authenticated sender: {env.auth_user})")
    if len(env.recipients) == 1:
        lines.append(f"\tfor <{env.recipients[0].address}>; {_now_date()}")
    else:
        lines[-1] += f"; {_now_date()}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
