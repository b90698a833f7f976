"""The web listeners (twisted.web, no second process): [web] listen over HTTPS with our
certificate serves /metrics and the client autoconfiguration; [web] autoconfig_listen over
plain HTTP serves only the autoconfiguration (Thunderbird also asks http://autoconfig.<domain>/;
nothing there is secret: servers, ports, the user's own address).

What clients are told (appliance.web.autoconfig.ClientSettings) comes from the listeners
configured: IMAPS, IMAP + STARTTLS, POP3S, POP3 + STLS, submission, SMTPS, in that order of
preference, under [appliance] hostname; the same drives the RFC 6186 SRV records the zones
publish (appliance.service.zones). The metrics (appliance.web.metrics) observe the mail event
stream; the queue gauges count the spool's files at each scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application import service, strports
from twisted.internet.defer import Deferred
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from appliance.config import Config
from appliance.dns.published import is_mail_domain
from appliance.interfaces import Authenticator, LoginThrottle, QueueAdmin, Summary
from appliance.log import mail_events, mail_logger
from appliance.paths import Paths
from appliance.queue.inspect import count_queue
from appliance.service.access import tcp_endpoint
from appliance.web.admin import AdminPages
from appliance.web.autoconfig import ClientSettings, Endpoint, mount
from appliance.web.history import History
from appliance.web.metrics import Metrics, MetricsResource
from appliance.web.sessions import Sessions

if TYPE_CHECKING:
    from appliance.service import Prepared

ALIASES = ("autoconfig", "autodiscover")  # names Thunderbird and Outlook look up
MAX_BODY = 256 * 1024  # a request body larger than this is refused (413) as it arrives


class BoundedRequest(Request):
    """A request whose body may not pass MAX_BODY: twisted.web would otherwise keep all of
    it (in memory, then in a temporary file) before any resource could say no."""

    received = 0

    def _refuse(self) -> None:
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            transport.loseConnection()

    def gotLength(self, length: int | None) -> None:  # noqa: N802 (Twisted's API)
        if length is not None and length > MAX_BODY:
            self._refuse()
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        self.received += len(data)
        if self.received > MAX_BODY:
            self._refuse()
            return
        super().handleContentChunk(data)


def web_enabled(config: Config) -> bool:
    return bool(config.web.listen or config.web.autoconfig_listen)


def client_settings(config: Config, domains: tuple[str, ...]) -> ClientSettings | None:
    """What autoconfiguration tells clients; None when no client protocol is configured."""
    host = config.appliance.hostname
    endpoints = []
    for protocol, socket_type, listens in (
        ("imap", "SSL", config.imap.imaps_listen),
        ("imap", "STARTTLS", config.imap.listen),
        ("pop3", "SSL", config.pop3.pop3s_listen),
        ("pop3", "STARTTLS", config.pop3.listen),
        ("smtp", "STARTTLS", config.smtp.submission_listen),
        ("smtp", "SSL", config.smtp.smtps_listen),
    ):
        if listens:
            endpoints.append(Endpoint(protocol, host, listens[0].port, socket_type))
    if not endpoints or not domains:
        return None
    return ClientSettings(domains, f"{domains[0]} mail", tuple(endpoints))


@dataclass(frozen=True)
class AdminParts:
    """What the status page acts through: the queue commands, the users, the shared login
    throttle, and the summary (gathered in a worker thread)."""

    queue: QueueAdmin
    authenticator: Authenticator | None
    throttle: LoginThrottle | None
    summary: Callable[[], Deferred[Summary]]


class WebService(service.MultiService):
    """The web listeners; the metrics and the page's history observe the mail event stream
    while it runs."""

    def __init__(self, *observers: Any) -> None:
        super().__init__()
        self.observers = observers

    def startService(self) -> None:  # noqa: N802 (Twisted's API)
        for o in self.observers:
            mail_events.addObserver(o)
        super().startService()

    def stopService(self) -> Any:  # noqa: N802
        for o in self.observers:
            mail_events.removeObserver(o)
        return super().stopService()


def mail_domains(prepared: Prepared) -> tuple[str, ...]:
    """The domains whose addresses autoconfiguration answers for: the zones we serve with an
    MX at their apex, and the hostname's own domain (mail.163.com: 163.com) first."""
    host = prepared.config.appliance.hostname
    own = host.partition(".")[2]
    zones = [
        z.origin.decode("ascii")
        for z in prepared.zones
        if is_mail_domain(z.origin.decode("ascii"), z.records)
    ]
    return tuple(dict.fromkeys([d for d in (own, *zones) if d]))


def make_web_service(
    prepared: Prepared,
    reactor: Any,
    dns_answered: Callable[[], Sequence[int]] | None = None,
    admin: AdminParts | None = None,
) -> WebService:
    """The web listeners, and the metrics observer on the mail event stream; dns_answered:
    the DNS server's answer counts by rcode, for the metrics; admin: what the status page
    needs (served when [web] admins lists someone and a user backend is configured)."""
    cfg = prepared.config
    w = cfg.web
    domains = mail_domains(prepared)
    settings = client_settings(cfg, domains)
    queue_dir = Paths.of(cfg).state_dir / "queue"
    metrics = Metrics(queue_sizes=lambda: count_queue(queue_dir), dns_answered=dns_answered)
    history = History()
    web = WebService(metrics, history)
    web.setName("web")
    token = None
    if w.metrics_token_file is not None:
        token = w.metrics_token_file.read_text("utf-8").strip() or None
    secure = Resource()
    plain = Resource()
    if settings is not None:
        mount(settings, secure)
        mount(settings, plain)
    secure.putChild(b"metrics", MetricsResource(metrics, token))
    if admin is not None and admin.authenticator is not None and w.admins:
        AdminPages(
            hostname=cfg.appliance.hostname,
            admins=w.admins,
            sessions=Sessions(idle=w.session_timeout),
            history=history,
            summary=admin.summary,
            authenticator=admin.authenticator,
            throttle=admin.throttle,
            queue=admin.queue,
            events=mail_logger("webadmin"),
            reactor=reactor,
        ).mount(secure)
    tls = prepared.tls.context_factory
    for addresses, root, name, wrap in (
        (w.listen, secure, "https", True),
        (w.autoconfig_listen, plain, "http", False),
    ):
        site = Site(root, requestFactory=BoundedRequest)
        site.displayTracebacks = False
        factory = TLSMemoryBIOFactory(tls, False, site) if wrap else site
        for hp in addresses:
            listener = strports.service(tcp_endpoint(hp), factory, reactor=reactor)
            listener.setName(f"{name} {hp}")
            listener.setServiceParent(web)
    return web
