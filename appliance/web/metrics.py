"""Prometheus metrics: counters and histograms fed by the mail event stream, served on /metrics.

`Metrics` is one more observer of appliance.log's `mail_events`, beside the maillog and the
audit log: it reads the `event` and the named fields each component already logs and counts
them in a `prometheus_client.CollectorRegistry` of its own (never the global registry, so two
appliances in one test process do not share counts and nothing imported registers into ours).

    smtpd/pop3d/imapd connect             mailappliance_connections_total{service}
    queued (the queue's event)            mailappliance_messages_accepted_total{service}
    smtpd reject                          mailappliance_messages_rejected_total{stage, code}
    status (local delivery, the relay)    mailappliance_deliveries_total{status, transport}
                                          mailappliance_delivery_delay_seconds{status, transport}
    smtpd auth, pop3d/imapd login,        mailappliance_logins_total{service, result}
      auth_failed, auth_refused
    filter (the filter chain's verdict)   mailappliance_filter_verdicts_total{filter, action}
                                          mailappliance_filter_seconds{filter}

A queued event names the queue id but not who handed the message in: the smtpd `client`
event that gave the id (at DATA) is remembered, a bounded number of ids, so the queued event
counts as service="smtpd"; a message the appliance wrote itself (a DSN) is "other". transport
is "local" for relay=local, "relay" for anything else (a host, or "none" when no host was
reached). DNS answers and TLS handshakes are not mail events: the DNS server's counts by
rcode are read at each scrape (the dns_answered callback), and the wiring may call
tls_handshake(). The queue's sizes are asked for at scrape time, by a collector of ours.

Label values stay bounded whatever the clients do: each is one of a fixed set (services,
stages, statuses, filter names, TLS versions, rcodes) or "other", SMTP codes are three-digit
4xx/5xx numbers or "other"; addresses, user names and reply texts are never labels.

`MetricsResource` serves the registry to GET (and HEAD) with twisted.web, behind an optional
bearer token compared in constant time.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.logger import ILogObserver, Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from zope.interface import implementer

from appliance.log import component_of

# The Prometheus text format generate_latest() writes (version 0.0.4: what every Prometheus
# reads; prometheus_client >= 0.22 calls 1.0.0 "latest", identical for names like ours).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"

SERVICES = ("smtpd", "pop3d", "imapd")
LOGIN_SERVICES = (*SERVICES, "webadmin")  # webadmin: the status page's admin logins
TLS_SERVICES = (*SERVICES, "smtp")  # smtp: the relay client, as in Postfix's maillog
STAGES = ("CONNECT", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE")
STATUSES = ("sent", "deferred", "bounced")  # appliance.interfaces.Outcome
TRANSPORTS = ("local", "relay")
LOGIN_RESULTS = ("ok", "failed", "refused")
# the filters' names (appliance.filters.*.name; not imported: packages meet in interfaces)
FILTERS = ("spf", "dkim", "dmarc", "dnsbl", "limits", "spamassassin", "clamav", "dkim-sign")
ACTIONS = ("accept", "tag", "tempfail", "reject")  # appliance.filters.chain
TLS_VERSIONS = ("SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
RCODES = (
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
    "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE",
)  # fmt: skip
QUEUE_STATES = ("active", "deferred", "held")

# Seconds in the queue when delivered: local copies take milliseconds, relayed ones retried
# for up to the queue lifetime (5 days by default).
DELAY_BUCKETS = (
    0.01, 0.05, 0.25, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0,
    5 * 86400.0,
)  # fmt: skip
# Seconds a filter took on a message: DNS checks take milliseconds, spamd and clamd up to
# their timeouts (30 s by default).
FILTER_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PENDING_IDS = 10_000  # queue ids given at DATA, awaiting their queued event

_LOGIN_EVENTS = {"auth": "ok", "login": "ok", "auth_failed": "failed", "auth_refused": "refused"}


def bounded(value: object, allowed: Iterable[str]) -> str:
    """value if it is one of allowed, else "other"."""
    return value if isinstance(value, str) and value in allowed else OTHER


def smtp_code(value: object) -> str:
    """An SMTP reply code as a label: "550", or "other" for anything but 4xx/5xx."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
        return str(value)
    return OTHER


def transport_of(relay: object) -> str:
    """relay=local is the local delivery; any other relay= (a host, "none") the relay."""
    return "local" if relay == "local" else "relay"


class QueueCollector(Collector):
    """mailappliance_queue_messages{state}, from the callback, asked at each scrape."""

    log = Logger()
    NAME = "mailappliance_queue_messages"
    HELP = "Messages in the queue, by state."

    def __init__(self, sizes: Callable[[], dict[str, int]]) -> None:
        self.sizes = sizes

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["state"])]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["state"])
        try:
            sizes = self.sizes()
        except Exception:
            self.log.failure("cannot count the queue for the metrics")
            return [family]
        counts: dict[str, float] = {}  # unknown states summed into "other"
        for state, n in sizes.items():
            if isinstance(n, int | float) and not isinstance(n, bool):
                label = bounded(state, QUEUE_STATES)
                counts[label] = counts.get(label, 0) + n
        for state, count in counts.items():
            family.add_metric([state], count)
        return [family]


@implementer(ILogObserver)
class Metrics:
    """The appliance's metrics; an observer of the mail event stream."""

    def __init__(
        self,
        queue_sizes: Callable[[], dict[str, int]] | None = None,
        dns_answered: Callable[[], Sequence[int]] | None = None,
    ) -> None:
        """dns_answered: the DNS server's answers so far by rcode number (0..15), read at
        each scrape (the server counts with one list increment per answer, far cheaper than
        a call here per query)."""
        self.dns_counts = dns_answered
        self._dns_seen = [0] * 16
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Counter(
            "mailappliance_connections", "Client connections.", ["service"], registry=r
        )
        self.accepted = Counter(
            "mailappliance_messages_accepted",
            "Messages accepted into the queue.",
            ["service"],
            registry=r,
        )
        self.rejected = Counter(
            "mailappliance_messages_rejected",
            "SMTP refusals, by stage and reply code.",
            ["stage", "code"],
            registry=r,
        )
        self.deliveries = Counter(
            "mailappliance_deliveries",
            "Delivery attempts' results, one per recipient.",
            ["status", "transport"],
            registry=r,
        )
        self.delivery_delay = Histogram(
            "mailappliance_delivery_delay_seconds",
            "Time from arrival to each delivery result.",
            ["status", "transport"],
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.logins = Counter(
            "mailappliance_logins", "Logins, by result.", ["service", "result"], registry=r
        )
        self.filter_verdicts = Counter(
            "mailappliance_filter_verdicts",
            "Filter verdicts on messages.",
            ["filter", "action"],
            registry=r,
        )
        self.filter_seconds = Histogram(
            "mailappliance_filter_seconds",
            "Time each filter took on a message.",
            ["filter"],
            buckets=FILTER_BUCKETS,
            registry=r,
        )
        self.dns_queries = Counter(
            "mailappliance_dns_queries", "DNS queries answered, by rcode.", ["rcode"], registry=r
        )
        self.tls_handshakes = Counter(
            "mailappliance_tls_handshakes",
            "TLS handshakes completed, by protocol version.",
            ["service", "version"],
            registry=r,
        )
        if queue_sizes is not None:
            r.register(QueueCollector(queue_sizes))
        # the series known in advance are shown at 0 from the start
        for service in SERVICES:
            self.connections.labels(service=service)
        for service in LOGIN_SERVICES:
            for result in LOGIN_RESULTS:
                self.logins.labels(service=service, result=result)
        self.accepted.labels(service="smtpd")
        for status in STATUSES:
            for transport in TRANSPORTS:
                self.deliveries.labels(status=status, transport=transport)
                self.delivery_delay.labels(status=status, transport=transport)
        self._smtp_ids: OrderedDict[str, None] = OrderedDict()
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._handlers: dict[str, Callable[[str, dict[str, Any]], None]] = {
            "connect": self._connect,
            "reject": self._reject,
            "client": self._client,
            "queued": self._queued,
            "status": self._status,
            "filter": self._filter,
            "tls": self._tls,
            **dict.fromkeys(_LOGIN_EVENTS, self._login),
        }

    # ------------------------------------------------------------------ the mail stream

    def __call__(self, event: dict[str, Any]) -> None:
        handler = self._handlers.get(event.get("event", ""))
        if handler is not None:
            handler(component_of(event), event)

    def _connect(self, component: str, event: dict[str, Any]) -> None:
        if component in SERVICES:
            self._child(self.connections, component).inc()

    def _reject(self, component: str, event: dict[str, Any]) -> None:
        # POP3 and IMAP "reject" is a connection turned away, not a message: not counted
        if component == "smtpd":
            stage = bounded(event.get("stage"), STAGES)
            self._child(self.rejected, stage, smtp_code(event.get("code"))).inc()

    def _client(self, component: str, event: dict[str, Any]) -> None:
        queue_id = event.get("queue_id")
        if component == "smtpd" and isinstance(queue_id, str):
            self._smtp_ids[queue_id] = None
            if len(self._smtp_ids) > PENDING_IDS:
                self._smtp_ids.popitem(last=False)

    def _queued(self, component: str, event: dict[str, Any]) -> None:
        queue_id = event.get("queue_id")
        by_smtp = False
        if isinstance(queue_id, str) and queue_id in self._smtp_ids:
            del self._smtp_ids[queue_id]
            by_smtp = True
        self._child(self.accepted, "smtpd" if by_smtp else OTHER).inc()

    def _status(self, component: str, event: dict[str, Any]) -> None:
        status = bounded(event.get("status"), STATUSES)
        transport = transport_of(event.get("relay"))
        self._child(self.deliveries, status, transport).inc()
        delay = event.get("delay")
        if isinstance(delay, (int, float)) and not isinstance(delay, bool) and delay >= 0:
            self._child(self.delivery_delay, status, transport).observe(delay)

    def _login(self, component: str, event: dict[str, Any]) -> None:
        if component in LOGIN_SERVICES:  # not the throttle's or anyone else's "auth..." ones
            result = _LOGIN_EVENTS[event["event"]]
            self._child(self.logins, component, result).inc()

    def _tls(self, component: str, event: dict[str, Any]) -> None:
        tls = event.get("tls")
        if isinstance(tls, str):
            self.tls_handshake(component, tls)

    def _filter(self, component: str, event: dict[str, Any]) -> None:
        name = bounded(event.get("filter"), FILTERS)
        self._child(self.filter_verdicts, name, bounded(event.get("action"), ACTIONS)).inc()
        elapsed = event.get("elapsed")
        if isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool) and elapsed >= 0:
            self._child(self.filter_seconds, name).observe(elapsed)

    def _child(self, metric: Any, *values: str) -> Any:
        """metric.labels(*values) (in its label order), kept: labels() takes a lock and
        builds its key on every call, several times a message. The values are bounded()
        ones, so the table is small."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # ------------------------------------------------------------------ not mail events

    def _sync_dns(self) -> None:
        if self.dns_counts is None:
            return
        for number, total in enumerate(self.dns_counts()):
            delta = total - self._dns_seen[number] if number < 16 else 0
            if delta > 0:
                self._dns_seen[number] = total
                self.dns_answered(str(number), delta)

    def dns_answered(self, rcode: str, count: int = 1) -> None:
        """The DNS server answered a query with rcode ("NOERROR", "NXDOMAIN", ... or "3")."""
        name = rcode.strip().upper()
        if name.isdigit() and int(name) < len(RCODES):
            name = RCODES[int(name)]
        self._child(self.dns_queries, bounded(name, RCODES)).inc(count)

    def tls_handshake(self, service: str, version: str) -> None:
        """A TLS handshake completed ("TLSv1.3", or "TLSv1.3 TLS_AES_256_GCM_SHA384")."""
        version = bounded(version.partition(" ")[0], TLS_VERSIONS)
        self._child(self.tls_handshakes, bounded(service, TLS_SERVICES), version).inc()

    # ------------------------------------------------------------------ exposition

    def render(self) -> tuple[bytes, str]:
        """The metrics in the Prometheus text format, and its content type."""
        self._sync_dns()
        return generate_latest(self.registry), CONTENT_TYPE


class MetricsResource(Resource):
    """GET /metrics: the text of a Metrics, to whoever shows the token (if one is set)."""

    isLeaf = True
    allowedMethods = (b"GET", b"HEAD")

    def __init__(self, metrics: Metrics, token: str | None = None) -> None:
        super().__init__()
        if token == "":
            raise ValueError("an empty metrics token would let anyone in; give None for none")
        self.metrics = metrics
        self.token = None if token is None else token.encode("utf-8")

    def render(self, request: IRequest) -> bytes:
        if request.method not in self.allowedMethods:
            request.setResponseCode(405)
            request.setHeader(b"allow", b", ".join(self.allowedMethods))
            return b""
        if not self.authorized(request):
            request.setResponseCode(401)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            wrong = request.getHeader(b"authorization") is not None
            request.setHeader(
                b"www-authenticate", b'Bearer error="invalid_token"' if wrong else b"Bearer"
            )
            return b"" if request.method == b"HEAD" else b"unauthorized\n"
        body, content_type = self.metrics.render()
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        if request.method == b"HEAD":
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body

    def authorized(self, request: IRequest) -> bool:
        if self.token is None:
            return True
        header = request.getHeader(b"authorization")
        if header is None:
            return False
        scheme, _, given = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(given.strip(), self.token)
