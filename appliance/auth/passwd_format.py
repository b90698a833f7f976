"""Dovecot's passwd-file format: parse and write user lines; no I/O here.

One user per line, `#` comments and blank lines allowed::

    user@domain:{SCHEME}hash[:uid:gid:gecos:home:shell:extra_fields]

The address is stored lower-case. The extra field `cram_md5={CRAM-MD5}hex` gives a user a
CRAM-MD5 secret besides a strong main hash; CRAM-MD5 is accepted only for users who have one.
An empty password field makes a user who has a mailbox but cannot log in. Every problem is
reported as `file:line: message`, never echoing a hash.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.auth.schemes import split_scheme
from appliance.errors import ApplianceError
from appliance.names import is_user_address

CRAM_FIELD = "cram_md5="


class PasswdFileError(ApplianceError):
    """A passwd file that cannot be used: every problem as `file:line: message`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class PasswdEntry:
    """One parsed user line."""

    address: str  # lower-case user@domain
    password: str  # "{SCHEME}hash", or "" (mailbox only, no login)
    cram_md5: str | None  # 64 hex digits, or None
    line: int

    @property
    def scheme(self) -> str | None:
        """The main hash's scheme, or None for a user without a password."""
        return self.password[1 : self.password.find("}")] if self.password else None


def parse_line(line: str) -> tuple[str, str, str | None, list[str]]:
    """(address, stored, cram secret, fields) of a user line; ValueError with a message."""
    fields = line.split(":", 7)
    if len(fields) < 2:
        raise ValueError("expected user@domain:{SCHEME}hash")
    address = fields[0].lower()
    if not is_user_address(address):
        raise ValueError(f"expected an address like user@example.com, got {fields[0][:80]!r}")
    stored = fields[1]
    cram = None
    if stored:
        scheme, value = split_scheme(stored)
        stored = "{" + scheme + "}" + value
        if scheme == "CRAM-MD5":
            cram = value.lower()
    extras = fields[7].split() if len(fields) > 7 else []
    for extra in extras:
        if extra.startswith(CRAM_FIELD):
            try:
                scheme, value = split_scheme(extra[len(CRAM_FIELD) :])
            except ValueError as e:
                raise ValueError(f"cram_md5: {e}") from None
            if scheme != "CRAM-MD5":
                raise ValueError("cram_md5: expected {CRAM-MD5} and 64 hex digits")
            cram = value.lower()
    return address, stored, cram, fields


def format_line(fields: list[str], cram: str | None) -> str:
    """fields[0:2] are address and stored hash; extra fields keep all but our cram_md5."""
    fields = list(fields)
    extras = fields[7].split() if len(fields) > 7 else []
    extras = [e for e in extras if not e.startswith(CRAM_FIELD)]
    if cram is not None:
        extras.append(CRAM_FIELD + "{CRAM-MD5}" + cram)
    if extras:
        fields = (fields + [""] * 8)[:7] + [" ".join(extras)]
    else:
        fields = fields[:7]
        while len(fields) > 2 and fields[-1] == "":
            fields.pop()
    return ":".join(fields)


def parse_passwd(data: bytes, label: str) -> tuple[dict[str, PasswdEntry], list[str]]:
    """Users and problems (`label:line: message`) of a passwd file's bytes."""
    users: dict[str, PasswdEntry] = {}
    problems: list[str] = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            problems.append(f"{label}:{lineno}: not UTF-8")
            continue
        if not line or line.startswith("#"):
            continue
        try:
            address, stored, cram, _ = parse_line(line)
        except ValueError as e:
            problems.append(f"{label}:{lineno}: {e}")
            continue
        if address in users:
            first = users[address].line
            problems.append(f"{label}:{lineno}: {address} already defined on line {first}")
            continue
        users[address] = PasswdEntry(address, stored, cram, lineno)
    return users, problems


__all__ = ["PasswdEntry", "PasswdFileError", "format_line", "parse_line", "parse_passwd"]
