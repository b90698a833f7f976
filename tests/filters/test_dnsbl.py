"""DNSBL/DNSWL at connect: a listed client refused 554 5.7.1 naming the list (or tagged),
an allow-listed one never blocked, IPv6 nibbles reversed, a list that fails not blocking."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest_twisted
from twisted.internet import defer

from appliance.filters.base import MessageCheck
from appliance.filters.body import SpillBuffer
from appliance.filters.dnsbl import DNSBLFilter, query_name
from appliance.interfaces import Envelope, LookupFailed, Recipient, SessionFacts
from tests.filters.test_spf import TableResolver

TABLE = {
    ("A", "9.0.0.127.bl.test"): ["127.0.0.2"],
    ("A", "9.0.0.127.wl.test"): [],
    ("A", "8.0.0.127.bl.test"): ["127.0.0.2"],
    ("A", "8.0.0.127.wl.test"): ["127.0.0.5"],
    ("A", "7.0.0.127.bl.test"): ["192.0.2.1"],  # not a 127/8 answer: no listing
}


def facts(ip: str) -> SessionFacts:
    return SessionFacts("s", ip, None, "", None, None)


def test_dnsbl_query_names() -> None:
    assert query_name("192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    assert query_name("2001:db8::1", "bl.test") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
    )


@pytest_twisted.ensureDeferred
async def test_dnsbl_listed_refused_allowlisted_and_unlisted_pass() -> None:
    f = DNSBLFilter(TableResolver(TABLE), ["bl.test"], ["wl.test"], "reject")
    v = await f.connect(facts("127.0.0.9"))
    assert v.code == 554
    assert v.text == "5.7.1 Service unavailable; client [127.0.0.9] blocked using bl.test"
    assert (await f.connect(facts("127.0.0.8"))).ok  # on the allow list
    assert (await f.connect(facts("127.0.0.7"))).ok  # answer outside 127/8
    assert (await f.connect(facts("127.0.0.6"))).ok  # NXDOMAIN


@pytest_twisted.ensureDeferred
async def test_dnsbl_tag_mode_header_at_end_of_data() -> None:
    f = DNSBLFilter(TableResolver(TABLE), ["bl.test"], [], "tag")
    assert (await f.connect(facts("127.0.0.9"))).ok
    env = Envelope("a@b.test", (Recipient("u@c.test"),), "127.0.0.9", "x")
    check = MessageCheck(env, "Q", SpillBuffer(Path(tempfile.gettempdir())))
    v = await f.message(check)
    assert v.headers == ("X-DNSBL: 127.0.0.9 listed in bl.test",)


@pytest_twisted.ensureDeferred
async def test_dnsbl_list_that_fails_does_not_block() -> None:
    class Down(TableResolver):
        def lookup_a(self, name):
            return defer.fail(LookupFailed("timeout"))

    f = DNSBLFilter(Down({}), ["bl.test"], [], "reject")
    assert (await f.connect(facts("127.0.0.9"))).ok


@pytest_twisted.ensureDeferred
async def test_dnsbl_trusted_host_never_blocked() -> None:
    f = DNSBLFilter(TableResolver(TABLE), ["bl.test"], [], "reject")
    assert (await f.connect(SessionFacts("s", "127.0.0.9", None, "", None, None, trusted=True))).ok


@pytest_twisted.ensureDeferred
async def test_dnsbl_listing_asked_again_after_a_while(monkeypatch) -> None:
    """What a list said is kept for the end of the data, not for ever: delisted is seen."""
    import time as time_module

    clock = [1000.0]
    monkeypatch.setattr(time_module, "monotonic", lambda: clock[0])
    table = dict(TABLE)
    f = DNSBLFilter(TableResolver(table), ["bl.test"], [], "reject")
    assert (await f.connect(facts("127.0.0.9"))).code == 554
    f.resolver.table.pop(("A", "9.0.0.127.bl.test"))  # delisted
    assert (await f.connect(facts("127.0.0.9"))).code == 554  # kept a little while
    clock[0] += 301
    assert (await f.connect(facts("127.0.0.9"))).ok
