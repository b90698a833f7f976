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


def tcp_endpoint(hp: HostPort) -> str:
    return f"tcp:{hp.port}:interface={hp.host.replace(':', chr(92) + ':')}"


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
    """The 110 (STLS) and 995 listeners over the store the queue delivers into, sharing the
    users, the login throttle and one set of connection slots."""
    cfg = prepared.config
    parts = prepared.mail
    assert parts is not None, "POP3 needs the [auth] users that load_mail_parts() loads"
    p = cfg.pop3
    settings = POP3Settings(
        hostname=cfg.appliance.hostname,
        max_command_line=p.max_command_line,
        limits=SessionLimits(
            idle_timeout=p.idle_timeout,
            command_timeout=p.command_timeout,
            greeting_timeout=p.login_timeout,
            stress_timeout=p.stress_timeout,
            stress_threshold=p.stress_threshold / 100,
        ),
        max_connections=p.max_connections,
        max_connections_per_ip=p.max_connections_per_ip,
        max_errors=p.max_errors,
        plaintext_networks=cfg.auth.plaintext_networks,
        mechanisms=cfg.auth.mechanisms,
    )
    slots = ConnectionSlots.for_service(settings)
    tls = prepared.tls.context_factory
    pop3 = service.MultiService()
    pop3.setName("pop3")
    events = mail_logger("pop3d")
    for implicit, addresses, name in ((False, p.listen, "pop3"), (True, p.pop3s_listen, "pop3s")):
        factory = POP3Factory(
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
            listener.setName(f"{name} {hp}")
            listener.setServiceParent(pop3)
    return pop3


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
    cfg = prepared.config
    parts = prepared.mail
    assert parts is not None, "IMAP needs the [auth] users that load_mail_parts() loads"
    i = cfg.imap
    settings = IMAPSettings(
        hostname=cfg.appliance.hostname,
        max_command_line=i.max_command_line,
        max_literal=i.max_literal,
        limits=SessionLimits(
            idle_timeout=i.idle_timeout,
            command_timeout=i.command_timeout,
            greeting_timeout=i.login_timeout,
            stress_timeout=i.stress_timeout,
            stress_threshold=i.stress_threshold / 100,
        ),
        max_connections=i.max_connections,
        max_connections_per_ip=i.max_connections_per_ip,
        max_errors=i.max_errors,
        plaintext_networks=cfg.auth.plaintext_networks,
        mechanisms=cfg.auth.mechanisms,
        idle_poll=i.idle_poll,
        quick_store_calls=i.quick_store_calls,
    )
    slots = ConnectionSlots.for_service(settings)
    tls = prepared.tls.context_factory
    imap = service.MultiService()
    imap.setName("imap")
    events = mail_logger("imapd")
    for implicit, addresses, name in ((False, i.listen, "imap"), (True, i.imaps_listen, "imaps")):
        factory = IMAPFactory(
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
            listener.setName(f"{name} {hp}")
            listener.setServiceParent(imap)
    return imap
