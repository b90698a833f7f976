"""Interop with a real Postfix on loopback: Postfix relays into us, and our relay into Postfix."""

from __future__ import annotations

import re
import smtplib
import time
import uuid
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

from tests.integration.conftest import make_lab, running, set_keys
from tests.postfix import Postfix

TIMEOUT = 30  # seconds for any one delivery


def wait_for(predicate, timeout: float = TIMEOUT, what: str = "condition"):
    """Poll predicate until it returns something true (bounded); return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met in {timeout}s")
        time.sleep(0.05)


def note(tag: str, sender: str, rcpt: str) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: interop {tag}\r\n"
        f"Message-ID: <{tag}@interop.test>\r\n\r\nbody {tag}\r\n"
    ).encode()


def received(message: bytes) -> list[str]:
    """The message's Received headers, top (newest) first, unfolded."""
    msg = message_from_bytes(message, policy=default_policy)
    return [re.sub(r"\s+", " ", str(h)) for h in msg.get_all("Received", [])]


def test_postfix_relaying_to_appliance_delivers_over_starttls(
    postfix: Postfix, tmp_path: Path
) -> None:
    """Postfix relays 163.com mail to our port 25, over STARTTLS, and we deliver it locally."""
    lab = make_lab(tmp_path)
    a = lab["163"]
    port25 = a.ports[25]
    with running({"163": a}):
        postfix.reconfigure(relay_routes={"163.com": f"[127.0.1.1]:{port25}"})
        tag = uuid.uuid4().hex
        with smtplib.SMTP(
            postfix.host, postfix.port, timeout=10, local_hostname="client.test"
        ) as c:
            refused = c.sendmail(
                "alice@postfix.test",
                ["user1@163.com"],
                note(tag, "alice@postfix.test", "user1@163.com"),
            )
        assert refused == {}
        try:
            (msg,) = wait_for(
                lambda: [m for m in a.messages("user1@163.com") if tag.encode() in m],
                what="delivery into user1@163.com's Maildir",
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\npostfix maillog:\n{postfix.log_tail()}") from None

    sent = postfix.wait_for_log(
        rf"to=<user1@163\.com>, relay=[^,\s]*\[127\.0\.1\.1\]:{port25}, .*status=sent \((.*)\)"
    )
    assert "250 2.0.0 Ok: queued as" in sent.group(1)
    postfix.wait_for_log(
        rf"TLS connection established to [^\s]*\[127\.0\.1\.1\]:{port25}: TLSv1\.[23]"
    )

    ours, theirs = received(msg)[:2]
    # our header: Postfix's HELO and address, ESMTPS with the TLS version and cipher
    assert ours.startswith(f"from {postfix.myhostname} (") and "[127.0.0.1])" in ours, ours
    assert "by mail.163.com (mailappliance) with ESMTPS" in ours, ours
    assert re.search(r"\(using TLSv1\.[23] with cipher \S+\)", ours), ours
    # Postfix's header, from our smtplib client
    assert theirs.startswith("from client.test ("), theirs
    assert f"by {postfix.myhostname} (Postfix) with ESMTP id" in theirs, theirs


def test_relay_to_postfix_with_starttls_delivers(postfix: Postfix, tmp_path: Path) -> None:
    """Our relay sends authenticated submission mail to Postfix over STARTTLS (tls = may),
    the message by BDAT (CHUNKING) in one write with its envelope."""
    lab = make_lab(tmp_path)
    a = lab["163"]
    (a.ini.parent / "163" / "transport").write_text(f"postfix.test [127.0.0.1]:{postfix.port}\n")
    set_keys(a.ini, "relay", transport_map="163/transport", tls="may")
    tag = uuid.uuid4().hex
    with running({"163": a}):
        with smtplib.SMTP(a.ip, a.ports[587], timeout=10, local_hostname="client.test") as c:
            c.login("user1@163.com", "user1pass")
            refused = c.sendmail(
                "user1@163.com",
                ["alice@postfix.test"],
                note(tag, "user1@163.com", "alice@postfix.test"),
            )
        assert refused == {}
        maillog = a.state / "maillog"
        try:
            (msg,) = wait_for(
                lambda: [m for m in postfix.messages("alice@postfix.test") if tag.encode() in m],
                what="delivery into alice@postfix.test's Maildir",
            )
        except AssertionError as e:
            ours = maillog.read_text() if maillog.exists() else "(no maillog)"
            raise AssertionError(
                f"{e}\nour maillog:\n{ours}\nour output:\n{''.join(a.output)}"
                f"\npostfix maillog:\n{postfix.log_tail()}"
            ) from None
        log = wait_for(
            lambda: (
                maillog.read_text()
                if re.search(r"to=<alice@postfix\.test>.*status=sent", maillog.read_text())
                else None
            ),
            what="status=sent in our maillog",
        )

    line = next(
        ln for ln in log.splitlines() if "to=<alice@postfix.test>" in ln and "status=sent" in ln
    )
    assert re.search(rf"relay=[^,\s]*\[127\.0\.0\.1\]:{postfix.port}\b", line), line
    postfix.wait_for_log(r"TLS connection established from [^\s]*\[127\.0\.[01]\.1\]: TLSv1\.[23]")
    # the message went by BDAT (Postfix offers CHUNKING), not DATA: Postfix counts commands
    stats = postfix.wait_for_log(
        r"disconnect from [^\s]*\[127\.0\.[01]\.1\] (ehlo=2 starttls=1 .*)"
    )
    assert " bdat=1 " in stats.group(1) and "data=" not in stats.group(1), stats.group(1)
    # Postfix's Received header says the session was encrypted (smtpd_tls_received_header)
    (theirs,) = [h for h in received(msg) if f"by {postfix.myhostname} (Postfix)" in h]
    assert "(using TLSv1." in theirs, theirs
    assert "with ESMTPS id" in theirs, theirs
