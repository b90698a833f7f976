"""`mailappliance status`: the appliance's summary (appliance.service.summary) in the terminal.

The summary an admin (or cron, or a monitoring check) wants in one look: whether the
appliance runs and what it listens on (asked over the control socket), the queue (active,
deferred with their last reasons, held, the oldest deferred message's age), the certificate,
the DNS records each mail domain needs (as `dns records` checks them) and each mailbox's size.
The exit status is 0 when nothing needs attention and 1 when something does (the appliance
not running, a deferred message older than a day, a certificate that should have been renewed,
a DNS record missing or different), so it can run from cron or a monitoring system.
"""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from appliance import config as config_mod
from appliance.control.client import STATUS, NotRunning, send_command
from appliance.interfaces import Summary
from appliance.paths import Paths
from appliance.service.summary import gather
from appliance.units import age_text, size_text


def _running_status(cfg: config_mod.Config) -> tuple[dict[str, Any] | None, str | None]:
    """The running appliance's describe(), or None and why not."""
    try:
        answer = send_command(Paths.of(cfg).control_socket, STATUS, None, timeout=10)
    except NotRunning:
        return None, None
    status = answer.get("status") if answer.get("ok") else None
    if not isinstance(status, dict):
        return None, f"the running appliance gave no status: {answer.get('error')}"
    return status, None


def render(s: Summary) -> list[str]:
    """The summary as terminal lines (the attention items marked where they belong)."""
    out = []
    if s.running:
        up = s.now - float(s.started or s.now)
        out.append(f"appliance: running, pid {s.pid}, up {age_text(up)}")
    else:
        out.append("appliance: not running")
    for svc in s.services:
        state = "up" if svc.running else "DOWN"
        out.append(f"  {svc.name:<9} {state:<5} {', '.join(svc.listeners) or '-'}")
    out.append(f"queue: {len(s.active)} active, {len(s.deferred)} deferred, {len(s.held)} held")
    if s.deferred:
        out.append(f"  oldest deferred: {age_text(s.now - s.deferred[0].arrival)}")
        reasons = Counter(m.last_error or "not tried yet" for m in s.deferred)
        for reason, n in reasons.most_common(5):
            out.append(f"  {n:>5} x {reason[:100]}")
    c = s.certificate
    if c.expires is not None:
        expires = datetime.fromtimestamp(c.expires, UTC)
        days = (c.expires - s.now) / 86400
        out.append(f"certificate: {c.path}, expires {expires:%Y-%m-%d} (in {days:.0f} days)")
        out.append(f"  names: {', '.join(c.names)}")
    else:
        out.append(f"certificate: {c.path}")
    for d in s.dns:
        ok = sum(r.state == "ok" for r in d.records)
        out.append(f"dns {d.domain}: {ok} of {len(d.records)} records ok")
    out.append(f"mailboxes: {len(s.mailboxes)}")
    for m in s.mailboxes:
        out.append(f"  {m.address:<32} {m.messages:>7} messages {size_text(m.octets):>8}")
    out.extend(f"  ATTENTION {line}" for line in s.attention)
    return out


def cmd_status(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    status, problem = _running_status(cfg)
    summary = gather(cfg, status)
    for line in render(summary):
        print(line)
    attention = len(summary.attention)
    if problem is not None:
        print(f"  ATTENTION {problem}")
        attention += 1
    if attention:
        print(f"{attention} thing(s) need attention")
        return 1
    print("all well")
    return 0
