"""SPF through the lab's own DNS: each appliance publishes `v=spf1 mx -all` for its domain
([dns] spf), and sina checks mail arriving from 163 against it. Relayed by mail.163.com:
pass; the same domain from another address: fail, refused 550 5.7.23 where [spf] on_fail =
reject (sina here); a subdomain whose zone record says ~all: softfail, tagged and accepted."""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Iterator

import pytest

from tests.lab.conftest import (
    Appliance,
    lab_with,
    message,
    running,
    submit,
    token,
    wait_message,
)

SOFT = 'soft    IN TXT  "v=spf1 ~all"\nsoft    IN MX   10 mail\n'


@pytest.fixture(scope="module")
def spf_lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    lab = lab_with(
        tmp_path_factory.mktemp("spf"),
        keys={"sina": {"spf": {"on_fail": "reject"}}},
        zone_records={"163": SOFT},
    )
    with running(lab) as apps:
        yield apps


def header_block(data: bytes) -> str:
    return data.split(b"\r\n\r\n", 1)[0].decode()


def test_spf_lab_record_published_in_our_zone(spf_lab) -> None:
    """dig at mail.163.com: 163.com TXT is the configured SPF record."""
    a = spf_lab["163"]
    out = subprocess.run(
        [
            "dig",
            f"@{a.ip}",
            "-p",
            str(a.ports[53]),
            "+short",
            "+time=3",
            "+tries=1",
            "163.com",
            "TXT",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    assert '"v=spf1 mx -all"' in out, out


def test_spf_lab_relayed_by_163_passes_at_sina(spf_lab) -> None:
    """Mail relayed from mail.163.com (127.0.1.1, 163.com's MX): Received-SPF pass, and
    Authentication-Results says spf=pass for the sender."""
    tok = token()
    submit(spf_lab["163"], "user1@163.com", ["user3@sina.com"], tok)
    head = header_block(wait_message(spf_lab["sina"], "user3@sina.com", tok))
    assert (
        "Authentication-Results: mail.sina.com;\r\n\tspf=pass smtp.mailfrom=user1@163.com" in head
    )
    assert "Received-SPF: pass (mail.sina.com: matched mx of 163.com)" in head
    assert "client-ip=127.0.1.1;" in head


def test_spf_lab_forged_163_sender_refused_at_sina(spf_lab) -> None:
    """A 163.com sender from 127.0.0.1 (not 163.com's MX): SPF fail, and sina refuses it at
    MAIL FROM with 550 5.7.23."""
    sina = spf_lab["sina"]
    with smtplib.SMTP(sina.ip, sina.ports[25], local_hostname="client.test", timeout=10) as c:
        c.ehlo("client.test")
        code, text = c.mail("ceo@163.com")
    assert code == 550 and text.startswith(b"5.7.23 SPF validation failed: 163.com")


def test_spf_lab_softfail_tagged_and_accepted(spf_lab) -> None:
    """A sender domain whose record ends in ~all: softfail, accepted with the result."""
    sina = spf_lab["sina"]
    tok = token()
    with smtplib.SMTP(sina.ip, sina.ports[25], local_hostname="client.test", timeout=10) as c:
        c.sendmail(
            "x@soft.163.com", ["user3@sina.com"], message("x@soft.163.com", ["user3@sina.com"], tok)
        )
    head = header_block(wait_message(sina, "user3@sina.com", tok))
    assert "spf=softfail smtp.mailfrom=x@soft.163.com" in head
    assert "Received-SPF: softfail" in head
