"""SMTP command arguments: MAIL/RCPT paths and ESMTP parameters (RFC 5321, 6531, 3461, 1870).

Pure functions, no I/O: they either return a parsed value or raise ReplyError with the exact
reply the client should get.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DOMAIN = rf"{LABEL}(?:\.{LABEL})*"
ADDR_LITERAL = r"\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+)\]"
_ASCII_ADDRESS = re.compile(rf"^(?:{DOT_ATOM}|{QUOTED})@(?:{DOMAIN}|{ADDR_LITERAL})$")
# SMTPUTF8 (RFC 6531): UTF-8 allowed in the local part and in U-labels
_UTF8_ATOM = r"[^\x00-\x20\x7f()<>\[\]:;@\\,.\"]+"
_UTF8_ADDRESS = re.compile(
    rf"^(?:{_UTF8_ATOM}(?:\.{_UTF8_ATOM})*|{QUOTED})@(?:[^\x00-\x20\x7f()<>\[\]:;@\\,\"]+|{ADDR_LITERAL})$"
)
_SOURCE_ROUTE = re.compile(r"^@[^:]+:")
_KEYWORD = {k: re.compile(rf"^{k}:\s*", re.IGNORECASE) for k in ("FROM", "TO")}
_PARAM_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_XTEXT = re.compile(r"^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*$")
MAX_PATH = 256  # RFC 5321 4.5.3.1.3


class ReplyError(Exception):
    """The reply for a bad argument: code, enhanced status, text."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text


@dataclass(frozen=True)
class Path:
    address: str  # "" for <>; source route removed
    params: dict[str, str | None]


def parse_path(arg: str, keyword: str, *, allow_null: bool) -> Path:
    """Parse 'FROM:<a@b> SIZE=10' (keyword 'FROM') into the address and its parameters."""
    m = _KEYWORD[keyword].match(arg)
    if not m:
        raise ReplyError(
            501, "5.5.4", f"Syntax: {'MAIL FROM' if keyword == 'FROM' else 'RCPT TO'}:<address>"
        )
    rest = arg[m.end() :]
    if not rest.startswith("<"):
        # bare addresses without <> are common in hand-typed sessions; take one word
        word, _, tail = rest.partition(" ")
        if not word or "<" in word or ">" in word:
            raise ReplyError(501, "5.1.7" if keyword == "FROM" else "5.1.3", "Bad address syntax")
        address, tail = word, tail
    else:
        end = rest.find(">")
        if end < 0:
            raise ReplyError(501, "5.1.7" if keyword == "FROM" else "5.1.3", "Bad address syntax")
        address, tail = rest[1:end], rest[end + 1 :]
        if tail and not tail.startswith(" "):
            raise ReplyError(501, "5.5.4", "Syntax error in parameters")
    if address.startswith("@"):
        address = _SOURCE_ROUTE.sub("", address)
    if len(address) > MAX_PATH:
        raise ReplyError(501, "5.1.7" if keyword == "FROM" else "5.1.3", "Address too long")
    if address == "" and not allow_null:
        raise ReplyError(501, "5.1.3", "Bad recipient address syntax")
    return Path(address, parse_params(tail))


def parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if not _PARAM_KEY.match(key) or (eq and not value):
            raise ReplyError(501, "5.5.4", f"Bad parameter syntax: {word[:40]}")
        key = key.upper()
        if key in params:
            raise ReplyError(501, "5.5.4", f"Duplicate parameter {key}")
        params[key] = value if eq else None
    return params


def check_address(address: str, smtputf8: bool, keyword: str) -> None:
    """Syntax of a mailbox; non-ASCII only with SMTPUTF8 (RFC 6531 3.5)."""
    enhanced = "5.1.7" if keyword == "FROM" else "5.1.3"
    if not address.isascii():
        if not smtputf8:
            raise ReplyError(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
        if not _UTF8_ADDRESS.match(address):
            raise ReplyError(501, enhanced, "Bad address syntax")
        return
    if not _ASCII_ADDRESS.match(address):
        raise ReplyError(501, enhanced, "Bad address syntax")


def is_xtext(value: str) -> bool:
    return bool(_XTEXT.match(value))


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()
