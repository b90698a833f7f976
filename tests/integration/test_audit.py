"""The audit log (<state_dir>/audit.log, JSON lines) of a running appliance: a line for a
good and a failed login, a client block, a policy rejection, a filter verdict, and admin
actions, from the appliance (queue hold over the control socket) and from the admin command
(user add, dkim init); never a password."""

from __future__ import annotations

import base64
import json
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.audit import AuditLog
from tests.integration.conftest import Appliance, make_lab, running, set_keys

CLI = str(Path(sys.executable).parent / "mailappliance")


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> Iterator[Appliance]:
    a = make_lab(tmp_path_factory.mktemp("audit"))["163"]
    set_keys(a.ini, "auth", max_failures=3)
    with running({"163": a}):
        yield a


def records(a: Appliance, **match: object) -> list[dict]:
    path = a.state / "audit.log"
    if not path.exists():
        return []
    out = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in out if all(r.get(k) == v for k, v in match.items())]


def wait_record(a: Appliance, timeout: float = 20, **match: object) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = records(a, **match)
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"no audit record {match}: {records(a)}")


def auth(a: Appliance, user: str, password: str) -> int:
    with smtplib.SMTP(a.ip, a.ports[587], local_hostname="client.test", timeout=20) as c:
        c.ehlo()
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        code, _ = c.docmd("AUTH", f"PLAIN {token}")
        return code


def test_audit_logins_good_and_failed_then_block(audited: Appliance) -> None:
    assert auth(audited, "user1@163.com", "user1pass") == 235
    r = wait_record(audited, kind="login", component="smtpd")
    assert r["sasl_username"] == "user1@163.com" and r["peer"] == "127.0.0.1"
    assert "time" in r and r["time"].endswith("+00:00")
    for _ in range(3):
        auth(audited, "user2@163.com", "wrong-secret")
    r = wait_record(audited, kind="login_failed")
    assert r["sasl_username"] == "user2@163.com"
    wait_record(audited, kind="blocked")
    text = (audited.state / "audit.log").read_text()
    assert "wrong-secret" not in text and "user1pass" not in text


def test_audit_policy_rejection_and_filter_verdict(audited: Appliance) -> None:
    with smtplib.SMTP(audited.ip, audited.ports[25], local_hostname="client.test", timeout=20) as c:
        c.ehlo()
        c.mail("someone@example.org")
        code, _ = c.rcpt("nobody@elsewhere.example")  # relaying denied
        assert code >= 500
        c.rset()
        c.sendmail("friend@sina.com", ["user1@163.com"], b"Subject: hi\r\n\r\nhello\r\n")
    r = wait_record(audited, kind="rejected", stage="RCPT")
    assert r["rcpt"] == "nobody@elsewhere.example" and r["code"] >= 500
    r = wait_record(audited, kind="filter_verdict", filter="spf")
    assert r["queue_id"] and r["action"] in ("accept", "tag")


def test_audit_admin_actions_from_cli_and_control_socket(audited: Appliance) -> None:
    r = subprocess.run(
        [CLI, "--config", str(audited.ini), "user", "add", "user9@163.com", "--password-stdin"],
        input="secret9\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    rec = wait_record(audited, kind="admin", command="user add")
    assert rec["target"] == "user9@163.com" and rec["actor"] and rec["component"] == "cli"
    subprocess.run(
        [CLI, "--config", str(audited.ini), "dkim", "init"],
        check=True,
        timeout=60,
        capture_output=True,
    )
    assert wait_record(audited, kind="admin", command="dkim init")["target"] == "163.com"
    subprocess.run(
        [CLI, "--config", str(audited.ini), "queue", "hold", "ALL"],
        check=True,
        timeout=60,
        capture_output=True,
    )
    rec = wait_record(audited, kind="admin", command="queue hold")
    assert rec["component"] == "control" and rec["target"] == "ALL"
    cli = [CLI, "--config", str(audited.ini)]
    steps = [
        (["user", "passwd", "user9@163.com", "--password-stdin"], "user passwd", "user9@163.com"),
        (["user", "del", "user9@163.com"], "user del", "user9@163.com"),
        (["dkim", "rotate", "--publish-delay", "0"], "dkim rotate", "163.com"),
        (
            ["ca", "issue", "--cn", "pop3.163.com", "--key-out", str(audited.state / "k.pem")]
            + ["--cert-out", str(audited.state / "c.pem")],
            "ca issue",
            "pop3.163.com",
        ),
        (["queue", "delete", "ALL"], "queue delete", "ALL"),
    ]
    for args, command, target in steps:
        r = subprocess.run(
            cli + args, input="secret10\n", capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, (args, r.stderr)
        assert wait_record(audited, kind="admin", command=command)["target"] == target
    text = (audited.state / "audit.log").read_text()
    assert "secret9" not in text and "secret10" not in text


def test_audit_log_keeps_only_listed_fields(tmp_path) -> None:
    """Whatever an event carries, only the listed fields reach the file."""
    log = AuditLog(tmp_path / "audit.log")
    log.open()
    log(
        {
            "log_namespace": "mail.smtpd",
            "event": "auth_failed",
            "log_time": 1796000000.0,
            "peer": "192.0.2.7",
            "sasl_username": "u@163.test",
            "password": "hunter2",
            "log_format": "x",
        }
    )
    log({"log_namespace": "mail.smtpd", "event": "connect", "peer": "192.0.2.7"})  # not audited
    log.close()
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec == {
        "time": "2026-11-30T00:53:20.000+00:00",
        "kind": "login_failed",
        "component": "smtpd",
        "event": "auth_failed",
        "peer": "192.0.2.7",
        "sasl_username": "u@163.test",
    }
