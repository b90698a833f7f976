"""The mailbox access services: POP3 (110 with STLS, 995) and IMAP (143 with STARTTLS, 993).

Both read the store SMTP delivers into, check logins with the [auth] users and the shared
login throttle, and use the TLS context of [tls]; each protocol's ports share one set of
connection slots. Only this module (and the rest of appliance.service) knows which classes
implement the seams they are given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application import service, strports
from twisted.protocols.tls import TLSMemoryBIOFactory

from appliance.auth.throttle import FailureThrottle
from appliance.config import Config, HostPort
from appliance.imap.factory import IMAPFactory
from appliance.imap.settings import IMAPSettings
from appliance.limits import ConnectionSlots, SessionLimits
from appliance.log import mail_logger
from appliance.pop3.factory import POP3Factory
from appliance.pop3.settings import POP3Settings
from appliance.store.store import MaildirStore
from appliance.workers import WorkerPool

if TYPE_CHECKING:
    from appliance.service import Prepared


# Connections the kernel completes before we accept them. Twisted's default, 50, overflows
# when a few hundred clients connect at once (each refused SYN is retried after a second);
# the kernel caps it at net.core.somaxconn (4096 on current Linux).
LISTEN_BACKLOG = 1024


def tcp_endpoint(hp: HostPort) -> str:
    host = hp.host.replace(":", chr(92) + ":")
    return f"tcp:{hp.port}:interface={host}:backlog={LISTEN_BACKLOG}"


def _limits(section: Any) -> SessionLimits:
    """The deadlines of a [pop3] or [imap] section."""
    return SessionLimits(
        idle_timeout=section.idle_timeout,
        command_timeout=section.command_timeout,
        greeting_timeout=section.login_timeout,
        stress_timeout=section.stress_timeout,
        stress_threshold=section.stress_threshold / 100,
    )


def _access_service(
    prepared: Prepared,
    name: str,
    ports: tuple[tuple[bool, tuple[HostPort, ...], str], ...],
    factory_class: type[POP3Factory] | type[IMAPFactory],
    settings: Any,
    store: MaildirStore,
    pool: WorkerPool,
    reactor: Any,
    throttle: FailureThrottle,
) -> service.MultiService:
    """One protocol's listeners: ports are (implicit TLS, addresses, listener name); every
    factory shares the users, the throttle, the events and one set of connection slots."""
    parts = prepared.mail
    assert parts is not None, f"{name} needs the [auth] users that load_mail_parts() loads"
    slots = ConnectionSlots.for_service(settings)
    tls = prepared.tls.context_factory
    parent = service.MultiService()
    parent.setName(name)
    events = mail_logger(f"{name}d")
    for implicit, addresses, label in ports:
        factory = factory_class(
            settings,
            implicit_tls=implicit,
            store=store,
            authenticator=parts.users.authenticator,
            tls=tls,
            throttle=throttle,
            pool=pool,
            events=events,
            reactor=reactor,
            slots=slots,
        )
        wrapped = TLSMemoryBIOFactory(tls, False, factory) if implicit else factory
        for hp in addresses:
            listener = strports.service(tcp_endpoint(hp), wrapped, reactor=reactor)
            listener.setName(f"{label} {hp}")
            listener.setServiceParent(parent)
    return parent


def pop3_enabled(config: Config) -> bool:
    p = config.pop3
    return bool(p.listen or p.pop3s_listen)


def make_pop3_service(
    prepared: Prepared,
    store: MaildirStore,
    pool: WorkerPool,
    reactor: Any,
    throttle: FailureThrottle,
) -> service.MultiService:
    """The 110 (STLS) and 995 listeners over the store the queue delivers into."""
    p = prepared.config.pop3
    settings = pop3_settings(prepared.config)
    ports = ((False, p.listen, "pop3"), (True, p.pop3s_listen, "pop3s"))
    return _access_service(
        prepared, "pop3", ports, POP3Factory, settings, store, pool, reactor, throttle
    )


def _shared_settings(cfg: Config, section: Any) -> dict[str, Any]:
    """What POP3Settings and IMAPSettings take alike from a [pop3] or [imap] section and
    [auth]."""
    return {
        "hostname": cfg.appliance.hostname,
        "max_command_line": section.max_command_line,
        "limits": _limits(section),
        "max_connections": section.max_connections,
        "max_connections_per_ip": section.max_connections_per_ip,
        "max_errors": section.max_errors,
        "plaintext_networks": cfg.auth.plaintext_networks,
        "mechanisms": cfg.auth.mechanisms,
        "quick_store_calls": section.quick_store_calls,
    }


def pop3_settings(cfg: Config) -> POP3Settings:
    """What the [pop3] and [auth] sections say a POP3 listener does."""
    return POP3Settings(**_shared_settings(cfg, cfg.pop3))


def imap_enabled(config: Config) -> bool:
    i = config.imap
    return bool(i.listen or i.imaps_listen)


def make_imap_service(
    prepared: Prepared,
    store: MaildirStore,
    pool: WorkerPool,
    reactor: Any,
    throttle: FailureThrottle,
) -> service.MultiService:
    """The 143 (STARTTLS) and 993 listeners, as POP3's."""
    i = prepared.config.imap
    settings = imap_settings(prepared.config)
    ports = ((False, i.listen, "imap"), (True, i.imaps_listen, "imaps"))
    return _access_service(
        prepared, "imap", ports, IMAPFactory, settings, store, pool, reactor, throttle
    )


def imap_settings(cfg: Config) -> IMAPSettings:
    """What the [imap] and [auth] sections say an IMAP listener does."""
    i = cfg.imap
    return IMAPSettings(
        **_shared_settings(cfg, i), max_literal=i.max_literal, idle_poll=i.idle_poll
    )
