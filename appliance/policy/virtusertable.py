"""virtusertable: where an address in a local domain goes.

`user@domain target` and `@domain target` (catch-all, used when no exact entry matches, before
aliases, as in Sendmail: list real users before a catch-all to local users). Targets: a local
name (`user2`: aliases, then the mailbox user2 in the same domain), an address (local: resolved
again; remote: forwarded), `%1` for the catch-all's local part, or `error:nouser`,
`error:5.1.1:550 User unknown`, `error:550 text`. A target equal to its key ends the lookup
(the usual way to exempt a user from a catch-all). Program, file and `:include:` targets and
the percent hack are configuration errors, as are duplicate keys.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from appliance.policy.mapfile import map_lines, parse_reply, valid_domain, valid_local

_PERCENT_RE = re.compile(r"%(?!1)")

# Sendmail's named error-mailer statuses that make sense for a recipient
NAMED_ERRORS = {
    "nouser": (550, "5.1.1", "Recipient address rejected: User unknown"),
    "nohost": (550, "5.1.2", "Recipient address rejected: Host unknown"),
    "noperm": (550, "5.7.1", "Recipient address rejected: Permission denied"),
    "unavailable": (550, "5.0.0", "Recipient address rejected: Service unavailable"),
    "tempfail": (450, "4.0.0", "Recipient address rejected: Try again later"),
}


@dataclass(frozen=True)
class VirtualTarget:
    """kind 'local' (a bare name), 'address', or 'error' (code, dsn, text)."""

    kind: str
    value: str = ""
    code: int = 0
    dsn: str = ""
    text: str = ""
    line: int = 0


@dataclass
class VirtualMap:
    """Parsed virtusertable: 'user@domain' and '@domain' (catch-all) keys."""

    entries: dict[str, VirtualTarget] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, local: str, domain: str) -> VirtualTarget | None:
        """The target for local@domain: its own entry, else the domain's catch-all (%1 filled)."""
        target = self.entries.get(f"{local}@{domain}")
        if target is not None:
            return target
        target = self.entries.get(f"@{domain}")
        if target is not None and "%1" in target.value:
            return dataclasses.replace(target, value=target.value.replace("%1", local))
        return target

    def foreign(self, local_domains: frozenset[str]) -> Iterator[tuple[int, str]]:
        """(line, domain) of each entry whose domain is not local, in file order."""
        for key, target in self.entries.items():
            domain = key.rpartition("@")[2]
            if domain not in local_domains:
                yield target.line, domain


def parse_target(value: str, catch_all: bool, line: int) -> VirtualTarget:
    """One target as written after a key; ValueError names the problem."""
    if value.lower().startswith("error:"):
        spec = value[6:].strip()
        name, _, rest = spec.partition(" ")
        if name.lower() in NAMED_ERRORS:
            code, dsn, text = NAMED_ERRORS[name.lower()]
            return VirtualTarget("error", code=code, dsn=dsn, text=rest.strip() or text, line=line)
        code, dsn, text = parse_reply(spec, "1.1", "Recipient address rejected: User unknown")
        return VirtualTarget("error", code=code, dsn=dsn, text=text, line=line)
    if len(value.split()) != 1:
        raise ValueError(f"expected one target, got {value!r}")
    if value.startswith(("|", "/", '"')) or value.lower().startswith(":include:"):
        raise ValueError(f"program, file and :include: targets are not supported: {value!r}")
    if "%1" in value and not catch_all:
        raise ValueError("%1 is only meaningful in a catch-all (@domain) entry")
    if _PERCENT_RE.search(value):
        raise ValueError(f"only %1 may follow a '%' (the percent hack is not supported): {value!r}")
    local, at, domain = value.rpartition("@")
    if not at:
        name = value.lower()
        if not valid_local(name.replace("%1", "x")):
            raise ValueError(f"not a valid user name or address: {value!r}")
        return VirtualTarget("local", name, line=line)
    domain = domain.lower().rstrip(".")
    if not valid_local(local.lower().replace("%1", "x")) or not valid_domain(domain):
        raise ValueError(f"not a valid address: {value!r}")
    return VirtualTarget("address", f"{local}@{domain}", line=line)


def parse_virtusertable(text: str, path: str) -> tuple[VirtualMap, list[str]]:
    """A parsed virtusertable, and its problems (one line each)."""
    table = VirtualMap()
    problems: list[str] = []
    for number, line in map_lines(text):
        parts = line.split(None, 1)
        if len(parts) < 2:
            problems.append(
                f"{path}:{number}: expected 'user@domain target' or '@domain target', got {line!r}"
            )
            continue
        key, value = parts[0].lower(), parts[1].strip()
        local, at, domain = key.rpartition("@")
        domain = domain.rstrip(".")
        if not at or not valid_domain(domain) or (local and not valid_local(local)):
            problems.append(
                f"{path}:{number}: expected 'user@domain' or '@domain' as the key, got {parts[0]!r}"
            )
            continue
        key = f"{local}@{domain}"
        try:
            target = parse_target(value, catch_all=not local, line=number)
        except ValueError as e:
            problems.append(f"{path}:{number}: {e}")
            continue
        if key in table.entries:
            first = table.entries[key].line
            problems.append(f"{path}:{number}: duplicate key {parts[0]!r} (first on line {first})")
            continue
        table.entries[key] = target
    return table, problems
