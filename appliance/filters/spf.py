"""SPF (RFC 7208): check_host() through our own Resolver, without blocking the reactor.

Every mechanism and modifier of the RFC: all, include, a, mx, ptr, ip4, ip6, exists,
redirect (exp is parsed and not used: the refusal text is ours), with macros (section 7) in
domain-specs. The limits of section 4.6.4 are kept per check: at most 10 terms that cause
DNS lookups (include, a, mx, ptr, exists, redirect), at most 10 MX or PTR names looked at
per mechanism, at most 2 "void" lookups (NXDOMAIN or no records); past any of them the
result is permerror. A DNS failure (SERVFAIL, timeout) is temperror.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from twisted.internet.defer import Deferred

from appliance.interfaces import LookupFailed, NoSuchDomain, Resolver

T = TypeVar("T")

PASS, FAIL, SOFTFAIL, NEUTRAL = "pass", "fail", "softfail", "neutral"
NONE, TEMPERROR, PERMERROR = "none", "temperror", "permerror"
RESULTS = (PASS, FAIL, SOFTFAIL, NEUTRAL, NONE, TEMPERROR, PERMERROR)

QUALIFIERS = {"+": PASS, "-": FAIL, "~": SOFTFAIL, "?": NEUTRAL}
MAX_DNS_TERMS = 10
MAX_NAMES = 10  # MX or PTR names per mechanism
MAX_VOID = 2

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$", re.I)
_MACRO = re.compile(r"%(?:\{([slodiphvcrt])(\d*)(r?)([.\-+,/_=]*)\}|(%)|(_)|(-))", re.I)
_DUAL_CIDR = re.compile(r"^(.*?)(?:/(\d+))?(?://(\d+))?$")


class SPFError(Exception):
    """Ends the evaluation with a result (permerror or temperror) and why."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result


@dataclass(frozen=True)
class SPFResult:
    result: str  # one of RESULTS
    domain: str  # the domain whose policy was checked (MAIL FROM's, or the HELO name)
    reason: str  # for the log and the Received-SPF comment ("matched ip4:127.0.1.1")


@dataclass
class _Check:
    """The state of one check_host() evaluation (shared by its include/redirect levels)."""

    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    sender: str  # local@domain ("postmaster@helo" for the null sender)
    helo: str
    dns_terms: int = 0
    void: int = 0


def valid_domain(name: str) -> bool:
    """A domain SPF can be checked for: at least two labels, each a valid label."""
    name = name.rstrip(".")
    labels = name.split(".")
    return 1 < len(labels) and len(name) <= 253 and all(_LABEL.match(x) for x in labels)


class SPF:
    """check_host() over a Resolver."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def check(self, ip: str, mail_from: str, helo: str) -> SPFResult:
        """The result for MAIL FROM's domain, or (null sender) the HELO identity."""
        local, at, domain = mail_from.rpartition("@")
        if not mail_from or not at:
            local, domain = "postmaster", helo
        sender = f"{local or 'postmaster'}@{domain}"
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return SPFResult(NONE, domain.lower(), f"client address {ip!r} not an IP address")
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        domain = domain.lower().rstrip(".")
        if not valid_domain(domain):
            return SPFResult(NONE, domain, "no valid domain to check")
        state = _Check(addr, sender, helo)
        try:
            result, reason = await self._check_host(state, domain)
        except SPFError as e:
            return SPFResult(e.result, domain, str(e))
        return SPFResult(result, domain, reason)

    # ------------------------------------------------------------------ the record

    async def _record(self, state: _Check, domain: str) -> str | None:
        try:
            txts = await self.resolver.lookup_txt(domain)
        except NoSuchDomain:
            return None
        except LookupFailed as e:
            raise SPFError(TEMPERROR, f"DNS lookup of {domain} failed: {e}") from None
        records = []
        for raw in txts:
            text = raw.decode("utf-8", "replace")
            if text.lower() == "v=spf1" or text.lower().startswith("v=spf1 "):
                records.append(text)
        if len(records) > 1:
            raise SPFError(PERMERROR, f"{domain} has {len(records)} SPF records")
        return records[0] if records else None

    async def _check_host(self, state: _Check, domain: str) -> tuple[str, str]:
        record = await self._record(state, domain)
        if record is None:
            return NONE, f"{domain} has no SPF record"
        terms = record.split()[1:]
        redirect: str | None = None
        modifiers: set[str] = set()
        directives: list[tuple[str, str, str]] = []  # (qualifier result, mechanism, argument)
        for term in terms:
            name, eq, value = term.partition("=")
            if eq and re.match(r"^[a-z][a-z0-9_.-]*$", name, re.I):
                lname = name.lower()
                if lname in ("redirect", "exp"):
                    if lname in modifiers:
                        raise SPFError(PERMERROR, f"{domain}: {lname}= twice")
                    modifiers.add(lname)
                    if lname == "redirect":
                        redirect = value
                continue  # unknown modifiers are ignored (section 6)
            qualifier = PASS
            if term[:1] in QUALIFIERS:
                qualifier, term = QUALIFIERS[term[0]], term[1:]
            mech, sep, arg = term.partition(":")
            if not sep:
                m = re.match(r"^([a-z0-9]+)(/.*)?$", term, re.I)
                if m is None:
                    raise SPFError(PERMERROR, f"{domain}: bad term {term!r}")
                mech, arg = m.group(1), m.group(2) or ""
            mech = mech.lower()
            if mech not in ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"):
                raise SPFError(PERMERROR, f"{domain}: unknown mechanism {mech!r}")
            directives.append((qualifier, mech, arg))
        for qualifier, mech, arg in directives:
            if await self._matches(state, domain, mech, arg):
                shown = mech + (arg if arg.startswith("/") else f":{arg}" if arg else "")
                return qualifier, f"matched {shown} of {domain}"
        if redirect is not None:
            self._count(state)
            target = self._expand(state, redirect, domain)
            if not valid_domain(target):
                raise SPFError(PERMERROR, f"{domain}: bad redirect target {target!r}")
            result, reason = await self._check_host(state, target)
            if result == NONE:
                raise SPFError(PERMERROR, f"redirect to {target}, which has no SPF record")
            return result, reason
        return NEUTRAL, f"no mechanism of {domain} matched"

    # ------------------------------------------------------------------ mechanisms

    def _count(self, state: _Check) -> None:
        state.dns_terms += 1
        if state.dns_terms > MAX_DNS_TERMS:
            raise SPFError(PERMERROR, f"more than {MAX_DNS_TERMS} DNS-querying terms")

    def _void(self, state: _Check) -> None:
        state.void += 1
        if state.void > MAX_VOID:
            raise SPFError(PERMERROR, f"more than {MAX_VOID} void DNS lookups")

    async def _query(
        self, state: _Check, lookup: Callable[[str], Deferred[list[T]]], name: str
    ) -> list[T]:
        """One lookup: NXDOMAIN and no records are [] (and count as a void lookup), a DNS
        failure ends the check with temperror."""
        try:
            found = await lookup(name)
        except NoSuchDomain:
            found = []
        except LookupFailed as e:
            raise SPFError(TEMPERROR, f"DNS lookup of {name} failed: {e}") from None
        if not found:
            self._void(state)
        return found

    async def _addresses(self, state: _Check, name: str) -> list[str]:
        """A or AAAA (the client's family) of name."""
        lookup = self.resolver.lookup_a if state.ip.version == 4 else self.resolver.lookup_aaaa
        return await self._query(state, lookup, name)

    def _in(self, state: _Check, addresses: list[str], cidr4: int, cidr6: int) -> bool:
        prefix = cidr4 if state.ip.version == 4 else cidr6
        for a in addresses:
            try:
                net = ipaddress.ip_network(f"{a}/{prefix}", strict=False)
            except ValueError:
                continue
            if state.ip in net:
                return True
        return False

    def _target_and_cidr(self, state: _Check, domain: str, arg: str) -> tuple[str, int, int]:
        m = _DUAL_CIDR.match(arg)
        assert m is not None  # the pattern matches anything
        spec, c4, c6 = m.group(1), m.group(2), m.group(3)
        cidr4, cidr6 = int(c4) if c4 else 32, int(c6) if c6 else 128
        if cidr4 > 32 or cidr6 > 128:
            raise SPFError(PERMERROR, f"{domain}: bad prefix length in {arg!r}")
        target = self._expand(state, spec, domain) if spec else domain
        if not valid_domain(target):
            raise SPFError(PERMERROR, f"{domain}: bad domain {target!r}")
        return target, cidr4, cidr6

    async def _matches(self, state: _Check, domain: str, mech: str, arg: str) -> bool:
        if mech == "all":
            return True
        if mech in ("ip4", "ip6"):
            try:
                net = ipaddress.ip_network(arg, strict=False)
            except ValueError:
                raise SPFError(PERMERROR, f"{domain}: bad {mech}:{arg}") from None
            if net.version != (4 if mech == "ip4" else 6):
                raise SPFError(PERMERROR, f"{domain}: bad {mech}:{arg}")
            return net.version == state.ip.version and state.ip in net
        self._count(state)
        if mech == "include":
            if not arg:
                raise SPFError(PERMERROR, f"{domain}: include without a domain")
            target = self._expand(state, arg, domain)
            if not valid_domain(target):
                raise SPFError(PERMERROR, f"{domain}: bad include {target!r}")
            result, _ = await self._check_host(state, target)
            if result == PASS:
                return True
            if result == TEMPERROR:
                raise SPFError(TEMPERROR, f"include:{target} gave temperror")
            if result in (PERMERROR, NONE):
                raise SPFError(PERMERROR, f"include:{target} gave {result}")
            return False
        if mech == "exists":
            if not arg:
                raise SPFError(PERMERROR, f"{domain}: exists without a domain")
            target = self._expand(state, arg, domain)
            return bool(await self._query(state, self.resolver.lookup_a, target))
        if mech == "a":
            target, cidr4, cidr6 = self._target_and_cidr(state, domain, arg)
            return self._in(state, await self._addresses(state, target), cidr4, cidr6)
        if mech == "mx":
            target, cidr4, cidr6 = self._target_and_cidr(state, domain, arg)
            mxs = await self._query(state, self.resolver.lookup_mx, target)
            if len(mxs) > MAX_NAMES:
                raise SPFError(PERMERROR, f"{target} has more than {MAX_NAMES} MX records")
            for _pref, host in sorted(mxs):
                if self._in(state, await self._addresses(state, host), cidr4, cidr6):
                    return True
            return False
        # ptr (discouraged by the RFC, still to be evaluated)
        target = self._expand(state, arg, domain) if arg else domain
        try:
            names = await self.resolver.lookup_ptr(str(state.ip))
        except (NoSuchDomain, LookupFailed):
            return False  # section 5.5: a failed PTR lookup is just no match
        for name in names[:MAX_NAMES]:
            name = name.lower().rstrip(".")
            if name != target and not name.endswith("." + target):
                continue
            try:
                addrs = await (
                    self.resolver.lookup_a if state.ip.version == 4 else self.resolver.lookup_aaaa
                )(name)
            except LookupFailed:
                continue
            if str(state.ip) in addrs:
                return True
        return False

    # ------------------------------------------------------------------ macros (section 7)

    def _expand(self, state: _Check, spec: str, domain: str) -> str:
        local, _, sender_domain = state.sender.rpartition("@")

        def value(letter: str) -> str:
            ip = state.ip
            table = {
                "s": state.sender,
                "l": local,
                "o": sender_domain,
                "d": domain,
                "i": ".".join(ip.exploded.replace(":", "")) if ip.version == 6 else str(ip),
                "p": "unknown",
                "v": "in-addr" if ip.version == 4 else "ip6",
                "h": state.helo,
            }
            if letter not in table:
                raise SPFError(PERMERROR, f"macro %{{{letter}}} outside exp=")
            return table[letter]

        def one(m: re.Match[str]) -> str:
            if m.group(5):
                return "%"
            if m.group(6):
                return " "
            if m.group(7):
                return "%20"
            letter, digits, reverse, delimiters = m.group(1), m.group(2), m.group(3), m.group(4)
            text = value(letter.lower())
            parts = re.split("[" + re.escape(delimiters or ".") + "]", text)
            if reverse:
                parts.reverse()
            if digits:
                n = int(digits)
                if n == 0:
                    raise SPFError(PERMERROR, "macro with 0 parts")
                parts = parts[-n:]
            out = ".".join(parts)
            return urllib.parse.quote(out, safe="") if letter.isupper() else out

        if "%" in spec:
            rest = _MACRO.sub("", spec)
            if "%" in rest:
                raise SPFError(PERMERROR, f"bad macro in {spec!r}")
            spec = _MACRO.sub(one, spec)
        name = spec.rstrip(".").lower()
        while len(name) > 253 and "." in name:  # section 7.3: drop labels from the left
            name = name.split(".", 1)[1]
        return name
