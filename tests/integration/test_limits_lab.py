"""Abuse limits on a running appliance over real SMTP: greylisting (450 4.2.0, then the
retry after the delay is delivered), and an AUTH brute force blocked after N failures and
let in again once the block time has passed."""

from __future__ import annotations

import base64
import smtplib
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Appliance, make_lab, running, set_keys


@pytest.fixture(scope="module")
def limited(tmp_path_factory) -> Iterator[Appliance]:
    a = make_lab(tmp_path_factory.mktemp("limits"))["163"]
    set_keys(a.ini, "limits", greylist="yes", greylist_delay="2s")
    set_keys(a.ini, "auth", max_failures=2, failure_window="3s", failure_delay="0s")
    with running({"163": a}):
        yield a


def test_limits_lab_greylisted_then_retry_delivered(limited: Appliance) -> None:
    with smtplib.SMTP(limited.ip, limited.ports[25], local_hostname="client.test", timeout=20) as c:
        c.ehlo()
        c.mail("friend@sina.com")
        code, text = c.rcpt("user1@163.com")
        assert code == 450 and text.startswith(b"4.2.0 Greylisted")
    time.sleep(2.2)
    with smtplib.SMTP(limited.ip, limited.ports[25], local_hostname="client.test", timeout=20) as c:
        c.sendmail("friend@sina.com", ["user1@163.com"], b"Subject: grey\r\n\r\nhello\r\n")
    deadline = time.monotonic() + 20
    while not any(b"Subject: grey" in m for m in limited.messages("user1@163.com")):
        assert time.monotonic() < deadline, "not delivered"
        time.sleep(0.05)


def auth(a: Appliance, password: str) -> int:
    with smtplib.SMTP(a.ip, a.ports[587], local_hostname="client.test", timeout=20) as c:
        c.ehlo()
        token = base64.b64encode(f"\0user2@163.com\0{password}".encode()).decode()
        return c.docmd("AUTH", f"PLAIN {token}")[0]


def test_limits_lab_brute_force_blocked_then_released(limited: Appliance) -> None:
    assert auth(limited, "wrong1") == 535
    assert auth(limited, "wrong2") == 535
    code = auth(limited, "user2pass")  # the right password, but blocked now
    assert code in (421, 454), code
    time.sleep(3.3)
    assert auth(limited, "user2pass") == 235
