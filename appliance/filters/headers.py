"""Reading a message's header section (the filters that look at From: and DKIM-Signature).

Only what the checks need: the raw header fields (continuation lines joined), and the
domain of the From: address (RFC 5322.From, which DMARC aligns with)."""

from __future__ import annotations

from email.utils import getaddresses

MAX_HEADER = 256 * 1024  # a header section longer than this is read only this far


def header_block(message: bytes) -> list[bytes]:
    """The header fields of message, each unfolded onto one line (CRLF + WSP -> WSP)."""
    end = message.find(b"\r\n\r\n", 0, MAX_HEADER)
    head = message[: end if end >= 0 else MAX_HEADER]
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b" " + line.strip()
        elif line:
            fields.append(line)
    return fields


# The last message's fields as (lower-cased name, raw value): DKIM and DMARC both look at
# the same message's header, several times, one after the other. Keyed by the message
# object itself (bytes are immutable, and the entry holds it so its id cannot be reused).
_last: tuple[bytes, tuple[tuple[bytes, bytes], ...]] | None = None


def _named_fields(message: bytes) -> tuple[tuple[bytes, bytes], ...]:
    global _last
    last = _last
    if last is not None and last[0] is message:
        return last[1]
    named = []
    for f in header_block(message):
        key, sep, value = f.partition(b":")
        if sep:
            named.append((key.strip().lower(), value))
    result = tuple(named)
    _last = (message, result)
    return result


def fields(message: bytes, name: bytes) -> list[str]:
    """The values of every field called name (case-insensitive), in order."""
    want = name.lower()
    return [
        value.strip().decode("utf-8", "replace")
        for key, value in _named_fields(message)
        if key == want
    ]


def from_domain(message: bytes) -> str:
    """The domain of the (single) From: address, lower-cased; "" if there is none or
    several From: fields (which DMARC treats as not evaluable)."""
    values = fields(message, b"from")
    if len(values) != 1:
        return ""
    addresses = [a for _n, a in getaddresses(values) if "@" in a]
    domains = {a.rpartition("@")[2].lower().rstrip(".") for a in addresses}
    return domains.pop() if len(domains) == 1 else ""
