"""DMARC (RFC 7489): alignment of SPF and DKIM with the From: domain (relaxed and strict),
the organizational domain's record and its sp=, pct sampling, and what each policy does."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import pytest_twisted

from appliance.deferreds import decision
from appliance.filters.base import MessageCheck
from appliance.filters.body import SpillBuffer
from appliance.filters.dmarc import DMARCFilter, aligned, parse
from appliance.interfaces import Envelope, FilterVerdict, Recipient
from tests.filters.test_spf import TableResolver

TABLE = {
    ("TXT", "_dmarc.163.test"): [b"v=DMARC1; p=reject; sp=quarantine"],
    ("TXT", "_dmarc.strict.test"): [b"v=DMARC1; p=reject; adkim=s; aspf=s"],
    ("TXT", "_dmarc.half.test"): [b"v=DMARC1; p=reject; pct=50"],
    ("TXT", "_dmarc.none.test"): [b"v=DMARC1; p=none"],
}


def message(from_: str) -> bytes:
    return f"From: {from_}\r\nTo: u@sina.test\r\nSubject: x\r\n\r\nhi\r\n".encode()


async def run(text: bytes, results: dict[str, str], sample: float = 0.0):
    env = Envelope("x@elsewhere.test", (Recipient("u@sina.test"),), "127.0.0.9", "client.test")
    body = SpillBuffer(Path(tempfile.gettempdir()))
    body.write(text)
    check = MessageCheck(env, "Q1", body, results=dict(results))
    v = await decision(DMARCFilter(TableResolver(TABLE), sample=lambda: sample).message, check)
    return v, check


def test_dmarc_parse_and_alignment() -> None:
    r = parse("v=DMARC1; p=quarantine; pct=20; adkim=s")
    assert r is not None and (r.p, r.sp, r.adkim, r.aspf, r.pct) == (
        "quarantine",
        "quarantine",
        "s",
        "r",
        20,
    )
    assert parse("v=spf1 -all") is None and parse("v=DMARC1; p=bogus") is None
    assert parse("v=DMARC1; p=bogus; rua=mailto:x@y.test").p == "none"  # type: ignore[union-attr]
    assert aligned("mail.163.test", "163.test", "r") and not aligned(
        "mail.163.test", "163.test", "s"
    )
    assert not aligned("163.test.evil", "163.test", "r")


@pytest.mark.parametrize(
    ("from_", "results", "code", "auth"),
    [
        ("ceo@163.test", {}, 550, "dmarc=fail (p=reject dis=reject) header.from=163.test"),
        ("ceo@163.test", {"dkim.pass": "163.test"}, None, "dmarc=pass (p=reject dis=none)"),
        ("ceo@163.test", {"spf": "pass", "spf.domain": "bounce.163.test"}, None, "dmarc=pass"),
        ("ceo@163.test", {"spf": "pass", "spf.domain": "other.test"}, 550, "dmarc=fail"),
        ("ceo@sub.163.test", {}, None, "dmarc=fail (p=quarantine dis=quarantine)"),  # sp=
        ("ceo@strict.test", {"dkim.pass": "mail.strict.test"}, 550, "dmarc=fail"),
        ("ceo@none.test", {}, None, "dmarc=fail (p=none dis=none)"),
        ("ceo@nopolicy.test", {}, None, "dmarc=none header.from=nopolicy.test"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_dmarc_results_and_policies(from_, results, code, auth) -> None:
    v, check = await run(message(from_), results)
    assert v.code == code
    assert check.auth_results[-1].startswith(auth), check.auth_results
    if "dis=quarantine" in auth:
        assert v.headers == ("X-DMARC-Quarantine: sub.163.test",)


@pytest_twisted.ensureDeferred
async def test_dmarc_pct_sampled_reject_becomes_quarantine() -> None:
    """pct=50: a message outside the sample gets quarantine instead of reject."""
    v, _ = await run(message("a@half.test"), {}, sample=0.3)
    assert v.code == 550
    v, check = await run(message("a@half.test"), {}, sample=0.7)
    assert v.ok and "dis=quarantine" in check.auth_results[-1]


@pytest_twisted.ensureDeferred
async def test_dmarc_several_from_fields_permerror() -> None:
    v, check = await run(b"From: a@163.test\r\nFrom: b@163.test\r\n\r\nx\r\n", {})
    assert v.ok and check.auth_results == ['dmarc=permerror reason="several From: fields"']


def test_dmarc_record_memoised_per_domain_answer_given_at_once() -> None:
    """The second message from a domain is judged from the memo: no lookup, no Deferred."""
    asked: list[str] = []

    class Counting(TableResolver):
        def lookup_txt(self, name: str):
            asked.append(name)
            return super().lookup_txt(name)

    f = DMARCFilter(Counting(TABLE), sample=lambda: 0.0)

    def check_of(from_: str, results: dict[str, str]) -> MessageCheck:
        env = Envelope("x@elsewhere.test", (Recipient("u@sina.test"),), "127.0.0.9", "client.test")
        body = SpillBuffer(Path(tempfile.gettempdir()))
        body.write(message(from_))
        return MessageCheck(env, "Q1", body, results=dict(results))

    first = f.message(check_of("ceo@163.test", {}))
    assert asked == ["_dmarc.163.test"] and first.called  # the table answers at once
    second = f.message(check_of("cfo@163.test", {"spf": "pass", "spf.domain": "163.test"}))
    assert isinstance(second, FilterVerdict) and second.ok and asked == ["_dmarc.163.test"]
    third = f.message(check_of("ceo@163.test", {}))
    assert isinstance(third, FilterVerdict) and third.code == 550
