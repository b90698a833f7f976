"""The only wiring code: turns a validated Config into the appliance's service tree.

(This package is the wiring: here the tree, in zones.py the zones we serve, in
mail_security.py the filter chain and the DKIM signer.)

`prepare()` does everything that can fail because of the admin's files (zones, certificates,
the state folder, the users and the sendmail maps) and reports it as ConfigError lines before
anything listens. `make_service()` then builds the named tree and says which class serves
which seam of appliance.interfaces:

    root (ApplianceService: binds every port, then drops root; stops children in order)
      tls      TLSService: the certificate, renewed in place
      dns      DNSEngine on UDP and TCP listeners           -> Resolver (LocalResolver)
      maillog  MailLog, the observer of the mail event stream (opened while still root)
      auth     LDAPDirectory's threads (backend = ldap only) -> Authenticator, UserDirectory
      queue    Queue: recovers what a crash left at start; MessageSink for SMTP; hands entries
               to LocalDelivery (DeliveryTarget) over MaildirStore (MailStore), fsyncs in one
               WorkerPool; deferred/ goes to RelayScheduler over RelayTarget (DeliveryTarget:
               Router over LocalResolver, SMTP sessions), its DSNs through Notices
      control  the queue command's UNIX socket (state_dir/control.sock, 0600) -> QueueAdmin
      smtp     the 25/465/587 listeners: SMTPFactory(policy=SendmailPolicy, ...)
      pop3, imap   the mailbox access services (appliance.service.access), when configured
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, cast

from twisted.application import service, strports
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from appliance.audit import AuditLog
from appliance.auth.ldap import LDAPDirectory
from appliance.auth.passwd import PasswdFile
from appliance.auth.passwd_checker import PasswdFileChecker
from appliance.auth.passwd_format import PasswdFileError
from appliance.auth.throttle import FailureThrottle
from appliance.config import Config
from appliance.control.server import ControlService
from appliance.delivery.local import LocalDelivery
from appliance.delivery.relay import RelayLimits, RelayTarget
from appliance.delivery.routing import Router
from appliance.delivery.session import SessionSettings
from appliance.delivery.smtp_client import Timeouts
from appliance.delivery.transport import TransportMap
from appliance.dkim.keys import DKIMError
from appliance.dns.authority import Authority, Zone
from appliance.dns.refresh import ZoneRefresher
from appliance.dns.resolver import LocalResolver
from appliance.dns.server import DNSEngine, DNSTCPFactory, Forwarder
from appliance.dns.udp import DNSUDPProtocol, DNSUDPServer
from appliance.durable import DirSync
from appliance.errors import ApplianceError, ConfigError, ZoneError
from appliance.filters.dkim_sign import DKIMSigner
from appliance.interfaces import Authenticator, Policy, Resolver, UserDirectory
from appliance.limits import ConnectionSlots, SessionLimits
from appliance.log import mail_events, mail_logger
from appliance.maillog import MailLog
from appliance.paths import Paths
from appliance.policy.sendmail import SendmailPolicy
from appliance.queue.notices import Notices
from appliance.queue.queue import Queue
from appliance.queue.scheduler import RelayScheduler
from appliance.root import ApplianceService
from appliance.service.access import (
    imap_enabled,
    make_imap_service,
    make_pop3_service,
    pop3_enabled,
    tcp_endpoint,
)
from appliance.service.mail_security import dkim_store, make_filters, make_signer
from appliance.service.web import AdminParts, make_web_service, web_enabled
from appliance.service.zones import build_zones, load_zone_files, load_zones
from appliance.smtp.factory import SMTPFactory
from appliance.smtp.rdns import ReverseLookup
from appliance.smtp.settings import MTA, SMTPS, SUBMISSION, SMTPSettings
from appliance.store.store import MaildirStore
from appliance.tls.ca import CertificateAuthority
from appliance.tls.context import check_key_permissions
from appliance.tls.service import TLSService, TLSSettings
from appliance.workers import WorkerPool

# what the entry points (tap.py, cli.py), tests and benches take from the wiring
__all__ = [
    "Prepared",
    "build_queue",
    "dkim_store",
    "load_mail_parts",
    "load_zones",
    "make_service",
    "prepare",
    "tls_settings",
]

# [smtp] keys naming the sendmail maps (re-read at run time)
POLICY_FILES = ("local_host_names", "access", "virtusertable", "aliases")

# children that later features fill; present now so the tree's shape is stable
PLACEHOLDERS = ("pop3", "imap")

Progress = Callable[[str], None]


@dataclass
class Users:
    """The [auth] backend, as the seams see it (one object may serve several)."""

    directory: UserDirectory
    authenticator: Authenticator | None  # None: backend = none, no AUTH offered
    service: service.Service | None  # threads to start and stop (LDAP), or None


@dataclass
class MailParts:
    """The smtp side's loaded files: users (passwd-file or LDAP) and the sendmail maps."""

    users: Users
    policy: SendmailPolicy


@dataclass
class Prepared:
    """Everything loaded and checked; building services from it cannot fail on user input."""

    config: Config
    zones: list[Zone]
    tls: TLSService
    zone_files: dict[str, list[Any]] = field(default_factory=dict)  # for rebuilding zones
    mail: MailParts | None = None
    transport: TransportMap | None = None
    smarthost_password: str | None = None


def tls_settings(config: Config) -> TLSSettings:
    t = config.tls
    paths = Paths.of(config)
    return TLSSettings(
        hostname=config.appliance.hostname,
        names=list(t.names),
        cert=paths.cert,
        key=paths.key,
        chain=tuple(t.chain),
        min_version=t.min_version,
        ca=None if t.cert is not None else CertificateAuthority(paths.ca_dir),
        renew_before=timedelta(seconds=t.renew_before),
        key_type=t.key_type,
        validity_days=max(1, t.validity // 86400),
    )


def smtp_enabled(config: Config) -> bool:
    c = config.smtp
    return bool(c.listen or c.smtps_listen or c.submission_listen)


def make_users(cfg: Config, reactor: Any) -> Users:
    """The [auth] backend: the user directory and the authenticator it offers."""
    a = cfg.auth
    if a.backend == "ldap":
        password = None
        if a.ldap_bind_password_file is not None:
            password = a.ldap_bind_password_file.read_text().strip()
        directory = LDAPDirectory(
            urls=list(a.ldap_urls),
            base_dn=a.ldap_base_dn,
            user_filter=a.ldap_filter,
            bind_dn=a.ldap_bind_dn or None,
            bind_password=password,
            starttls=a.ldap_starttls,
            ca_file=a.ldap_ca_file,
            pool_size=a.ldap_pool_size,
            timeout=a.ldap_timeout,
            reactor=reactor,
        )
        return Users(directory, directory, directory)
    passwd = PasswdFile(Paths.of(cfg).passwd_file, reactor=reactor)
    checker = PasswdFileChecker(passwd) if a.backend != "none" else None
    return Users(passwd, checker, None)


def load_mail_parts(config: Config, problems: list[str], reactor: Any = None) -> MailParts | None:
    """Users and policy files for SMTP, checked now; every problem appended as a config line."""
    if not smtp_enabled(config):
        return None
    if reactor is None:
        from twisted.internet import reactor
    try:
        users = make_users(config, reactor)
    except ValueError as e:  # LDAP settings ldap3 refuses
        problems.append(config.problem("auth", "backend", str(e)))
        return None
    if isinstance(users.directory, PasswdFile):
        try:
            users.directory.read_users()
        except PasswdFileError as e:
            problems.extend(config.problem("auth", "passwd_file", p) for p in e.problems)
    c = config.smtp
    files: dict[str, Path | None] = {k: c.get(k) for k in POLICY_FILES}
    try:
        policy = SendmailPolicy(
            local_domains=list(c.local_domains),
            users=users.directory,
            local_host_names=files["local_host_names"],
            access=files["access"],
            virtusertable=files["virtusertable"],
            aliases=files["aliases"],
        )
    except ConfigError as e:
        for p in e.problems:
            key = next((k for k, f in files.items() if f is not None and p.startswith(str(f))), "")
            problems.append(
                config.problem("smtp", key, p) if key else f"{config.label}: [smtp]: {p}"
            )
        return None
    return MailParts(users, policy)


def prepare(config: Config, progress: Progress = print) -> Prepared:
    """Load zones, make the state folder, issue or load certificates; ConfigError if any fails."""
    problems: list[str] = []
    zone_files = load_zone_files(config, problems)
    zones: list[Zone] = []
    try:
        zones = build_zones(config, zone_files)
    except (ZoneError, DKIMError) as e:
        problems.append(config.problem("dkim", "domains", str(e)))
    state: Path = config.appliance.state_dir
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as e:
        problems.append(
            config.problem("appliance", "state_dir", f"cannot create {state}: {e.strerror}")
        )
    problems += unreadable_after_drop(config)
    mail = load_mail_parts(config, problems)
    transport, smarthost_password = load_relay_files(config, problems)
    if problems:
        raise ConfigError(problems)
    settings = tls_settings(config)
    try:
        settings.ensure(progress=progress)
        options = settings.load()
    except ApplianceError as e:
        raise ConfigError([config.problem("tls", "cert", str(e))]) from None
    warning = check_key_permissions(settings.key)
    if warning:
        if settings.ca is None:
            raise ConfigError([config.problem("tls", "key", warning)])
        os.chmod(settings.key, 0o600)  # our own key: just fix it
    return Prepared(
        config=config,
        zones=zones,
        zone_files=zone_files,
        tls=TLSService(settings, options),
        mail=mail,
        transport=transport,
        smarthost_password=smarthost_password,
    )


def load_relay_files(config: Config, problems: list[str]) -> tuple[TransportMap | None, str | None]:
    """[relay] transport_map and smarthost_password_file, read now (problems appended)."""
    r = config.relay
    transport = None
    if r.transport_map is not None:
        try:
            transport = TransportMap(r.transport_map)
        except ConfigError as e:
            problems.extend(config.problem("relay", "transport_map", p) for p in e.problems)
    password = None
    if r.smarthost_password_file is not None:
        path: Path = r.smarthost_password_file
        warning = check_key_permissions(path)
        if warning:
            problems.append(config.problem("relay", "smarthost_password_file", warning))
        try:
            password = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            problems.append(config.problem("relay", "smarthost_password_file", f"cannot read: {e}"))
    return transport, password


def readable_by(path: Path, user: str, group: str | None) -> bool:
    """Whether `user` (with `group`, or its own groups) may read path, by its mode bits."""
    try:
        st = path.stat()
    except OSError:
        return True  # a missing file is reported elsewhere
    pw = pwd.getpwnam(user)
    gids = {grp.getgrnam(group).gr_gid} if group else {pw.pw_gid}
    if not group:
        gids |= {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    if st.st_uid == pw.pw_uid:
        return bool(st.st_mode & 0o400)
    if st.st_gid in gids:
        return bool(st.st_mode & 0o040)
    return bool(st.st_mode & 0o004)


def unreadable_after_drop(config: Config) -> list[str]:
    """Files re-read at run time must stay readable once root is dropped (Dovecot's rule)."""
    user = config.appliance.user
    if user is None:
        return []
    group = config.appliance.group
    watched = [("smtp", k, config.smtp.get(k)) for k in POLICY_FILES]
    if config.auth.backend == "passwd" and smtp_enabled(config):
        watched.append(("auth", "passwd_file", config.auth.passwd_file))
    problems = []
    for section, key, path in watched:
        if path is not None and not readable_by(path, user, group):
            who = f"{user}:{group}" if group else user
            problems.append(
                config.problem(
                    section,
                    key,
                    f"{path} is not readable by {who}, the user the appliance "
                    f"runs as after start-up (chgrp {group or user} it and chmod 640)",
                )
            )
    return problems


def make_dns_engine(prepared: Prepared, reactor: Any) -> DNSEngine:
    """Our zones and forwarders: what port 53 answers, and what the appliance resolves with."""
    dns_cfg = prepared.config.dns
    forwarder = None
    if dns_cfg.forwarders:
        forwarder = Forwarder(
            dns_cfg.forwarders,
            recursion_desired=dns_cfg.forward_recursion,
            timeout=dns_cfg.forward_timeout,
            cache_size=dns_cfg.cache_size,
            failure_ttl=dns_cfg.servfail_ttl,
            reactor=reactor,
            source_ip=dns_cfg.listen[0].host if dns_cfg.listen else "",
        )
    return DNSEngine(
        Authority(prepared.zones),
        forwarder=forwarder,
        recursion_networks=dns_cfg.recursion_networks,
        edns_udp_size=dns_cfg.edns_udp_size,
    )


def make_dns_service(prepared: Prepared, reactor: Any) -> tuple[service.MultiService, DNSEngine]:
    dns_cfg = prepared.config.dns
    engine = make_dns_engine(prepared, reactor)
    dns_service = service.MultiService()
    dns_service.setName("dns")
    # one set of TCP slots for every listen address: the limits are the service's
    tcp_slots = ConnectionSlots(dns_cfg.max_tcp_connections, dns_cfg.max_tcp_connections_per_ip)
    for hp in dns_cfg.listen or ():
        udp = DNSUDPServer(
            hp.port, DNSUDPProtocol(engine), interface=hp.host, maxPacketSize=65535, reactor=reactor
        )
        udp.setName(f"udp {hp}")
        udp.setServiceParent(dns_service)
        factory = DNSTCPFactory(
            engine,
            dns_cfg.tcp_idle_timeout,
            dns_cfg.max_tcp_connections,
            max_connections_per_ip=dns_cfg.max_tcp_connections_per_ip,
            stress_idle_timeout=dns_cfg.tcp_stress_idle_timeout,
            slots=tcp_slots,
            reactor=reactor,
        )
        tcp = strports.service(tcp_endpoint(hp), factory, reactor=reactor)
        tcp.setName(f"tcp {hp}")
        tcp.setServiceParent(dns_service)
    return dns_service, engine


class EventLog(Protocol):
    """What an event-stream log offers: open, close, and take an event."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def __call__(self, event: dict[str, Any]) -> None: ...


class MailLogService(service.Service):
    """Subscribes a log (the maillog, the audit log) to the mail event stream; opened in
    privilegedStartService, while still root: it may live where the dropped user cannot
    create files."""

    def __init__(self, maillog: EventLog) -> None:
        self.maillog = maillog

    def privilegedStartService(self) -> None:
        self.maillog.open()

    def startService(self) -> None:
        self.maillog.open()  # no-op when twistd already opened it as root
        mail_events.addObserver(cast(ILogObserver, self.maillog))
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        mail_events.removeObserver(cast(ILogObserver, self.maillog))
        self.maillog.close()


def build_queue(
    state_dir: Path,
    hostname: str,
    reactor: Any,
    *,
    fsync_threads: int = 16,
    retry_interval: float = 60.0,
    min_free_space: int = 0,
    events: Logger | None = None,
    lock_stale_after: float = 300.0,
) -> tuple[Queue, MaildirStore]:
    """The queue over local delivery into the Maildir store under state_dir (tests and bench
    build theirs this way too)."""
    pool = WorkerPool(reactor, fsync_threads, name="queue")
    dirsync = DirSync()
    store = MaildirStore(
        state_dir / "mail", hostname, dirsync=dirsync, stale_after=lock_stale_after
    )
    queue = Queue(
        state_dir / "queue",
        local=LocalDelivery(store, pool),
        pool=pool,
        reactor=reactor,
        dirsync=dirsync,
        events=events or mail_logger("local"),
        retry_interval=retry_interval,
        min_free_space=min_free_space,
    )
    return queue, store


def our_addresses(cfg: Config) -> list[tuple[str, int]]:
    """Where our own SMTP listens: an MX (or route) pointing here is a loop."""
    c = cfg.smtp
    return [(hp.host, hp.port) for hp in (*c.listen, *c.smtps_listen, *c.submission_listen)]


def make_relay(
    prepared: Prepared, engine: DNSEngine, pool: WorkerPool, reactor: Any
) -> RelayTarget:
    """The relay target: routes through our own resolver, sessions as [relay] says."""
    cfg = prepared.config
    r = cfg.relay
    hostname = cfg.appliance.hostname
    router = Router(
        LocalResolver(engine),
        port=r.port,
        smarthost=r.smarthost,
        transport=prepared.transport,
        local_names=(hostname,),
        local_addresses=our_addresses(cfg),
    )
    login = None
    if r.smarthost_user and prepared.smarthost_password is not None:
        login = (r.smarthost_user, prepared.smarthost_password)
    settings = SessionSettings(
        helo=r.helo_name or hostname,
        tls=r.tls,
        ca_file=r.ca_file,
        source_address=r.source_address,
        timeouts=Timeouts(r.connect_timeout, r.command_timeout, r.data_timeout),
        smarthost_login=login,
    )
    limits = RelayLimits(
        max_connections=r.max_connections,
        max_per_destination=r.max_connections_per_destination,
        max_messages_per_connection=r.max_messages_per_connection,
        cache_time=r.connection_cache_time,
        max_hops=r.max_hops,
    )
    return RelayTarget(router, settings, pool, reactor, limits)


def postmaster(cfg: Config) -> str:
    configured: str | None = cfg.queue.postmaster
    if configured:
        return configured
    hostname: str = cfg.appliance.hostname
    domain = hostname.split(".", 1)[1] if hostname.count(".") >= 2 else hostname
    return f"postmaster@{domain}"


def attach_relay(
    queue: Queue,
    relay: RelayTarget,
    policy: Policy | None,
    cfg: Config,
    signer: DKIMSigner | None = None,
) -> RelayScheduler:
    """Give the queue its deferred side: the scheduler over the relay, and the notices
    (DKIM-signed by signer, when given)."""
    q = cfg.queue
    notices = Notices(
        queue,
        policy,
        queue.pool,
        hostname=cfg.appliance.hostname,
        postmaster=postmaster(cfg),
        events=mail_logger("bounce"),
        signer=signer,
    )
    scheduler = RelayScheduler(
        queue,
        relay,
        notices,
        schedule=tuple(float(x) for x in q.retry_schedule),
        max_lifetime=q.max_queue_lifetime,
        delay_warning=q.delay_warning,
        max_active=q.max_active,
        cut_through_wait=cfg.relay.cut_through_wait,
    )
    queue.relay = scheduler
    queue.notices = notices
    return scheduler


def make_throttle(cfg: Config, reactor: Any) -> FailureThrottle:
    """The login throttle every protocol shares, its blocks kept under state_dir."""
    a = cfg.auth
    return FailureThrottle(
        reactor,
        base_delay=a.failure_delay,
        window=a.failure_window,
        max_failures=a.max_failures,
        max_user_failures=a.max_user_failures,
        state_file=Paths.of(cfg).login_failures,
        events=mail_logger("auth"),
    )


def make_smtp_service(
    prepared: Prepared,
    queue: Queue,
    reactor: Any,
    dns_engine: DNSEngine | None = None,
    throttle: FailureThrottle | None = None,
    resolver: Resolver | None = None,
    pool: WorkerPool | None = None,
    signer: DKIMSigner | None = None,
) -> service.MultiService:
    """The three SMTP listeners, sharing the queue, the users, the policy, the throttle, the
    filter chain (its DNS checks through resolver) and one set of connection slots."""
    cfg = prepared.config
    parts = prepared.mail
    assert parts is not None, "load_mail_parts() found no SMTP listener"
    c = cfg.smtp
    a = cfg.auth
    settings = SMTPSettings(
        hostname=cfg.appliance.hostname,
        banner=c.banner,
        max_message_size=c.max_message_size,
        max_recipients=c.max_recipients,
        max_command_line=c.max_command_line,
        max_text_line=c.max_text_line,
        limits=SessionLimits(
            idle_timeout=c.idle_timeout,
            command_timeout=c.command_timeout,
            greeting_timeout=c.greeting_timeout,
            data_timeout=c.data_timeout,
            min_data_rate=c.min_data_rate,
            stress_timeout=c.stress_timeout,
            stress_threshold=c.stress_threshold / 100,
        ),
        max_connections=c.max_connections,
        max_connections_per_ip=c.max_connections_per_ip,
        max_errors=c.max_errors,
        plaintext_networks=a.plaintext_networks,
        mechanisms=a.mechanisms,
    )
    if throttle is None:
        throttle = make_throttle(cfg, reactor)
    slots = ConnectionSlots.for_service(settings)
    tls = prepared.tls.context_factory
    rdns = None
    if dns_engine is not None:
        rdns = ReverseLookup(LocalResolver(dns_engine), reactor)
    filters = make_filters(cfg, reactor, resolver, pool, signer)
    smtp = service.MultiService()
    smtp.setName("smtp")
    events = mail_logger("smtpd")
    for mode, addresses in (
        (MTA, c.listen),
        (SMTPS, c.smtps_listen),
        (SUBMISSION, c.submission_listen),
    ):
        factory = SMTPFactory(
            settings,
            mode,
            sink=queue,
            policy=parts.policy,
            authenticator=parts.users.authenticator,
            tls=tls,
            throttle=throttle,
            events=events,
            reactor=reactor,
            rdns=rdns,
            slots=slots,
            filters=filters,
        )
        wrapped = TLSMemoryBIOFactory(tls, False, factory) if mode.implicit_tls else factory
        for hp in addresses:
            listener = strports.service(tcp_endpoint(hp), wrapped, reactor=reactor)
            listener.setName(f"{mode.name} {hp}")
            listener.setServiceParent(smtp)
    return smtp


def _owner(cfg: Config) -> dict[str, int]:
    """uid/gid the control socket belongs to: the user the appliance drops to, if any."""
    user = cfg.appliance.user
    if user is None:
        return {}
    pw = pwd.getpwnam(user)
    group = cfg.appliance.group
    return {"uid": pw.pw_uid, "gid": grp.getgrnam(group).gr_gid if group else pw.pw_gid}


def make_service(prepared: Prepared, reactor: Any = None) -> ApplianceService:
    """The tree; reactor (default: the installed one, which twistd installs first) provides
    every IReactor* interface the parts need, so it is not narrowed to one here."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    cfg = prepared.config
    root = ApplianceService(cfg)
    prepared.tls.setName("tls")
    prepared.tls.setServiceParent(root)
    engine = None
    if cfg.dns.enabled and cfg.dns.listen:
        dns_service, engine = make_dns_service(prepared, reactor)
        dns_service.setServiceParent(root)
    if smtp_enabled(cfg) and prepared.mail is not None:
        paths = Paths.of(cfg)
        maillog = MailLogService(MailLog(paths.maillog, cfg.appliance.hostname, reactor=reactor))
        maillog.setName("maillog")
        maillog.setServiceParent(root)
        audit = MailLogService(AuditLog(paths.audit_log, reactor))
        audit.setName("audit")
        audit.setServiceParent(root)
        users_service = prepared.mail.users.service
        if users_service is not None:
            users_service.setName("auth")
            users_service.setServiceParent(root)
        queue, store = build_queue(
            paths.state_dir,
            cfg.appliance.hostname,
            reactor,
            fsync_threads=cfg.queue.fsync_threads,
            retry_interval=cfg.queue.retry_interval,
            min_free_space=cfg.smtp.min_free_space,
            lock_stale_after=cfg.pop3.lock_stale_after,
        )
        relay_engine = engine if engine is not None else make_dns_engine(prepared, reactor)
        relay = make_relay(prepared, relay_engine, queue.pool, reactor)
        signer = make_signer(cfg, reactor, queue.pool)
        scheduler = attach_relay(queue, relay, prepared.mail.policy, cfg, signer)
        queue.setName("queue")
        queue.setServiceParent(root)
        control = ControlService(
            paths.control_socket,
            scheduler,
            events=mail_logger("control"),
            describe=root.describe,
            **_owner(cfg),
        )
        control.setName("control")
        control.setServiceParent(root)
        throttle = make_throttle(cfg, reactor)
        throttle.setName("throttle")
        throttle.setServiceParent(root)
        make_smtp_service(
            prepared,
            queue,
            reactor,
            engine,
            throttle,
            LocalResolver(relay_engine),
            queue.pool,
            signer,
        ).setServiceParent(root)
        engines = [e for e in (engine, relay_engine) if e is not None]
        refresher = ZoneRefresher(
            list({id(e): e.authority for e in engines}.values()),
            lambda: build_zones(cfg, prepared.zone_files),
            dkim_store(cfg).state_stamp,
            reactor,
        )
        refresher.setName("zones")
        refresher.setServiceParent(root)
        if pop3_enabled(cfg):
            make_pop3_service(prepared, store, queue.pool, reactor, throttle).setServiceParent(root)
        if imap_enabled(cfg):
            make_imap_service(prepared, store, queue.pool, reactor, throttle).setServiceParent(root)
        if web_enabled(cfg):
            counts = engine.answered if engine is not None else None
            from appliance.service.summary import gather  # it imports this module

            describe = root.describe
            make_web_service(
                prepared,
                reactor,
                (lambda: counts) if counts is not None else None,
                AdminParts(
                    queue=scheduler,
                    authenticator=prepared.mail.users.authenticator,
                    throttle=throttle,
                    summary=lambda: queue.pool.run(gather, cfg, describe()),
                ),
            ).setServiceParent(root)
    for name in ("queue", "smtp", *PLACEHOLDERS):
        if root.namedServices.get(name) is None:
            placeholder = service.MultiService()
            placeholder.setName(name)
            placeholder.setServiceParent(root)
    return root
