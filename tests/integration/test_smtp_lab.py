"""SMTP on the lab appliances with real clients: a telnet-style transcript, smtplib, swaks."""

from __future__ import annotations

import base64
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Appliance, make_lab


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Telnet:
    """A line-at-a-time client like the tutorial's `telnet 127.0.1.1 25`."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rb")

    def reply(self) -> list[str]:
        lines = []
        while True:
            line = self.file.readline().decode().rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    def send(self, line: str) -> list[str]:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate, timeout: float = 20):
    """Poll a condition on the file system (delivery is asynchronous to the client)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def tls_context(a: Appliance) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(a.state / "ca" / "ca.crt"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def smtp_client(a: Appliance, port: int, name: str, implicit_tls: bool = False) -> smtplib.SMTP:
    """smtplib connected to the lab IP but verifying the certificate for `name`."""
    if implicit_tls:

        class Named(smtplib.SMTP_SSL):
            def _get_socket(self, host, port, timeout):
                sock = socket.create_connection((host, port), timeout)
                return self.context.wrap_socket(sock, server_hostname=name)

        c = Named(context=tls_context(a), timeout=10)
    else:
        c = smtplib.SMTP(timeout=10, local_hostname="client.test")
    c.connect(a.ip, port)
    c._host = name  # what starttls() verifies the certificate against
    return c


def test_tutorial_transcript_on_port_25(lab) -> None:
    """The tutorial's telnet session: 530 without AUTH, AUTH LOGIN, mail lands in user2's Maildir."""
    a = lab["163"]
    t = Telnet(a.ip, a.ports[25])
    try:
        assert t.reply() == ["220 mail.163.com ESMTP mailappliance"]
        ehlo = t.send("EHLO client")
        assert ehlo[0] == "250-mail.163.com"
        for ext in ("SIZE 26214400", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "STARTTLS",
                    "DSN", "SMTPUTF8", "AUTH PLAIN LOGIN"):  # fmt: skip
            assert any(line[4:] == ext for line in ehlo), ext
        assert ehlo[-1] == "250 HELP"
        assert t.send("MAIL FROM:<abc@163.com>") == ["530 5.7.0 Authentication required"]
        assert t.send("AUTH LOGIN " + b64("user1@163.com")) == ["334 " + b64("Password:")]
        assert t.send(b64("user1pass")) == ["235 2.7.0 Authentication successful"]
        assert t.send("MAIL FROM:<user1@163.com>") == ["250 2.1.0 Ok"]
        assert t.send("RCPT TO:<user2@163.com>") == ["250 2.1.5 Ok"]
        assert t.send("DATA") == ["354 End data with <CR><LF>.<CR><LF>"]
        (queued,) = t.send("Subject: test\r\n\r\nhello from the tutorial\r\n.")
        assert queued.startswith("250 2.0.0 Ok: queued as ")
        queue_id = queued.rsplit(" ", 1)[1]
        assert t.send("QUIT") == ["221 2.0.0 mail.163.com Bye"]
    finally:
        t.close()
    (msg,) = wait_for(lambda: a.messages("user2@163.com"))
    text = msg.decode()
    assert text.startswith(
        "Return-Path: <user1@163.com>\r\nDelivered-To: user2@163.com\r\nReceived: from client"
    )
    assert f"with ESMTPA id {queue_id}" in text
    assert text.endswith("hello from the tutorial\r\n")
    log = wait_for(lambda: (a.state / "maillog").read_text())
    assert f"{queue_id}: from=<user1@163.com>" in log
    assert wait_for(
        lambda: f"{queue_id}: to=<user2@163.com>, relay=local" in (a.state / "maillog").read_text()
    )
    assert "sasl_method=LOGIN, sasl_username=user1@163.com" in log


def test_smtplib_starttls_then_auth_on_25_and_587(lab) -> None:
    """smtplib: STARTTLS (certificate verified against our CA), AUTH PLAIN, send."""
    a = lab["163"]
    for port in (a.ports[25], a.ports[587]):
        with smtp_client(a, port, "mail.163.com") as c:
            c.starttls(context=tls_context(a))
            c.ehlo("client.test")
            assert "auth" in c.esmtp_features
            c.login("user1@163.com", "user1pass")
            refused = c.sendmail(
                "user1@163.com", ["user2@163.com"], b"Subject: tls\r\n\r\nover tls\r\n"
            )
            assert refused == {}
    msgs = wait_for(
        lambda: (
            [m for m in a.messages("user2@163.com") if b"over tls" in m][:2]
            if len([m for m in a.messages("user2@163.com") if b"over tls" in m]) >= 2
            else None
        )
    )
    assert all(b"with ESMTPSA" in m and b"(using TLSv1.3 with cipher" in m for m in msgs)


def test_smtplib_implicit_tls_on_465(lab) -> None:
    """SMTP_SSL on 465: TLS from the first byte; no STARTTLS offered; AUTH works."""
    a = lab["163"]
    with smtp_client(a, a.ports[465], "smtp.163.com", implicit_tls=True) as c:
        c.ehlo("client.test")
        assert "starttls" not in c.esmtp_features
        c.login("user2@163.com", "user2pass")
        c.sendmail("user2@163.com", ["user1@163.com"], b"Subject: 465\r\n\r\nimplicit\r\n")
    wait_for(lambda: any(b"implicit" in m for m in a.messages("user1@163.com")))


def test_submission_requires_auth(lab) -> None:
    """587 without AUTH: 530 5.7.0 at MAIL."""
    a = lab["sina"]
    with smtp_client(a, a.ports[587], "mail.sina.com") as c:
        c.starttls(context=tls_context(a))
        c.ehlo("x")
        code, text = c.mail("someone@example.org")
        assert (code, text) == (530, b"5.7.0 Authentication required")


def test_pipelined_transactions_answer_without_delayed_ack_stall(lab) -> None:
    """A PIPELINING client sending messages back to back (the body's end, then the next
    MAIL, RCPT and DATA, in one write) gets the 250 for the message and the next 354 in
    milliseconds: the 250 comes after the commit and MAIL's after a lookup, each a reactor
    turn later than the reply before it, and with Nagle on that write waits for the
    client's delayed ACK (40 ms), which a client waiting for 354 sends no data to carry."""
    a = lab["163"]
    t = Telnet(a.ip, a.ports[587])
    envelope = b"MAIL FROM:<user1@163.com>\r\nRCPT TO:<user2@163.com>\r\nDATA\r\n"
    try:
        assert t.reply()[0].startswith("220")
        assert t.send("EHLO client.test")[-1].startswith("250")
        auth = t.send("AUTH PLAIN " + b64("\0user1@163.com\0user1pass"))
        assert auth[0].startswith("235"), auth
        t.sock.sendall(envelope)
        got = [t.reply()[0][:3] for _ in range(3)]
        assert got == ["250", "250", "354"], got
        rounds = []
        for i in range(9):
            t0 = time.perf_counter()
            t.sock.sendall(f"Subject: pipelined {i}\r\n\r\nbody {i}\r\n.\r\n".encode() + envelope)
            got = [t.reply()[0][:3] for _ in range(4)]
            rounds.append((time.perf_counter() - t0) * 1000)
            assert got == ["250", "250", "250", "354"], got
        assert t.send(".")[0].startswith("250")  # an empty last message
        assert t.send("QUIT")[0].startswith("221")
    finally:
        t.close()
    median = sorted(rounds)[len(rounds) // 2]
    assert median < 20, f"median ms from a body's end to the next 354 {median:.1f}; all {rounds}"


def test_bdat_pipelined_over_a_socket_delivered_and_nothing_in_a_chunk_runs(lab) -> None:
    """CHUNKING on port 25 over a real socket: MAIL, RCPT and two BDAT chunks in one write,
    the text holding command lines and a lone dot; user1's Maildir gets the text byte for
    byte; the commands inside the chunk are not run (no second message for user2), and a
    BDAT refused for want of MAIL still has its chunk skipped."""
    a = lab["163"]
    t = Telnet(a.ip, a.ports[25])
    text = b"Subject: chunked\r\n\r\n.\r\nRCPT TO:<user2@163.com>\r\nDATA\r\nchunk one\r\n"
    tail = b"chunk two\r\n"
    try:
        assert t.reply()[0].startswith("220")
        assert "250-CHUNKING" in t.send("EHLO client.test")
        t.sock.sendall(
            b"MAIL FROM:<someone@example.org>\r\nRCPT TO:<user1@163.com>\r\n"
            + b"BDAT %d\r\n" % len(text) + text + b"BDAT %d LAST\r\n" % len(tail) + tail
            + b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n"
        )  # fmt: skip
        got = [t.reply()[0] for _ in range(6)]
        assert got[:3] == [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            f"250 2.0.0 Ok: {len(text)} octets received",
        ]
        assert got[3].startswith("250 2.0.0 Ok: queued as "), got
        assert got[4:] == ["503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"], got
        assert t.send("QUIT")[0].startswith("221")
    finally:
        t.close()
    (msg,) = wait_for(lambda: [m for m in a.messages("user1@163.com") if b"chunked" in m])
    assert (
        msg.split(b"\r\n\r\n", 1)[1]
        == b".\r\nRCPT TO:<user2@163.com>\r\nDATA\r\nchunk one\r\n" + tail
    )
    assert not [m for m in a.messages("user2@163.com") if b"chunked" in m]


def test_relay_denied_and_unknown_user(lab) -> None:
    """Port 25 without AUTH: remote recipient 550 5.7.1, unknown local user 550 5.1.1."""
    a = lab["sina"]
    with smtplib.SMTP(a.ip, a.ports[25], timeout=10) as c:
        c.ehlo("x")
        assert c.mail("someone@example.org")[0] == 250
        assert c.rcpt("victim@example.net") == (
            550,
            b"5.7.1 <victim@example.net>: Relay access denied",
        )
        code, text = c.rcpt("nobody@sina.com")
        assert code == 550 and text.startswith(b"5.1.1")
        assert c.rcpt("user3@sina.com")[0] == 250


def test_alias_and_virtual_user_delivery(lab) -> None:
    """aliases fan out (webmaster -> user1, user2); virtusertable maps postmaster@ to user1;
    user1, reached twice, gets one copy (as Postfix and Sendmail do)."""
    a = lab["163"]
    with smtplib.SMTP(a.ip, a.ports[25], timeout=10) as c:
        c.sendmail("x@example.org", ["webmaster@163.com", "postmaster@163.com"],
                   b"Subject: fan\r\n\r\nfan-out\r\n")  # fmt: skip
    wait_for(lambda: any(b"fan-out" in m for m in a.messages("user2@163.com")))
    wait_for(lambda: any(b"fan-out" in m for m in a.messages("user1@163.com")))
    assert sum(b"fan-out" in m for m in a.messages("user1@163.com")) == 1


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks missing")
@pytest.mark.parametrize("how", ["starttls-25", "tls-on-connect-465", "starttls-587"])
def test_swaks_tls_and_auth(lab, how: str) -> None:
    """Debian's swaks with TLS (libnet-ssleay-perl) and AUTH LOGIN/PLAIN, each port."""
    a = lab["163"]
    port = {"starttls-25": 25, "tls-on-connect-465": 465, "starttls-587": 587}[how]
    tls = ["--tls-on-connect"] if port == 465 else ["--tls"]
    out = subprocess.run(
        ["swaks", "--server", f"{a.ip}:{a.ports[port]}", *tls, "--auth", "LOGIN" if port != 587 else "PLAIN",
         "--auth-user", "user1@163.com", "--auth-password", "user1pass",
         "--from", "user1@163.com", "--to", "user2@163.com", "--header", f"Subject: swaks {how}",
         "--body", f"via swaks {how}", "--timeout", "20"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "<~  235 2.7.0 Authentication successful" in out.stdout
    assert "<~  250 2.0.0 Ok: queued as" in out.stdout
    wait_for(lambda: any(f"via swaks {how}".encode() in m for m in a.messages("user2@163.com")))


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks missing")
def test_swaks_cram_md5(tmp_path) -> None:
    """CRAM-MD5 is offered once a user has a CRAM-MD5 secret, and swaks authenticates with it."""
    lab = make_lab(tmp_path)
    a = lab["sina"]
    cli = Path(subprocess.run(["which", "mailappliance"], capture_output=True, text=True).stdout.strip() or
               str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "mailappliance"))  # fmt: skip
    add = subprocess.run(
        [str(cli), "--config", str(a.ini), "user", "add", "cram@sina.com", "--password-stdin", "--cram-md5"],
        input="crampass\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    a.start()
    try:
        out = subprocess.run(
            ["swaks", "--server", f"{a.ip}:{a.ports[25]}", "--auth", "CRAM-MD5", "--auth-user", "cram@sina.com",
             "--auth-password", "crampass", "--from", "cram@sina.com", "--to", "user3@sina.com",
             "--timeout", "20"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert "250-AUTH PLAIN LOGIN CRAM-MD5" in out.stdout
        assert "<-  235 2.7.0 Authentication successful" in out.stdout
    finally:
        a.stop()


def test_kill_9_after_250_message_still_delivered(tmp_path) -> None:
    """kill -9 right after a 250 (spool path: two mailboxes), restart: both copies delivered."""
    lab = make_lab(tmp_path)
    a = lab["163"].start()
    with smtplib.SMTP(a.ip, a.ports[25], timeout=10) as c:
        c.ehlo("x")
        c.mail("crash@example.org")
        c.rcpt("user1@163.com")
        c.rcpt("user2@163.com")
        code, text = c.data(b"Subject: crash\r\n\r\nsurvives kill -9\r\n")
        assert code == 250
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=10)
    queue_id = text.decode().rsplit(" ", 1)[1]
    a.start()
    try:
        for user in ("user1@163.com", "user2@163.com"):
            (msg,) = wait_for(lambda u=user: [m for m in a.messages(u) if b"survives kill -9" in m])
            assert f"id {queue_id}".encode() in msg
    finally:
        a.stop()


def test_client_named_by_verified_reverse_dns(lab) -> None:
    """A client from 127.0.1.1 is mail.163.com (PTR + A agree) in Received and the maillog."""
    a = lab["163"]
    with smtplib.SMTP(a.ip, a.ports[25], timeout=10, source_address=("127.0.1.1", 0)) as c:
        c.sendmail("x@example.org", ["user2@163.com"], b"Subject: rdns\r\n\r\nrdns check\r\n")
    (msg,) = wait_for(lambda: [m for m in a.messages("user2@163.com") if b"rdns check" in m])
    assert b"(mail.163.com [127.0.1.1])" in msg
    assert "connect from mail.163.com[127.0.1.1]" in (a.state / "maillog").read_text()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs for the appliance's state (root only; skipped elsewhere)."""
    mount_point = tmp_path / "var"
    mount_point.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                         capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {out.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_452_and_nothing_left(tmp_path, small_disk) -> None:
    """A message bigger than the free space: 452 4.3.1 after DATA, no file left anywhere;
    the next message that fits is delivered."""
    lab = make_lab(tmp_path)
    a = lab["163"]
    text = a.ini.read_text().replace("[smtp]\n", "[smtp]\nmin_free_space = 0\n", 1)
    a.ini.write_text(text)
    a.start()
    try:
        with smtplib.SMTP(a.ip, a.ports[25], timeout=30) as c:
            c.ehlo("x")
            big = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 2000  # about 2 MB
            # announced with SIZE=, it is refused at MAIL already
            with pytest.raises(smtplib.SMTPSenderRefused) as early:
                c.sendmail("x@example.org", ["user1@163.com"], big)
            assert early.value.smtp_code == 452
            # not announced: it fills the disk during DATA and is refused at its end
            assert c.mail("x@example.org")[0] == 250
            assert c.rcpt("user1@163.com")[0] == 250
            assert c.data(big) == (452, b"4.3.1 Insufficient system storage")
            maildir = a.maildir("user1@163.com")
            leftovers = [p for p in (a.state / "queue").rglob("*") if p.is_file()]
            leftovers = [p for p in leftovers if p.parent.name != "spare" or p.stat().st_size]
            leftovers += [p for p in maildir.rglob("*") if p.is_file()] if maildir.exists() else []
            assert leftovers == []
            c.sendmail("x@example.org", ["user1@163.com"], b"Subject: small\r\n\r\nfits\r\n")
        wait_for(lambda: any(b"fits" in m for m in a.messages("user1@163.com")))
    finally:
        a.stop()


def test_low_space_refused_at_mail(tmp_path, small_disk) -> None:
    """Below [smtp] min_free_space, MAIL itself gets 452 4.3.1 (the client keeps the message)."""
    lab = make_lab(tmp_path)
    a = lab["163"].start()
    try:
        with smtplib.SMTP(a.ip, a.ports[25], timeout=30) as c:
            c.ehlo("x")
            assert c.mail("x@example.org") == (452, b"4.3.1 Insufficient system storage")
    finally:
        a.stop()
