"""The only wiring code: turns a validated Config into the appliance's service tree.

`prepare()` does everything that can fail because of the admin's files (zones, certificates,
the state folder) and reports it as ConfigError lines before anything listens. `make_service()`
then builds the named MultiService tree: dns, tls, and the places later features fill (smtp,
pop3, imap, queue). Listeners bind in privilegedStartService; the root service turns a busy port
into one line and exit status 1, and drops root privileges before the children start.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from twisted.application import internet, service, strports
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from appliance.config import Config, HostPort
from appliance.dns.authority import Authority, Zone
from appliance.dns.server import DNSEngine, DNSTCPFactory, DNSUDPProtocol, Forwarder
from appliance.dns.zonefile import load_zone
from appliance.errors import ApplianceError, ConfigError, ZoneError
from appliance.log import MailLog
from appliance.tls.ca import CertificateAuthority
from appliance.tls.context import check_key_permissions
from appliance.tls.service import TLSService, TLSSettings

# [smtp] keys naming the sendmail maps (re-read at run time)
POLICY_FILES = ("local_host_names", "access", "virtusertable", "aliases")

# children that later features fill; present now so the tree's shape is stable
PLACEHOLDERS = ("smtp", "pop3", "imap", "queue")


@dataclass
class Prepared:
    """Everything loaded and checked; building services from it cannot fail on user input."""

    config: Config
    zones: list[Zone]
    tls: TLSService
    mail: MailParts | None = None


@dataclass
class MailParts:
    """The smtp side's loaded files: users (passwd-file or LDAP) and the sendmail maps."""

    users: Any
    checker: Any
    cram_supported: Any
    policy: Any


def tls_settings(config: Config) -> TLSSettings:
    t = config.tls
    state = config.appliance.state_dir
    hostname = config.appliance.hostname
    if t.cert is not None:
        cert, key, ca = t.cert, t.key, None
    else:
        cert = state / "tls" / f"{hostname}.crt"
        key = state / "tls" / f"{hostname}.key"
        ca = CertificateAuthority(t.ca_dir or state / "ca")
    return TLSSettings(
        hostname=hostname,
        names=list(t.names),
        cert=cert,
        key=key,
        chain=tuple(t.chain),
        min_version=t.min_version,
        ca=ca,
        renew_before=timedelta(seconds=t.renew_before),
        key_type=t.key_type,
        validity_days=max(1, t.validity // 86400),
    )


def load_zones(config: Config, problems: list[str]) -> list[Zone]:
    zones = []
    for zc in config.zones:
        try:
            zones.append(Zone(zc.origin, load_zone(zc.file, zc.origin), zc.allow_transfer))
        except ZoneError as e:
            problems.append(config.problem(f"zone:{zc.origin}", "file", str(e)))
    return zones


def load_mail_parts(config: Config, problems: list[str], reactor: Any = None) -> MailParts | None:
    """Users and policy files for SMTP, checked now; every problem appended as a config line."""
    if not smtp_enabled(config):
        return None
    from appliance.auth.passwd import PasswdFileError
    from appliance.smtp.policy import Policy

    if reactor is None:
        from twisted.internet import reactor
    try:
        users, checker, cram = make_users(config, reactor)
    except ValueError as e:  # LDAP settings ldap3 refuses
        problems.append(config.problem("auth", "backend", str(e)))
        return None
    if config.auth.backend == "passwd" and hasattr(users, "read_users"):
        try:
            users.read_users()
        except PasswdFileError as e:
            problems.extend(config.problem("auth", "passwd_file", p) for p in e.problems)
    c = config.smtp
    files = {k: c.get(k) for k in POLICY_FILES}
    try:
        policy = Policy(
            local_domains=list(c.local_domains),
            users=users,
            **files,
        )
    except ConfigError as e:
        for p in e.problems:
            key = next((k for k, f in files.items() if f is not None and p.startswith(str(f))), "")
            problems.append(
                config.problem("smtp", key, p) if key else f"{config.label}: [smtp]: {p}"
            )
        return None
    return MailParts(users, checker, cram, policy)


def prepare(config: Config, progress: Any = print) -> Prepared:
    """Load zones, make the state folder, issue or load certificates; ConfigError if any fails."""
    problems: list[str] = []
    zones = load_zones(config, problems)
    state: Path = config.appliance.state_dir
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as e:
        problems.append(
            config.problem("appliance", "state_dir", f"cannot create {state}: {e.strerror}")
        )
    problems += unreadable_after_drop(config)
    mail = load_mail_parts(config, problems)
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
    return Prepared(config=config, zones=zones, tls=TLSService(settings, options), mail=mail)


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


def _tcp_endpoint(hp: HostPort) -> str:
    return f"tcp:{hp.port}:interface={hp.host.replace(':', chr(92) + ':')}"


def make_dns_service(prepared: Prepared, reactor: Any) -> service.MultiService:
    dns_cfg = prepared.config.dns
    forwarder = None
    if dns_cfg.forwarders:
        forwarder = Forwarder(
            dns_cfg.forwarders,
            recursion_desired=dns_cfg.forward_recursion,
            timeout=dns_cfg.forward_timeout,
            cache_size=dns_cfg.cache_size,
            reactor=reactor,
            source_ip=dns_cfg.listen[0].host if dns_cfg.listen else "",
        )
    engine = DNSEngine(
        Authority(prepared.zones),
        forwarder=forwarder,
        recursion_networks=dns_cfg.recursion_networks,
        edns_udp_size=dns_cfg.edns_udp_size,
    )
    dns_service = service.MultiService()
    dns_service.setName("dns")
    dns_service.engine = engine
    for hp in dns_cfg.listen or ():
        udp = internet.UDPServer(
            hp.port, DNSUDPProtocol(engine), interface=hp.host, maxPacketSize=65535, reactor=reactor
        )
        udp.setName(f"udp {hp}")
        udp.setServiceParent(dns_service)
        factory = DNSTCPFactory(engine, dns_cfg.tcp_idle_timeout, dns_cfg.max_tcp_connections)
        tcp = strports.service(_tcp_endpoint(hp), factory, reactor=reactor)
        tcp.setName(f"tcp {hp}")
        tcp.setServiceParent(dns_service)
    return dns_service


class _BindFailed(Exception):
    pass


class ApplianceService(service.MultiService):
    """The root: a busy port is one line and exit 1; root is dropped after binding."""

    log = Logger()

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config

    def privilegedStartService(self) -> None:
        try:
            self._bind_all(self)
        except _BindFailed as e:
            # twistd has already redirected sys.stderr into the log; the admin wants the
            # reason on the terminal, once
            sys.__stderr__.write(f"mailappliance: {e}\n")
            sys.__stderr__.flush()
            raise SystemExit(1) from None

    @classmethod
    def _bind_all(cls, parent: service.MultiService, prefix: str = "") -> None:
        """privilegedStartService for every leaf, naming the one that fails ('dns udp ...')."""
        for child in parent:
            name = f"{prefix}{child.name}"
            if isinstance(child, service.MultiService):
                cls._bind_all(child, name + " ")
                continue
            try:
                child.privilegedStartService()
            except CannotListenError as e:
                where = f"{e.interface or '*'}:{e.port}"
                raise _BindFailed(f"{name}: cannot listen on {where}: {e.socketError}") from None

    def startService(self) -> None:
        self.drop_privileges()
        super().startService()
        self.log.info(
            "mailappliance {hostname} ready: {services}",
            hostname=self.config.appliance.hostname,
            services=", ".join(self._describe(self)),
        )

    @classmethod
    def _describe(cls, parent: service.MultiService) -> list[str]:
        """Names of the listening services, e.g. 'dns udp 127.0.1.1:53'."""
        out = []
        for child in parent:
            if isinstance(child, service.MultiService):
                out.extend(f"{child.name} {d}" for d in cls._describe(child))
            elif child.name:
                out.append(child.name)
        return out

    def drop_privileges(self) -> None:
        user, group = self.config.appliance.user, self.config.appliance.group
        if user is None and group is None:
            return
        if os.getuid() != 0:
            return  # nothing to drop (already unprivileged, e.g. twistd --uid)
        pw = pwd.getpwnam(user) if user else None
        gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
        uid = pw.pw_uid if pw else os.getuid()
        state = self.config.appliance.state_dir
        for root, dirs, files in os.walk(state):
            for n in (root, *(os.path.join(root, f) for f in dirs + files)):
                os.chown(n, uid, gid)
        maillog = self.config.log.maillog
        if maillog is not None and maillog.exists():
            os.chown(maillog, uid, gid)
        os.setgroups([gid])
        os.setgid(gid)
        if pw is not None:
            os.setuid(uid)
        self.log.info("dropped privileges to {user}:{group}", user=user or uid, group=gid)


class _OpenLog(service.Service):
    """Opens the maillog in privilegedStartService, i.e. while still root: the log may live
    where the dropped user cannot create files. A leaf, because the root's _bind_all calls
    the leaves' privilegedStartService, not their parents'."""

    def __init__(self, maillog: MailLog) -> None:
        self.maillog = maillog

    def privilegedStartService(self) -> None:
        self.maillog.open()


class MailService(service.MultiService):
    """Starts and stops the non-listening parts the smtp listeners share (spool, users, log)."""

    log = Logger()

    def __init__(self, spool: Any, users: Any, maillog: MailLog) -> None:
        super().__init__()
        self.spool = spool
        # the LDAP directory has a thread pool to start and stop; the passwd file has not
        self.parts = [spool, *([users] if hasattr(users, "start") else [])]
        self.maillog = maillog
        opener = _OpenLog(maillog)
        opener.setName("maillog")
        opener.setServiceParent(self)

    def startService(self) -> None:
        self.maillog.open()  # no-op when twistd already opened it as root
        for part in self.parts:
            part.start()
        super().startService()
        d = defer.maybeDeferred(self.spool.recover)
        d.addCallback(
            lambda ids: ids and self.log.info("recovered {count} queued message(s)", count=len(ids))
        )
        d.addErrback(lambda f: self.log.failure("queue recovery failed; retried in a minute", f))

    def stopService(self) -> Any:
        d = defer.maybeDeferred(super().stopService)

        def stop_parts(_: Any) -> Any:
            return defer.gatherResults(
                [defer.maybeDeferred(part.stop) for part in reversed(self.parts)]
            )

        # closed last: the spool logs the deliveries it finishes while stopping
        return d.addCallback(stop_parts).addBoth(lambda r: self.maillog.close() or r)


def smtp_enabled(config: Config) -> bool:
    c = config.smtp
    return bool(c.listen or c.smtps_listen or c.submission_listen)


def make_smtp_service(
    prepared: Prepared, reactor: Any, dns_engine: DNSEngine | None = None
) -> MailService:
    """The queue (spool), users, policy and the three SMTP listeners."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from appliance.auth.sasl import SaslExchange
    from appliance.auth.throttle import FailureThrottle
    from appliance.queue.spool import Spool
    from appliance.smtp.server import MTA, SMTPS, SUBMISSION, SMTPFactory, SMTPSettings

    cfg = prepared.config
    state: Path = cfg.appliance.state_dir
    hostname = cfg.appliance.hostname
    maillog = MailLog(cfg.log.maillog or state / "maillog", hostname, reactor=reactor)
    spool = Spool(
        state,
        hostname=hostname,
        reactor=reactor,
        maillog=maillog.for_component("local"),
        fsync_threads=cfg.queue.fsync_threads,
        retry_interval=cfg.queue.retry_interval,
    )
    parts = prepared.mail
    users, checker, cram, policy = parts.users, parts.checker, parts.cram_supported, parts.policy
    c = cfg.smtp
    a = cfg.auth
    settings = SMTPSettings(
        hostname=hostname,
        banner=c.banner,
        max_message_size=c.max_message_size,
        max_recipients=c.max_recipients,
        max_command_line=c.max_command_line,
        max_text_line=c.max_text_line,
        idle_timeout=c.idle_timeout,
        max_connections=c.max_connections,
        max_connections_per_ip=c.max_connections_per_ip,
        max_errors=c.max_errors,
        plaintext_networks=a.plaintext_networks,
        min_free_space=c.min_free_space,
        mechanisms=a.mechanisms,
        spool_dir=str(state),
    )
    throttle = FailureThrottle(reactor, base_delay=a.failure_delay, max_failures=a.max_failures)
    smtp_log = maillog.for_component("smtpd")
    mail = MailService(spool, users, maillog)
    mail.setName("smtp")
    tls = prepared.tls.context_factory
    rdns = None
    if dns_engine is not None:
        from appliance.dns.resolver import LocalResolver
        from appliance.smtp.rdns import ReverseLookup

        rdns = ReverseLookup(LocalResolver(dns_engine), reactor)
    for mode, addresses in (
        (MTA, c.listen),
        (SMTPS, c.smtps_listen),
        (SUBMISSION, c.submission_listen),
    ):
        factory = SMTPFactory(
            settings,
            mode,
            sink=spool,
            policy=policy,
            checker=checker if a.backend != "none" else None,
            tls=tls,
            throttle=throttle,
            maillog=smtp_log,
            reactor=reactor,
            sasl_factory=SaslExchange,
            cram_supported=cram,
            rdns=rdns,
        )
        wrapped = TLSMemoryBIOFactory(tls, False, factory) if mode.implicit_tls else factory
        for hp in addresses:
            listener = strports.service(_tcp_endpoint(hp), wrapped, reactor=reactor)
            listener.setName(f"{mode.name} {hp}")
            listener.setServiceParent(mail)
    return mail


def make_users(cfg: Config, reactor: Any) -> tuple[Any, Any, Any]:
    """(user directory, cred checker, 'can do CRAM-MD5' callable) for [auth] backend."""
    a = cfg.auth
    if a.backend == "ldap":
        from appliance.auth.ldap import LDAPDirectory

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
        return directory, directory, lambda: False
    from appliance.auth.passwd import PasswdFile, PasswdFileChecker

    passwd = PasswdFile(a.passwd_file or cfg.appliance.state_dir / "passwd", reactor=reactor)
    checker = PasswdFileChecker(passwd)
    return passwd, checker, checker.cram_md5_available


def make_service(prepared: Prepared, reactor: Any = None) -> ApplianceService:
    if reactor is None:
        from twisted.internet import reactor  # noqa: PLW0621 (twistd installs it first)
    root = ApplianceService(prepared.config)
    prepared.tls.setName("tls")
    prepared.tls.setServiceParent(root)
    engine = None
    if prepared.config.dns.enabled and prepared.config.dns.listen:
        dns_service = make_dns_service(prepared, reactor)
        dns_service.setServiceParent(root)
        engine = dns_service.engine
    if smtp_enabled(prepared.config):
        make_smtp_service(prepared, reactor, engine).setServiceParent(root)
    for name in PLACEHOLDERS:
        if name == "smtp" and smtp_enabled(prepared.config):
            continue
        placeholder = service.MultiService()
        placeholder.setName(name)
        placeholder.setServiceParent(root)
    return root
