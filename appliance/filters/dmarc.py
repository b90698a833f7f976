"""DMARC (RFC 7489) for mail from clients not logged in: the From: domain's policy, applied.

After the spf and dkim filters have run, the From: domain (RFC5322.From) is authenticated
when SPF passed for an aligned MAIL FROM domain or a DKIM signature passed for an aligned d=
(relaxed: the same organizational domain, strict: the same name, per adkim=/aspf=). The
policy is the TXT record at _dmarc.<From domain>, else at _dmarc.<organizational domain>,
whose sp= then applies to a subdomain. The organizational domain is taken as the last two
labels (there is no Public Suffix List here; for names under a public suffix of two labels,
such as example.co.uk, that is one label too few and such domains find no record).

A fail under p=reject is refused, 550 5.7.1; under p=quarantine the message is delivered
with an X-DMARC-Quarantine header, which local delivery files in the Junk folder; pct= samples
as section 6.6.4 says (an unsampled reject becomes quarantine, an unsampled quarantine none).
A DNS failure is dmarc=temperror and no policy. Authentication-Results gets
`dmarc=<result> (p=.. dis=..) header.from=<domain>`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.defer import Deferred

from appliance.filters.base import Filter, Memo, MessageCheck
from appliance.filters.headers import fields, from_domain
from appliance.interfaces import Envelope, FilterVerdict, LookupFailed, NoSuchDomain, Resolver

POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True)
class Record:
    p: str
    sp: str
    adkim: str  # "r" or "s"
    aspf: str
    pct: int


def organizational(domain: str) -> str:
    labels = domain.rstrip(".").lower().split(".")
    return ".".join(labels[-2:])


def aligned(identifier: str, from_dom: str, mode: str) -> bool:
    identifier, from_dom = identifier.lower().rstrip("."), from_dom.lower().rstrip(".")
    if mode == "s":
        return identifier == from_dom
    return organizational(identifier) == organizational(from_dom)


def parse(text: str) -> Record | None:
    """A DMARC record, or None if text is not one (section 6.3)."""
    parts = [p.strip() for p in text.split(";") if p.strip()]
    if not parts or parts[0].replace(" ", "").lower() != "v=dmarc1":
        return None
    tags: dict[str, str] = {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            tags[key.strip().lower()] = value.strip().lower()
    p = tags.get("p", "")
    if p not in POLICIES:
        if "rua" not in tags:
            return None
        p = "none"  # section 6.6.3: an invalid p with rua= is treated as none
    sp = tags.get("sp", p)
    try:
        pct = max(0, min(100, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    return Record(
        p,
        sp if sp in POLICIES else p,
        "s" if tags.get("adkim") == "s" else "r",
        "s" if tags.get("aspf") == "s" else "r",
        pct,
    )


class DMARCFilter(Filter):
    name = "dmarc"

    def __init__(
        self, resolver: Resolver, enforce: bool = True, sample: Callable[[], float] = random.random
    ) -> None:
        self.resolver = resolver
        self.enforce = enforce
        self.sample = sample
        # each domain's record (or its absence), kept for the Memo's five minutes
        self.records: Memo[str, tuple[Record | None]] = Memo()

    def wants_body(self, envelope: Envelope) -> bool:
        return not envelope.ours

    def message(self, check: MessageCheck) -> FilterVerdict | Deferred[FilterVerdict]:
        text = check.body.in_memory()
        if text is None:
            text = next(iter(check.body.chunks()), b"")  # the headers are in the first MB
        if len(fields(text, b"from")) > 1:
            check.auth_results.append('dmarc=permerror reason="several From: fields"')
            return FilterVerdict(reason="permerror: several From: fields")
        domain = from_domain(text)
        if not domain:
            check.auth_results.append("dmarc=none")
            return FilterVerdict(reason="none: no From: domain")
        known = self.records.get(domain)
        if known is not None and (known[0] is not None or organizational(domain) == domain):
            return self._verdict(check, domain, known[0], False)  # no lookup to wait for
        return defer.ensureDeferred(self._message(check, domain))

    async def _lookup(self, name: str) -> Record | None:
        known = self.records.get(name)
        if known is not None:
            return known[0]
        try:
            txts = await self.resolver.lookup_txt(f"_dmarc.{name}")
        except NoSuchDomain:
            txts = []
        records = [r for r in (parse(t.decode("utf-8", "replace")) for t in txts) if r]
        record = records[0] if len(records) == 1 else None
        self.records.put(name, (record,))  # a temporary failure raised above: not kept
        return record

    async def _message(self, check: MessageCheck, domain: str) -> FilterVerdict:
        org = organizational(domain)
        try:
            record = await self._lookup(domain)
            subdomain_policy = False
            if record is None and org != domain:
                record = await self._lookup(org)
                subdomain_policy = record is not None
        except LookupFailed as e:
            check.auth_results.append(f"dmarc=temperror header.from={domain}")
            return FilterVerdict(reason=f"temperror: {e}")
        return self._verdict(check, domain, record, subdomain_policy)

    def _verdict(
        self, check: MessageCheck, domain: str, record: Record | None, subdomain_policy: bool
    ) -> FilterVerdict:
        if record is None:
            check.auth_results.append(f"dmarc=none header.from={domain}")
            return FilterVerdict(reason=f"none: {domain} publishes no policy")
        spf_ok = check.results.get("spf") == "pass" and aligned(
            check.results.get("spf.domain", ""), domain, record.aspf
        )
        dkim_ok = any(
            aligned(d, domain, record.adkim) for d in check.results.get("dkim.pass", "").split()
        )
        policy = record.sp if subdomain_policy else record.p
        if spf_ok or dkim_ok:
            how = "+".join(x for x, ok in (("spf", spf_ok), ("dkim", dkim_ok)) if ok)
            check.auth_results.append(f"dmarc=pass (p={policy} dis=none) header.from={domain}")
            check.results["dmarc"] = "pass"
            return FilterVerdict(reason=f"pass ({how} aligned) {domain}")
        disposition = policy
        if record.pct < 100 and self.sample() * 100 >= record.pct:
            disposition = {"reject": "quarantine", "quarantine": "none"}.get(policy, policy)
        if not self.enforce:
            disposition = "none"
        check.results["dmarc"] = "fail"
        check.auth_results.append(f"dmarc=fail (p={policy} dis={disposition}) header.from={domain}")
        reason = f"fail p={policy} dis={disposition} {domain}"
        if disposition == "reject":
            text_ = f"5.7.1 Email rejected per DMARC policy for {domain}"
            return FilterVerdict(550, text_, reason=reason)
        if disposition == "quarantine":
            return FilterVerdict(headers=(f"X-DMARC-Quarantine: {domain}",), reason=reason)
        return FilterVerdict(reason=reason)
