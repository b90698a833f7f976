"""`mailappliance status` and the DNS check it shares with `dns records`.

The summary an admin (or cron, or a monitoring check) wants in one look: whether the
appliance runs and what it listens on (asked over the control socket), the queue (active,
deferred with their last reasons, held, the oldest deferred message's age), the certificate
(its names, its expiry, whether it is inside the renewal window, which means renewal failed),
the DNS records each mail domain needs (as `dns records` checks them) and each mailbox's size.
The exit status is 0 when nothing needs attention and 1 when something does (the appliance
not running, a deferred message older than a day, a certificate that should have been renewed,
a DNS record missing or different), so it can run from cron or a monitoring system.
Everything but the listeners is read from the configuration and the state folder, so it also
works with the appliance stopped.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from appliance import config as config_mod
from appliance.control.client import STATUS, NotRunning, send_command
from appliance.dns.authority import Authority
from appliance.dns.records import Checked, check, needed_records
from appliance.errors import ConfigError
from appliance.paths import Paths, dkim_domains
from appliance.queue.inspect import list_queue
from appliance.service import dkim_store, load_zones
from appliance.service.web import ALIASES, client_settings, web_enabled
from appliance.tls.renewal import cert_needs_renewal
from appliance.web.autoconfig import srv_records

OLD_DEFERRED = 86400.0  # a deferred message older than this needs attention


def dns_checks(cfg: config_mod.Config) -> list[tuple[str, list[Checked]]]:
    """For each mail domain, its needed records checked against the zones we serve."""
    problems: list[str] = []
    zones = load_zones(cfg, problems)
    if problems:
        raise ConfigError(problems)
    authority = Authority(zones)
    hostname = cfg.appliance.hostname
    listen = [hp.host for hp in (*cfg.smtp.listen, *cfg.smtp.smtps_listen)]
    addresses = list(dict.fromkeys(a for a in listen if a not in ("0.0.0.0", "::")))
    keys = dkim_store(cfg).records()
    aliases = ALIASES if web_enabled(cfg) else ()
    out = []
    for domain in dkim_domains(cfg):
        clients = client_settings(cfg, (domain,))
        needed = needed_records(
            domain, hostname, addresses, spf=cfg.dns.spf, dmarc=cfg.dns.dmarc,
            dkim=keys.get(domain, []),
            srv=srv_records(clients) if clients is not None else (), aliases=aliases,
        )  # fmt: skip
        out.append((domain, check(authority, needed)))
    return out


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _size(octets: int) -> str:
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if octets >= factor:
            return f"{octets / factor:.1f}{unit}"
    return f"{octets}B"


def mailbox_sizes(mail_root: Path) -> list[tuple[str, int, int]]:
    """(address, messages, octets) of every mailbox under mail_root, all folders together."""
    out = []
    for domain in sorted(p for p in mail_root.glob("*") if p.is_dir()):
        for user in sorted(p for p in domain.glob("*") if (p / "Maildir").is_dir()):
            count = octets = 0
            for folder, _dirs, files in os.walk(user / "Maildir"):
                if os.path.basename(folder) in ("new", "cur"):
                    for name in files:
                        try:
                            octets += os.stat(os.path.join(folder, name)).st_size
                        except FileNotFoundError:
                            continue
                        count += 1
            out.append((f"{user.name}@{domain.name}", count, octets))
    return out


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.attention: list[str] = []

    def say(self, line: str) -> None:
        self.lines.append(line)

    def alarm(self, line: str) -> None:
        self.lines.append(f"  ATTENTION {line}")
        self.attention.append(line)


def _services(cfg: config_mod.Config, r: Report) -> None:
    paths = Paths.of(cfg)
    try:
        answer = send_command(paths.control_socket, STATUS, None, timeout=10)
    except NotRunning:
        r.say("appliance")
        r.alarm(f"not running (no answer on {paths.control_socket})")
        return
    status = answer.get("status") if answer.get("ok") else None
    if not isinstance(status, dict):
        r.say("appliance")
        r.alarm(f"the running appliance gave no status: {answer.get('error')}")
        return
    up = time.time() - float(status.get("started") or time.time())
    r.say(f"appliance: running, pid {status.get('pid')}, up {_age(up)}")
    for name, info in (status.get("services") or {}).items():
        state = "up" if info.get("running") else "DOWN"
        listeners = ", ".join(info.get("listeners") or []) or "-"
        r.say(f"  {name:<9} {state:<5} {listeners}")
        if not info.get("running"):
            r.alarm(f"service {name} is not running")


def _queue(cfg: config_mod.Config, r: Report, now: float) -> None:
    messages = list_queue(Paths.of(cfg).queue_dir)
    active = [m for m in messages if m.where == "incoming"]
    deferred = [m for m in messages if m.where == "deferred"]
    held = [m for m in messages if m.held]
    r.say(f"queue: {len(active)} active, {len(deferred)} deferred, {len(held)} held")
    if deferred:
        oldest = min(m.arrival for m in deferred)
        r.say(f"  oldest deferred: {_age(now - oldest)}")
        for reason, n in Counter(m.last_error or "not tried yet" for m in deferred).most_common(5):
            r.say(f"  {n:>5} x {reason[:100]}")
        old = [m for m in deferred if now - m.arrival > OLD_DEFERRED]
        if old:
            r.alarm(f"{len(old)} deferred message(s) older than a day (oldest {old[0].queue_id})")


def _certificate(cfg: config_mod.Config, r: Report, now: float) -> None:
    paths = Paths.of(cfg)
    names = [cfg.appliance.hostname, *cfg.tls.names]
    renew_before = timedelta(seconds=cfg.tls.renew_before)
    try:
        cert = x509.load_pem_x509_certificates(paths.cert.read_bytes())[0]
    except (OSError, ValueError) as e:
        r.say("certificate")
        r.alarm(f"cannot read {paths.cert}: {e}")
        return
    expires = cert.not_valid_after_utc
    days = (expires - datetime.fromtimestamp(now, UTC)).total_seconds() / 86400
    r.say(f"certificate: {paths.cert}, expires {expires:%Y-%m-%d} (in {days:.0f} days)")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        r.say(f"  names: {', '.join(san.get_values_for_type(x509.DNSName))}")
    except x509.ExtensionNotFound:
        pass
    reason = cert_needs_renewal(paths.cert, names, renew_before, datetime.fromtimestamp(now, UTC))
    if reason is not None:
        # the appliance renews inside the window: still being inside it means renewal failed
        r.alarm(f"certificate {reason} and was not renewed")


def _dns(cfg: config_mod.Config, r: Report) -> None:
    for domain, checked in dns_checks(cfg):
        bad = [c for c in checked if c.state != "ok"]
        r.say(f"dns {domain}: {len(checked) - len(bad)} of {len(checked)} records ok")
        for c in bad:
            r.alarm(f"{c.needed.name} {c.needed.type} {c.state} (`dns records` says what to add)")


def cmd_status(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    now = time.time()
    r = Report()
    _services(cfg, r)
    _queue(cfg, r, now)
    _certificate(cfg, r, now)
    _dns(cfg, r)
    sizes = mailbox_sizes(Paths.of(cfg).mail_root)
    r.say(f"mailboxes: {len(sizes)}")
    for address, count, octets in sizes:
        r.say(f"  {address:<32} {count:>7} messages {_size(octets):>8}")
    for line in r.lines:
        print(line)
    if r.attention:
        print(f"{len(r.attention)} thing(s) need attention")
        return 1
    print("all well")
    return 0
