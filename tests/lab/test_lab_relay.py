"""The two-domain lab end to end: MX routing through the DNS forwarders, TLS to the next hop,
DSNs (unknown user, partial failure, NOTIFY=SUCCESS and NEVER), null MX and an MX loop.

One lab for the module: none of these tests stops an appliance or changes its config. sina's
zone copy gets two extra names before start: `nomail.sina.com` with a null MX (RFC 7505) and
`loop.sina.com` whose MX is mail.163.com (which does not take mail for it).
"""

from __future__ import annotations

import re
import smtplib
import subprocess
from collections.abc import Iterator

import pytest

from tests.lab.conftest import (
    Appliance,
    dsn_report,
    dsns_for,
    lab_with,
    lines_of,
    maillog,
    message,
    parse,
    queue_cli,
    queued_as,
    running,
    send_on,
    settled,
    status_line,
    submission,
    submit,
    token,
    unfolded,
    wait_for,
    wait_line,
    wait_message,
    with_token,
)

EXTRA_SINA_RECORDS = """
nomail  IN MX   0 .
loop    IN MX   10 mail.163.com.
"""
EXTRA_163_ALIASES = "friend:     user3@sina.com"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    """Both appliances, as etc/ has them (tls = verify), with a short retry schedule."""
    labs = lab_with(
        tmp_path_factory.mktemp("relay"),
        both={"queue": {"retry_schedule": "1s"}},
        zone_records={"sina": EXTRA_SINA_RECORDS},
        files={"163": {"aliases": EXTRA_163_ALIASES}},
    )
    with running(labs) as appliances:
        yield appliances


def mailbox_users(name: str) -> tuple[str, str]:
    return (
        ("user1@163.com", "user3@sina.com")
        if name == "163"
        else ("user3@sina.com", "user1@163.com")
    )


def received_headers(data: bytes) -> list[str]:
    return [unfolded(v) for v in parse(data).get_all("Received")]


@pytest.mark.parametrize("origin", ["163", "sina"])
def test_relay_cross_domain_via_dns_forwarders_delivered(lab, origin: str) -> None:
    """MX through the forwarders, verified TLS, both maillogs under their queue ids, Received shows the hand-over."""
    src = lab[origin]
    dst = lab["sina" if origin == "163" else "163"]
    sender, rcpt = mailbox_users(origin)
    tok = token()
    qid = submit(src, sender, [rcpt], tok)
    data = wait_message(dst, rcpt, tok)

    # the sending side: accepted, relayed to the other's MX host on the relay port, over TLS
    line = status_line(src, qid, rcpt)
    assert f"relay=mail.{dst.name}.com[{dst.ip}]:{src.ports[25]}, " in line, line
    assert re.search(
        r", tls=TLSv1\.[23] \S+, dsn=2\.0\.0, status=sent \(250 2\.0\.0 Ok: queued as", line
    )
    remote_qid = queued_as(line)
    wait_line(src, rf"{qid}: removed")
    src_lines = [x for x in lines_of(src, qid) if ": filter " not in x]
    assert src_lines[0].startswith(f"{qid}: client=unknown[127.0.0.1], sasl_method=")
    assert f"{qid}: from=<{sender}>, size=" in src_lines[1]

    # the receiving side: the same message under the id the sender was told
    status_line(dst, remote_qid, rcpt, "sent")
    every = lines_of(dst, remote_qid)
    # the filters' verdicts (SPF of the sending domain) come before the message is queued
    assert f"{remote_qid}: filter spf: tag (pass {src.name}.com)" in every, every
    dst_lines = [x for x in every if ": filter " not in x]
    assert dst_lines[0] == f"{remote_qid}: client=mail.{src.name}.com[{src.ip}]"
    assert dst_lines[1].startswith(f"{remote_qid}: from=<{sender}>, size=")
    assert re.match(
        rf"{remote_qid}: to=<{re.escape(rcpt)}>, relay=local, delay=[\d.]+, dsn=2\.0\.0, "
        r"status=sent \(delivered to maildir\)$",
        dst_lines[2],
    ), dst_lines
    assert f"connect from mail.{src.name}.com[{src.ip}]" in maillog(dst)

    # Received: the newest says the source host handed it to the destination with TLS
    top, second = received_headers(data)[:2]
    assert top.startswith(
        f"from mail.{src.name}.com (mail.{src.name}.com [{src.ip}]) by mail.{dst.name}.com "
        f"(mailappliance) with ESMTPS id {remote_qid} (using TLSv1."
    ), top
    assert f"for <{rcpt}>" in top
    assert second.startswith(f"from client.test (unknown [127.0.0.1]) by mail.{src.name}.com")
    assert f"with ESMTPSA id {qid}" in second
    assert data.startswith(f"Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n".encode())
    wait_for(lambda: settled(src), what=f"{src.name} queue empty")


def test_relay_cut_through_next_hop_has_the_message_before_our_250(lab) -> None:
    """One remote recipient: 163 relays while the client waits (cut-through), so when its
    250 arrives sina already holds the message (no polling), and 163 has nothing queued;
    163's maillog still tells queued, sent (with sina's queue id) and removed, in order."""
    src, dst = lab["163"], lab["sina"]
    tok = token()
    qid = submit(src, "user1@163.com", ["user3@sina.com"], tok)
    assert len(with_token(dst, "user3@sina.com", tok)) == 1  # at once: no waiting
    assert settled(src)
    assert list((src.state / "queue" / "deferred").iterdir()) == []
    line = status_line(src, qid, "user3@sina.com", "sent")
    status_line(dst, queued_as(line), "user3@sina.com", "sent")
    wait_line(src, rf"{qid}: removed")
    texts = [x for x in lines_of(src, qid) if ": filter " not in x]
    assert [t.split(": ", 1)[1].split("=", 1)[0] for t in texts] == [
        "client",
        "from",
        "to",
        "removed",
    ], texts


def dig(server: Appliance, port: int, name: str, qtype: str) -> str:
    out = subprocess.run(
        ["dig", f"@{server.ip}", "-p", str(port), "+time=3", "+tries=1", name, qtype],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.parametrize("asked,domain", [("163", "sina.com"), ("sina", "163.com")])
def test_dns_other_domain_mx_answered_through_forwarder(lab, asked: str, domain: str) -> None:
    """dig of the other domain's MX: answered via the forwarder (no aa), the other side answers with aa."""
    a = lab[asked]
    other = lab["sina" if asked == "163" else "163"]
    forwarded = dig(a, a.ports[53], domain, "MX")
    assert "status: NOERROR" in forwarded
    flags = re.search(r";; flags: ([a-z ]+);", forwarded).group(1).split()
    assert "qr" in flags and "ra" in flags and "aa" not in flags, forwarded
    host = f"mail.{domain}."
    assert re.search(
        rf"^{re.escape(domain)}\.\s+\d+\s+IN\s+MX\s+10 {re.escape(host)}$", forwarded, re.M
    )
    direct = dig(other, other.ports[53], domain, "MX")
    assert "aa" in re.search(r";; flags: ([a-z ]+);", direct).group(1).split(), direct
    assert re.search(rf"IN\s+MX\s+10 {re.escape(host)}$", direct, re.M)
    addr = dig(a, a.ports[53], f"mail.{domain}", "A")
    assert re.search(rf"^mail\.{re.escape(domain)}\.\s+\d+\s+IN\s+A\s+{other.ip}$", addr, re.M)


def test_relay_unknown_remote_user_dsn_to_sender(lab) -> None:
    """user9@sina.com: sina's 550 5.1.1 comes back as a DSN in user1's Maildir; 163's queue ends empty."""
    a, sina = lab["163"], lab["sina"]
    tok = token()
    qid = submit(a, "user1@163.com", ["user9@sina.com"], tok, mail_options=["ENVID=env-" + tok])
    line = status_line(a, qid, "user9@sina.com", "bounced")
    assert f"relay=mail.sina.com[{sina.ip}]:{a.ports[25]}" in line
    assert (
        ", dsn=5.1.1, status=bounced (host mail.sina.com[127.0.1.4] said: 550 5.1.1 <user9@sina.com>"
        in line
    )
    assert line.endswith("(in reply to RCPT TO command))"), line
    notice_id = wait_line(a, rf"{qid}: sender non-delivery notification: ([0-9A-F]+)").group(1)
    wait_line(a, rf"{qid}: removed")
    # sina refused it at RCPT: it never got a queue id there
    reject = wait_line(sina, r"NOQUEUE: reject: RCPT from [^\n]*user9@sina\.com[^\n]*").group(0)
    assert reject.startswith(
        "NOQUEUE: reject: RCPT from mail.163.com[127.0.1.1]: 550 5.1.1 <user9@sina.com>"
    ), reject
    assert "helo=<mail.163.com>" in reject  # EHLO with our own name

    data = wait_message(a, "user1@163.com", tok)
    assert data.startswith(b"Return-Path: <>\r\nDelivered-To: user1@163.com\r\n")
    status_line(a, notice_id, "user1@163.com", "sent")
    msg, text, per_message, (rcpt,), returned = dsn_report(data)
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mail.163.com>"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert "<user9@sina.com>: host mail.sina.com said: 550 5.1.1 <user9@sina.com>" in text
    assert unfolded(per_message["Reporting-MTA"]) == "dns; mail.163.com"
    assert unfolded(per_message["X-Postfix-Queue-ID"]) == qid
    assert unfolded(per_message["Original-Envelope-Id"]) == "env-" + tok
    assert unfolded(rcpt["Final-Recipient"]) == "rfc822; user9@sina.com"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert unfolded(rcpt["Remote-MTA"]) == "dns; mail.sina.com"
    diagnostic = unfolded(rcpt["Diagnostic-Code"])
    assert diagnostic.startswith("smtp; 550 5.1.1 <user9@sina.com>: Recipient address rejected"), (
        diagnostic
    )
    # no RET given: a failure returns the whole message
    assert returned.get_content_type() == "message/rfc822"
    original = returned.get_payload()[0]
    assert original["Subject"] == f"lab {tok}"
    assert tok in original.get_content()
    wait_for(lambda: settled(a), what="163 queue empty")
    assert queue_cli(a, "list").stdout.strip() == "Mail queue is empty"


def test_relay_partial_failure_bounces_only_failed_recipient(lab) -> None:
    """user3 + user9 at sina in one message: user3 gets it, the DSN to user1 names user9 only."""
    a, sina = lab["163"], lab["sina"]
    tok = token()
    qid = submit(a, "user1@163.com", ["user3@sina.com", "user9@sina.com"], tok)
    delivered = wait_message(sina, "user3@sina.com", tok)
    assert tok.encode() in delivered
    sent = status_line(a, qid, "user3@sina.com", "sent")
    bounced = status_line(a, qid, "user9@sina.com", "bounced")
    assert "dsn=5.1.1" in bounced and "dsn=2.0.0" in sent
    remote_qid = queued_as(sent)
    status_line(sina, remote_qid, "user3@sina.com", "sent")
    assert not [x for x in lines_of(sina, remote_qid) if "user9" in x]
    wait_line(a, rf"{qid}: removed")
    data = wait_message(a, "user1@163.com", tok)
    _, text, _, recipients, _ = dsn_report(data)
    assert [unfolded(r["Final-Recipient"]) for r in recipients] == ["rfc822; user9@sina.com"]
    assert recipients[0]["Action"] == "failed" and recipients[0]["Status"] == "5.1.1"
    assert "user3@sina.com>:" not in text
    assert len(with_token(sina, "user9@sina.com", tok)) == 0
    wait_for(lambda: settled(a), what="163 queue empty")


def test_relay_notify_success_one_delivered_dsn_from_next_hop(lab) -> None:
    """NOTIFY=SUCCESS is passed to sina (it offers DSN): one "delivered" DSN from sina, none from 163."""
    a, sina = lab["163"], lab["sina"]
    tok = token()
    qid = submit(
        a,
        "user1@163.com",
        ["user3@sina.com"],
        tok,
        mail_options=["RET=HDRS", f"ENVID=env-{tok}"],
        rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;user3@sina.com"],
    )
    wait_message(sina, "user3@sina.com", tok)
    remote_qid = queued_as(status_line(a, qid, "user3@sina.com", "sent"))
    wait_line(a, rf"{qid}: removed")
    # sina: delivered, then its own success notice to the sender, relayed back to 163
    notice_id = wait_line(
        sina, rf"{remote_qid}: sender delivery status notification: ([0-9A-F]+)"
    ).group(1)
    back = status_line(sina, notice_id, "user1@163.com", "sent")
    assert f"relay=mail.163.com[127.0.1.1]:{a.ports[25]}" in back
    data = wait_message(a, "user1@163.com", tok)
    msg, text, per_message, (rcpt,), returned = dsn_report(data)
    assert msg["Subject"] == "Successful Mail Delivery Report"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mail.sina.com>"
    assert unfolded(per_message["Reporting-MTA"]) == "dns; mail.sina.com"
    assert unfolded(per_message["Original-Envelope-Id"]) == f"env-{tok}"
    assert rcpt["Action"] == "delivered"
    assert rcpt["Status"] == "2.0.0"
    assert unfolded(rcpt["Final-Recipient"]) == "rfc822; user3@sina.com"
    assert unfolded(rcpt["Original-Recipient"]) == "rfc822; user3@sina.com"
    assert returned.get_content_type() == "text/rfc822-headers"  # RET=HDRS passed on
    assert f"Subject: lab {tok}" in returned.get_payload()
    # 163 told nothing itself, and exactly one notice arrives
    assert not [x for x in lines_of(a, qid) if "notification" in x], lines_of(a, qid)
    wait_for(lambda: settled(a) and settled(sina), what="both queues empty")
    assert len(dsns_for(a, "user1@163.com", tok)) == 1


def test_relay_notify_never_bounce_without_dsn(lab) -> None:
    """NOTIFY=NEVER to user9@sina.com: bounced in 163's maillog, and no DSN to anyone."""
    a = lab["163"]
    tok = token()
    before = len(a.messages("user1@163.com"))
    qid = submit(a, "user1@163.com", ["user9@sina.com"], tok, rcpt_options=["NOTIFY=NEVER"])
    assert "dsn=5.1.1" in status_line(a, qid, "user9@sina.com", "bounced")
    wait_line(a, rf"{qid}: removed")
    wait_for(lambda: settled(a), what="163 queue empty")
    assert not [x for x in lines_of(a, qid) if "notification" in x], lines_of(a, qid)
    assert with_token(a, "user1@163.com", tok) == []
    assert len(a.messages("user1@163.com")) == before


def test_relay_null_mx_domain_bounced_at_once(lab) -> None:
    """x@nomail.sina.com (MX 0 .): bounced at once with 5.1.10, the DSN says why."""
    a = lab["163"]
    tok = token()
    qid = submit(a, "user1@163.com", ["x@nomail.sina.com"], tok)
    line = status_line(a, qid, "x@nomail.sina.com", "bounced")
    assert ", relay=none, " in line, line
    assert "dsn=5.1.10, status=bounced (5.1.10 Recipient address has null MX)" in line, line
    data = wait_message(a, "user1@163.com", tok)
    _, text, _, (rcpt,), _ = dsn_report(data)
    assert rcpt["Status"] == "5.1.10" and rcpt["Action"] == "failed"
    assert rcpt["Remote-MTA"] is None
    wait_for(lambda: settled(a), what="163 queue empty")
    # the notice says why, as the maillog does (Postfix: "Diagnostic-Code: X-Postfix; ...")
    assert "<x@nomail.sina.com>: " in text and "null MX" in text, text
    assert "null MX" in unfolded(rcpt["Diagnostic-Code"] or ""), str(rcpt)


def test_relay_mx_pointing_at_ourselves_bounced_as_loop(lab) -> None:
    """x@loop.sina.com (MX mail.163.com, not local there): bounced 5.4.6, never relayed to ourselves."""
    a = lab["163"]
    tok = token()
    qid = submit(a, "user1@163.com", ["x@loop.sina.com"], tok)
    line = status_line(a, qid, "x@loop.sina.com", "bounced")
    assert ", relay=none, " in line, line
    assert "dsn=5.4.6, status=bounced (5.4.6 mail for loop.sina.com loops back to myself)" in line
    data = wait_message(a, "user1@163.com", tok)
    _, text, _, (rcpt,), _ = dsn_report(data)
    assert rcpt["Status"] == "5.4.6" and rcpt["Action"] == "failed"
    assert unfolded(rcpt["Final-Recipient"]) == "rfc822; x@loop.sina.com"
    # 163 never received it back from itself
    assert [entry for entry in lines_of(a, qid) if "status=" in entry] == [line]
    assert "connect from mail.163.com[127.0.1.1]" not in maillog(a)
    wait_for(lambda: settled(a), what="163 queue empty")
    # the notice says why, as the maillog does
    assert "loops back to myself" in text, text
    assert "loops back to myself" in unfolded(rcpt["Diagnostic-Code"] or ""), str(rcpt)


def test_relay_alias_to_remote_address_relayed(lab) -> None:
    """friend@163.com, an alias for user3@sina.com: relayed, logged with orig_to=<friend@163.com>."""
    a, sina = lab["163"], lab["sina"]
    tok = token()
    with smtplib.SMTP(a.ip, a.ports[25], timeout=10) as c:
        c.ehlo("client.example.org")
        qid = send_on(
            c,
            "x@example.org",
            ["friend@163.com"],
            message("x@example.org", ["friend@163.com"], tok),
        )
    data = wait_message(sina, "user3@sina.com", tok)
    assert data.startswith(b"Return-Path: <x@example.org>\r\nDelivered-To: user3@sina.com\r\n")
    line = status_line(a, qid, "user3@sina.com", "sent")
    assert f"relay=mail.sina.com[127.0.1.4]:{a.ports[25]}, " in line, line
    wait_for(lambda: settled(a), what="163 queue empty")
    # Postfix (and log_result's own comment): orig_to= names what the client gave
    assert ", orig_to=<friend@163.com>, " in line, line


def test_relay_too_many_received_headers_bounced_as_loop(lab) -> None:
    """31 Received headers (over max_hops 30): bounced 5.4.6, nothing sent to sina."""
    a, sina = lab["163"], lab["sina"]
    tok = token()
    hops = "".join(
        f"Received: from hop{i}.example.org by hop{i + 1}.example.org; Tue, 1 Dec 2026 00:00:00 +0000\r\n"
        for i in range(30)
    ).encode()
    with submission(a, "user1@163.com") as c:
        qid = send_on(
            c,
            "user1@163.com",
            ["user3@sina.com"],
            hops + message("user1@163.com", ["user3@sina.com"], tok),
        )
    line = status_line(a, qid, "user3@sina.com", "bounced")
    assert ", relay=none, " in line, line
    assert (
        "dsn=5.4.6, status=bounced (5.4.6 too many hops (31 Received headers): mail forwarding loop)"
        in line
    ), line
    data = wait_message(a, "user1@163.com", tok)
    _, _, _, (rcpt,), _ = dsn_report(data)
    assert rcpt["Status"] == "5.4.6" and rcpt["Action"] == "failed"
    wait_for(lambda: settled(a), what="163 queue empty")
    assert with_token(sina, "user3@sina.com", tok) == []


def test_relay_null_sender_failure_to_postmaster_once(lab) -> None:
    """A null-sender message sina refuses: one double-bounce notice to postmaster@163.com, nothing more."""
    a = lab["163"]
    tok = token()
    # from mail.163.com itself (Connect:163.com RELAY), as a bounce would come
    with smtplib.SMTP(a.ip, a.ports[25], timeout=10, source_address=("127.0.1.1", 0)) as c:
        c.ehlo("mail.163.com")
        qid = send_on(
            c,
            "",
            ["user9@sina.com"],
            message("MAILER-DAEMON@mail.163.com", ["user9@sina.com"], tok),
        )
    assert "dsn=5.1.1" in status_line(a, qid, "user9@sina.com", "bounced")
    notice = wait_line(a, rf"{qid}: sender non-delivery notification: ([0-9A-F]+)").group(1)
    status_line(a, notice, "user1@163.com", "sent")
    wait_for(lambda: settled(a), what="163 queue empty")
    (data,) = dsns_for(a, "user1@163.com", tok)
    msg, _, _, (rcpt,), _ = dsn_report(data)
    assert msg["To"].addresses[0].addr_spec == "postmaster@163.com"
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.1.1"
    assert not [x for x in lines_of(a, notice) if "notification" in x]


def test_relay_local_and_remote_recipients_one_message_both_delivered(lab) -> None:
    """user2@163.com + user3@sina.com in one message: local copy and relayed copy, one queue id."""
    a, sina = lab["163"], lab["sina"]
    tok = token()
    qid = submit(a, "user1@163.com", ["user2@163.com", "user3@sina.com"], tok)
    wait_message(a, "user2@163.com", tok)
    wait_message(sina, "user3@sina.com", tok)
    assert "relay=local" in status_line(a, qid, "user2@163.com", "sent")
    assert "relay=mail.sina.com" in status_line(a, qid, "user3@sina.com", "sent")
    wait_line(a, rf"{qid}: removed")
    wait_for(lambda: settled(a), what="163 queue empty")


def test_relay_next_message_within_cache_time_same_connection(lab) -> None:
    """Two messages in a row within connection_cache_time: at most one new connection at sina."""
    a, sina = lab["163"], lab["sina"]
    connects = lambda: maillog(sina).count("connect from mail.163.com[127.0.1.1]")  # noqa: E731
    before = connects()
    for _ in range(2):
        tok = token()
        submit(a, "user1@163.com", ["user3@sina.com"], tok)
        wait_message(sina, "user3@sina.com", tok)
    assert connects() - before <= 1, maillog(sina)[-2000:]


def test_relay_session_over_starttls_really_closes_after_quit(lab) -> None:
    """After the cache time the relay's QUIT ends the connection on both sides (over
    STARTTLS a producer left registered held TLS's close: every relay session stayed open
    at sina until its idle timeout, and after 50 of them sina refused 163 with 421)."""
    a, sina = lab["163"], lab["sina"]
    tok = token()
    submit(a, "user1@163.com", ["user3@sina.com"], tok)
    wait_message(sina, "user3@sina.com", tok)
    port = sina.ports[25]

    def open_from_163() -> list[str]:
        ss = subprocess.run(["ss", "-tnH", "state", "established", f"( dport = :{port} )"],
                            capture_output=True, text=True, timeout=10)  # fmt: skip
        return [line for line in ss.stdout.splitlines() if "127.0.1.1:" in line]

    wait_for(lambda: not open_from_163(), timeout=15, what="the relay's connection to close")
    # the message went by BDAT (sina offers CHUNKING), never DATA
    stats = re.findall(r"disconnect from mail\.163\.com\[127\.0\.1\.1\] (.*)", maillog(sina))
    assert stats and all("bdat=" in s and "data=" not in s for s in stats), stats


def test_relay_8bit_body_and_leading_dots_kept_byte_for_byte(lab) -> None:
    """BODY=8BITMIME UTF-8 text and dot-led lines: sina's copy has the very bytes 163 was given."""
    a, sina = lab["163"], lab["sina"]
    tok = token()
    body = (
        f"8-bit {tok}\r\n".encode()
        + "中文邮件：你好，新浪！ — ünïcödé\r\n".encode()
        + b".\r\n..\r\n.hidden line\r\n . not at start\r\n...\r\nend\r\n"
    )
    head = (
        "From: user1@163.com\r\nTo: user3@sina.com\r\nSubject: 8bit "
        + tok
        + "\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode()
    with submission(a, "user1@163.com") as c:
        send_on(c, "user1@163.com", ["user3@sina.com"], head + body, mail_options=["BODY=8BITMIME"])
    data = wait_message(sina, "user3@sina.com", tok)
    assert data.split(b"\r\n\r\n", 1)[1] == body


def test_relay_large_message_arrives_intact(lab) -> None:
    """A 3 MB message (many queue-file chunks): sina's copy has the same body."""
    a, sina = lab["163"], lab["sina"]
    tok = token()
    body = (
        b"".join(b"%07d " % i + b"x" * 70 + b"\r\n" for i in range(40000)) + tok.encode() + b"\r\n"
    )
    head = f"From: user1@163.com\r\nTo: user3@sina.com\r\nSubject: big {tok}\r\n\r\n".encode()
    with submission(a, "user1@163.com") as c:
        qid = send_on(c, "user1@163.com", ["user3@sina.com"], head + body)
    data = wait_message(sina, "user3@sina.com", tok)
    assert data.split(b"\r\n\r\n", 1)[1] == body
    assert "status=sent" in status_line(a, qid, "user3@sina.com", "sent")
