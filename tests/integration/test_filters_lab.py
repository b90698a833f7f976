"""The 163 lab appliance with Debian's real clamd and spamd as its filters: over real SMTP,
EICAR is refused 554 5.7.1 and nothing is delivered, GTUBE is delivered tagged with
SpamAssassin's headers, a clean note arrives with its X-Spam-Status, and with clamd down
mail is refused for now (451 4.7.1), never passed unscanned. The maillog has each verdict."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from tests.conftest import free_port
from tests.filters.daemons import EICAR, GTUBE, Daemon
from tests.integration.conftest import Appliance, make_lab, running, set_keys

USER = "user1@163.com"


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, clamd: Daemon, spamd: Daemon) -> Iterator[Appliance]:
    lab = make_lab(tmp_path_factory.mktemp("filters"))
    a = lab["163"]
    set_keys(a.ini, "clamav", address=f"127.0.0.1:{clamd.port}")
    set_keys(a.ini, "spamassassin", address=f"127.0.0.1:{spamd.port}", timeout="60s")
    with running({"163": a}):
        yield a


def send(a: Appliance, subject: str, body: bytes) -> None:
    msg = EmailMessage()
    msg["From"] = "friend@sina.com"
    msg["To"] = USER
    msg["Subject"] = subject
    msg.set_content(body.decode())
    with smtplib.SMTP(a.ip, a.ports[25], timeout=90) as s:
        s.send_message(msg)


def delivered(a: Appliance, subject: str, timeout: float = 30, folder: str = "") -> bytes:
    """The message with this subject in USER's INBOX (or in folder: ".Junk")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = a.maildir(USER) / folder / "new"
        found = [p.read_bytes() for p in new.iterdir()] if new.is_dir() else []
        for m in found:
            if f"Subject: {subject}".encode() in m:
                return m
        time.sleep(0.05)
    raise AssertionError(f"no message {subject!r} delivered")


def maillog(a: Appliance) -> str:
    return (a.state / "maillog").read_text()


def test_filters_lab_eicar_refused_nothing_delivered(filtered: Appliance) -> None:
    """EICAR in a message: 554 5.7.1 at the end of the data; no copy in the Maildir."""
    before = len(filtered.messages(USER))
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(filtered, "eicar", EICAR)
    assert e.value.smtp_code == 554 and b"5.7.1" in e.value.smtp_error
    assert b"virus found" in e.value.smtp_error
    assert len(filtered.messages(USER)) == before
    assert "filter clamav: reject 554 5.7.1" in maillog(filtered)


def test_filters_lab_gtube_delivered_tagged(filtered: Appliance) -> None:
    """GTUBE (no reject_score in the lab): delivered into Junk, X-Spam-Flag: YES first, the
    score 1000 and more, GTUBE among the tests."""
    send(filtered, "gtube", GTUBE)
    m = delivered(filtered, "gtube", folder=".Junk")
    assert not [x for x in filtered.messages(USER) if b"Subject: gtube" in x]  # not the INBOX
    # local delivery's headers, then the filters' (the chain's Authentication-Results
    # first, then each filter's in chain order), then our Received
    names = [line.split(b":")[0] for line in m.split(b"\r\n\r\n")[0].split(b"\r\n")]
    names = [n for n in names if n and not n.startswith(b"\t")]
    assert names[:8] == [
        b"Return-Path",
        b"Delivered-To",
        b"Authentication-Results",
        b"Received-SPF",
        b"X-Spam-Flag",
        b"X-Spam-Score",
        b"X-Spam-Status",
        b"Received",
    ], names
    head = m.split(b"\r\n\r\n", 1)[0]
    score = float(head.split(b"X-Spam-Score: ")[1].split(b"\r\n")[0])
    assert score >= 1000 and b"GTUBE" in head
    assert head.index(b"X-Spam-Status:") < head.index(b"Received: from")
    assert "filter spamassassin: tag" in maillog(filtered)


def test_filters_lab_clean_note_delivered_with_status_no(filtered: Appliance) -> None:
    """An ordinary note arrives with X-Spam-Status: No and clamd's verdict is logged."""
    send(filtered, "lunch", b"Lunch at one?")
    m = delivered(filtered, "lunch")
    assert b"X-Spam-Status: No, score=" in m and b"X-Spam-Flag" not in m
    assert "filter clamav: accept (clean)" in maillog(filtered)


def test_filters_lab_clamd_down_tempfails(tmp_path) -> None:
    """clamd not listening: 451 4.7.1 and a log line; the message is not delivered."""
    lab = make_lab(tmp_path)
    a = lab["163"]
    set_keys(a.ini, "clamav", address=f"127.0.0.1:{free_port(udp_too=False)}", timeout="5s")
    with running({"163": a}):
        with pytest.raises(smtplib.SMTPDataError) as e:
            send(a, "unscanned", b"hello")
        assert e.value.smtp_code == 451 and b"4.7.1" in e.value.smtp_error
        assert a.messages(USER) == []
        assert "filter clamav: tempfail 451 4.7.1" in maillog(a)
