"""A DNS block list served by the lab's own DNS: 163's zone lists 127.0.0.1 under
bl.163.com, sina asks it at connect ([dnsbl] zones = bl.163.com): a client on 127.0.0.1 is
turned away at the greeting, 554 5.7.1 naming the list, while mail relayed by mail.163.com
(127.0.1.1, not listed) still arrives."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from tests.lab.conftest import (
    Appliance,
    lab_with,
    running,
    submit,
    token,
    wait_line,
    wait_message,
)

LISTING = "1.0.0.127.bl    IN A    127.0.0.2\n"


@pytest.fixture(scope="module")
def bl_lab(tmp_path_factory) -> Iterator[dict[str, Appliance]]:
    lab = lab_with(
        tmp_path_factory.mktemp("dnsbl"),
        keys={"sina": {"dnsbl": {"zones": "bl.163.com"}}},
        zone_records={"163": LISTING},
    )
    with running(lab) as apps:
        yield apps


def test_dnsbl_lab_listed_client_refused_at_greeting(bl_lab) -> None:
    sina = bl_lab["sina"]
    with pytest.raises(smtplib.SMTPConnectError) as e:
        smtplib.SMTP(sina.ip, sina.ports[25], local_hostname="client.test", timeout=10)
    assert e.value.smtp_code == 554
    assert (
        e.value.smtp_error
        == b"5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.163.com"
    )
    wait_line(sina, r"reject: CONNECT from unknown\[127\.0\.0\.1\]: 554 5\.7\.1 .*bl\.163\.com")


def test_dnsbl_lab_unlisted_relay_still_delivered(bl_lab) -> None:
    tok = token()
    submit(bl_lab["163"], "user1@163.com", ["user3@sina.com"], tok)
    assert wait_message(bl_lab["sina"], "user3@sina.com", tok)
