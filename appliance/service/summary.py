"""Gathering the status summary (appliance.interfaces.Summary) that `mailappliance status`
prints and the status page shows.

Everything but the services is read from the configuration and the state folder, so the
command also works with the appliance stopped: the queue (as `queue list` reads it), the
certificate (its names and expiry; being inside the renewal window means renewal failed,
since the appliance renews there), the records each mail domain needs checked against the
zones we serve (as `dns records` checks them), and each mailbox's size. The services come
from the running appliance: the control socket's `status` answer for the command, the root
service's describe() for the page. Blocking: call it from a worker thread in the appliance.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from appliance.config import Config
from appliance.dns.authority import Authority
from appliance.dns.records import Checked, check, needed_records
from appliance.errors import ConfigError
from appliance.interfaces import (
    CertificateState,
    DomainRecords,
    MailboxSize,
    RecordCheck,
    ServiceState,
    Summary,
)
from appliance.paths import Paths, dkim_domains
from appliance.queue.inspect import list_queue
from appliance.service import dkim_store, load_zones
from appliance.service.web import ALIASES, client_settings, web_enabled
from appliance.tls.renewal import cert_needs_renewal
from appliance.web.autoconfig import srv_records

OLD_DEFERRED = 86400.0  # a deferred message older than this needs attention


def dns_checks(cfg: Config) -> list[tuple[str, list[Checked]]]:
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


def mailbox_sizes(mail_root: Path) -> list[MailboxSize]:
    """Every mailbox under mail_root, all its folders together."""
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
            out.append(MailboxSize(f"{user.name}@{domain.name}", count, octets))
    return out


def services_of(status: dict[str, Any]) -> tuple[ServiceState, ...]:
    """The services of a describe() answer (appliance.root)."""
    return tuple(
        ServiceState(str(name), bool(info.get("running")), tuple(info.get("listeners") or ()))
        for name, info in (status.get("services") or {}).items()
    )


def certificate_state(cfg: Config, now: float) -> CertificateState:
    paths = Paths.of(cfg)
    try:
        cert = x509.load_pem_x509_certificates(paths.cert.read_bytes())[0]
    except (OSError, ValueError) as e:
        return CertificateState(str(paths.cert), (), None, f"cannot read {paths.cert}: {e}")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    wanted = [cfg.appliance.hostname, *cfg.tls.names]
    renew_before = timedelta(seconds=cfg.tls.renew_before)
    at = datetime.fromtimestamp(now, UTC)
    reason = cert_needs_renewal(paths.cert, wanted, renew_before, at)
    # the appliance renews inside the window: still being inside it means renewal failed
    problem = None if reason is None else f"the certificate {reason} and was not renewed"
    return CertificateState(str(paths.cert), names, cert.not_valid_after_utc.timestamp(), problem)


def gather(cfg: Config, status: dict[str, Any] | None, now: float | None = None) -> Summary:
    """The summary; status: the running appliance's describe(), None when it did not answer."""
    now = time.time() if now is None else now
    paths = Paths.of(cfg)
    attention: list[str] = []
    services: tuple[ServiceState, ...] = ()
    if status is None:
        attention.append(f"the appliance is not running (no answer on {paths.control_socket})")
    else:
        services = services_of(status)
        attention.extend(f"service {s.name} is not running" for s in services if not s.running)
    queue = tuple(sorted(list_queue(paths.queue_dir), key=lambda m: m.arrival))
    old = [m for m in queue if m.where == "deferred" and now - m.arrival > OLD_DEFERRED]
    if old:
        attention.append(
            f"{len(old)} deferred message(s) older than a day (oldest {old[0].queue_id})"
        )
    certificate = certificate_state(cfg, now)
    if certificate.problem is not None:
        attention.append(certificate.problem)
    dns = []
    for domain, checked in dns_checks(cfg):
        records = tuple(
            RecordCheck(c.needed.name, c.needed.type, c.state, c.needed.value) for c in checked
        )
        dns.append(DomainRecords(domain, records))
        attention.extend(
            f"{r.name} {r.type} {r.state} (`dns records` says what to add)"
            for r in records
            if r.state != "ok"
        )
    return Summary(
        now=now,
        running=status is not None,
        pid=None if status is None else status.get("pid"),
        started=None if status is None else status.get("started"),
        services=services,
        queue=queue,
        certificate=certificate,
        dns=tuple(dns),
        mailboxes=tuple(mailbox_sizes(paths.mail_root)),
        attention=tuple(attention),
    )
