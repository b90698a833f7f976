"""DKIM in the lab: `dkim init` on 163 makes its keys, 163's own DNS publishes them (long
RSA keys split into 255-byte strings), 163 signs what its users send, sina verifies both
signatures (rsa-sha256, ed25519-sha256) and says so in Authentication-Results; dkimpy's
own dkimverify command, asking 163's DNS through the system resolver path (dnspython and a
private resolv.conf, none of our DNS client code), accepts the signatures; `dkim rotate` on the running appliance publishes new keys within seconds and the
old ones stay published. With 163 publishing `v=DMARC1; p=reject`, its signed mail passes
DMARC at sina and a forged 163.com From: from elsewhere is refused 550 5.7.1."""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.conftest import (
    Appliance,
    dsns_for,
    lab_with,
    running,
    submit,
    token,
    wait_for,
    wait_message,
)

CLI = str(Path(sys.executable).parent / "mailappliance")


def port_53_free() -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", 53))
            except OSError:
                return False
    return True


def cli(a: Appliance, *args: str) -> str:
    r = subprocess.run(
        [CLI, "--config", str(a.ini), *args], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def dkim_lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    lab = lab_with(
        tmp_path_factory.mktemp("dkim"), keys={"163": {"dns": {"dmarc": "v=DMARC1; p=reject"}}}
    )
    a163 = lab["163"]
    # also on 127.0.0.1:53 (if free), where a system resolver (OpenDKIM's) can ask it
    listen = [
        line for line in a163.ini.read_text().splitlines() if line.startswith("listen = 127.0.1.1:")
    ][0]
    if port_53_free():
        text = a163.ini.read_text().replace(listen, listen + " 127.0.0.1:53", 1)
        a163.ini.write_text(text)
    out = cli(a163, "dkim", "init")
    assert "163.com: making an RSA 2048 and an Ed25519 key" in out
    with running(lab) as apps:
        yield apps


def dig_txt(a: Appliance, name: str) -> list[list[str]]:
    out = subprocess.run(
        ["dig", f"@{a.ip}", "-p", str(a.ports[53]), "+short", "+time=3", "+tries=1", name, "TXT"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return [re.findall(r'"([^"]*)"', line) for line in out.splitlines() if line]


def selectors(a: Appliance) -> dict[str, str]:
    """algorithm -> selector of the keys `dkim show` says are signing."""
    out = cli(a, "dkim", "show")
    return {
        m.group(2): m.group(1)
        for m in re.finditer(r"^  (\S+)\s+(\S+-sha256)\s.*signing$", out, re.M)
    }


def test_dkim_lab_keys_published_by_our_dns_split_into_strings(dkim_lab) -> None:
    """Both keys answer from 163's DNS; the RSA key's TXT comes in 255-byte strings that
    join to exactly what `dkim show` lists, and the key files are 0600."""
    a = dkim_lab["163"]
    sel = selectors(a)
    rsa = dig_txt(a, f"{sel['rsa-sha256']}._domainkey.163.com")
    assert len(rsa) == 1 and len(rsa[0]) >= 2 and all(len(s) <= 255 for s in rsa[0])
    joined = "".join(rsa[0])
    assert joined.startswith("v=DKIM1; k=rsa; p=")
    assert f'{sel["rsa-sha256"]}._domainkey.163.com. IN TXT "{joined}"' in cli(a, "dkim", "show")
    ed = dig_txt(a, f"{sel['ed25519-sha256']}._domainkey.163.com")
    assert ed and "".join(ed[0]).startswith("v=DKIM1; k=ed25519; p=")
    for key in (a.state / "dkim" / "163.com").glob("*.key"):
        assert key.stat().st_mode & 0o777 == 0o600


def test_dkim_lab_163_signs_sina_verifies_both(dkim_lab) -> None:
    """user1@163.com -> user3@sina.com: two DKIM-Signatures by 163.com, both pass at sina."""
    sel = selectors(dkim_lab["163"])
    tok = token()
    submit(dkim_lab["163"], "user1@163.com", ["user3@sina.com"], tok)
    data = wait_message(dkim_lab["sina"], "user3@sina.com", tok)
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    assert head.count("DKIM-Signature: v=1;") == 2
    for algorithm in ("rsa-sha256", "ed25519-sha256"):
        assert (
            f"dkim=pass header.d=163.com header.s={sel[algorithm]} header.a={algorithm}" in head
        ), head


DKIMVERIFY = str(Path(sys.executable).parent / "dkimverify")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare missing")
def test_dkim_lab_independent_verifier_accepts_our_signature(dkim_lab, tmp_path) -> None:
    """dkimverify, asking 163's DNS (on 127.0.0.1:53, through a private resolv.conf) for
    the key, verifies the message as sina received it, and refuses it once changed."""
    a163 = dkim_lab["163"]
    if "127.0.0.1:53" not in a163.ini.read_text():
        pytest.skip("127.0.0.1:53 was taken: no DNS for a system resolver to ask")
    tok = token()
    submit(a163, "user1@163.com", ["user3@sina.com"], tok)
    data = wait_message(dkim_lab["sina"], "user3@sina.com", tok)
    msg = tmp_path / "msg.eml"
    msg.write_bytes(data)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
    script = f"mount --bind {resolv} /etc/resolv.conf && exec {DKIMVERIFY} < {msg}"

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=30
        )

    r = verify()
    assert r.returncode == 0 and "signature ok" in r.stdout, (r.returncode, r.stdout, r.stderr)
    # and a changed body is caught by the same verifier (the check can fail)
    msg.write_bytes(data.replace(f"hello from the lab, {tok}".encode(), b"hello from elsewhere"))
    r = verify()
    assert r.returncode != 0 and "body hash mismatch" in r.stderr, (r.stdout, r.stderr)


def test_dkim_lab_rotate_publishes_new_keys_old_kept(dkim_lab) -> None:
    """`dkim rotate --publish-delay 0` on the running 163: the new selectors answer within
    seconds, mail is signed with them and verifies, the old ones are still published."""
    a = dkim_lab["163"]
    old = selectors(a)
    out = cli(a, "dkim", "rotate", "--publish-delay", "0", "--grace", "1d")
    assert "retiring" in out
    new = selectors(a)
    assert set(new.values()).isdisjoint(old.values())
    wait_for(
        lambda: dig_txt(a, f"{new['rsa-sha256']}._domainkey.163.com"),
        timeout=20,
        what="new key in DNS",
    )
    assert dig_txt(a, f"{old['rsa-sha256']}._domainkey.163.com")
    time.sleep(5.5)  # the signer reads the key state at most every 5 s
    tok = token()
    submit(a, "user1@163.com", ["user3@sina.com"], tok)
    head = wait_message(dkim_lab["sina"], "user3@sina.com", tok).split(b"\r\n\r\n", 1)[0].decode()
    assert f"dkim=pass header.d=163.com header.s={new['rsa-sha256']}" in head, head


def test_dmarc_lab_signed_mail_passes(dkim_lab) -> None:
    """163's own signed mail: DKIM aligned with From: 163.com, so dmarc=pass at sina."""
    tok = token()
    submit(dkim_lab["163"], "user1@163.com", ["user3@sina.com"], tok)
    head = wait_message(dkim_lab["sina"], "user3@sina.com", tok).split(b"\r\n\r\n", 1)[0]
    assert b"dmarc=pass (p=reject dis=none) header.from=163.com" in head, head


def test_dmarc_lab_forged_163_from_refused_at_sina(dkim_lab) -> None:
    """From: ceo@163.com sent to sina from 127.0.0.1 with another envelope sender: neither
    SPF nor DKIM aligned, 163.com says p=reject: 550 5.7.1 at the end of the data."""
    sina = dkim_lab["sina"]
    forged = (
        b"From: CEO <ceo@163.com>\r\nTo: user3@sina.com\r\nSubject: wire the money\r\n"
        b"Message-ID: <forged@client.test>\r\n\r\nPlease.\r\n"
    )
    with smtplib.SMTP(sina.ip, sina.ports[25], local_hostname="client.test", timeout=20) as c:
        with pytest.raises(smtplib.SMTPDataError) as e:
            c.sendmail("news@client.test", ["user3@sina.com"], forged)
    assert e.value.smtp_code == 550
    assert e.value.smtp_error == b"5.7.1 Email rejected per DMARC policy for 163.com"
    assert "filter dmarc: reject 550 5.7.1" in (sina.state / "maillog").read_text()


def test_dkim_lab_our_notices_signed_and_pass_dmarc(dkim_lab) -> None:
    """A delivery notice 163 sends (NOTIFY=SUCCESS from a sina user) comes from
    MAILER-DAEMON@mail.163.com: signed as 163.com, so with 163.com's p=reject it passes
    DMARC at sina (relaxed alignment) instead of being refused."""
    tok = token()
    submit(
        dkim_lab["sina"],
        "user3@sina.com",
        ["user1@163.com"],
        tok,
        rcpt_options=["NOTIFY=SUCCESS"],
    )
    dsn = wait_for(lambda: dsns_for(dkim_lab["sina"], "user3@sina.com", tok), what="the DSN")[0]
    head = dsn.split(b"\r\n\r\n", 1)[0]
    assert b"From: Mail Delivery System <MAILER-DAEMON@mail.163.com>" in head
    assert b"dkim=pass header.d=163.com" in head, head
    assert b"dmarc=pass (p=reject dis=none) header.from=mail.163.com" in head, head


def test_dkim_lab_trusted_host_mail_signed(dkim_lab) -> None:
    """A host 163's access map lets relay (Connect:163.com RELAY: a client whose reverse
    name is in 163.com, here from 127.0.1.1) sends without logging in: its mail is ours,
    so 163 signs it, and sina's DKIM and DMARC checks pass."""
    a = dkim_lab["163"]
    tok = token()
    data = (
        f"From: user1@163.com\r\nTo: user3@sina.com\r\nSubject: from a trusted host {tok}\r\n"
        f"Message-ID: <{tok}@163.com>\r\n\r\nhello from the lab, {tok}\r\n"
    ).encode()
    with smtplib.SMTP(
        a.ip, a.ports[25], local_hostname="app.163.com", source_address=("127.0.1.1", 0), timeout=20
    ) as c:
        c.sendmail("user1@163.com", ["user3@sina.com"], data)
    head = wait_message(dkim_lab["sina"], "user3@sina.com", tok).split(b"\r\n\r\n", 1)[0]
    assert b"dkim=pass header.d=163.com" in head, head
    assert b"dmarc=pass" in head
