"""DKIM verification (RFC 6376, 8463) of mail from clients not logged in.

Each DKIM-Signature (up to MAX_SIGNATURES) names its key as <s>._domainkey.<d>; those TXT
records are fetched through our Resolver first, then dkimpy checks every signature in a
worker thread with a DNS function that only answers from what was fetched (so it never
blocks on DNS of its own). Results go to Authentication-Results (`dkim=pass header.d=...
header.s=... header.a=... header.b=<8 chars>`, or dkim=none) and, for DMARC, the domains
whose signatures passed. A message larger than max_size is not verified (dkim=neutral).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dkim
from twisted.internet import defer
from twisted.internet.defer import Deferred

from appliance.filters import dkim_rsa
from appliance.filters.base import Filter, MessageCheck
from appliance.filters.headers import fields
from appliance.interfaces import Envelope, FilterVerdict, LookupFailed, NoSuchDomain, Resolver

MAX_SIGNATURES = 5
_TAG = re.compile(r"\s*([a-z0-9_]+)\s*=\s*([^;]*)", re.I)


@dataclass(frozen=True)
class Checked:
    result: str  # pass, fail, neutral, temperror, permerror
    domain: str
    selector: str
    algorithm: str
    b: str  # the first 8 characters of b=, as RFC 6008 puts in header.b


def tags(value: str) -> dict[str, str]:
    return {m.group(1).lower(): re.sub(r"\s+", "", m.group(2)) for m in _TAG.finditer(value)}


def verify(message: bytes, keys: dict[bytes, bytes | None], count: int) -> list[tuple[bool, str]]:
    """Worker thread: (verified, error) of each of the first count signatures."""
    d = dkim.DKIM(message, minkey=1024)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return keys.get(name.rstrip(b".").lower())

    out = []
    for i in range(count):
        try:
            out.append((bool(d.verify(idx=i, dnsfunc=dnsfunc)), ""))
        except dkim.DKIMException as e:
            out.append((False, str(e)))
    return out


class DKIMVerifyFilter(Filter):
    name = "dkim"

    def __init__(
        self, resolver: Resolver, run: Callable[..., Deferred[Any]], max_size: int
    ) -> None:
        self.resolver = resolver
        self.run = run
        self.max_size = max_size
        dkim_rsa.install()

    def wants_body(self, envelope: Envelope) -> bool:
        return not envelope.ours

    def message(self, check: MessageCheck) -> Deferred[FilterVerdict]:
        return defer.ensureDeferred(self._message(check))

    async def _message(self, check: MessageCheck) -> FilterVerdict:
        text = check.body.in_memory()
        if text is None:
            text = b"".join(check.body.chunks()) if check.body.size <= self.max_size else b""
        signatures = fields(text, b"dkim-signature")[:MAX_SIGNATURES] if text else []
        if not text and check.body.size > self.max_size:
            check.auth_results.append('dkim=neutral reason="message too large to verify"')
            return FilterVerdict(reason="not verified: too large")
        if not signatures:
            check.auth_results.append("dkim=none")
            check.results["dkim.pass"] = ""
            return FilterVerdict(reason="none")
        parsed = [tags(s) for s in signatures]
        keys: dict[bytes, bytes | None] = {}
        temporary: set[bytes] = set()
        for t in parsed:
            name = f"{t.get('s', '')}._domainkey.{t.get('d', '')}".lower().encode(
                "ascii", "replace"
            )
            if name in keys or not t.get("s") or not t.get("d"):
                continue
            try:
                found = await self.resolver.lookup_txt(name.decode())
                keys[name] = found[0] if found else None
            except NoSuchDomain:
                keys[name] = None
            except LookupFailed:
                keys[name] = None
                temporary.add(name)
        verdicts = await self.run(verify, text, keys, len(parsed))
        checked = []
        for t, (ok, _error) in zip(parsed, verdicts, strict=False):
            name = f"{t.get('s', '')}._domainkey.{t.get('d', '')}".lower().encode()
            if ok:
                result = "pass"
            elif name in temporary:
                result = "temperror"
            elif keys.get(name) is None:
                result = "permerror"  # no key published
            else:
                result = "fail"
            checked.append(
                Checked(
                    result,
                    t.get("d", "").lower(),
                    t.get("s", ""),
                    t.get("a", ""),
                    t.get("b", "")[:8],
                )
            )
        for c in checked:
            check.auth_results.append(
                f"dkim={c.result} header.d={c.domain} header.s={c.selector}"
                f" header.a={c.algorithm} header.b={c.b}"
            )
        passed = sorted({c.domain for c in checked if c.result == "pass"})
        check.results["dkim.pass"] = " ".join(passed)
        summary = ", ".join(f"{c.result} d={c.domain} s={c.selector}" for c in checked)
        return FilterVerdict(reason=summary)
