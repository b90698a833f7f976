"""Routing the relay: a smarthost with AUTH, transport map entries (the smarthost, a host by
name, an IP literal), MX preference with a dead or refusing first MX, and a next hop
without DSN (so 163 itself says "relayed" to NOTIFY=SUCCESS).

Three labs: `smarthost_lab` (163 relays sina.com through sina's submission port, logged in
as user3@sina.com), `mx_lab` (sina.com gets a better MX, mx0.sina.com at 127.0.0.1, where
nothing listens on the relay port) and `may_lab` (163 with tls = may, routes to an IP
literal and to a scripted server on 127.0.0.1 that offers neither DSN nor STARTTLS).
"""

from __future__ import annotations

import re
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.lab.conftest import (
    Appliance,
    FakeSMTP,
    dsn_report,
    dsns_for,
    lab_with,
    lines_of,
    maillog,
    message,
    parse,
    port_free,
    queue_cli,
    queue_entry,
    queued_as,
    running,
    send_on,
    set_keys,
    settled,
    start,
    status_line,
    submit,
    token,
    unfolded,
    wait_for,
    wait_line,
    wait_message,
    with_token,
)

SINA_DIRECT = {
    "local-host-names": "direct.test",
    "virtusertable": "user4@direct.test     user4@sina.com",
}


def write_private(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# ------------------------------------------------------------------------------ smarthost


@pytest.fixture(scope="module")
def smarthost_lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    """163: smarthost mail.sina.com:<587> as user3@sina.com; transport map: sina.com through
    the smarthost, direct.test to mail.sina.com by name, mail.sina.com to ns.sina.com (a name
    sina's certificate does not cover)."""
    lab = lab_with(
        tmp_path_factory.mktemp("smarthost"),
        both={"queue": {"retry_schedule": "1s"}},
        files={"sina": SINA_DIRECT},
    )
    a = lab["163"]
    etc = a.ini.parent
    port25, port587 = a.ports[25], a.ports[587]
    password = write_private(etc / "163" / "smarthost.pass", "user3pass\n", 0o600)
    transport = etc / "163" / "transport"
    transport.write_text(
        "# lab routes\n"
        "sina.com        smarthost\n"
        f"direct.test     mail.sina.com:{port25}\n"
        f"mail.sina.com   ns.sina.com:{port25}\n"
    )
    set_keys(
        a.ini,
        "relay",
        smarthost=f"mail.sina.com:{port587}",
        smarthost_user="user3@sina.com",
        smarthost_password_file=password,
        transport_map=transport,
    )
    with running(lab) as appliances:
        yield appliances


def test_relay_smarthost_auth_login_delivered(smarthost_lab) -> None:
    """sina.com via the smarthost: 163 logs in to sina's 587 as user3@sina.com and user4 gets it."""
    a, sina = smarthost_lab["163"], smarthost_lab["sina"]
    tok = token()
    # a host of 163.com relaying through mail.163.com (Connect:163.com RELAY), as user3
    with smtplib.SMTP(a.ip, a.ports[25], timeout=10, source_address=("127.0.1.1", 0)) as c:
        c.ehlo("client.163.com")
        qid = send_on(
            c,
            "user3@sina.com",
            ["user4@sina.com"],
            message("user3@sina.com", ["user4@sina.com"], tok),
        )
    data = wait_message(sina, "user4@sina.com", tok)
    line = status_line(a, qid, "user4@sina.com", "sent")
    assert f"relay=mail.sina.com[127.0.1.4]:{a.ports[587]}, " in line, line
    assert re.search(r", tls=TLSv1\.[23] \S+, ", line), line
    remote = queued_as(line)
    assert (
        f"{remote}: client=mail.163.com[127.0.1.1], sasl_method=PLAIN, sasl_username=user3@sina.com"
        in lines_of(sina, remote)
    )
    assert "mail.163.com[127.0.1.1]: sasl_method=PLAIN, sasl_username=user3@sina.com" in maillog(
        sina
    )
    status_line(sina, remote, "user4@sina.com", "sent")
    top = unfolded(parse(data)["Received"])
    assert top.startswith(
        f"from mail.163.com (mail.163.com [127.0.1.1]) by mail.sina.com (mailappliance) "
        f"with ESMTPSA id {remote}"
    ), top
    wait_for(lambda: settled(a), what="163 queue empty")


def test_relay_smarthost_sender_not_owned_by_login_bounced(smarthost_lab) -> None:
    """user1@163.com via a smarthost login of user3@sina.com: sina's 553 5.7.1 at MAIL is bounced to user1."""
    a, sina = smarthost_lab["163"], smarthost_lab["sina"]
    tok = token()
    qid = submit(a, "user1@163.com", ["user4@sina.com"], tok)
    line = status_line(a, qid, "user4@sina.com", "bounced")
    assert f"relay=mail.sina.com[127.0.1.4]:{a.ports[587]}, " in line
    assert (
        "dsn=5.7.1, status=bounced (host mail.sina.com[127.0.1.4] said: 553 5.7.1 Sender address rejected: not owned by user user3@sina.com (in reply to MAIL FROM command))"
        in line
    ), line
    data = wait_message(a, "user1@163.com", tok)
    _, _, _, (rcpt,), _ = dsn_report(data)
    assert rcpt["Status"] == "5.7.1" and rcpt["Action"] == "failed"
    assert unfolded(rcpt["Diagnostic-Code"]).startswith("smtp; 553 5.7.1 Sender address rejected")
    assert with_token(sina, "user4@sina.com", tok) == []
    wait_for(lambda: settled(a), what="163 queue empty")


def dig_answer_count(a: Appliance, name: str, qtype: str) -> int:
    out = subprocess.run(
        ["dig", f"@{a.ip}", "-p", str(a.ports[53]), "+time=3", "+tries=1", name, qtype],
        capture_output=True, text=True, timeout=15,
    ).stdout  # fmt: skip
    m = re.search(r"ANSWER: (\d+),", out)
    assert m, out
    return int(m.group(1))


def test_relay_transport_map_host_route_bypasses_mx(smarthost_lab) -> None:
    """direct.test (no DNS) routed by the transport map to mail.sina.com: delivered over verified TLS."""
    a, sina = smarthost_lab["163"], smarthost_lab["sina"]
    assert dig_answer_count(a, "direct.test", "MX") == 0
    tok = token()
    qid = submit(a, "user1@163.com", ["user4@direct.test"], tok)
    wait_message(sina, "user4@sina.com", tok)
    line = status_line(a, qid, "user4@direct.test", "sent")
    assert re.search(
        rf"relay=mail\.sina\.com\[127\.0\.1\.4\]:{a.ports[25]}, delay=[\d.]+, tls=TLSv1\.", line
    ), line
    remote = queued_as(line)
    assert lines_of(sina, remote)[0] == f"{remote}: client=mail.163.com[127.0.1.1]"
    wait_for(lambda: settled(a), what="163 queue empty")


def test_relay_verify_certificate_name_mismatch_deferred(smarthost_lab) -> None:
    """Routed to ns.sina.com, a name sina's certificate lacks: deferred 4.7.5, queued, nothing sent."""
    a, sina = smarthost_lab["163"], smarthost_lab["sina"]
    tok = token()
    qid = submit(a, "user1@163.com", ["user3@mail.sina.com"], tok)
    line = status_line(a, qid, "user3@mail.sina.com", "deferred")
    assert "status=deferred (" in line and "ns.sina.com[127.0.1.4]" in line, line
    assert ", relay=ns.sina.com[127.0.1.4]:" in line, line
    assert re.search(r"certificate|verif", line, re.I), line
    assert ", dsn=4.7.5, " in line, line  # 4.7.5: cryptographic failure
    wait_for(
        lambda: (
            len(
                re.findall(rf"{qid}: to=<user3@mail\.sina\.com>, [^\n]*status=deferred", maillog(a))
            )
            >= 2
        ),
        what="a second deferral at the retry",
    )
    entry = queue_entry(a, qid)
    assert entry and re.search(r"certificate|verif", entry, re.I), entry
    assert with_token(sina, "user3@sina.com", tok) == []
    assert queue_cli(a, "delete", qid, check=True).stdout.strip() == "deleted 1 message(s)"


def test_relay_smarthost_wrong_password_deferred_not_bounced(smarthost_lab) -> None:
    """A wrong smarthost password (535): deferred with a transient code and sina's reply, not bounced."""
    a = smarthost_lab["163"]
    write_private(a.ini.parent / "163" / "smarthost.pass", "not-the-password\n", 0o600)
    a.stop()
    start(a)
    tok = token()
    qid = submit(a, "user1@163.com", ["user4@sina.com"], tok)
    line = status_line(a, qid, "user4@sina.com", "deferred")
    assert "status=deferred (SASL authentication failed; server " in line, line
    assert "mail.sina.com[127.0.1.4] said: 535 5.7.8 " in line, line
    assert queue_cli(a, "delete", qid, check=True).stdout.strip() == "deleted 1 message(s)"
    assert not [x for x in lines_of(a, qid) if "bounced" in x or "notification" in x]
    assert with_token(a, "user1@163.com", tok) == []
    # a deferral carries a transient code (Postfix: dsn=4.7.8), not sina's 5.7.8
    assert re.search(r", dsn=4\.\d+\.\d+, status=deferred ", line), line


# ------------------------------------------------------------------------------ MX preference


@pytest.fixture(scope="module")
def mx_lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    """sina.com: MX 5 mx0.sina.com (127.0.0.1) before MX 10 mail.sina.com; no idle relay
    connections kept, so every message walks the MX list afresh."""
    for _ in range(5):
        lab = lab_with(
            tmp_path_factory.mktemp("mx"),
            both={"queue": {"retry_schedule": "1s"}},
            keys={"163": {"relay": {"connection_cache_time": "0"}}},
            zone_records={"sina": "@       IN MX   5 mx0\nmx0     IN A    127.0.0.1"},
        )
        if port_free("127.0.0.1", lab["163"].ports[25]):
            break
    else:
        pytest.fail("no relay port that is also free on 127.0.0.1")
    with running(lab) as appliances:
        yield appliances


def test_relay_dead_first_mx_next_preference_delivers(mx_lab) -> None:
    """mx0.sina.com (MX 5) refuses the connection: delivered by mail.sina.com (MX 10), no deferral."""
    a, sina = mx_lab["163"], mx_lab["sina"]
    out = subprocess.run(
        ["dig", f"@{a.ip}", "-p", str(a.ports[53]), "+short", "sina.com", "MX"],
        capture_output=True, text=True, timeout=15,
    ).stdout  # fmt: skip
    assert sorted(out.split("\n")[:2]) == ["10 mail.sina.com.", "5 mx0.sina.com."], out
    assert port_free("127.0.0.1", a.ports[25])
    tok = token()
    qid = submit(a, "user1@163.com", ["user3@sina.com"], tok)
    wait_message(sina, "user3@sina.com", tok)
    line = status_line(a, qid, "user3@sina.com", "sent")
    assert f"relay=mail.sina.com[127.0.1.4]:{a.ports[25]}, " in line, line
    assert not [x for x in lines_of(a, qid) if "deferred" in x]
    wait_for(lambda: settled(a), what="163 queue empty")


def test_relay_first_mx_refuses_greeting_next_mx_delivers(mx_lab) -> None:
    """mx0.sina.com answers 421: it was tried first, from 127.0.1.1, then mail.sina.com delivers."""
    a, sina = mx_lab["163"], mx_lab["sina"]
    with FakeSMTP(a.ports[25], greeting="421 4.3.2 mx0.sina.com busy, try later") as mx0:
        tok = token()
        qid = submit(a, "user1@163.com", ["user3@sina.com"], tok)
        wait_message(sina, "user3@sina.com", tok)
        line = status_line(a, qid, "user3@sina.com", "sent")
        assert f"relay=mail.sina.com[127.0.1.4]:{a.ports[25]}, " in line, line
        assert mx0.peers, "mx0 was never tried"
        assert {ip for ip, _ in mx0.peers} == {"127.0.1.1"}
        assert mx0.transactions == []
    assert not [x for x in lines_of(a, qid) if "deferred" in x]


# ------------------------------------------------------------------------------ tls = may


LIFETIME = 3  # s: [queue] max_queue_lifetime of may_lab's 163


@pytest.fixture(scope="module")
def may_lab(tmp_path_factory) -> Iterator[tuple[dict[str, Appliance], FakeSMTP, FakeSMTP]]:
    """163 with tls = may and max_queue_lifetime = 3s; transport map: direct.test to
    [127.0.1.4], nodsn.test to a scripted server on 127.0.0.1 that offers no DSN (and no
    STARTTLS), tempfail.test to one that answers 451 to every RCPT, deadhost.test to a port
    on 127.0.0.1 where nothing listens."""
    lab = lab_with(
        tmp_path_factory.mktemp("may"),
        both={"queue": {"retry_schedule": "1s"}},
        keys={
            "163": {
                "relay": {"tls": "may", "ca_file": None},
                "queue": {"max_queue_lifetime": f"{LIFETIME}s"},
            }
        },
        files={"sina": SINA_DIRECT},
    )
    a = lab["163"]
    fake_port, tempfail_port, dead_port = (free_port("127.0.0.1", udp_too=False) for _ in range(3))
    assert len({fake_port, tempfail_port, dead_port}) == 3
    transport = a.ini.parent / "163" / "transport"
    transport.write_text(
        f"direct.test     [127.0.1.4]:{a.ports[25]}\n"
        f"nodsn.test      [127.0.0.1]:{fake_port}\n"
        f"tempfail.test   [127.0.0.1]:{tempfail_port}\n"
        f"deadhost.test   [127.0.0.1]:{dead_port}\n"
    )
    set_keys(a.ini, "relay", transport_map=transport)
    with (
        FakeSMTP(fake_port) as fake,
        FakeSMTP(
            tempfail_port, rcpt_reply="451 4.3.0 <x@tempfail.test>: try again later"
        ) as tempfail,
        running(lab) as appliances,
    ):
        assert port_free("127.0.0.1", dead_port)
        yield appliances, fake, tempfail


def test_relay_transport_map_ip_literal_route_delivered(may_lab) -> None:
    """direct.test -> [127.0.1.4]:<port>: straight to that address, STARTTLS as offered."""
    lab, _, _ = may_lab
    a, sina = lab["163"], lab["sina"]
    tok = token()
    qid = submit(a, "user1@163.com", ["user4@direct.test"], tok)
    wait_message(sina, "user4@sina.com", tok)
    line = status_line(a, qid, "user4@direct.test", "sent")
    assert re.search(
        rf"relay=127\.0\.1\.4\[127\.0\.1\.4\]:{a.ports[25]}, delay=[\d.]+, tls=TLSv1\.", line
    ), line
    status_line(sina, queued_as(line), "user4@sina.com", "sent")
    wait_for(lambda: settled(a), what="163 queue empty")


def test_relay_notify_success_next_hop_without_dsn_relayed_notice(may_lab) -> None:
    """NOTIFY=SUCCESS to a next hop without DSN: not passed on; 163 sends one "relayed" DSN."""
    lab, fake, _ = may_lab
    a = lab["163"]
    tok = token()
    qid = submit(a, "user1@163.com", ["x@nodsn.test"], tok, rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
    line = status_line(a, qid, "x@nodsn.test", "sent")
    assert re.search(
        rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{fake.port}, delay=[\d.]+, dsn=2\.0\.0, "
        r"status=sent \(250 2\.0\.0 Ok: queued as FAKE\d+\)$",
        line,
    ), line  # no tls=: the server offered no STARTTLS, and tls = may goes on without
    (sent,) = [t for t in fake.transactions if tok.encode() in t["data"]]
    assert sent["rcpts"] == ["RCPT TO:<x@nodsn.test>"]
    assert "RET=" not in sent["mail"] and "ENVID=" not in sent["mail"]
    notice_id = wait_line(a, rf"{qid}: sender delivery status notification: ([0-9A-F]+)").group(1)
    status_line(a, notice_id, "user1@163.com", "sent")
    data = wait_message(a, "user1@163.com", tok)
    msg, text, _, (rcpt,), returned = dsn_report(data)
    assert msg["Subject"] == "Successful Mail Delivery Report"
    assert rcpt["Action"] == "relayed" and rcpt["Status"] == "2.0.0"
    assert unfolded(rcpt["Final-Recipient"]) == "rfc822; x@nodsn.test"
    assert returned.get_content_type() == "text/rfc822-headers"  # no RET: headers only
    wait_for(lambda: settled(a), what="163 queue empty")
    assert len(dsns_for(a, "user1@163.com", tok)) == 1


def test_relay_undeliverable_past_lifetime_bounced_with_last_error(may_lab) -> None:
    """Past max_queue_lifetime (451 each try; connection refused): bounced, each DSN with its last error."""
    lab, _, tempfail = may_lab
    a = lab["163"]
    tok = token()
    qid = submit(a, "user1@163.com", ["x@tempfail.test", "y@deadhost.test"], tok)
    for rcpt in ("x@tempfail.test", "y@deadhost.test"):
        status_line(a, qid, rcpt, "deferred")
    tempfailed = status_line(a, qid, "x@tempfail.test", "bounced")
    assert "dsn=4.3.0, status=bounced (message expired after " in tempfailed, tempfailed
    assert (
        "451 4.3.0 <x@tempfail.test>: try again later (in reply to RCPT TO command))" in tempfailed
    )
    dead = status_line(a, qid, "y@deadhost.test", "bounced")
    assert "status=bounced (message expired after " in dead and "Connection refused)" in dead, dead
    assert len([r for r in tempfail.rcpt_lines if "x@tempfail.test" in r]) >= 2  # retried
    wait_for(lambda: settled(a), what="163 queue empty")
    notices = wait_for(lambda: dsns_for(a, "user1@163.com", tok), what="the bounce")
    blocks = {}
    for data in notices:
        _, text, _, recipients, _ = dsn_report(data)
        for r in recipients:
            blocks[unfolded(r["Final-Recipient"])] = (r, text)
    temp, text = blocks["rfc822; x@tempfail.test"]
    assert temp["Action"] == "failed" and temp["Status"] == "4.3.0", str(temp)
    assert unfolded(temp["Diagnostic-Code"]) == "smtp; 451 4.3.0 <x@tempfail.test>: try again later"
    refused, text = blocks["rfc822; y@deadhost.test"]
    assert refused["Action"] == "failed", str(refused)
    # what the maillog said of every try: no answer from the host (not a generic 5.0.0)
    assert refused["Status"] in ("4.4.1", "4.4.7"), str(refused)
    assert "Connection refused" in unfolded(refused["Diagnostic-Code"] or ""), str(refused)
