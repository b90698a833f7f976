"""DKIM signing (RFC 6376, 8463) of mail we send: relaxed/relaxed, one rsa-sha256 (2048-bit)
and one ed25519-sha256 signature, for the domain of the From: header (or its nearest parent)
when we hold keys for it (the d= DMARC aligns with). The filter signs what our logged-in
users send; the DKIMSigner itself also signs our delivery notices (queue/notices.py, through
the MessageSigner seam). The signing runs in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dkim
from twisted.internet import defer
from twisted.internet.defer import Deferred

from appliance.filters import dkim_rsa
from appliance.filters.base import Filter, MessageCheck
from appliance.filters.headers import from_domain, header_block
from appliance.interfaces import DKIMKey, DKIMKeys, Envelope, FilterVerdict

SIGNED = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"in-reply-to",
    b"references", b"mime-version", b"content-type", b"content-transfer-encoding",
)  # fmt: skip


def sign(message: bytes, keys: list[DKIMKey]) -> tuple[str, ...]:
    """Worker thread: the DKIM-Signature headers for message (without their final CRLF)."""
    present = {line.split(b":", 1)[0].strip().lower() for line in header_block(message)}
    include = [h for h in SIGNED if h in present] or [b"from"]
    out = []
    for k in keys:
        if k.algorithm == "rsa-sha256":
            dkim_rsa.register(k.private)
        header = dkim.sign(
            message,
            k.selector.encode(),
            k.domain.encode(),
            k.private,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=k.algorithm.encode(),
            include_headers=include,
        )
        out.append(header.decode("ascii").rstrip("\r\n"))
    return tuple(out)


class DKIMSigner:
    """interfaces.MessageSigner: the From: domain's keys (or the nearest parent domain's:
    our notices come from MAILER-DAEMON@mail.163.com, signed as 163.com, which DMARC's
    relaxed alignment accepts), the signing in a worker thread."""

    def __init__(self, keys: DKIMKeys, run: Callable[..., Deferred[Any]]) -> None:
        self.keys = keys
        self.run = run
        dkim_rsa.install()

    def keys_for(self, domain: str) -> list[DKIMKey]:
        labels = domain.split(".")
        for i in range(len(labels) - 1):
            found = self.keys.signing_keys(".".join(labels[i:]))
            if found:
                return found
        return []

    def sign(self, message: bytes) -> Deferred[tuple[str, ...]]:
        domain = from_domain(message)
        keys = self.keys_for(domain) if domain else []
        if not keys:
            return defer.succeed(())
        return self.run(sign, message, keys)


class DKIMSignFilter(Filter):
    name = "dkim-sign"

    def __init__(self, signer: DKIMSigner) -> None:
        self.signer = signer

    def wants_body(self, envelope: Envelope) -> bool:
        return envelope.ours

    def message(self, check: MessageCheck) -> FilterVerdict | Deferred[FilterVerdict]:
        text = check.body.in_memory()
        if text is None:
            text = b"".join(check.body.chunks())
        domain = from_domain(text)
        keys = self.signer.keys_for(domain) if domain else []
        if not keys:
            return FilterVerdict(reason=f"not signed: no key for {domain or 'no From: domain'}")
        selectors = " ".join(f"{k.selector}/{k.algorithm}" for k in keys)

        def signed(headers: tuple[str, ...]) -> FilterVerdict:
            return FilterVerdict(headers=headers, reason=f"signed d={keys[0].domain} s={selectors}")

        return self.signer.run(sign, text, keys).addCallback(signed)
