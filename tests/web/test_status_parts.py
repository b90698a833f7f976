"""The status page's parts without a server: the traffic history's minute rings, the SVG
charts, the admin sessions and the login form's CSRF token, and the page's escaping."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from appliance.interfaces import (
    CertificateState,
    DomainRecords,
    MailboxSize,
    QueuedItem,
    RecordCheck,
    ServiceState,
    Summary,
)
from appliance.web import pages
from appliance.web.charts import line_chart, nice_top
from appliance.web.history import History, series_of
from appliance.web.sessions import MAX_SESSIONS, Sessions, cookie, same_token

SVG = "{http://www.w3.org/2000/svg}"


class Clock:
    def __init__(self, t: float = 1_000_000 * 60.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ev(event: str, component: str = "smtpd", **fields: object) -> dict:
    return {"event": event, "log_namespace": f"mail.{component}", **fields}


def test_series_of_each_event_it_plots() -> None:
    assert series_of(ev("queued", "queue")) == "accepted"
    assert series_of(ev("status", "local", status="sent")) == "delivered"
    assert series_of(ev("status", "smtp", status="deferred")) == "deferred"
    assert series_of(ev("status", "smtp", status="bounced")) == "bounced"
    assert series_of(ev("reject")) == "rejected"
    assert series_of(ev("reject", "imapd")) is None  # a connection turned away, not mail
    assert series_of(ev("auth")) == "logins"
    assert series_of(ev("login", "webadmin")) == "logins"
    assert series_of(ev("auth_failed", "pop3d")) == "login failures"
    assert series_of(ev("auth_failed", "auth")) is None  # the throttle's own events
    assert series_of(ev("connect")) is None


def test_history_counts_by_minute_and_forgets_after_a_day() -> None:
    clock = Clock()
    h = History(clock)
    h(ev("queued", "queue"))
    h(ev("queued", "queue"))
    clock.t += 60
    h(ev("queued", "queue"))
    assert h.last("accepted", 60)[-2:] == [2, 1] and sum(h.last("accepted", 60)) == 3
    clock.t += 14 * 60  # the quarter hours end at the current minute
    assert h.last("accepted", 1440, 15)[-2:] == [2, 1]
    assert sum(h.last("accepted", 1440, 15)) == 3 and len(h.last("accepted", 1440, 15)) == 96
    clock.t += 61 * 60
    assert sum(h.last("accepted", 60)) == 0 and sum(h.last("accepted", 1440)) == 3
    clock.t += 1440 * 60
    assert sum(h.last("accepted", 1440)) == 0
    h(ev("auth"))
    assert h.last("logins", 1) == [1]
    with pytest.raises(ValueError):
        h.last("logins", 1441)
    with pytest.raises(ValueError):
        h.last("logins", 60, 7)


def test_chart_is_svg_with_escaped_names_and_a_scale() -> None:
    assert [nice_top(v) for v in (0, 1, 3, 7, 10, 11, 999)] == [1, 1, 5, 10, 10, 20, 1000]
    svg = line_chart("Mail <last hour>", [("a&b", [0, 3, 7]), ("c", [1, 1, 1])], "an hour ago")
    root = ET.fromstring(svg)  # well-formed: the names were escaped
    assert root.get("aria-label") == "Mail <last hour>"
    assert root.find(f"{SVG}title").text == "Mail <last hour>"
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 2 and len(lines[0].get("points").split()) == 3
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "10" in texts and "a&b (10)" in texts and "an hour ago" in texts
    # the top point of the highest series touches the top of the plot
    ys = [float(p.split(",")[1]) for p in lines[0].get("points").split()]
    assert min(ys) == pytest.approx(10 + (200 - 10 - 50) * (1 - 7 / 10))


def test_sessions_expire_when_idle_or_old_and_end_at_logout() -> None:
    clock = Clock()
    sessions = Sessions(idle=600, lifetime=3600, clock=clock)
    s = sessions.create("admin@example.test")
    assert len(s.id) >= 40 and s.csrf != s.id
    clock.t += 599
    assert sessions.get(s.id) is s  # and its idle clock starts again
    clock.t += 599
    assert sessions.get(s.id) is s
    clock.t += 601
    assert sessions.get(s.id) is None and len(sessions) == 0
    s = sessions.create("admin@example.test")
    for _ in range(7):
        clock.t += 500
        assert sessions.get(s.id) is s
    clock.t += 200  # 3,700 s old, never idle
    assert sessions.get(s.id) is None
    s = sessions.create("admin@example.test")
    sessions.end(s.id)
    assert sessions.get(s.id) is None and sessions.get("") is None and sessions.get(None) is None


def test_sessions_are_bounded_oldest_first() -> None:
    sessions = Sessions(idle=600, clock=Clock())
    first = sessions.create("a@example.test")
    for _ in range(MAX_SESSIONS):
        sessions.create("b@example.test")
    assert len(sessions) == MAX_SESSIONS and sessions.get(first.id) is None


def test_login_token_bound_to_its_nonce_and_key() -> None:
    sessions, other = Sessions(idle=600), Sessions(idle=600)
    token = sessions.login_token("nonce-1")
    assert sessions.login_token_ok("nonce-1", token)
    assert not sessions.login_token_ok("nonce-2", token)
    assert not other.login_token_ok("nonce-1", token)  # another process's key
    assert not sessions.login_token_ok(None, token) and not sessions.login_token_ok("nonce-1", None)
    assert not sessions.login_token_ok("nonce-é", token)
    assert same_token("abc", "abc") and not same_token("abc", "abd") and not same_token("abc", None)


def test_cookie_flags() -> None:
    assert cookie("__Host-x", "v") == "__Host-x=v; Path=/; Secure; HttpOnly; SameSite=Strict"
    assert cookie("__Host-x", "", 0).endswith("; Max-Age=0")


def summary(**changes: object) -> Summary:
    evil = '<script>alert("x")</script>'
    values: dict = dict(
        now=10_000.0, running=True, pid=42, started=9_000.0,
        services=(ServiceState("smtp", True, ("smtp 127.0.1.1:25",)), ServiceState("pop3", False, ())),
        queue=(QueuedItem("0123456789", "deferred", 300, 9_990.0, evil, (evil,), evil, None, False),),
        certificate=CertificateState("/x/cert.pem", ("mail.example.test",), 10_000.0 + 86400 * 30, None),
        dns=(DomainRecords("example.test", (RecordCheck("example.test", "MX", "missing", "10 mail."),)),),
        mailboxes=(MailboxSize(f"{evil}@example.test", 3, 4096),),
        attention=(f"service pop3 is not running {evil}",),
    )  # fmt: skip
    values.update(changes)
    return Summary(**values)


def test_status_page_escapes_everything_from_outside() -> None:
    html = pages.status_page("mail.example.test", summary(), History(), "admin@example.test",
                             "tok\"en", None).decode()  # fmt: skip
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'value="tok&quot;en"' in html
    assert ">DOWN<" in html and "4.0K" in html and "missing" in html
    assert "Needs attention" in html and html.count("<svg") == 4
    # a deferred message has flush, hold, delete; a held one release and delete
    row = html.split("<code>0123456789</code>")[1].split("</tr>")[0]
    assert 'value="flush"' in row and 'value="hold"' in row and 'value="release"' not in row
    held = summary(
        queue=(QueuedItem("0123456789", "deferred", 300, 9_990.0, "", (), None, None, True),)
    )
    html = pages.status_page("h", held, History(), "a@b.test", "t", "done it").decode()
    row = html.split("<code>0123456789</code>")[1].split("</tr>")[0]
    assert 'value="release"' in row and 'value="flush"' not in row and "MAILER-DAEMON" in row
    assert (
        '<p class="message" role="status">done it</p>' in html
        and "0 active, 1 deferred, 1 held" in html
    )
