"""Where everything lives: the one place default paths are derived from the configuration.

service.py and cli.py both ask here, so `mailappliance user add` edits the same passwd file
the running appliance reads, and `ca show` looks at the CA it issues from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.config import Config


@dataclass(frozen=True)
class Paths:
    state_dir: Path
    mail_root: Path  # <state>/mail/<domain>/<user>/Maildir
    queue_dir: Path  # <state>/queue/{tmp,incoming,deferred,corrupt}
    ca_dir: Path  # our CA, laid out like `openssl ca`
    cert: Path  # the certificate the listeners use
    key: Path
    passwd_file: Path
    maillog: Path
    audit_log: Path  # JSON lines, appliance.audit
    login_failures: Path  # the login throttle's blocks, kept across restarts
    control_socket: Path  # where `mailappliance queue ...` reaches the running appliance
    filter_dir: Path  # message text the filters are still deciding on, past what fits memory
    dkim_dir: Path  # <state>/dkim/<domain>/: DKIM keys (0600) and their state

    @classmethod
    def of(cls, config: Config) -> Paths:
        state: Path = config.appliance.state_dir
        hostname: str = config.appliance.hostname
        tls = config.tls
        return cls(
            state_dir=state,
            mail_root=state / "mail",
            queue_dir=state / "queue",
            ca_dir=tls.ca_dir or state / "ca",
            cert=tls.cert or state / "tls" / f"{hostname}.crt",
            key=tls.key or state / "tls" / f"{hostname}.key",
            passwd_file=passwd_file(config),
            maillog=config.log.maillog or state / "maillog",
            audit_log=config.log.audit or state / "audit.log",
            login_failures=state / "login-failures.json",
            control_socket=state / "control.sock",
            filter_dir=state / "filter",
            dkim_dir=state / "dkim",
        )


def passwd_file(config: Config) -> Path:
    """[auth] passwd_file if the configuration has it, else <state_dir>/passwd."""
    auth = config.sections.get("auth")
    configured = auth.get("passwd_file") if auth is not None else None
    return Path(configured) if configured else config.appliance.state_dir / "passwd"


def dkim_domains(config: Config) -> tuple[str, ...]:
    """[dkim] domains, or the domain of the hostname (mail.163.com -> 163.com)."""
    configured: tuple[str, ...] = config.dkim.domains
    if configured:
        return configured
    hostname: str = config.appliance.hostname
    parent = hostname.partition(".")[2]
    return (parent if "." in parent else hostname,)
