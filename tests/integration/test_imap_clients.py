"""IMAP on a running appliance: Python's imaplib over 993 (implicit TLS) and 143 + STARTTLS
with the appliance's CA verified, curl as a second real client, IDLE pushed by SMTP, and the
same Maildir read by POP3."""

from __future__ import annotations

import imaplib
import poplib
import select
import smtplib
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Appliance, make_lab, running


@pytest.fixture(scope="module")
def imap_lab(tmp_path_factory) -> Iterator[Appliance]:
    lab = make_lab(tmp_path_factory.mktemp("imap"))
    with running({"163": lab["163"]}) as apps:
        yield apps["163"]


def verified(a: Appliance) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(a.state / "ca" / "ca.crt"))
    ctx.check_hostname = False  # the tests dial the IP; certified() checks the name
    return ctx


def certified(sock: ssl.SSLSocket) -> None:
    names = [v for k, v in sock.getpeercert()["subjectAltName"] if k == "DNS"]
    assert "mail.163.com" in names, names


def deliver(a: Appliance, rcpt: str, subject: str, body: str = "hello there") -> None:
    with smtplib.SMTP(a.ip, a.ports[587], timeout=10) as c:
        c.starttls(context=verified(a))
        c.login("user1@163.com", "user1pass")
        c.sendmail("user1@163.com", [rcpt], f"Subject: {subject}\r\n\r\n{body}\r\n".encode())


def imaps(
    a: Appliance, user: str = "user2@163.com", password: str = "user2pass"
) -> imaplib.IMAP4_SSL:
    c = imaplib.IMAP4_SSL(a.ip, a.ports[993], ssl_context=verified(a), timeout=10)
    certified(c.sock)
    c.login(user, password)
    return c


def find(c: imaplib.IMAP4, subject: str) -> bytes:
    typ, data = c.search(None, "SUBJECT", f'"{subject}"')
    assert typ == "OK", data
    assert data[0], f"no message {subject}"
    return data[0].split()[-1]


def test_imaps_fetch_flag_move_and_pop3_agrees(imap_lab) -> None:
    a = imap_lab
    tag = f"imaps-{uuid.uuid4().hex[:8]}"
    deliver(a, "user2@163.com", tag, "the body of it")
    c = imaps(a)
    try:
        assert c.select("INBOX")[0] == "OK"
        n = find(c, tag)
        typ, data = c.fetch(n, "(BODY.PEEK[TEXT] FLAGS)")
        assert typ == "OK" and b"the body of it" in data[0][1]
        assert c.store(n, "+FLAGS", "(\\Seen)")[0] == "OK"
        typ, data = c.uid("MOVE", c.fetch(n, "(UID)")[1][0].split()[2].rstrip(b")"), "Archive")
        assert typ == "OK", data
        c.select("Archive")
        moved = find(c, tag)
        assert b"\\Seen" in c.fetch(moved, "(FLAGS)")[1][0]
    finally:
        c.logout()
    p = poplib.POP3_SSL(a.ip, a.ports[995], context=verified(a), timeout=10)
    try:
        p.user("user2@163.com")
        p.pass_("user2pass")
        subjects = [p.top(i + 1, 0)[1] for i in range(len(p.list()[1]))]
        assert not any(tag.encode() in b"".join(lines) for lines in subjects)  # moved away
    finally:
        p.quit()


def test_starttls_on_143_and_logindisabled_before(imap_lab) -> None:
    a = imap_lab
    c = imaplib.IMAP4(a.ip, a.ports[143], timeout=10)
    try:
        assert "STARTTLS" in c.capabilities
        c.starttls(ssl_context=verified(a))
        certified(c.sock)
        c.login("user2@163.com", "user2pass")
        typ, data = c.list()
        assert typ == "OK" and any(b"\\Sent" in line and b"Sent" in line for line in data)
    finally:
        c.logout()


def test_idle_exists_within_a_second_of_smtp_250(imap_lab) -> None:
    a = imap_lab
    raw = socket.create_connection((a.ip, a.ports[993]), timeout=10)
    s = verified(a).wrap_socket(raw)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a LOGIN user1@163.com user1pass\r\nb SELECT INBOX\r\nc IDLE\r\n")
    while not f.readline().startswith(b"+ "):
        pass
    deliver(a, "user1@163.com", f"idle-{uuid.uuid4().hex[:6]}")
    accepted = time.monotonic()
    s.settimeout(5)
    line = b""
    while b"EXISTS" not in line:
        ready = s.pending() or select.select([s], [], [], 5)[0]
        assert ready, "no untagged EXISTS within 5 s"
        line = f.readline()
    elapsed = time.monotonic() - accepted
    assert elapsed < 1.0, f"EXISTS came {elapsed:.3f} s after the 250"
    s.sendall(b"DONE\r\nd LOGOUT\r\n")
    s.close()


def test_curl_lists_and_fetches_over_imaps(imap_lab) -> None:
    a = imap_lab
    tag = f"curl-{uuid.uuid4().hex[:8]}"
    deliver(a, "user2@163.com", tag, "fetched by curl")
    base = f"imaps://{a.ip}:{a.ports[993]}/"
    common = ["curl", "-sS", "--max-time", "20", "--cacert", str(a.state / "ca" / "ca.crt"),
              "--resolve", f"mail.163.com:{a.ports[993]}:{a.ip}",
              "--user", "user2@163.com:user2pass"]  # fmt: skip
    url = base.replace(a.ip, "mail.163.com")
    listing = subprocess.run(common + [url], capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert '"/" INBOX' in listing.stdout and "Archive" in listing.stdout
    search = subprocess.run(common + [url + "INBOX", "-X", f"SEARCH SUBJECT {tag}"],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert search.returncode == 0, search.stderr
    number = search.stdout.split()[-1]  # a sequence number (SEARCH, not UID SEARCH)
    body = subprocess.run(common + [url + f"INBOX;MAILINDEX={number}"], capture_output=True,
                          timeout=30)  # fmt: skip
    assert body.returncode == 0, body.stderr
    assert b"fetched by curl" in body.stdout and tag.encode() in body.stdout


def test_imap_logins_in_maillog_and_audit_log(imap_lab) -> None:
    """Dovecot's imap-login lines (fail2ban's filter) and an audit record for each login."""
    import json

    a = imap_lab
    c = imaplib.IMAP4_SSL(a.ip, a.ports[993], ssl_context=verified(a), timeout=10)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login("user2@163.com", "not-the-password")
    c.logout()
    imaps(a).logout()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        log = (a.state / "maillog").read_text()
        audit = [json.loads(x) for x in (a.state / "audit.log").read_text().splitlines()]
        kinds = {(r.get("kind"), r.get("user")) for r in audit if r.get("component") == "imapd"}
        if {("login", "user2@163.com"), ("login_failed", "user2@163.com")} <= kinds and (
            "imap(user2@163.com): Disconnected: Logged out" in log
        ):
            break
        time.sleep(0.1)
    assert "imap-login: Login: user=<user2@163.com>, method=LOGIN, rip=127.0.0.1" in log
    assert "imap-login: Disconnected (auth failed, 1 attempts): user=<user2@163.com>" in log
    assert {("login", "user2@163.com"), ("login_failed", "user2@163.com")} <= kinds, kinds
    assert "not-the-password" not in log and "not-the-password" not in str(audit)
