"""The SPF filter: what each result does at MAIL FROM as configured (tag by default; 550
5.7.23 / 5.7.24, 451 4.7.24 when asked), logged-in users not checked, and at the end of the
data Received-SPF, the Authentication-Results part and the result DMARC reads."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from appliance.filters.base import MessageCheck
from appliance.filters.body import SpillBuffer
from appliance.filters.spf import SPF
from appliance.filters.spf_filter import SPFFilter, SPFSettings
from appliance.interfaces import Envelope, Recipient, SessionFacts
from tests.filters.test_spf import BASE, TableResolver


def facts(ip: str, auth_user: str | None = None) -> SessionFacts:
    return SessionFacts("s1", ip, None, "client.test", None, auth_user)


def spf_filter(resolver: TableResolver, **settings: str) -> SPFFilter:
    return SPFFilter(SPF(resolver), SPFSettings(**settings), "mail.sina.test")


async def at_mail(f: SPFFilter, ip: str, sender: str, auth_user: str | None = None):
    return await defer.maybeDeferred(f.sender, facts(ip, auth_user), sender)


@pytest.mark.parametrize(
    ("ip", "sender", "settings", "code", "enhanced"),
    [
        ("127.0.9.9", "a@163.com", {}, None, None),  # fail, tag only by default
        ("127.0.9.9", "a@163.com", {"on_fail": "reject"}, 550, "5.7.23"),
        ("127.0.9.9", "a@sina.com", {"on_fail": "reject"}, None, None),  # softfail
        ("127.0.9.9", "a@sina.com", {"on_softfail": "reject"}, 550, "5.7.23"),
        ("127.0.1.1", "a@bad.test", {"on_permerror": "reject"}, 550, "5.7.24"),
        ("127.0.1.1", "a@tempfail.test", {"on_temperror": "tempfail"}, 451, "4.7.24"),
        ("127.0.1.1", "a@tempfail.test", {}, None, None),
        ("127.0.1.1", "a@163.com", {"on_fail": "reject"}, None, None),  # pass
    ],
)
@pytest_twisted.ensureDeferred
async def test_spf_filter_action_per_result(ip, sender, settings, code, enhanced) -> None:
    """Each result does what its on_* setting says, with RFC 7372's codes."""
    v = await at_mail(spf_filter(TableResolver(BASE), **settings), ip, sender)
    assert v.code == code
    if enhanced:
        assert v.text.startswith(enhanced + " ")


@pytest_twisted.ensureDeferred
async def test_spf_filter_logged_in_users_not_checked() -> None:
    """Submission from a logged-in user: no lookup at all, and no header at the end."""
    resolver = TableResolver(BASE)
    f = spf_filter(resolver, on_fail="reject")
    v = await at_mail(f, "127.0.9.9", "a@163.com", auth_user="a@163.com")
    assert v.ok and resolver.asked == []
    env = Envelope(
        "a@163.com", (Recipient("b@sina.com"),), "127.0.9.9", "client.test", auth_user="a@163.com"
    )
    assert not f.wants_body(env)


@pytest_twisted.ensureDeferred
async def test_spf_filter_end_of_data_headers_and_result_from_mail_time() -> None:
    """The result found at MAIL is reused (no second lookup) for Received-SPF, the
    Authentication-Results part and the results DMARC reads."""
    resolver = TableResolver(BASE)
    f = spf_filter(resolver)
    await at_mail(f, "127.0.1.1", "user1@163.com")
    asked = len(resolver.asked)
    env = Envelope("user1@163.com", (Recipient("u@sina.test"),), "127.0.1.1", "client.test")
    check = MessageCheck(env, "Q1", SpillBuffer(Path(tempfile.gettempdir())))
    v = await defer.maybeDeferred(f.message, check)
    assert len(resolver.asked) == asked
    assert v.headers == (
        "Received-SPF: pass (mail.sina.test: matched mx of 163.com)\r\n"
        '\tclient-ip=127.0.1.1; envelope-from="user1@163.com"; helo=client.test;',
    )
    assert check.auth_results == ["spf=pass smtp.mailfrom=user1@163.com"]
    assert check.results == {"spf": "pass", "spf.domain": "163.com"}
    # the next message of the same sender from the same client: no lookup at MAIL either
    v = await at_mail(f, "127.0.1.1", "user1@163.com")
    assert v.ok and len(resolver.asked) == asked
    await at_mail(f, "127.0.1.1", "user2@163.com")  # another sender is checked
    assert len(resolver.asked) > asked


@pytest_twisted.ensureDeferred
async def test_spf_filter_trusted_hosts_not_checked() -> None:
    """A client the access map lets relay (one of our hosts) is not checked either."""
    resolver = TableResolver(BASE)
    f = spf_filter(resolver, on_fail="reject")
    v = await defer.maybeDeferred(
        f.sender, SessionFacts("s", "127.0.9.9", None, "x", None, None, trusted=True), "a@163.com"
    )
    assert v.ok and resolver.asked == []
