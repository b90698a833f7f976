"""Real POP3 clients against a running appliance: Debian's fetchmail and mpop retrieve mail
that SMTP delivered, over POP3S (995) and POP3 + STLS (110), the certificate verified against
the appliance's CA and for the name mail.163.com (the tests dial 127.0.1.1, so each client is
told the name to expect), once leaving the mail on the server and once deleting it."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Appliance, make_lab, running

NAME = "mail.163.com"  # the name on the appliance's certificate
TIMEOUT = 30  # every client run is bounded
FETCHMAIL_USER, FETCHMAIL_PASS = "user2@163.com", "user2pass"
MPOP_USER, MPOP_PASS = "user1@163.com", "user1pass"

needs_fetchmail = pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail missing")
needs_mpop = pytest.mark.skipif(shutil.which("mpop") is None, reason="mpop missing")


@pytest.fixture(scope="module")
def client_lab(tmp_path_factory) -> Iterator[Appliance]:
    lab = make_lab(tmp_path_factory.mktemp("pop3clients"))
    with running({"163": lab["163"]}) as apps:
        yield apps["163"]


def ca_file(a: Appliance) -> Path:
    return a.state / "ca" / "ca.crt"


def deliver(a: Appliance, rcpt: str) -> str:
    """Submit a message with a unique token and a body line starting with a dot (sent
    dot-stuffed by smtplib, stored and served stuffed by the appliance); return the token once
    the message is in rcpt's Maildir."""
    tag = uuid.uuid4().hex
    ctx = ssl.create_default_context(cafile=str(ca_file(a)))
    ctx.check_hostname = False  # dialled by IP; the clients under test check the name
    with smtplib.SMTP(a.ip, a.ports[587], timeout=10) as c:
        c.starttls(context=ctx)
        c.login("user1@163.com", "user1pass")
        c.sendmail("user1@163.com", [rcpt], f"Subject: {tag}\r\n\r\n.leading dot\r\n{tag}\r\n")
    deadline = time.monotonic() + 10
    while not on_server(a, rcpt, tag):
        assert time.monotonic() < deadline, f"{tag} never reached {rcpt}'s Maildir"
        time.sleep(0.05)
    return tag


def on_server(a: Appliance, address: str, tag: str) -> bool:
    """Whether a message holding tag is in address's Maildir (new/ or cur/)."""
    for sub in ("new", "cur"):
        folder = a.maildir(address) / sub
        for p in folder.iterdir() if folder.is_dir() else ():
            try:
                if tag.encode() in p.read_bytes():
                    return True
            except FileNotFoundError:  # renamed between listing and reading
                continue
    return False


def retrieved(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()]


def assert_retrieved(messages: list[bytes], tag: str) -> None:
    """Exactly one retrieved message holds tag, and its dot line arrived un-stuffed."""
    mine = [m for m in messages if tag.encode() in m]
    assert len(mine) == 1, f"{len(mine)} retrieved messages hold {tag}: {messages!r}"
    assert re.search(rb"^\.leading dot\r?$", mine[0], re.M), mine[0]
    assert b"..leading dot" not in mine[0], mine[0]


def run(argv: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=home,
        env={**os.environ, "HOME": str(home), "LC_ALL": "C"},
    )


def output(p: subprocess.CompletedProcess[str]) -> str:
    return f"exit {p.returncode}\n{p.stdout}{p.stderr}"


class Fetchmail:
    """fetchmail with a private rc file (0600), idfile and pidfile, delivering each message
    through an MDA that writes it to its own file in self.out."""

    def __init__(self, a: Appliance, home: Path) -> None:
        self.a, self.home = a, home
        self.out = home / "out"
        self.out.mkdir(parents=True)

    def __call__(
        self, *, port: int, tls: str, keep: bool, commonname: str = NAME
    ) -> subprocess.CompletedProcess[str]:
        rc = self.home / "fetchmailrc"
        rc.write_text(
            f"poll {self.a.ip} with proto POP3 port {port} timeout 20\n"
            f'  user "{FETCHMAIL_USER}" there with password "{FETCHMAIL_PASS}"\n'
            f'  {tls} sslcertck sslcertfile "{ca_file(self.a)}" sslcommonname "{commonname}"\n'
            f"  {'keep' if keep else 'no keep flush'}\n"
            f"  mda \"cat > '{self.out}/msg.$$'\"\n"
        )
        rc.chmod(0o600)
        argv = ["fetchmail", "--nodetach", "--nosyslog", "-v", "-f", str(rc)]
        argv += ["-i", str(self.home / "fetchids"), "--pidfile", str(self.home / "pid")]
        return run(argv, self.home)


class Mpop:
    """mpop with a private config (0600) and UIDLS file, delivering into a Maildir."""

    def __init__(self, a: Appliance, home: Path) -> None:
        self.a, self.home = a, home
        self.out = home / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (self.out / sub).mkdir(parents=True)

    def __call__(
        self, *, port: int, starttls: bool, keep: bool, host_override: str = NAME
    ) -> subprocess.CompletedProcess[str]:
        conf = self.home / "mpoprc"
        conf.write_text(
            "account lab\n"
            f"host {self.a.ip}\nport {port}\ntimeout 20\n"
            f"user {MPOP_USER}\npassword {MPOP_PASS}\nauth user\n"
            f"tls on\ntls_starttls {'on' if starttls else 'off'}\n"
            f"tls_trust_file {ca_file(self.a)}\ntls_host_override {host_override}\n"
            f"delivery maildir {self.out}\nuidls_file {self.home / 'uidls'}\n"
            f"keep {'on' if keep else 'off'}\n"
            "account default : lab\n"
        )
        conf.chmod(0o600)
        return run(["mpop", "-d", "-C", str(conf)], self.home)


@needs_fetchmail
def test_fetchmail_pop3s_keep_then_no_keep_retrieves_then_deletes(client_lab, tmp_path) -> None:
    """fetchmail over POP3S (sslcertck, mail.163.com) keeps mail, skips it next, then deletes."""
    a = client_lab
    fetch = Fetchmail(a, tmp_path)
    first = deliver(a, FETCHMAIL_USER)
    p = fetch(port=a.ports[995], tls="ssl", keep=True)
    assert p.returncode == 0, output(p)  # 0: mail was retrieved
    assert_retrieved(retrieved(fetch.out), first)
    assert on_server(a, FETCHMAIL_USER, first)
    p = fetch(port=a.ports[995], tls="ssl", keep=True)
    assert p.returncode == 1, output(p)  # 1: no new mail, the UIDL is the same
    assert len(retrieved(fetch.out)) == 1
    second = deliver(a, FETCHMAIL_USER)
    p = fetch(port=a.ports[995], tls="ssl", keep=False)
    assert p.returncode == 0, output(p)
    assert_retrieved(retrieved(fetch.out), second)
    assert not on_server(a, FETCHMAIL_USER, first), output(p)
    assert not on_server(a, FETCHMAIL_USER, second), output(p)


@needs_fetchmail
def test_fetchmail_stls_no_keep_retrieves_and_deletes(client_lab, tmp_path) -> None:
    """fetchmail on 110 with sslproto tls1.2+ (STLS required, sslcertck) retrieves and deletes."""
    a = client_lab
    fetch = Fetchmail(a, tmp_path)
    tag = deliver(a, FETCHMAIL_USER)
    p = fetch(port=a.ports[110], tls='sslproto "tls1.2+"', keep=False)
    assert p.returncode == 0, output(p)
    assert "POP3> STLS" in output(p) and "upgrade to TLS succeeded" in output(p), output(p)
    assert_retrieved(retrieved(fetch.out), tag)
    assert not on_server(a, FETCHMAIL_USER, tag), output(p)


@needs_fetchmail
def test_fetchmail_pop3s_other_name_refused_mail_kept(client_lab, tmp_path) -> None:
    """fetchmail's sslcertck refuses the certificate for another expected name; mail stays."""
    a = client_lab
    fetch = Fetchmail(a, tmp_path)
    tag = deliver(a, FETCHMAIL_USER)
    p = fetch(port=a.ports[995], tls="ssl", keep=False, commonname="pop.sina.com")
    assert p.returncode == 2, output(p)  # 2: socket/TLS error
    assert "hostname mismatch" in output(p)
    assert retrieved(fetch.out) == []
    assert on_server(a, FETCHMAIL_USER, tag)
    p = fetch(port=a.ports[995], tls="ssl", keep=False)  # leave the mailbox empty
    assert p.returncode == 0, output(p)


@needs_mpop
def test_mpop_pop3s_keep_then_keep_off_retrieves_then_deletes(client_lab, tmp_path) -> None:
    """mpop over POP3S (CA and mail.163.com verified) keeps mail, skips it next, then deletes."""
    a = client_lab
    mpop = Mpop(a, tmp_path)
    first = deliver(a, MPOP_USER)
    p = mpop(port=a.ports[995], starttls=False, keep=True)
    assert p.returncode == 0, output(p)
    assert_retrieved(retrieved(mpop.out), first)
    assert on_server(a, MPOP_USER, first)
    p = mpop(port=a.ports[995], starttls=False, keep=True)
    assert p.returncode == 0, output(p)
    assert "new: no messages" in output(p), output(p)
    assert len(retrieved(mpop.out)) == 1
    second = deliver(a, MPOP_USER)
    p = mpop(port=a.ports[995], starttls=False, keep=False)
    assert p.returncode == 0, output(p)
    assert_retrieved(retrieved(mpop.out), second)
    assert not on_server(a, MPOP_USER, first), output(p)
    assert not on_server(a, MPOP_USER, second), output(p)


@needs_mpop
def test_mpop_stls_keep_off_retrieves_and_deletes(client_lab, tmp_path) -> None:
    """mpop on 110 with tls_starttls on (CA and name verified) retrieves and deletes."""
    a = client_lab
    mpop = Mpop(a, tmp_path)
    tag = deliver(a, MPOP_USER)
    p = mpop(port=a.ports[110], starttls=True, keep=False)
    assert p.returncode == 0, output(p)
    assert "--> STLS" in output(p) and "<-- +OK Begin TLS" in output(p), output(p)
    assert_retrieved(retrieved(mpop.out), tag)
    assert not on_server(a, MPOP_USER, tag), output(p)


@needs_mpop
def test_mpop_pop3s_other_name_refused_mail_kept(client_lab, tmp_path) -> None:
    """mpop refuses the certificate when tls_host_override names another host; mail stays."""
    a = client_lab
    mpop = Mpop(a, tmp_path)
    tag = deliver(a, MPOP_USER)
    p = mpop(port=a.ports[995], starttls=False, keep=False, host_override="pop.sina.com")
    assert p.returncode != 0, output(p)
    assert "name in the certificate does not match" in output(p)
    assert retrieved(mpop.out) == []
    assert on_server(a, MPOP_USER, tag)
    p = mpop(port=a.ports[995], starttls=False, keep=False)  # leave the mailbox empty
    assert p.returncode == 0, output(p)
