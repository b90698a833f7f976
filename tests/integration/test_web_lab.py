"""The web listeners of a running appliance (lab 163 config): client autoconfiguration over
HTTPS (our CA verified) and plain HTTP, Outlook's autodiscover POST, the RFC 6186 SRV and
autoconfig records checked with dig, and /metrics parsed by prometheus_client's parser while
the counters move as mail is sent, refused and logged in for."""

from __future__ import annotations

import http.client
import imaplib
import poplib
import smtplib
import ssl
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Appliance, make_lab, running


@pytest.fixture(scope="module")
def web_lab(tmp_path_factory) -> Iterator[Appliance]:
    lab = make_lab(tmp_path_factory.mktemp("web"))
    with running({"163": lab["163"]}) as apps:
        yield apps["163"]


def verified(a: Appliance) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(a.state / "ca" / "ca.crt"))
    ctx.check_hostname = False  # we dial the IP; the SAN is checked in the first test
    return ctx


def https(a: Appliance, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None,
          port: int = 8443) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    c = http.client.HTTPSConnection(a.ip, a.ports[port], context=verified(a), timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def test_thunderbird_autoconfig_over_https_and_http(web_lab) -> None:
    a = web_lab
    c = http.client.HTTPSConnection(a.ip, a.ports[8443], context=verified(a), timeout=10)
    c.connect()
    names = [v for k, v in c.sock.getpeercert()["subjectAltName"] if k == "DNS"]
    assert {"mail.163.com", "autoconfig.163.com", "autodiscover.163.com"} <= set(names), names
    c.close()
    status, headers, body = https(
        a, "GET", "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=user1%40163.com"
    )
    assert status == 200 and headers["content-type"].startswith("text/xml"), (status, body)
    root = ET.fromstring(body)
    provider = root.find("emailProvider")
    assert provider is not None and provider.get("id") == "163.com"
    incoming = {
        (s.get("type"), s.findtext("port"), s.findtext("socketType"))
        for s in provider.findall("incomingServer")
    }
    assert ("imap", str(a.ports[993]), "SSL") in incoming
    assert ("pop3", str(a.ports[995]), "SSL") in incoming
    (out,) = provider.findall("outgoingServer")[:1]
    assert out.findtext("hostname") == "mail.163.com" and out.findtext("socketType") in (
        "STARTTLS", "SSL"
    )  # fmt: skip
    plain = http.client.HTTPConnection(a.ip, a.ports[80], timeout=10)
    plain.request("GET", "/mail/config-v1.1.xml?emailaddress=user1%40163.com")
    r = plain.getresponse()
    assert r.status == 200 and r.read() == body
    plain.request("GET", "/metrics")  # never over plain HTTP
    assert plain.getresponse().status == 404


def test_outlook_autodiscover_post(web_lab) -> None:
    request = (
        b'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft'
        b'.com/exchange/autodiscover/outlook/requestschema/2006"><Request><EMailAddress>'
        b"user2@163.com</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/"
        b"exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>"
        b"</Request></Autodiscover>"
    )
    status, headers, body = https(
        web_lab, "POST", "/autodiscover/autodiscover.xml", request,
        {"Content-Type": "text/xml"}, port=443,
    )  # fmt: skip
    assert status == 200, body  # on 443, where Outlook asks
    assert b"<LoginName>user2@163.com</LoginName>" in body and b"<Type>IMAP</Type>" in body
    big = b"<a>" + b"x" * 400_000 + b"</a>"
    status, _, _ = https(web_lab, "POST", "/autodiscover/autodiscover.xml", big)
    assert status == 413


def dig(a: Appliance, *args: str) -> str:
    out = subprocess.run(
        ["dig", f"@{a.ip}", "-p", str(a.port), "+short", *args],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_srv_and_autoconfig_records_served(web_lab) -> None:
    a = web_lab
    assert dig(a, "SRV", "_imaps._tcp.163.com").endswith(f"{a.ports[993]} mail.163.com.")
    assert dig(a, "SRV", "_submission._tcp.163.com").endswith(f"{a.ports[587]} mail.163.com.")
    assert dig(a, "SRV", "_pop3._tcp.163.com").endswith(f"{a.ports[110]} mail.163.com.")
    assert dig(a, "CNAME", "autoconfig.163.com") == "mail.163.com."
    assert dig(a, "CNAME", "autodiscover.163.com") == "mail.163.com."


def scrape(a: Appliance) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = https(a, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain"), body[:200]
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v for (n, lab), v in samples.items()
        if n == name and all(dict(lab).get(k) == want for k, want in labels.items())
    )  # fmt: skip


def test_metrics_move_with_mail_rejections_and_logins(web_lab) -> None:
    a = web_lab
    before = scrape(a)
    with smtplib.SMTP(a.ip, a.ports[25], local_hostname="client.test", timeout=20) as c:
        c.ehlo()
        c.sendmail("friend@sina.com", ["user1@163.com"], b"Subject: metrics\r\n\r\nhi\r\n")
        c.mail("someone@example.org")
        code, _ = c.rcpt("nobody@elsewhere.example")  # relaying denied
        assert code >= 500
    imap = imaplib.IMAP4(a.ip, a.ports[143], timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        imap.login("user1@163.com", "wrong")
    imap.logout()
    imap = imaplib.IMAP4(a.ip, a.ports[143], timeout=10)
    imap.login("user1@163.com", "user1pass")
    imap.logout()
    poplib.POP3(a.ip, a.ports[110], timeout=10).quit()
    deadline = time.monotonic() + 20
    while True:
        after = scrape(a)
        moved = {
            "accepted": total(after, "mailappliance_messages_accepted_total")
            > total(before, "mailappliance_messages_accepted_total"),
            "rejected": total(after, "mailappliance_messages_rejected_total")
            > total(before, "mailappliance_messages_rejected_total"),
            "delivered": total(after, "mailappliance_deliveries_total", status="sent")
            > total(before, "mailappliance_deliveries_total", status="sent"),
            "login ok": total(after, "mailappliance_logins_total", service="imapd", result="ok")
            > total(before, "mailappliance_logins_total", service="imapd", result="ok"),
            "login failed": total(
                after, "mailappliance_logins_total", service="imapd", result="failed"
            )
            > total(before, "mailappliance_logins_total", service="imapd", result="failed"),
            **{
                f"{service} connections": total(
                    after, "mailappliance_connections_total", service=service
                )  # fmt: skip
                >= total(before, "mailappliance_connections_total", service=service) + n
                for service, n in (("smtpd", 1), ("imapd", 2), ("pop3d", 1))
            },
        }
        if all(moved.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert all(moved.values()), moved
    assert ("mailappliance_queue_messages", (("state", "active"),)) in after


def test_metrics_count_dns_answers_by_rcode(web_lab) -> None:
    a = web_lab
    before = scrape(a)
    dig(a, "MX", "163.com")
    dig(a, "A", "nosuchname.163.com")
    after = scrape(a)
    for rcode in ("NOERROR", "NXDOMAIN"):
        grew = total(after, "mailappliance_dns_queries_total", rcode=rcode) - total(
            before, "mailappliance_dns_queries_total", rcode=rcode
        )
        assert grew >= 1, (rcode, grew)


def status(a: Appliance) -> subprocess.CompletedProcess[str]:
    import sys
    from pathlib import Path

    cli = str(Path(sys.executable).parent / "mailappliance")
    return subprocess.run(
        [cli, "--config", str(a.ini), "status"], capture_output=True, text=True, timeout=60
    )


def test_status_healthy_then_unhealthy(web_lab, tmp_path) -> None:
    """`mailappliance status`: 0 and every listener for the running lab appliance; 1 with the
    reasons for one that is not running and whose zone lost a record."""
    r = status(web_lab)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "appliance: running, pid" in out and out.rstrip().endswith("all well")
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert f"imaps {web_lab.ip}:{web_lab.ports[993]}" in lines["imap"], out
    assert f"https {web_lab.ip}:{web_lab.ports[8443]}" in lines["web"], out
    assert " up " in lines["smtp"] and " up " in lines["queue"], out
    assert "dns 163.com: 13 of 13 records ok" in out and "certificate:" in out
    stopped = make_lab(tmp_path)["163"]  # never started: no control socket, no certificate
    zone = stopped.ini.parent / "163" / "163.com.zone"
    zone.write_text(zone.read_text() + '@ IN TXT "v=spf1 ip4:192.0.2.1 -all"\n')
    r = status(stopped)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ATTENTION the appliance is not running" in r.stdout
    assert "ATTENTION 163.com TXT differs" in r.stdout
    assert "ATTENTION cannot read" in r.stdout  # no certificate issued yet
    assert "thing(s) need attention" in r.stdout


def test_metrics_count_tls_handshakes_and_maillog_says_so(web_lab) -> None:
    a = web_lab
    before = scrape(a)
    c = imaplib.IMAP4_SSL(a.ip, a.ports[993], ssl_context=verified(a), timeout=10)
    c.login("user1@163.com", "user1pass")
    c.logout()
    with smtplib.SMTP(a.ip, a.ports[587], local_hostname="client.test", timeout=20) as s:
        s.starttls(context=verified(a))
        s.ehlo()
    deadline = time.monotonic() + 20
    while True:
        after = scrape(a)
        grew = {
            service: total(after, "mailappliance_tls_handshakes_total", service=service)
            - total(before, "mailappliance_tls_handshakes_total", service=service)
            for service in ("imapd", "smtpd")
        }
        if all(v >= 1 for v in grew.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert all(v >= 1 for v in grew.values()), grew
    assert total(after, "mailappliance_tls_handshakes_total", version="TLSv1.3") >= 2
    log = (a.state / "maillog").read_text()
    assert "imap-login: TLS established: TLSv1.3" in log
    assert "Anonymous TLS connection established from unknown[127.0.0.1]: TLSv1.3" in log
