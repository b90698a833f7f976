"""Modified UTF-7, the mailbox-name encoding of RFC 3501 section 5.1.3.

Printable US-ASCII (0x20-0x7e) stands for itself, except "&", which is written "&-". Every
other run of characters is written "&" + base64 of its UTF-16BE + "-", with "," in place of
"/" and no "=" padding.

decode() accepts only the one canonical spelling of each name: it refuses what RFC 3501
forbids (printable ASCII inside a shift, non-zero padding bits, a raw "&" or raw 8-bit
character) and also two shifts in a row ("&AOQ-&AOQ-" must be "&AOQA5A-") and "&ACY-" for
"&". So decode(x) succeeding means encode(decode(x)) == x: a name has a single wire form,
and two names that differ on the wire are different mailboxes.
"""

from __future__ import annotations

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"
_VALUE = {c: i for i, c in enumerate(_ALPHABET)}


def _printable(ch: str) -> bool:
    return "\x20" <= ch <= "\x7e"


def _b64(data: bytes) -> str:
    """Modified base64 of data: no padding, "," for "/"."""
    out: list[str] = []
    bits = 0
    nbits = 0
    for byte in data:
        bits = (bits << 8) | byte
        nbits += 8
        while nbits >= 6:
            nbits -= 6
            out.append(_ALPHABET[(bits >> nbits) & 0x3F])
    if nbits:
        out.append(_ALPHABET[(bits << (6 - nbits)) & 0x3F])
    return "".join(out)


def encode(name: str) -> str:
    """The modified UTF-7 spelling of a mailbox name. A lone surrogate (which UTF-16 cannot
    carry) raises UnicodeEncodeError, a ValueError."""
    out: list[str] = []
    run: list[str] = []  # characters waiting to be base64-encoded

    def flush() -> None:
        if run:
            out.append("&" + _b64("".join(run).encode("utf-16-be")) + "-")
            run.clear()

    for ch in name:
        if _printable(ch):
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def _unb64(text: str) -> bytes:
    """The octets of one shift's modified base64 (its text between "&" and "-")."""
    out = bytearray()
    bits = 0
    nbits = 0
    for ch in text:
        value = _VALUE.get(ch)
        if value is None:
            raise ValueError(f"invalid modified base64 character {ch!r}")
        bits = (bits << 6) | value
        nbits += 6
        if nbits >= 8:
            nbits -= 8
            out.append((bits >> nbits) & 0xFF)
    if nbits >= 6:
        raise ValueError("modified base64 has a character too many")
    if bits & ((1 << nbits) - 1):
        raise ValueError("modified base64 has non-zero padding bits")
    return bytes(out)


def decode(name: str) -> str:
    """The mailbox name a modified UTF-7 spelling stands for; ValueError if it is not the
    canonical spelling of any name (see the module docstring)."""
    out: list[str] = []
    i = 0
    n = len(name)
    after_shift = False  # the previous thing was a base64 shift
    while i < n:
        ch = name[i]
        if ch != "&":
            if not _printable(ch):
                raise ValueError(f"character {ch!r} must be base64-encoded")
            out.append(ch)
            i += 1
            after_shift = False
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError('"&" not closed by "-"')
        if end == i + 1:
            out.append("&")
            i = end + 1
            after_shift = False
            continue
        if after_shift:
            raise ValueError("two base64 shifts in a row")
        raw = _unb64(name[i + 1 : end])
        if len(raw) % 2:
            raise ValueError("modified base64 is not whole UTF-16")
        try:
            text = raw.decode("utf-16-be")
        except UnicodeDecodeError:
            raise ValueError("modified base64 is not valid UTF-16") from None
        if any(_printable(c) for c in text):
            raise ValueError("printable ASCII must not be base64-encoded")
        out.append(text)
        i = end + 1
        after_shift = True
    return "".join(out)
