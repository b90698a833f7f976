"""The status page of a running appliance (lab 163 config, [web] admins = user1@163.com) over
real HTTPS with our CA verified: the login form's CSRF token and cookie, the session cookie's
flags, refusals (no token, another origin, wrong password, not an admin), the summary, the
queue actions (audited), logout, and the shared login throttle. The browser test is in
test_web_browser.py."""

from __future__ import annotations

import http.client
import json
import re
import smtplib
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest

from tests.integration.conftest import Appliance, make_lab, running, set_keys
from tests.integration.test_web_lab import verified

ADMIN, PASSWORD = "user1@163.com", "user1pass"


@pytest.fixture(scope="module")
def admin_lab(tmp_path_factory) -> Iterator[Appliance]:
    a = make_lab(tmp_path_factory.mktemp("webadmin"))["163"]
    # the throttle test's failures must not block the other tests for long
    set_keys(a.ini, "auth", max_failures=4, failure_window="4s", failure_delay="0s")
    with running({"163": a}):
        yield a


class Browser:
    """An HTTPS client that keeps cookies as a browser would (and shows their flags)."""

    def __init__(self, a: Appliance) -> None:
        self.a = a
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:  # fmt: skip
        c = http.client.HTTPSConnection(self.a.ip, self.a.ports[8443], context=verified(self.a),
                                        timeout=20)  # fmt: skip
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            h["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            text = r.read().decode("utf-8")
            for value in r.headers.get_all("Set-Cookie") or []:
                self.set_cookies.append(value)
                for name, morsel in SimpleCookie(value).items():
                    if morsel["max-age"] == "0":
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = morsel.value
            return r.status, {k.lower(): v for k, v in r.getheaders()}, text
        finally:
            c.close()

    def login_form(self) -> str:
        status, _, page = self.request("GET", "/login")
        assert status == 200, page
        return csrf_of(page)

    def log_in(self, user: str = ADMIN, password: str = PASSWORD) -> tuple[int, str]:
        token = self.login_form()
        status, headers, page = self.request(
            "POST", "/login", {"csrf": token, "user": user, "password": password}
        )
        return status, headers.get("location", page)


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, page
    return m.group(1)


def cookie_flags(set_cookie: str) -> set[str]:
    return {p.strip().split("=")[0].lower() for p in set_cookie.split(";")[1:]}


def audit(a: Appliance, **match: object) -> list[dict]:
    path = a.state / "audit.log"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [r for r in lines if all(r.get(k) == v for k, v in match.items())]


def wait_audit(a: Appliance, **match: object) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = audit(a, **match)
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no audit record {match}: {audit(a)}")


def test_without_a_session_the_page_sends_to_the_login_form(admin_lab) -> None:
    b = Browser(admin_lab)
    status, headers, _ = b.request("GET", "/")
    assert status == 303 and headers["location"] == "/login"
    status, headers, page = b.request("GET", "/login")
    assert status == 200 and 'type="password"' in page
    assert "script-src" not in headers["content-security-policy"]  # default-src 'none'
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    (login_cookie,) = [c for c in b.set_cookies if c.startswith("__Host-mailappliance-login=")]
    assert {"secure", "httponly", "samesite", "path"} <= cookie_flags(login_cookie)
    assert "SameSite=Strict" in login_cookie and "Domain" not in login_cookie


def test_login_refused_without_the_forms_token_or_from_another_origin(admin_lab) -> None:
    b = Browser(admin_lab)
    token = b.login_form()
    form = {"user": ADMIN, "password": PASSWORD}
    status, _, page = b.request("POST", "/login", form)
    assert status == 403 and "not sent by this page" in page
    status, _, _ = b.request("POST", "/login", {**form, "csrf": token[:-2] + "00"})
    assert status == 403
    status, _, _ = b.request(
        "POST", "/login", {**form, "csrf": token}, {"Origin": "https://evil.example"}
    )
    assert status == 403
    # the token is bound to this browser's login cookie: another browser cannot use it
    other = Browser(admin_lab)
    other.login_form()
    other.cookies["__Host-mailappliance-login"] = "someone-else"
    status, _, _ = other.request("POST", "/login", {**form, "csrf": token})
    assert status == 403
    assert "__Host-mailappliance" not in b.cookies


def test_wrong_password_and_non_admin_are_refused_and_logged(admin_lab) -> None:
    b = Browser(admin_lab)
    status, page = b.log_in(password="wrong-secret")
    assert status == 403 and "Wrong address or password" in page
    status, page = b.log_in(user="user2@163.com", password="user2pass")  # good, not an admin
    assert status == 403 and "Wrong address or password" in page
    assert "__Host-mailappliance" not in b.cookies
    r = wait_audit(admin_lab, kind="login_failed", component="webadmin", user="user2@163.com")
    assert r["client"] == "127.0.0.1"
    maillog = (admin_lab.state / "maillog").read_text()
    assert "webadmin: Login failed: user=<user1@163.com>, method=PLAIN, rip=127.0.0.1" in maillog
    assert "wrong-secret" not in maillog and "user2pass" not in maillog
    time.sleep(4.5)  # the failures age out of the throttle's window


def send_to_unreachable(a: Appliance) -> str:
    """A message for sina.com, whose appliance is not running here: it stays deferred (and a
    copy for user2@163.com, delivered at once)."""
    with smtplib.SMTP(a.ip, a.ports[587], local_hostname="client.test", timeout=20) as c:
        c.login(ADMIN, PASSWORD)
        c.sendmail(
            ADMIN, ["user3@sina.com", "user2@163.com"], b"Subject: stuck\r\n\r\nfor the queue\r\n"
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = list((a.state / "queue" / "deferred").glob("*.env"))
        if found:
            return found[0].stem
        time.sleep(0.2)
    raise AssertionError("the message was never deferred")


def test_admin_logs_in_sees_the_summary_and_acts_on_the_queue(admin_lab) -> None:
    a = admin_lab
    queue_id = send_to_unreachable(a)
    b = Browser(a)
    status, where = b.log_in()
    assert (status, where) == (303, "/"), where
    (session,) = [c for c in b.set_cookies if c.startswith("__Host-mailappliance=")]
    assert {"secure", "httponly", "samesite", "path"} <= cookie_flags(session)
    assert "SameSite=Strict" in session and len(b.cookies["__Host-mailappliance"]) >= 40
    assert "__Host-mailappliance-login" not in b.cookies  # spent
    r = wait_audit(a, kind="login", component="webadmin")
    assert r["user"] == ADMIN and r["client"] == "127.0.0.1"
    status, _, page = b.request("GET", "/")
    assert status == 200
    for heading in ("Services", "Queue", "Traffic", "Certificate", "DNS records", "Mailboxes"):
        assert f">{heading}</h2>" in page, heading
    assert f"imaps {a.ip}:{a.ports[993]}" in page, page
    assert "<td>user2@163.com</td>" in page, page
    assert "mail.163.com" in page and page.count("<svg") == 4
    assert queue_id in page and "1 deferred" in page
    csrf = csrf_of(page)
    # an action needs the session's token
    status, _, _ = b.request("POST", "/queue", {"action": "hold", "queue_id": queue_id})
    assert status == 403
    status, _, _ = b.request(
        "POST", "/queue", {"action": "hold", "queue_id": queue_id, "csrf": "x"}
    )
    assert status == 403
    status, _, text = b.request(
        "POST", "/queue", {"action": "explode", "queue_id": queue_id, "csrf": csrf}
    )
    assert status == 400 and "flush, hold, release, delete" in text
    status, _, text = b.request(
        "POST", "/queue", {"action": "hold", "queue_id": "../x", "csrf": csrf}
    )
    assert status == 400 and "10 hex digits" in text
    status, headers, _ = b.request(
        "POST", "/queue", {"action": "hold", "queue_id": queue_id, "csrf": csrf}
    )
    assert status == 303 and headers["location"] == "/#queue"
    r = wait_audit(a, kind="admin", component="webadmin", command="queue hold")
    assert r["actor"] == ADMIN and r["queue_id"] == queue_id and r["count"] == 1
    status, _, page = b.request("GET", "/")
    assert f"hold {queue_id}: 1 message(s)" in page and "1 held" in page
    status, _, page = b.request("GET", "/")
    assert "message(s)</p>" not in page  # the action's message is shown once
    b.request("POST", "/queue", {"action": "delete", "queue_id": queue_id, "csrf": csrf})
    wait_audit(a, kind="admin", component="webadmin", command="queue delete")
    status, _, page = b.request("GET", "/")
    assert queue_id not in page.split('id="queue"')[1].split('id="traffic"')[0]
    assert "0 active, 0 deferred, 0 held" in page
    # another browser cannot act with the token alone, nor a stolen cookie without it
    thief = Browser(a)
    status, _, _ = thief.request(
        "POST", "/queue", {"action": "flush", "queue_id": "ALL", "csrf": csrf}
    )
    assert status == 403
    status, headers, _ = b.request("POST", "/logout", {"csrf": csrf})
    assert status == 303 and headers["location"] == "/login"
    assert "__Host-mailappliance" not in b.cookies
    wait_audit(a, kind="logout", component="webadmin")
    b.cookies["__Host-mailappliance"] = session.split(";")[0].split("=", 1)[1]  # replayed
    status, headers, _ = b.request("GET", "/")
    assert status == 303 and headers["location"] == "/login"


def test_login_failures_are_throttled_like_smtps(admin_lab) -> None:
    """[auth] max_failures = 4: the fifth wrong password from the client gets 429, and so does
    the right one, until the window (4 s) passes; SMTP AUTH is blocked for it too."""
    a = admin_lab
    b = Browser(a)
    codes = [b.log_in(password=f"guess{i}")[0] for i in range(4)]
    assert codes == [403] * 4
    status, page = b.log_in()
    assert status == 429 and "Too many failed logins" in page
    with smtplib.SMTP(a.ip, a.ports[587], local_hostname="client.test", timeout=20) as c:
        c.starttls()
        with pytest.raises(smtplib.SMTPException):
            c.login(ADMIN, PASSWORD)
    wait_audit(a, kind="blocked")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        time.sleep(1)
        status, _ = b.log_in()
        if status == 303:
            break
    assert status == 303
