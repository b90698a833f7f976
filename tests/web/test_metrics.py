"""The metrics: real emitters' events in, the Prometheus text out, and /metrics over twisted.web.

The events come from the components' own emitters (SessionEvents, IMAPEvents, POP3Events, the
filter chain, and a real Queue + RelayScheduler + Notices delivering into a Maildir), on
loggers whose observer is the Metrics; render()'s text is read back with prometheus_client's
parser. The resource is tried with DummyRequest and through a real Site over StringTransport.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from appliance.auth.passwd import PasswdFile
from appliance.filters.base import Filter, MessageCheck
from appliance.filters.body import SpillBuffer
from appliance.filters.chain import FilterChain
from appliance.imap.events import IMAPEvents
from appliance.interfaces import Envelope, FilterVerdict, Outcome, Verdict
from appliance.log import mail_logger
from appliance.policy.sendmail import SendmailPolicy
from appliance.pop3.events import POP3Events
from appliance.queue.notices import Notices
from appliance.queue.scheduler import RelayScheduler
from appliance.service import build_queue
from appliance.smtp.events import SessionEvents
from appliance.web.metrics import CONTENT_TYPE, Metrics, MetricsResource
from tests.queue.test_scheduler import (
    BODY,
    DOMAIN,
    HOST,
    POSTMASTER,
    SENDER,
    USERS,
    ScriptedTarget,
    envelope,
    local,
    remote,
    wait_until,
)

CLIENT = "unknown[192.0.2.7]"
Labels = tuple[tuple[str, str], ...]


def samples(metrics: Metrics) -> dict[tuple[str, Labels], float]:
    """Every sample of render()'s text: (name, sorted labels) -> value."""
    text, content_type = metrics.render()
    assert content_type == CONTENT_TYPE
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode("utf-8"))
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def label_values(metrics: Metrics) -> set[str]:
    return {v for _, labels in samples(metrics) for _, v in labels}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


# -- SMTP, POP3, IMAP sessions ----------------------------------------------------------------


def smtp_events(metrics: Metrics, session_id: str = "s1") -> SessionEvents:
    return SessionEvents(mail_logger("smtpd", metrics), session_id, "192.0.2.7")


def test_smtp_connections_counted_including_turned_away(metrics):
    events = smtp_events(metrics)
    events.connect(CLIENT)
    events.connect(CLIENT, code=421, reason="too many connections")
    events.disconnect(CLIENT, {"ehlo": 1, "quit": 1})
    assert value(metrics, "mailappliance_connections_total", service="smtpd") == 2
    # POP3 and IMAP emit no connect event: their series exist, at 0
    assert value(metrics, "mailappliance_connections_total", service="pop3d") == 0
    assert value(metrics, "mailappliance_connections_total", service="imapd") == 0


def test_smtp_rejects_by_stage_and_code_without_addresses(metrics):
    events = smtp_events(metrics)
    events.reject_connect(CLIENT, Verdict(554, "5.7.1 Client host rejected"))
    for _ in range(2):
        events.reject(
            "RCPT",
            CLIENT,
            Verdict(554, "5.7.1 <victim@remote.test>: Relay access denied"),
            mail_from="spammer@evil.test",
            rcpt="victim@remote.test",
            proto="ESMTP",
            helo="evil.test",
        )
    events.reject(
        "END-OF-MESSAGE",
        CLIENT,
        Verdict(451, "4.7.1 Try again later"),
        mail_from="a@evil.test",
        rcpt=None,
        proto="SMTP",
        helo="evil.test",
    )
    events.reject(
        "MAIL\r\nX-Injected", CLIENT, Verdict(999, "odd"), mail_from="", rcpt=None, proto="SMTP",
        helo="h",
    )  # fmt: skip
    name = "mailappliance_messages_rejected_total"
    assert value(metrics, name, stage="CONNECT", code="554") == 1
    assert value(metrics, name, stage="RCPT", code="554") == 2
    assert value(metrics, name, stage="END-OF-MESSAGE", code="451") == 1
    assert value(metrics, name, stage="other", code="other") == 1
    seen = label_values(metrics)
    assert not {"spammer@evil.test", "victim@remote.test", "evil.test", CLIENT} & seen


def test_pop3_and_imap_reject_is_not_a_message_rejection(metrics):
    IMAPEvents(mail_logger("imapd", metrics), "i1", "192.0.2.8", "192.0.2.1").reject(
        "too many connections"
    )
    POP3Events(mail_logger("pop3d", metrics), "p1", "192.0.2.8", "192.0.2.1").reject(
        "too many connections"
    )
    assert not [k for k in samples(metrics) if k[0] == "mailappliance_messages_rejected_total"]


def test_logins_by_service_and_result_without_user_names(metrics):
    smtp = smtp_events(metrics)
    smtp.auth(CLIENT, "PLAIN", "user1@163.test")
    smtp.auth_failed(CLIENT, "LOGIN", "mallory")
    smtp.auth_refused(CLIENT, "LOGIN", "mallory")
    imap = IMAPEvents(mail_logger("imapd", metrics), "i1", "192.0.2.8", "192.0.2.1")
    imap.login("user1@163.test", "PLAIN", True)
    imap.login("user2@163.test", "PLAIN", False)
    imap.auth_failed("mallory", "PLAIN", 1)
    imap.auth_failed("mallory", "PLAIN", 2)
    imap.auth_refused("mallory", "PLAIN")
    pop3 = POP3Events(mail_logger("pop3d", metrics), "p1", "192.0.2.9", "192.0.2.1")
    pop3.login("user1@163.test", "USER", False)
    pop3.auth_failed("mallory", "APOP", 1)
    pop3.in_use("user1@163.test")  # not a login
    name = "mailappliance_logins_total"
    assert value(metrics, name, service="smtpd", result="ok") == 1
    assert value(metrics, name, service="smtpd", result="failed") == 1
    assert value(metrics, name, service="smtpd", result="refused") == 1
    assert value(metrics, name, service="imapd", result="ok") == 2
    assert value(metrics, name, service="imapd", result="failed") == 2
    assert value(metrics, name, service="imapd", result="refused") == 1
    assert value(metrics, name, service="pop3d", result="ok") == 1
    assert value(metrics, name, service="pop3d", result="failed") == 1
    assert value(metrics, name, service="pop3d", result="refused") == 0
    assert not {"mallory", "user1@163.test", "user2@163.test"} & label_values(metrics)


def test_events_of_other_components_with_login_names_are_not_logins(metrics):
    # the throttle's logger is "auth"; an "auth" event from anything but a service is ignored
    mail_logger("auth", metrics).warn(
        "{client}: blocked", event="client_blocked", client=CLIENT, sasl_username="x", count=5
    )
    mail_logger("lab", metrics).info("x", event="auth", sasl_username="x")
    logins = [v for (n, _), v in samples(metrics).items() if n == "mailappliance_logins_total"]
    assert logins and not any(logins)


# -- the filter chain -------------------------------------------------------------------------


class Says(Filter):
    """A filter that wants every body and answers one verdict."""

    def __init__(self, name: str, verdict: FilterVerdict) -> None:
        self.name = name
        self.verdict = verdict

    def wants_body(self, envelope: Envelope) -> bool:
        return True

    def message(self, check: MessageCheck) -> FilterVerdict:
        return self.verdict


@pytest_twisted.inlineCallbacks
def test_filter_verdicts_by_filter_and_action(tmp_path, metrics):
    def chain(*filters: Filter) -> FilterChain:
        return FilterChain(
            filters, hostname=HOST, spill_folder=tmp_path, events=mail_logger("filter", metrics)
        )

    tag = Says("spamassassin", FilterVerdict(headers=("X-Spam-Flag: NO",), reason="score=0.1"))
    ok = Says("dkim", FilterVerdict())
    reject = Says("clamav", FilterVerdict(554, "5.7.1 Virus found", reason="Eicar-Signature"))
    tempfail = Says("spamassassin", FilterVerdict(451, "4.7.1 Try later", reason="spamd down"))
    mine = Says("my-site-filter", FilterVerdict())
    env = envelope(local("user2@163.test"))
    for filters in ((ok, tag, reject), (tempfail,), (mine,)):
        body = SpillBuffer(tmp_path)
        try:
            yield chain(*filters).message(env, "4F2A19C03B", body)
        finally:
            body.close()
    name = "mailappliance_filter_verdicts_total"
    assert value(metrics, name, filter="dkim", action="accept") == 1
    assert value(metrics, name, filter="spamassassin", action="tag") == 1
    assert value(metrics, name, filter="clamav", action="reject") == 1
    assert value(metrics, name, filter="spamassassin", action="tempfail") == 1
    assert value(metrics, name, filter="other", action="accept") == 1
    # each verdict's event carries the seconds its filter took: one observation each
    name = "mailappliance_filter_seconds_count"
    assert value(metrics, name, filter="dkim") == 1 and value(metrics, name, filter="clamav") == 1
    assert value(metrics, name, filter="spamassassin") == 2
    assert value(metrics, name, filter="other") == 1
    assert 0 <= value(metrics, "mailappliance_filter_seconds_sum", filter="dkim") < 5


# -- the queue: accepted, delivered locally, relayed, bounced ---------------------------------


class QueueRig:
    """A real Queue, local delivery, Notices and RelayScheduler, all logging to metrics."""

    def __init__(self, state_dir: Path, metrics: Metrics) -> None:
        self.queue, self.store = build_queue(
            state_dir, HOST, reactor, events=mail_logger("local", metrics)
        )
        passwd = state_dir / "passwd"
        passwd.write_text("".join(f"{u}:\n" for u in USERS))
        policy = SendmailPolicy(local_domains=[DOMAIN], users=PasswdFile(passwd, reactor=reactor))
        self.target = ScriptedTarget()
        notices = Notices(
            self.queue,
            policy,
            self.queue.pool,
            hostname=HOST,
            postmaster=POSTMASTER,
            events=mail_logger("bounce", metrics),
        )
        scheduler = RelayScheduler(
            self.queue, self.target, notices, schedule=(60.0,), events=mail_logger("smtp", metrics)
        )
        self.queue.relay = scheduler
        self.queue.notices = notices


@pytest.fixture
def queue_rig(tmp_path: Path, metrics: Metrics) -> Iterator[QueueRig]:
    rig = QueueRig(tmp_path, metrics)
    rig.queue.start()
    pytest_twisted.blockon(rig.queue.recover())
    yield rig
    pytest_twisted.blockon(rig.queue.stop())


def received(metrics: Metrics, rig: QueueRig, env: Envelope, session_id: str) -> Deferred[str]:
    """A message as the SMTP server takes it: begin(), the client event, the data, commit()."""
    message = rig.queue.begin(env)
    smtp_events(metrics, session_id).client(message.queue_id, CLIENT, None, None)
    message.write(BODY)
    return message.commit()


@pytest_twisted.inlineCallbacks
def test_queued_and_delivered_locally_and_relayed(queue_rig, metrics):
    rig = queue_rig
    rig.target.plan("bad@remote.test", Outcome.BOUNCED)
    rig.target.plan("later@remote.test", Outcome.DEFERRED)
    yield received(metrics, rig, envelope(local("user2@163.test")), "s1")
    yield received(
        metrics,
        rig,
        envelope(remote("a@remote.test"), remote("bad@remote.test"), remote("later@remote.test")),
        "s2",
    )
    yield wait_until(lambda: len(rig.target.attempts) >= 1)
    yield rig.queue.idle()
    yield wait_until(
        lambda: value(metrics, "mailappliance_messages_accepted_total", service="other") == 1
    )
    yield rig.queue.idle()

    accepted = "mailappliance_messages_accepted_total"
    assert value(metrics, accepted, service="smtpd") == 2
    # the non-delivery notice for bad@remote.test is queued by the appliance itself
    assert value(metrics, accepted, service="other") == 1
    name = "mailappliance_deliveries_total"
    # user2's copy and the notice to the sender (user1, local)
    assert value(metrics, name, status="sent", transport="local") == 2
    assert value(metrics, name, status="sent", transport="relay") == 1
    assert value(metrics, name, status="bounced", transport="relay") == 1
    assert value(metrics, name, status="deferred", transport="relay") == 1
    assert value(metrics, name, status="deferred", transport="local") == 0
    delay = "mailappliance_delivery_delay_seconds_count"
    assert value(metrics, delay, status="sent", transport="local") == 2
    assert value(metrics, delay, status="bounced", transport="relay") == 1
    total = value(
        metrics, "mailappliance_delivery_delay_seconds_sum", status="sent", transport="local"
    )
    assert total is not None and 0 <= total < 60
    assert value(metrics, "mailappliance_delivery_delay_seconds_bucket", status="sent",
                 transport="relay", le="+Inf") == 1  # fmt: skip
    assert not {SENDER, "a@remote.test", "bad@remote.test"} & label_values(metrics)


def test_queued_without_a_client_event_is_other(metrics):
    queue = mail_logger("local", metrics)
    smtp_events(metrics).client("AAAAAAAAAA", CLIENT, "PLAIN", "user1@163.test")
    for qid in ("AAAAAAAAAA", "AAAAAAAAAA", "BBBBBBBBBB"):  # an id counts as smtpd once
        queue.info("{queue_id}: queued", event="queued", queue_id=qid, size=1, nrcpt=1)
    assert value(metrics, "mailappliance_messages_accepted_total", service="smtpd") == 1
    assert value(metrics, "mailappliance_messages_accepted_total", service="other") == 2


# -- DNS, TLS, the queue gauge ----------------------------------------------------------------


def test_dns_and_tls_counters_bounded(metrics):
    for rcode in ("NOERROR", "noerror", "NXDOMAIN", "3", "BOGUS<script>"):
        metrics.dns_answered(rcode)
    metrics.tls_handshake("smtpd", "TLSv1.3")
    metrics.tls_handshake("smtpd", "TLSv1.3 TLS_AES_256_GCM_SHA384")
    metrics.tls_handshake("imapd", "TLSv1.2")
    metrics.tls_handshake("gopher", "TLSv9")
    dns = "mailappliance_dns_queries_total"
    assert value(metrics, dns, rcode="NOERROR") == 2
    assert value(metrics, dns, rcode="NXDOMAIN") == 2
    assert value(metrics, dns, rcode="other") == 1
    tls = "mailappliance_tls_handshakes_total"
    assert value(metrics, tls, service="smtpd", version="TLSv1.3") == 2
    assert value(metrics, tls, service="imapd", version="TLSv1.2") == 1
    assert value(metrics, tls, service="other", version="other") == 1


def test_queue_gauge_asked_at_each_scrape():
    sizes = {"active": 3, "deferred": 7, "held": 0}
    calls: list[int] = []

    def queue_sizes() -> dict[str, int]:
        calls.append(1)
        return dict(sizes)

    metrics = Metrics(queue_sizes=queue_sizes)
    assert calls == []  # not at registration
    assert value(metrics, "mailappliance_queue_messages", state="deferred") == 7
    assert len(calls) == 1
    sizes.update(deferred=2, corrupt=4)
    now = samples(metrics)
    assert len(calls) == 2  # one call per scrape
    assert now[("mailappliance_queue_messages", (("state", "deferred"),))] == 2
    assert now[("mailappliance_queue_messages", (("state", "held"),))] == 0
    assert now[("mailappliance_queue_messages", (("state", "other"),))] == 4  # corrupt: unknown


def test_queue_gauge_failure_logged_scrape_still_served(logged_errors):
    def broken() -> dict[str, int]:
        raise RuntimeError("queue gone")

    metrics = Metrics(queue_sizes=broken)
    metrics.dns_answered("NOERROR")
    assert value(metrics, "mailappliance_dns_queries_total", rcode="NOERROR") == 1
    assert not [k for k in samples(metrics) if k[0] == "mailappliance_queue_messages"]
    assert len(logged_errors) == 2  # one per scrape above
    logged_errors.clear()


def test_private_registry():
    from prometheus_client import REGISTRY

    Metrics()
    Metrics()  # a second one would clash in a shared registry
    assert (
        REGISTRY.get_sample_value("mailappliance_connections_total", {"service": "smtpd"}) is None
    )


# -- /metrics ---------------------------------------------------------------------------------


def get(resource: Resource, method: bytes = b"GET", auth: bytes | None = None) -> DummyRequest:
    request = DummyRequest([])
    request.method = method
    if auth is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [auth])
    request.render(resource)
    return request


def header(request: DummyRequest, name: bytes) -> bytes | None:
    values = request.responseHeaders.getRawHeaders(name)
    return values[-1] if values else None


def test_resource_without_token_serves_the_metrics(metrics):
    smtp_events(metrics).connect(CLIENT)
    request = get(MetricsResource(metrics))
    assert request.responseCode in (None, 200)
    assert header(request, b"content-type") == CONTENT_TYPE.encode()
    assert b'mailappliance_connections_total{service="smtpd"} 1.0' in b"".join(request.written)


@pytest.mark.parametrize(
    "auth, expected",
    [
        (None, b"Bearer"),
        (b"Bearer wrong", b'Bearer error="invalid_token"'),
        (b"Bearer s3cre", b'Bearer error="invalid_token"'),
        (b"Basic czNjcjN0Og==", b'Bearer error="invalid_token"'),
        (b"Bearer", b'Bearer error="invalid_token"'),
    ],
)
def test_resource_token_missing_or_wrong_is_401(metrics, auth, expected):
    request = get(MetricsResource(metrics, token="s3cr3t"), auth=auth)
    assert request.responseCode == 401
    assert header(request, b"www-authenticate") == expected
    assert b"mailappliance" not in b"".join(request.written)


@pytest.mark.parametrize("auth", [b"Bearer s3cr3t", b"bearer s3cr3t", b"Bearer  s3cr3t "])
def test_resource_right_token_is_200(metrics, auth):
    request = get(MetricsResource(metrics, token="s3cr3t"), auth=auth)
    assert request.responseCode in (None, 200)
    assert b"# TYPE mailappliance_logins_total counter" in b"".join(request.written)


def test_resource_methods(metrics):
    resource = MetricsResource(metrics)
    post = get(resource, b"POST")
    assert post.responseCode == 405
    assert header(post, b"allow") == b"GET, HEAD"
    head = get(resource, b"HEAD")
    assert head.responseCode in (None, 200)
    assert b"".join(head.written) == b""
    assert int(header(head, b"content-length") or 0) == len(metrics.render()[0])


def test_empty_token_refused(metrics):
    with pytest.raises(ValueError):
        MetricsResource(metrics, token="")


def http(site: Site, raw: bytes) -> bytes:
    """One HTTP/1.0 exchange with a real Site over StringTransport."""
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(raw)
    return transport.value()


def test_resource_through_a_real_site(metrics):
    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics, token="s3cr3t"))
    site = Site(root, reactor=MemoryReactorClock())
    IMAPEvents(mail_logger("imapd", metrics), "i1", "192.0.2.8", "192.0.2.1").login(
        "user1@163.test", "PLAIN", True
    )

    refused = http(site, b"GET /metrics HTTP/1.0\r\nHost: mx\r\n\r\n")
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 401 ")
    assert b"\r\nWWW-Authenticate: Bearer\r\n" in head + b"\r\n"
    assert b"mailappliance" not in body

    answered = http(
        site, b"GET /metrics HTTP/1.0\r\nHost: mx\r\nAuthorization: Bearer s3cr3t\r\n\r\n"
    )
    head, _, body = answered.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ")
    assert f"Content-Type: {CONTENT_TYPE}".encode() in head
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    (ok,) = [
        s
        for s in families["mailappliance_logins"].samples
        if s.name == "mailappliance_logins_total"
        and s.labels == {"service": "imapd", "result": "ok"}
    ]
    assert ok.value == 1

    posted = http(site, b"POST /metrics HTTP/1.0\r\nHost: mx\r\nContent-Length: 0\r\n\r\n")
    assert posted.startswith(b"HTTP/1.0 405 ")
