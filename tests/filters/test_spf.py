"""SPF's check_host() (RFC 7208) over a resolver answering from a table: every mechanism,
qualifiers, include/redirect, macros, and the lookup limits that end in permerror."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from appliance.filters.spf import SPF
from appliance.interfaces import LookupFailed, NoSuchDomain


class TableResolver:
    """The Resolver seam from a dict: (type, name) -> records; 'SERVFAIL' fails the lookup;
    a name not in the table at all is NXDOMAIN."""

    def __init__(self, table: dict) -> None:
        self.table = table
        self.asked: list[tuple[str, str]] = []

    def _get(self, kind: str, name: str):
        self.asked.append((kind, name))
        value = self.table.get((kind, name))
        if value == "SERVFAIL":
            return defer.fail(LookupFailed(f"{name}: SERVFAIL"))
        if value is None:
            if any(n == name for _k, n in self.table):
                return defer.succeed([])
            return defer.fail(NoSuchDomain(name))
        return defer.succeed(list(value))

    def lookup_txt(self, name):
        return self._get("TXT", name)

    def lookup_a(self, name):
        return self._get("A", name)

    def lookup_aaaa(self, name):
        return self._get("AAAA", name)

    def lookup_mx(self, name):
        return self._get("MX", name)

    def lookup_ptr(self, ip):
        return self._get("PTR", ip)


def txt(record: str) -> list[bytes]:
    return [record.encode()]


BASE = {
    ("TXT", "163.com"): txt("v=spf1 mx -all"),
    ("MX", "163.com"): [(10, "mail.163.com")],
    ("A", "mail.163.com"): ["127.0.1.1"],
    ("TXT", "sina.com"): txt("v=spf1 ip4:127.0.1.4 include:_spf.sina.com ~all"),
    ("TXT", "_spf.sina.com"): txt("v=spf1 ip4:127.0.2.0/24 ip6:2001:db8::/32 -all"),
    ("TXT", "soft.test"): txt("v=spf1 a:mail.soft.test ?mx ~all"),
    ("A", "mail.soft.test"): ["127.0.3.3"],
    ("MX", "soft.test"): [(10, "mail.soft.test")],
    ("TXT", "redir.test"): txt("v=spf1 redirect=163.com"),
    ("TXT", "nothing.test"): [b"some other text"],
    ("TXT", "two.test"): [b"v=spf1 -all", b"v=spf1 +all"],
    ("TXT", "bad.test"): txt("v=spf1 ipv4:1.2.3.4 -all"),
    ("TXT", "tempfail.test"): "SERVFAIL",
    ("TXT", "macro.test"): txt("v=spf1 exists:%{ir}.%{l1r-}.allow.macro.test -all"),
    ("A", "1.1.0.127.bob.allow.macro.test"): ["127.0.0.2"],
    ("TXT", "ptr.test"): txt("v=spf1 ptr -all"),
    ("PTR", "127.0.1.9"): ["host.ptr.test"],
    ("A", "host.ptr.test"): ["127.0.1.9"],
    ("TXT", "ip6.test"): txt("v=spf1 a//64 -all"),
    ("AAAA", "ip6.test"): ["2001:db8:1:2::1"],
}


async def check(table, ip, sender, helo="client.test"):
    return await SPF(TableResolver(table)).check(ip, sender, helo)


@pytest.mark.parametrize(
    ("ip", "sender", "result"),
    [
        ("127.0.1.1", "user1@163.com", "pass"),  # mx
        ("127.0.9.9", "user1@163.com", "fail"),  # -all
        ("127.0.1.4", "user3@sina.com", "pass"),  # ip4
        ("127.0.2.77", "user3@sina.com", "pass"),  # include -> ip4 /24
        ("2001:db8::5", "user3@sina.com", "pass"),  # include -> ip6
        ("127.0.9.9", "user3@sina.com", "softfail"),  # ~all (the include's -all = no match)
        ("127.0.3.3", "a@soft.test", "pass"),  # a:domain
        ("127.0.9.9", "a@soft.test", "softfail"),
        ("127.0.1.1", "x@redir.test", "pass"),  # redirect to 163.com
        ("127.0.9.9", "x@redir.test", "fail"),
        ("127.0.1.1", "x@nothing.test", "none"),  # TXT but no v=spf1
        ("127.0.1.1", "x@nowhere.test", "none"),  # NXDOMAIN
        ("127.0.1.1", "x@two.test", "permerror"),  # two records
        ("127.0.1.1", "x@bad.test", "permerror"),  # unknown mechanism
        ("127.0.1.1", "x@tempfail.test", "temperror"),
        ("127.0.1.1", "bob@macro.test", "pass"),  # exists with %{ir} and %{l1r-}
        ("127.0.1.2", "bob@macro.test", "fail"),
        ("127.0.1.9", "x@ptr.test", "pass"),  # ptr, validated forward
        ("2001:db8:1:2::99", "x@ip6.test", "pass"),  # a//64 for IPv6
        ("2001:db8:1:3::1", "x@ip6.test", "fail"),
        ("::ffff:127.0.1.1", "user1@163.com", "pass"),  # v4-mapped client
    ],
)
@pytest_twisted.ensureDeferred
async def test_spf_results(ip: str, sender: str, result: str) -> None:
    """Each mechanism, qualifier and error case gives the RFC's result."""
    r = await check(BASE, ip, sender)
    assert r.result == result, r


@pytest_twisted.ensureDeferred
async def test_spf_null_sender_checks_helo_identity() -> None:
    """MAIL FROM:<> is checked as postmaster@<HELO name>."""
    r = await check(BASE, "127.0.1.1", "", helo="163.com")
    assert (r.result, r.domain) == ("pass", "163.com")


@pytest_twisted.ensureDeferred
async def test_spf_more_than_ten_dns_terms_permerror() -> None:
    """Eleven includes: the 11th DNS-querying term ends the check with permerror."""
    table = {
        ("TXT", "many.test"): txt(
            "v=spf1 " + " ".join(f"include:i{n}.test" for n in range(11)) + " -all"
        )
    }
    for n in range(11):
        table[("TXT", f"i{n}.test")] = txt("v=spf1 -all")
    r = await check(table, "127.0.1.1", "a@many.test")
    assert r.result == "permerror" and "more than 10" in r.reason


@pytest_twisted.ensureDeferred
async def test_spf_more_than_two_void_lookups_permerror() -> None:
    """Three a: mechanisms naming nothing: the third void lookup is permerror."""
    table = {("TXT", "void.test"): txt("v=spf1 a:n1.void.test a:n2.void.test a:n3.void.test -all")}
    r = await check(table, "127.0.1.1", "a@void.test")
    assert r.result == "permerror" and "void" in r.reason


@pytest_twisted.ensureDeferred
async def test_spf_include_loop_bounded_by_the_term_limit() -> None:
    """A domain that includes itself ends in permerror, not a loop."""
    table = {("TXT", "loop.test"): txt("v=spf1 include:loop.test -all")}
    r = await check(table, "127.0.1.1", "a@loop.test")
    assert r.result == "permerror"


@pytest_twisted.ensureDeferred
async def test_spf_redirect_to_domain_without_record_permerror() -> None:
    """redirect= to a domain with no SPF record: permerror (section 6.1)."""
    table = {("TXT", "r.test"): txt("v=spf1 redirect=empty.test"), ("TXT", "empty.test"): []}
    r = await check(table, "127.0.1.1", "a@r.test")
    assert r.result == "permerror"


@pytest_twisted.ensureDeferred
async def test_spf_bad_client_or_domain_is_none() -> None:
    """A sender domain that is not a valid multi-label name: none, no lookup made."""
    resolver = TableResolver(BASE)
    r = await SPF(resolver).check("127.0.1.1", "a@localhost", "x")
    assert r.result == "none" and resolver.asked == []
