"""The SPF filter: check_host() at MAIL FROM (the HELO identity for the null sender),
acted on as the admin configured, and told at the end of the data (Received-SPF,
Authentication-Results, and the result for DMARC).

By default nothing is refused (RFC 7208 leaves the action to the receiver; a fail is only
a tag until the admin asks for more): on_fail / on_softfail = reject give 550 5.7.23,
on_permerror = reject 550 5.7.24, on_temperror = tempfail 451 4.7.24 (RFC 7372's codes).
Mail from logged-in users is not checked. The result found at MAIL is kept for the end of
the data (a Memo; if it is gone, the check is made again, from the DNS cache), and for the
next messages of the same sender from the same client and HELO for the Memo's five minutes
(a mailing list, a notification system: one check, not one per message).
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.defer import Deferred

from appliance.filters import spf
from appliance.filters.base import Filter, Memo, MessageCheck
from appliance.filters.spf import SPF, SPFResult
from appliance.interfaces import ACCEPT, Envelope, FilterVerdict, SessionFacts


@dataclass(frozen=True)
class SPFSettings:
    on_fail: str = "accept"  # or "reject"
    on_softfail: str = "accept"
    on_permerror: str = "accept"
    on_temperror: str = "accept"  # or "tempfail"


class SPFFilter(Filter):
    name = "spf"

    def __init__(self, checker: SPF, settings: SPFSettings, hostname: str) -> None:
        self.checker = checker
        self.settings = settings
        self.hostname = hostname
        self.memo: Memo[tuple[str, str, str], SPFResult] = Memo()

    def _check(self, ip: str, mail_from: str, helo: str) -> Deferred[SPFResult]:
        key = (ip, helo.lower(), mail_from.lower())
        known = self.memo.get(key)
        if known is not None:
            return defer.succeed(known)

        def keep(result: SPFResult) -> SPFResult:
            self.memo.put(key, result)
            return result

        return defer.ensureDeferred(self.checker.check(ip, mail_from, helo)).addCallback(keep)

    def sender(
        self, facts: SessionFacts, mail_from: str
    ) -> FilterVerdict | Deferred[FilterVerdict]:
        if facts.ours:
            return ACCEPT
        return self._check(facts.client_ip, mail_from, facts.helo).addCallback(self._act)

    def _act(self, r: SPFResult) -> FilterVerdict:
        s = self.settings
        why = f"{r.result} for {r.domain}: {r.reason}"
        if (
            r.result == spf.FAIL
            and s.on_fail == "reject"
            or (r.result == spf.SOFTFAIL and s.on_softfail == "reject")
        ):
            text = f"5.7.23 SPF validation failed: {r.domain} does not permit this host to send"
            return FilterVerdict(550, text, reason=why)
        if r.result == spf.PERMERROR and s.on_permerror == "reject":
            return FilterVerdict(550, f"5.7.24 SPF record of {r.domain} is broken", reason=why)
        if r.result == spf.TEMPERROR and s.on_temperror == "tempfail":
            text = f"4.7.24 SPF record of {r.domain} could not be checked, try again later"
            return FilterVerdict(451, text, reason=why)
        return FilterVerdict(reason=why)

    def wants_body(self, envelope: Envelope) -> bool:
        return not envelope.ours

    def message(self, check: MessageCheck) -> Deferred[FilterVerdict]:
        env = check.envelope
        d = self._check(env.client_ip, env.mail_from, env.helo)

        def tell(r: SPFResult) -> FilterVerdict:
            check.results["spf"] = r.result
            check.results["spf.domain"] = r.domain
            if env.mail_from:
                check.auth_results.append(f"spf={r.result} smtp.mailfrom={env.mail_from}")
            else:
                check.auth_results.append(f"spf={r.result} smtp.helo={env.helo}")
            comment = f"{self.hostname}: {r.reason}".replace("(", "[").replace(")", "]")
            sender = env.mail_from.replace("\\", "\\\\").replace('"', '\\"')
            header = (
                f"Received-SPF: {r.result} ({comment})\r\n\tclient-ip={env.client_ip};"
                f' envelope-from="{sender}"; helo={env.helo or "unknown"};'
            )
            return FilterVerdict(headers=(header,), reason=f"{r.result} {r.domain}")

        return d.addCallback(tell)
